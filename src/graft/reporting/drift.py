"""Forgetting, measured: how far fine-tuning moved the backbone's features.

Two measures compare the *pre-trained* backbone with the *fine-tuned* one on the same
images (the pooled backbone output, i.e. the head's input, see
:func:`graft.core.model_utils.features_model`):

- **linear CKA** (centred kernel alignment, Kornblith et al. 2019): similarity of the
  two representations up to an orthogonal transform and isotropic scaling; 1.0 means
  the same geometry, lower means the fine-tuned features were re-organised.
- **mean cosine similarity** between each image's two feature vectors: sensitive to
  any change of the features themselves, rotations included.

:func:`snapshot` keeps a copy of the backbone's weights before training;
:func:`measure` puts them back temporarily to compute the pre-trained features and
restores the fine-tuned weights afterwards (no second model is built). When no backbone
weight changed (feature extraction) nothing is recomputed: CKA and cosine are exactly 1.

Source-task accuracy (:class:`SourceTask`): given the original classifier the backbone
was cut from and labelled data of its task, accuracy of the original model before
training and of the same model with the fine-tuned backbone weights copied in ("after").
The rule: every layer of the fine-tuned backbone must exist, by name and with the same
weight shapes, in the source model - true when the backbone was cut from that very file
with ``--cut`` (or when a registry backbone is compared with the same architecture with
its top). The source model's layers after the cut (its head) stay as they were.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(50, 8))
    >>> round(linear_cka(x, 3.0 * x), 6)
    1.0
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from graft.core.model_utils import features_model, forward_function
from graft.data import neutral
from graft.data.adapter import adapt, labelled_batches
from graft.errors import DataError, GraftError
from graft.runs import model_io

MAX_IMAGES = 512


def _centred(x) -> np.ndarray:
    x = np.asarray(x, dtype="float64").reshape(len(x), -1)
    return x - x.mean(axis=0, keepdims=True)


def linear_cka(x, y) -> float:
    """Linear CKA between two feature matrices of the same images.

    Args:
        x: ``(n, d1)`` features of ``n`` images.
        y: ``(n, d2)`` features of the same images, in the same order.

    Returns:
        ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` on column-centred matrices,
        in ``[0, 1]``; 1.0 for identical features (also when both are constant).
    """
    x, y = _centred(x), _centred(y)
    if len(x) != len(y):
        raise ValueError(f"Feature matrices disagree on the images: {len(x)} vs {len(y)} rows.")
    norm_x = np.linalg.norm(x.T @ x)
    norm_y = np.linalg.norm(y.T @ y)
    if norm_x == 0 or norm_y == 0:
        return 1.0 if norm_x == norm_y else 0.0
    return float(np.linalg.norm(y.T @ x) ** 2 / (norm_x * norm_y))


def mean_cosine(x, y) -> float:
    """Mean cosine similarity between each image's two feature vectors.

    Args:
        x: ``(n, d)`` features.
        y: ``(n, d)`` features of the same images (same dimension).

    Returns:
        The mean over images; a pair of zero vectors counts as 1.0.
    """
    x = np.asarray(x, dtype="float64").reshape(len(x), -1)
    y = np.asarray(y, dtype="float64").reshape(len(y), -1)
    if x.shape != y.shape:
        raise ValueError(f"Feature shapes differ: {x.shape} vs {y.shape}.")
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    both_zero = (nx == 0) & (ny == 0)
    cos = np.sum(x * y, axis=1) / np.maximum(nx * ny, np.finfo("float64").tiny)
    return float(np.mean(np.where(both_zero, 1.0, cos)))


def snapshot(model: keras.Model) -> list[np.ndarray]:
    """Copies of the weights of ``model``'s feature extractor (preprocessing + backbone)."""
    return [np.array(w) for w in features_model(model).get_weights()]


def _same(weights: list, reference: list) -> bool:
    return len(weights) == len(reference) and all(
        np.array_equal(a, b) for a, b in zip(weights, reference)
    )


def unchanged(model: keras.Model, reference: list[np.ndarray] | None) -> bool:
    """Whether ``model``'s feature extractor still has exactly the :func:`snapshot` weights
    (its features of any image are then the pre-trained ones)."""
    return reference is not None and _same(features_model(model).get_weights(), reference)


def _images(dataset, limit: int):
    """``dataset`` (batches of ``(image, label)`` or images) cut to about ``limit`` images
    (a list of image batches for graft's backend-neutral reader)."""
    if neutral.is_neutral(dataset):
        return _first_images(dataset, limit)
    spec = dataset.element_spec
    if isinstance(spec, tuple):
        dataset = dataset.map(lambda *item: item[0])
    batch = spec[0].shape[0] if isinstance(spec, tuple) else spec.shape[0]
    return dataset.unbatch().take(limit).batch(batch or 32)


def _first_images(dataset, limit: int) -> list[np.ndarray]:
    """The first ``limit`` images of a backend-neutral reader, batch by batch."""
    batches, seen = [], 0
    for index in range(len(dataset)):
        item = dataset[index]
        x = np.asarray(item[0] if isinstance(item, tuple) else item)[: limit - seen]
        batches.append(x)
        seen += len(x)
        if seen >= limit:
            break
    return batches


def _count(images) -> int:
    if isinstance(images, list):
        return sum(len(x) for x in images)
    return int(sum(1 for _ in images.unbatch()))


def _predict(extractor: keras.Model, images) -> np.ndarray:
    """Batch by batch through one function traced once for any batch size (the capped
    pipeline has no known length; the same function serves both weight sets)."""
    forward = forward_function(extractor, getattr(images, "element_spec", None))
    return np.concatenate([np.asarray(forward(x)) for x in images])


def measure(
    model: keras.Model,
    reference: list[np.ndarray],
    dataset,
    max_images: int = MAX_IMAGES,
    split: str = "val",
    count: int | None = None,
    through: keras.Model | None = None,
) -> dict:
    """Feature drift of ``model``'s backbone from the ``reference`` weights.

    Args:
        model: The trained grafted model.
        reference: :func:`snapshot` of the same model before training.
        dataset: A ``tf.data`` pipeline of ``(image, label)`` batches (not shuffled).
        max_images: Use at most this many images (cost bound).
        split: Which data the images are from, recorded in the result.
        count: How many images ``dataset`` holds, if known: an unchanged backbone is
            then reported without reading a single image.
        through: A model sharing the top layers of ``model``'s feature extractor that
            computes the same features from what ``dataset`` holds instead of images (the
            cached activations of a bottom that no phase changed,
            :func:`graft.training.derived.features_top`).

    Returns:
        ``{"cka", "cosine", "images", "split"}``; ``"unchanged": True`` when no
        backbone weight moved (both measures are then exactly 1.0).
    """
    extractor = features_model(model)
    trained = extractor.get_weights()
    if _same(trained, reference):  # no pipeline is built when the count is known
        if count is None:
            count = _count(_images(dataset, max_images))
        count = min(int(count), max_images)
        return {"cka": 1.0, "cosine": 1.0, "images": count, "split": split, "unchanged": True}
    images = _images(dataset, max_images)
    features = extractor if through is None else through
    after = _predict(features, images)
    try:
        extractor.set_weights(reference)
        before = _predict(features, images)
    finally:
        extractor.set_weights(trained)
    return {
        "cka": round(linear_cka(before, after), 6),
        "cosine": round(mean_cosine(before, after), 6),
        "images": int(len(after)),
        "split": split,
    }


def summary_line(drift: dict) -> str:
    """One line for the run output."""
    note = " (backbone unchanged)" if drift.get("unchanged") else ""
    return (
        f"Feature drift on {drift['images']} {drift['split']} images: linear CKA "
        f"{drift['cka']:.4f}, mean cosine {drift['cosine']:.4f}{note}"
    )


@dataclass
class SourceTask:
    """The original classifier and labelled data of its task, to measure forgetting.

    Build with :meth:`prepare` (checks everything before training starts), then call
    :meth:`accuracies` with the trained grafted model.
    """

    model: keras.Model
    data: object
    classes: list[str]
    preprocess: str
    path: str

    @classmethod
    def prepare(
        cls,
        source_model: str | os.PathLike,
        source_eval,
        backbone_model: keras.Model,
        preprocess: str,
        safe_mode: bool = True,
    ) -> SourceTask:
        """Load and check the source model against the backbone and the source data.

        Args:
            source_model: The original ``.keras``/``.h5`` classifier, head included.
            source_eval: Labelled data of the source task: a folder of class subfolders
                (sorted folder names = the model's output order), a CSV manifest or
                ``(images, labels)`` arrays.
            backbone_model: The backbone the run fine-tunes (before training).
            preprocess: The backbone's preprocessing mode (the source model gets the
                same scaled pixels as the backbone).
            safe_mode: Refuse model files whose loading could run code.

        Returns:
            A :class:`SourceTask`.
        """
        path = str(source_model)
        model = model_io.load_file(path, safe_mode, compile=False, what="source model")
        files = adapt(source_eval)
        if files.files is None:
            classes = [str(i) for i in range(model.output_shape[-1])]
        else:
            classes = list(files.classes)
        if model.output_shape[-1] != len(classes):
            raise DataError(
                f"The source model {path} has {model.output_shape[-1]} outputs but the "
                f"source data has {len(classes)} classes.",
                hint="source_eval= needs one class folder per output of source_model=, "
                "in the model's output order (sorted folder names).",
            )
        missing = _unmatched(backbone_model, model)
        if missing:
            raise GraftError(
                f"The backbone's layer(s) {', '.join(missing[:3])} are not in the source "
                f"model {path}, so its head cannot be re-attached to the fine-tuned backbone.",
                hint="pass the model file the backbone was cut from (backbone=FILE cut="
                "LAYER) as source_model=.",
            )
        return cls(model, files, classes, preprocess, path)

    def _classifier(self, model: keras.Model) -> keras.Model:
        from graft.core.preprocessing import preprocessing_layers

        inputs = keras.Input(model.input_shape[1:], name="image")
        x = inputs
        for layer in preprocessing_layers(self.preprocess, model.input_shape[-1]):
            x = layer(x)
        return keras.Model(inputs, model(x), name="source_task")

    def accuracy(self, weights: dict[str, list] | None = None) -> tuple[float, int]:
        """Accuracy of the source model, optionally with some layers' weights replaced.

        Args:
            weights: ``{layer name: weights}`` to set before evaluating (restored after).

        Returns:
            ``(accuracy, images)``.
        """
        saved = {}
        try:
            for name, values in (weights or {}).items():
                layer = self.model.get_layer(name)
                saved[name] = layer.get_weights()
                layer.set_weights(values)
            wrapped = self._classifier(self.model)
            _, h, w, ch = wrapped.input_shape
            ds, _, _ = labelled_batches(self.data, self.classes, (h, w), ch)
            right = total = 0
            for x, y in ds:
                pred = np.argmax(np.asarray(wrapped(x, training=False)), axis=-1)
                right += int(np.sum(pred == np.asarray(y).reshape(-1)))
                total += len(pred)
        finally:
            for name, values in saved.items():
                self.model.get_layer(name).set_weights(values)
        if not total:
            raise DataError(f"No images to evaluate the source task on in {self.data}.")
        return right / total, total

    def accuracies(self, trained_backbone: keras.Model) -> dict:
        """Source-task accuracy before and after (fine-tuned backbone, original head)."""
        before, images = self.accuracy()
        after, _ = self.accuracy(
            {layer.name: layer.get_weights() for layer in trained_backbone.layers if layer.weights}
        )
        return {
            "accuracy_before": round(before, 6),
            "accuracy_after": round(after, 6),
            "images": images,
            "source_model": self.path,
        }


def _unmatched(backbone_model: keras.Model, source: keras.Model) -> list[str]:
    """Backbone layers with weights that have no same-named, same-shaped source layer."""
    by_name = {layer.name: layer for layer in source.layers}
    missing = []
    for layer in backbone_model.layers:
        if not layer.weights:
            continue
        other = by_name.get(layer.name)
        if other is None or [tuple(w.shape) for w in other.weights] != [
            tuple(w.shape) for w in layer.weights
        ]:
            missing.append(layer.name)
    return missing


def source_summary_line(result: dict) -> str:
    """One line for the run output."""
    change = result["accuracy_after"] - result["accuracy_before"]
    return (
        f"Source task ({result['images']} images): accuracy {result['accuracy_before']:.4f} "
        f"before, {result['accuracy_after']:.4f} after ({change:+.4f})"
    )


def run_drift(
    model: keras.Model,
    reference: list[np.ndarray] | None,
    val_ds,
    train_eval: Callable | None,
    log: Callable[[str], None],
    counts: dict | None = None,
    through: tuple | None = None,
) -> dict | None:
    """Drift for :func:`graft.train`: on the validation images, else the training ones.

    Args:
        model: The trained model.
        reference: The weights before training.
        val_ds: Validation pipeline or ``None``.
        train_eval: Builds a non-augmented, non-shuffled training pipeline (or ``None``).
        log: Receives the summary line.
        counts: Images per split (``{"val": n, "train": m}``), if known.
        through: ``(features model, validation batches)`` to measure on instead of the
            images (see :func:`measure`).

    Returns:
        The drift dict, or ``None`` when there are no images to measure on.
    """
    if reference is None:
        return None
    if val_ds is not None:
        dataset, split = val_ds, "val"
    elif train_eval is not None:
        dataset, split = train_eval(), "train"
    else:
        return None
    count = (counts or {}).get(split)
    top = None
    if through is not None and split == "val":
        top, dataset = through
    result = measure(model, reference, dataset, split=split, count=count, through=top)
    if not result["images"] or (isinstance(result["cka"], float) and math.isnan(result["cka"])):
        return None
    log(summary_line(result))
    return result
