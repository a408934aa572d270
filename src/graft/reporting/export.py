"""Ship a trained model: Keras file, TensorFlow SavedModel (TF Serving), TFLite or ONNX,
checked.

After writing, every export is loaded back and run on sample images next to the Keras
model, and the comparison is returned (and printed by ``graft export``):

- float exports (``keras``, ``savedmodel``, ``onnx`` (run in ONNX Runtime), ``tflite``
  without quantization) must agree
  within ``FLOAT_TOLERANCE`` (max absolute difference of the probabilities), otherwise
  :class:`ExportCheckFailed` is raised;
- quantized TFLite models (``dynamic``, ``int8``) report their top-1 agreement with the
  Keras model and the max absolute difference.

The SavedModel has two serving signatures, both returning ``probabilities`` (float32,
one column per class) and ``label`` (the top class name):

- ``serving_default``: ``images``, float32 ``(batch, H, W, C)`` raw pixels 0-255;
- ``serving_bytes``: ``image_bytes``, a string batch of encoded JPEG/PNG/GIF/BMP files,
  decoded and resized (bilinear) exactly as in training.

Example:
    >>> from graft.reporting import export
    >>> result = export.export("runs/pets", "tflite", "pets.tflite", quantize="dynamic",
    ...                        calibration="data/pets")           # doctest: +SKIP
    >>> print(result.summary_line())                              # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft.config.defaults import MULTI_LABEL_THRESHOLD
from graft.config.names import EXPORT_FORMATS as FORMATS
from graft.config.names import QUANTIZE_MODES as QUANTIZE
from graft.data.pipelines import decode_image, load_image
from graft.errors import GraftError
from graft.reporting import onnx
from graft.reporting.model_card import write_model_card
from graft.reporting.tflite import run_tflite, to_tflite
from graft.runs import files as runs
from graft.runs import layout, model_io

FLOAT_TOLERANCE = 1e-4
CHECK_IMAGES = 16
MAX_CALIBRATION = 200


class ExportCheckFailed(GraftError):
    """The exported model's outputs do not match the Keras model's."""

    exit_code = 1


@dataclass
class ExportResult:
    """What :func:`export` wrote and how its outputs compare with the Keras model.

    Attributes:
        path: The exported file or folder.
        format: ``keras``, ``savedmodel``, ``tflite`` or ``onnx``.
        quantize: ``none``, ``dynamic`` or ``int8``.
        check: ``{"images", "sample", "max_abs_diff", "top1_agreement", "tolerance",
            "passed"}`` (and per-signature numbers for SavedModel).
    """

    path: Path
    format: str
    quantize: str = "none"
    check: dict = field(default_factory=dict)
    #: ``single_label`` (softmax, one class) or ``multi_label`` (sigmoid, every label at
    #: least ``threshold`` probable).
    task: str = "single_label"
    threshold: float | None = None

    def summary_line(self) -> str:
        """One line: the comparison with the Keras model."""
        c = self.check
        what = f"{self.format}" + (f" ({self.quantize})" if self.quantize != "none" else "")
        text = (
            f"check: {what} vs Keras on {c['images']} {c['sample']} images: "
            f"max abs diff {c['max_abs_diff']:.2e}"
        )
        if c.get("tolerance") is not None:
            text += f" (tolerance {c['tolerance']:.0e}, {'ok' if c['passed'] else 'FAILED'})"
        agree = round(c["top1_agreement"] * c["images"])
        text += f"; top-1 agreement {c['top1_agreement']:.3f} ({agree}/{c['images']})"
        if "serving_bytes_max_abs_diff" in c:
            text += f"; serving_bytes max abs diff {c['serving_bytes_max_abs_diff']:.2e}"
        return text

    def as_dict(self) -> dict:
        return {
            "path": str(self.path),
            "format": self.format,
            "quantize": self.quantize,
            "task": self.task,
            **({"threshold": self.threshold} if self.threshold is not None else {}),
            "check": self.check,
        }


def export(
    model_or_run,
    fmt: str,
    out: str | os.PathLike,
    quantize: str = "none",
    calibration=None,
    overwrite: bool = False,
    safe_mode: bool = True,
) -> ExportResult:
    """Export a trained model and check the export against the Keras model.

    Args:
        model_or_run: A run folder or a ``.keras`` file (``labels.json`` beside it).
        fmt: ``"keras"`` (a ``.keras`` file), ``"savedmodel"`` (a folder),
            ``"tflite"`` (a ``.tflite`` file) or ``"onnx"`` (an ``.onnx`` file; needs
            ``pip install "keras-graft[onnx]"``).
        out: Where to write. ``labels.json`` is written beside the file (inside the
            SavedModel folder).
        quantize: TFLite only: ``"none"``, ``"dynamic"`` (int8 weights) or ``"int8"``
            (full integer; needs ``calibration``).
        calibration: Representative images (a folder, searched recursively, or a list
            of files): int8 calibration, and the sample images of the check. Without
            it the check uses random images.
        overwrite: Replace an existing ``out``.
        safe_mode: Refuse model files whose loading could run code.

    Returns:
        An :class:`ExportResult` with the comparison.

    Raises:
        ExportCheckFailed: A float export differs from the Keras model by more than
            ``FLOAT_TOLERANCE``.
    """
    if fmt not in FORMATS:
        raise GraftError(
            f"Unknown format: {fmt!r}. Expected one of {', '.join(FORMATS)}. Received: fmt={fmt}"
        )
    if quantize not in QUANTIZE:
        raise GraftError(
            f"Unknown quantization: {quantize!r}. Expected one of {', '.join(QUANTIZE)}. "
            f"Received: quantize={quantize}"
        )
    if quantize != "none" and fmt != "tflite":
        raise GraftError(f"quantize={quantize} applies to fmt=tflite only.")
    if quantize == "int8" and calibration is None:
        raise GraftError(
            "quantize=int8 needs representative images to calibrate on.",
            hint="pass calibration=DATA (a folder of typical input images, ~100 are enough).",
        )
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise GraftError(f"{out} already exists.", hint="pass another out=DIR, or overwrite=True.")
    if fmt == "keras" and out.suffix != ".keras":
        raise GraftError(f"out for fmt=keras must end in .keras. Received: out={out}")
    _check_target(out, fmt)
    if fmt == "onnx":
        onnx.require()  # before loading anything
    model, classes = model_io.load(model_or_run, safe_mode=safe_mode)
    labels_at = out if fmt == "savedmodel" else out.parent  # a SavedModel is replaced whole
    if fmt != "savedmodel":
        _check_labels(labels_at / layout.LABELS_FILE, classes)
    _, h, w, ch = model.input_shape
    if calibration is not None:
        images = load_calibration(calibration, (h, w), ch)
        sample = "calibration"
    else:
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 255, (CHECK_IMAGES, h, w, ch)).astype("float32")
        sample = "random"
    check_images = images[:64]

    if fmt == "keras":
        to_keras(model, out)
        expected = model.predict_on_batch(check_images)
        check = compare(expected, _reload_keras(out).predict_on_batch(check_images))
    elif fmt == "savedmodel":
        to_savedmodel(model, classes, out)
        check = check_savedmodel(out, model, check_images)
    elif fmt == "onnx":
        onnx.to_onnx(model, out, classes, task=_task_metadata(model))
        check = compare(model.predict_on_batch(check_images), onnx.run_onnx(out, check_images))
    else:
        to_tflite(model, out, quantize, images if quantize == "int8" else None)
        check = compare(model.predict_on_batch(check_images), run_tflite(out, check_images))
    if fmt == "savedmodel" or not (labels_at / layout.LABELS_FILE).is_file():
        runs.write_json(labels_at / layout.LABELS_FILE, classes)
    check.update(images=len(check_images), sample=sample)
    if quantize == "none":
        worst = max(check["max_abs_diff"], check.get("serving_bytes_max_abs_diff", 0.0))
        check.update(tolerance=FLOAT_TOLERANCE, passed=bool(worst <= FLOAT_TOLERANCE))
    else:
        check.update(tolerance=None, passed=True)
    multi = model_io.is_multi_label(model)
    task = "multi_label" if multi else "single_label"
    result = ExportResult(out, fmt, quantize, check, task, MULTI_LABEL_THRESHOLD if multi else None)
    _record(model_or_run, result)
    if not check["passed"]:
        raise ExportCheckFailed(
            f"The exported model differs from the Keras model: {result.summary_line()}.",
            hint="report this with the model and versions (graft --debug shows the details).",
        )
    return result


#: What a SavedModel folder written by :func:`to_savedmodel` holds.
SAVEDMODEL_ENTRIES = {"saved_model.pb", "fingerprint.pb", "variables", "assets", layout.LABELS_FILE}


def _check_target(out: Path, fmt: str) -> None:
    """Refuse to replace anything graft's export did not write: a folder for a file
    export; for a SavedModel, a file or a non-empty folder that is not a SavedModel."""
    if not out.exists() and not out.is_symlink():
        return
    if fmt != "savedmodel":
        if out.is_dir() or out.is_symlink():
            raise GraftError(f"out={out} is a folder or a link; refusing to replace it.")
        return
    if out.is_symlink() or not out.is_dir():
        raise GraftError(f"out={out} is not a SavedModel folder; refusing to replace it.")
    entries = {p.name for p in out.iterdir()}
    if entries and not ("saved_model.pb" in entries and entries <= SAVEDMODEL_ENTRIES):
        shown = ", ".join(sorted(entries - SAVEDMODEL_ENTRIES)[:3]) or "no saved_model.pb"
        raise GraftError(
            f"out={out} is not empty and is not a SavedModel ({shown}); "
            "refusing to replace a folder graft did not write.",
            hint="pass a new or empty folder as out=DIR.",
        )


def _check_labels(path: Path, classes: list[str]) -> None:
    """Refuse to replace a ``labels.json`` naming other classes (another run's, another
    export's): its model's predictions would then name the wrong classes."""
    if not path.exists() and not path.is_symlink():
        return
    try:
        existing = runs.read_json(path) if not path.is_symlink() else None
    except (OSError, ValueError):
        existing = None
    if existing != list(classes):
        raise GraftError(
            f"{path} already exists for other classes (another run or export); "
            "refusing to replace it.",
            hint="export into a folder of its own (a new out=DIR).",
        )


def compare(expected: np.ndarray, got: np.ndarray) -> dict:
    """Max absolute difference and top-1 agreement of two probability batches."""
    expected = np.asarray(expected, dtype="float64")
    got = np.asarray(got, dtype="float64")
    if expected.shape != got.shape:
        raise ExportCheckFailed(
            f"The exported model returns shape {got.shape}, the Keras model {expected.shape}."
        )
    return {
        "max_abs_diff": float(np.max(np.abs(expected - got))) if expected.size else 0.0,
        "top1_agreement": float(np.mean(expected.argmax(1) == got.argmax(1))),
    }


def load_calibration(source, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """Up to ``MAX_CALIBRATION`` images from a folder (or list of files), shuffled with a
    fixed seed so every class is represented, decoded and resized as in training."""
    from graft.reporting import predict

    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    files = predict.expand(sources)
    order = np.random.default_rng(0).permutation(len(files))[:MAX_CALIBRATION]
    images = []
    for i in order:
        try:
            images.append(load_image(files[i], image_size, channels))
        except (OSError, ValueError):
            continue
    if not images:
        raise GraftError(f"No readable images in calibration={source}.")
    return np.stack(images).astype("float32")


def _tmp_beside(out: Path, suffix: str = "") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent))
    os.chmod(tmp, runs.shared_mode(directory=True))  # mkdtemp makes 0700
    return tmp


def _move_into_place(tmp: Path, out: Path) -> None:
    """Put the SavedModel folder ``tmp`` at ``out``, replacing only an empty folder or a
    SavedModel (checked by :func:`_check_target`)."""
    _check_target(out, "savedmodel")
    if out.is_dir():
        shutil.rmtree(out)
    os.replace(tmp, out)


def to_keras(model, out: str | os.PathLike) -> Path:
    """Save as a ``.keras`` file (atomically)."""
    return runs.save_model(model, out)


def _reload_keras(path: Path):
    return model_io.load_file(path)


def to_savedmodel(model, classes: list[str], out: str | os.PathLike) -> Path:
    """Write a TensorFlow SavedModel with ``serving_default`` and ``serving_bytes``.

    Args:
        model: The Keras model (raw 0-255 images in, probabilities out).
        classes: Class names, returned as ``label`` by both signatures.
        out: The SavedModel folder.

    Returns:
        ``out``.
    """
    import keras
    import tensorflow as tf

    out = Path(out)
    _, h, w, ch = model.input_shape
    names = tf.constant(classes)

    def outputs(images):
        probs = tf.cast(model(images, training=False), tf.float32)
        return {"probabilities": probs, "label": tf.gather(names, tf.argmax(probs, axis=-1))}

    def decode(data):
        return decode_image(data, (h, w), ch)

    def serve_bytes(image_bytes):
        images = tf.map_fn(
            decode, image_bytes, fn_output_signature=tf.TensorSpec((h, w, ch), tf.float32)
        )
        return outputs(images)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        outputs,
        input_signature=[tf.TensorSpec((None, h, w, ch), tf.float32, name="images")],
    )
    archive.add_endpoint(
        "serving_bytes",
        serve_bytes,
        input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")],
    )
    tmp = _tmp_beside(out)
    try:
        archive.write_out(str(tmp), verbose=False)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_savedmodel(path: Path, model, images: np.ndarray) -> dict:
    """Run both serving signatures of a SavedModel and compare them with the Keras model.

    ``serving_default`` gets ``images`` as they are; ``serving_bytes`` gets them rounded to
    uint8 and PNG-encoded (lossless), and is compared with the Keras model on the same
    rounded pixels.
    """
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    missing = {"serving_default", "serving_bytes"} - set(loaded.signatures)
    if missing:
        raise ExportCheckFailed(f"The SavedModel lacks signature(s): {', '.join(sorted(missing))}.")
    expected = model.predict_on_batch(images)
    got = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"]
    check = compare(expected, got.numpy())
    pixels = np.clip(np.round(images), 0, 255).astype("uint8")
    encoded = tf.stack([tf.io.encode_png(p) for p in pixels])
    got_bytes = loaded.signatures["serving_bytes"](image_bytes=encoded)["probabilities"]
    bytes_check = compare(model.predict_on_batch(pixels.astype("float32")), got_bytes.numpy())
    check["serving_bytes_max_abs_diff"] = bytes_check["max_abs_diff"]
    check["serving_bytes_top1_agreement"] = bytes_check["top1_agreement"]
    check["signatures"] = sorted(loaded.signatures)
    return check


def _task_metadata(model) -> dict:
    """``{"task", "threshold"}`` of a model, as an export's metadata says them."""
    if model_io.is_multi_label(model):
        return {"task": "multi_label", "threshold": MULTI_LABEL_THRESHOLD}
    return {"task": "single_label"}


def _record(model_or_run, result: ExportResult) -> None:
    """Note the export in the run folder's ``exports.json`` and refresh its model card."""
    run_dir = Path(model_or_run).expanduser()
    if not (run_dir.is_dir() and (run_dir / layout.METRICS_FILE).is_file()):
        return
    path = run_dir / layout.EXPORTS_FILE
    entries = runs.read_json(path, [])
    entries = [e for e in entries if e.get("path") != str(result.path)] + [result.as_dict()]
    runs.write_json(path, entries)
    write_model_card(run_dir)
