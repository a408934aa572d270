"""How good a trained model is: accuracy, top-k, per-class P/R/F1, confusion, calibration.

:func:`evaluate_model` makes one streaming pass over labelled batches (a ``tf.data``
pipeline or any iterable of ``(images, labels)``), keeps only the predicted
probabilities and the few most confidently wrong images, and returns an
:class:`Evaluation`. The numbers come from scikit-learn (:func:`classification_metrics`
for one label per image, :func:`multilabel_metrics` for several); only the expected
calibration error, which scikit-learn does not provide, is computed here.

Example:
    >>> import numpy as np
    >>> m = classification_metrics([0, 1, 1], np.array([[.9, .1], [.2, .8], [.6, .4]]), ["a", "b"])
    >>> m["accuracy"], m["confusion_matrix"]
    (0.6667, [[1, 0], [1, 1]])
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from graft.config.defaults import MULTI_LABEL_THRESHOLD
from graft.runs.model_io import is_multi_label

DIGITS = 4  # metrics are rounded to this many decimals in metrics.json
ECE_BINS = 15


@dataclass
class WorstError:
    """A confidently wrong prediction, kept for the report's error grid."""

    index: int
    true: int
    predicted: int
    confidence: float
    image: np.ndarray = field(repr=False)
    #: The image's file, where the data came from files.
    path: str | None = None

    def as_dict(self, classes: list[str]) -> dict:
        return {
            "index": self.index,
            **({"path": self.path} if self.path is not None else {}),
            "true": classes[self.true],
            "predicted": classes[self.predicted],
            "confidence": round(self.confidence, DIGITS),
        }


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate_model`.

    Attributes:
        metrics: Plain JSON-ready numbers (see :func:`classification_metrics`).
        y_true: Integer labels (or a 0/1 matrix for multi-label), one row per image.
        probs: Predicted probabilities, one row per image.
        worst: The most confidently wrong predictions, most confident first.
        classes: Class names in output order.
    """

    metrics: dict
    y_true: np.ndarray
    probs: np.ndarray
    worst: list[WorstError]
    classes: list[str]

    def as_dict(self) -> dict:
        """``metrics`` plus the worst errors (without pixels)."""
        return {**self.metrics, "worst_errors": [w.as_dict(self.classes) for w in self.worst]}

    def scores(self) -> dict:
        """``{"accuracy", "loss"}`` unrounded, as Keras's ``evaluate`` reports them for the
        run's model (without regularization terms): top-1 accuracy and crossentropy, or
        per-label binary accuracy and binary crossentropy for a multi-label model."""
        probs = np.clip(np.asarray(self.probs, dtype="float64"), 1e-7, 1 - 1e-7)
        if not len(probs):
            return {"accuracy": float("nan"), "loss": float("nan")}
        if self.metrics.get("task") == "multi_label":
            y = np.asarray(self.y_true, dtype="float64")
            loss = -(y * np.log(probs) + (1 - y) * np.log(1 - probs)).mean()
            accuracy = ((probs >= self.metrics.get("threshold", 0.5)) == (y > 0.5)).mean()
            return {"accuracy": float(accuracy), "loss": float(loss)}
        y = np.asarray(self.y_true).astype(int).ravel()
        probs = probs / probs.sum(axis=1, keepdims=True)
        loss = -np.log(probs[np.arange(len(y)), y]).mean()
        accuracy = (probs.argmax(axis=1) == y).mean()
        return {"accuracy": float(accuracy), "loss": float(loss)}


def _r(value) -> float:
    return round(float(value), DIGITS)


def expected_calibration_error(
    y_true, probs: np.ndarray, bins: int = ECE_BINS
) -> tuple[float, list[dict]]:
    """Expected calibration error of the top-1 confidence (equal-width bins).

    ``ECE = sum_b |B_b|/n * |accuracy(B_b) - confidence(B_b)|`` (Guo et al., 2017).

    Args:
        y_true: Integer labels, shape ``(n,)``.
        probs: Probabilities, shape ``(n, classes)``.
        bins: Number of equal-width confidence bins on [0, 1].

    Returns:
        ``(ece, per_bin)`` where ``per_bin`` lists ``{"lower", "upper", "count",
        "accuracy", "confidence"}`` for every non-empty bin (a reliability diagram).
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype="float64")
    if len(y_true) == 0:
        return 0.0, []
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype("float64")
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin b holds confidences in (edges[b], edges[b+1]]; a confidence of 0 goes to bin 0.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece, per_bin = 0.0, []
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        if not count:
            continue
        acc, conf = correct[members].mean(), confidence[members].mean()
        ece += count / len(y_true) * abs(acc - conf)
        per_bin.append(
            {
                "lower": _r(edges[b]),
                "upper": _r(edges[b + 1]),
                "count": count,
                "accuracy": _r(acc),
                "confidence": _r(conf),
            }
        )
    return _r(ece), per_bin


def classification_metrics(
    y_true, probs: np.ndarray, classes: list[str], top_k: Iterable[int] = (2, 3, 5)
) -> dict:
    """Single-label metrics from scikit-learn, as plain JSON-ready values.

    Args:
        y_true: Integer labels, shape ``(n,)``.
        probs: Predicted probabilities, shape ``(n, len(classes))``.
        classes: Class names in output order.
        top_k: Values of k for top-k accuracy; those not below the number of classes
            are skipped (top-k is then trivially 1).

    Returns:
        ``{"images", "accuracy", "loss", "top_k_accuracy": {"3": ...},
        "per_class": {name: {"precision", "recall", "f1", "support"}},
        "macro_avg", "weighted_avg", "confusion_matrix" (rows: true, columns:
        predicted), "ece", "calibration"}``.
    """
    from sklearn import metrics as skm

    y_true = np.asarray(y_true).astype(int).ravel()
    probs = np.asarray(probs, dtype="float64")
    labels = list(range(len(classes)))
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"probs must have shape (n, {len(classes)}), got {probs.shape}.")
    y_pred = probs.argmax(axis=1)
    n = len(y_true)
    result: dict = {"images": n}
    if n == 0:
        return result
    result["accuracy"] = _r(skm.accuracy_score(y_true, y_pred))
    # Clipped like Keras's crossentropy, so the loss matches model.evaluate().
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    result["loss"] = _r(
        skm.log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=labels)
    )
    result["top_k_accuracy"] = {
        str(k): _r(skm.top_k_accuracy_score(y_true, probs, k=k, labels=labels))
        for k in top_k
        if k < len(classes)
    }
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    result["per_class"] = {
        name: {"precision": _r(p[i]), "recall": _r(r[i]), "f1": _r(f[i]), "support": int(s[i])}
        for i, name in enumerate(classes)
    }
    # A class absent from the evaluation data has no F1 to average (sklearn counts it as
    # 0): the averages are over the classes present, and the absent ones are named.
    present = [i for i in labels if s[i] > 0]
    absent = [classes[i] for i in labels if s[i] == 0]
    if absent:
        result["absent_classes"] = absent
    for average in ("macro", "weighted"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=present, average=average, zero_division=0
        )
        result[f"{average}_avg"] = {"precision": _r(ap), "recall": _r(ar), "f1": _r(af)}
    result["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    result["ece"], result["calibration"] = expected_calibration_error(y_true, probs)
    return result


def multilabel_metrics(
    y_true, probs: np.ndarray, labels: list[str], threshold: float = MULTI_LABEL_THRESHOLD
) -> dict:
    """Multi-label metrics (several labels per image) at a probability threshold.

    Args:
        y_true: 0/1 matrix, shape ``(n, len(labels))``.
        probs: Predicted per-label probabilities (sigmoid outputs), same shape.
        labels: Label names.
        threshold: A label is predicted when its probability is at least this.

    Returns:
        ``{"images", "threshold", "subset_accuracy", "hamming_loss", "accuracy", "micro_f1",
        "macro_f1", "micro_avg", "macro_avg", "per_label": {name: {"precision",
        "recall", "f1", "support"}}}``.
    """
    from sklearn import metrics as skm

    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype="float64")
    if y_true.shape != probs.shape or probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(
            f"y_true and probs must both have shape (n, {len(labels)}), "
            f"got {y_true.shape} and {probs.shape}."
        )
    y_pred = (probs >= threshold).astype(int)
    result: dict = {"images": len(y_true), "threshold": threshold}
    if not len(y_true):
        return result
    result["subset_accuracy"] = _r(skm.accuracy_score(y_true, y_pred))
    result["hamming_loss"] = _r(skm.hamming_loss(y_true, y_pred))
    # Per-label binary accuracy: what Keras's BinaryAccuracy reports while training.
    result["accuracy"] = _r(1.0 - skm.hamming_loss(y_true, y_pred))
    for average in ("micro", "macro"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, average=average, zero_division=0
        )
        result[f"{average}_f1"] = _r(af)
        result[f"{average}_avg"] = {"precision": _r(ap), "recall": _r(ar), "f1": _r(af)}
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    result["per_label"] = {
        name: {"precision": _r(p[i]), "recall": _r(r[i]), "f1": _r(f[i]), "support": int(s[i])}
        for i, name in enumerate(labels)
    }
    return result


def evaluate_model(
    model,
    batches: Iterable,
    classes: list[str],
    keep_worst: int = 16,
    top_k: Iterable[int] = (2, 3, 5),
    threshold: float = MULTI_LABEL_THRESHOLD,
    paths: Sequence[str] | None = None,
    pixels: Callable[[int], np.ndarray] | None = None,
) -> Evaluation:
    """Predict every batch once and compute all metrics.

    Args:
        model: A trained Keras model (raw images in, probabilities out).
        batches: Iterable of ``(images, labels)`` batches, e.g. a ``tf.data`` pipeline
            from :func:`graft.data.pipelines.pipeline`. Only predictions are kept in memory.
        classes: Class names in output order.
        keep_worst: How many of the most confidently wrong images to keep (single-label).
        top_k: Values of k for top-k accuracy.
        threshold: Decision threshold for multi-label models.
        paths: The file of every image, in batch order (names the worst errors).
        pixels: When the batches hold what ``model`` takes instead of images (cached
            features and the head alone), the image at a batch-order index: only the
            worst errors are read.

    Returns:
        An :class:`Evaluation`.
    """
    from graft.core.model_utils import forward_function  # keras: only when evaluating

    multi = is_multi_label(model)
    heap: list[tuple[float, int, int, int, np.ndarray]] = []
    y_parts, p_parts, seen = [], [], 0
    forward = None  # one function traced once for any batch size (the last is smaller)
    for images, labels in batches:
        images = np.asarray(images)
        if forward is None:
            forward = forward_function(model, images)
        probs = np.asarray(forward(images), dtype="float32")
        labels = np.asarray(labels)
        y_parts.append(labels)
        p_parts.append(probs)
        if not multi and keep_worst:
            pred = probs.argmax(axis=1)
            for i in np.flatnonzero(pred != labels.astype(int)):
                item = (float(probs[i, pred[i]]), seen + int(i), int(labels[i]), int(pred[i]))
                entry = (*item, None if pixels is not None else _to_uint8(images[i]))
                if len(heap) < keep_worst:
                    heapq.heappush(heap, entry)
                elif item[0] > heap[0][0]:
                    heapq.heapreplace(heap, entry)
        seen += len(labels)
    width = len(classes)
    y_true = np.concatenate(y_parts) if y_parts else np.zeros((0,) + ((width,) if multi else ()))
    probs = np.concatenate(p_parts) if p_parts else np.zeros((0, width), "float32")
    if multi:
        metrics = {"task": "multi_label", **multilabel_metrics(y_true, probs, classes, threshold)}
    else:
        metrics = {"task": "single_label", **classification_metrics(y_true, probs, classes, top_k)}
    worst = [
        WorstError(
            index,
            true,
            pred,
            conf,
            _to_uint8(pixels(index)) if pixels is not None else image,
            None if paths is None else str(paths[index]),
        )
        for conf, index, true, pred, image in sorted(heap, key=lambda e: (-e[0], e[1]))
    ]
    return Evaluation(metrics, y_true, probs, worst, list(classes))


def evaluate_probabilities(
    y_true,
    probs: np.ndarray,
    classes: list[str],
    pixels: Callable[[int], np.ndarray],
    keep_worst: int = 16,
    paths: Sequence[str] | None = None,
) -> Evaluation:
    """An :class:`Evaluation` of single-label predictions made elsewhere (the linear
    probe's out-of-fold probabilities: each image predicted by a probe that did not
    train on it); ``pixels(i)`` reads the worst errors' images only."""
    y = np.asarray(y_true).astype(int).ravel()
    probs = np.asarray(probs, dtype="float32")
    metrics = {"task": "single_label", **classification_metrics(y, probs, classes)}
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y)
    confidence = probs[wrong, predicted[wrong]]
    order = wrong[np.lexsort((wrong, -confidence))][:keep_worst]
    worst = [
        WorstError(
            int(i),
            int(y[i]),
            int(predicted[i]),
            float(probs[i, predicted[i]]),
            _to_uint8(pixels(int(i))),
            None if paths is None else str(paths[i]),
        )
        for i in order
    ]
    return Evaluation(metrics, y, probs, worst, list(classes))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.asarray(image, dtype="float32"), 0, 255).round().astype("uint8")
    return image[..., 0] if image.shape[-1] == 1 else image


def summary_line(metrics: dict) -> str:
    """One line of the headline numbers, for logs and the CLI."""
    if metrics.get("task") == "multi_label":
        return (
            f"micro F1 {metrics['micro_f1']:.4f}  macro F1 {metrics['macro_f1']:.4f}  "
            f"subset accuracy {metrics['subset_accuracy']:.4f}  ({metrics['images']} images)"
        )
    if not metrics.get("images"):
        return "no images evaluated"
    parts = [f"accuracy {metrics['accuracy']:.4f}", f"loss {metrics['loss']:.4f}"]
    parts += [f"top-{k} {v:.4f}" for k, v in metrics.get("top_k_accuracy", {}).items()]
    parts += [f"macro F1 {metrics['macro_avg']['f1']:.4f}", f"ECE {metrics['ece']:.4f}"]
    line = "  ".join(parts) + f"  ({metrics['images']} images)"
    absent = metrics.get("absent_classes") or []
    if absent:
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        n = len(metrics.get("per_class") or {}) - len(absent)
        line += f"; macro F1 over the {n} classes present ({len(absent)} absent: {shown})"
    return line
