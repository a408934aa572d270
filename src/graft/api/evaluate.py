"""Using a trained run: :func:`load`, :func:`evaluate`; and :func:`check_data` on its own."""

from __future__ import annotations

import os

import keras

from graft.data import adapter, sources
from graft.data import check as datacheck
from graft.runs import model_io


def load(model_or_run: str | os.PathLike, safe_mode: bool = True) -> tuple[keras.Model, list[str]]:
    """Load a trained model and its class names from a run folder or a ``.keras`` file."""
    return model_io.load(model_or_run, safe_mode=safe_mode)


def labelled_batches(
    model: keras.Model,
    data_source,
    classes: list[str],
    batch_size: int = 32,
    min_size: int = datacheck.DEFAULT_MIN_SIZE,
    with_paths: bool = False,
):
    """Labelled batches of ``data_source`` sized for ``model``
    (see :func:`graft.data.adapter.labelled_batches`)."""
    _, h, w, ch = model.input_shape
    return adapter.labelled_batches(
        data_source, classes, (h, w), ch, batch_size, min_size, with_paths=with_paths
    )


def check_data(
    data_source,
    val=None,
    test=None,
    min_size: int = datacheck.DEFAULT_MIN_SIZE,
    classes: list[str] | None = None,
) -> datacheck.CheckReport:
    """The pre-flight check of :func:`graft.train`, on its own (nothing is converted or written).

    Args:
        data_source: A folder of class subfolders or a CSV manifest.
        val: Validation data to check with it (for leakage across splits).
        test: Test data to check with it.
        min_size: Smallest allowed image side in pixels.
        classes: Fix the class list (default: from ``data_source``).

    Returns:
        A :class:`graft.data.check.CheckReport`.
    """
    files = sources.load_source(data_source, classes)
    val = None if val is None else sources.load_source(val, files.classes)
    test = None if test is None else sources.load_source(test, files.classes)
    return datacheck.check(files, val, test, min_size=min_size, convert=False)


def evaluate(
    model_or_run,
    data_source,
    batch_size: int = 32,
    min_size: int | None = None,
    safe_mode: bool = True,
) -> dict:
    """Accuracy, loss, top-k, per-class precision/recall/F1, confusion and calibration.

    Args:
        model_or_run: A run folder or a ``.keras`` file (with ``labels.json`` beside it).
        data_source: A folder of class subfolders or a CSV manifest (classes must be
            known to the model), ``(images, labels)`` arrays or a ``tf.data.Dataset``.
            Files are checked first; unusable ones are skipped and counted.
        batch_size: Images per batch.
        min_size: Smallest image side the check accepts; default: the run's own
            ``min_size`` (from its ``config.yaml``), so images are read as in training.
        safe_mode: Refuse model files whose loading could run code (Lambda layers).

    Returns:
        ``{"accuracy", "loss", "images", "skipped", "top_k_accuracy", "per_class",
        "macro_avg", "weighted_avg", "confusion_matrix", "ece", ...}``
        (see :func:`graft.reporting.evaluation.classification_metrics`).
    """
    from graft.reporting import evaluation

    model, classes = load(model_or_run, safe_mode=safe_mode)
    if min_size is None:
        min_size = model_io.run_min_size(model_or_run)
    ds, _, skipped, paths = labelled_batches(
        model, data_source, classes, batch_size, min_size, with_paths=True
    )
    result = evaluation.evaluate_model(model, ds, classes, paths=paths).as_dict()
    result["skipped"] = skipped
    result.update(decode_record(model_or_run))
    return result


def decode_record(model_or_run) -> dict:
    """``{"decode": recipe}``: what decoded the image files here
    (:func:`graft.data.decode.recipe`), plus ``"run_decode"`` when the run that made the
    model recorded another library (a TensorFlow run read its images with ``tf.io``;
    Pillow and ``tf.io`` differ by a few levels on some pixels of real JPEGs)."""
    from graft.data import decode

    used = decode.recipe()
    record = {"decode": used}
    trained = model_io.run_setting(model_or_run, "decode")
    if isinstance(trained, dict) and trained.get("library") != used["library"]:
        record["run_decode"] = trained
    return record
