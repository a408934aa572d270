"""Which labelled images validate which decision: a hold-out, k-fold, or nothing.

A policy over labels and a seed, nothing else (no images, no model): pure and
deterministic, so a resumed run draws the same folds.

``val_split="auto"`` (the few-shot-aware default):

- a **stratified hold-out** of :data:`HOLDOUT_FRACTION` only when it leaves at least
  :data:`MIN_VAL_PER_CLASS` validation images in *every* class (one image is then worth at
  most 1/5 of a class's score, and the hold-out is large enough to choose on);
- otherwise **stratified k-fold** with ``k = min(5, smallest class count)``, repeated with
  fresh shuffles until there are at least :data:`MIN_SCORES` fold scores (``k=2`` -> 5
  repeats), so every estimate is a mean over enough scores to have a standard deviation;
- a class with a **single image** cannot be cross-validated (it would have to be in the
  training and the validation part at once): ``kind="none"`` with the reason, and the
  caller uses its priors.

An explicit fraction (``val_split=0.2``) is obeyed as a stratified hold-out; ``0`` means
no validation.

Example:
    >>> folds = plan_folds([0, 0, 1, 1, 1, 2, 2], seed=0)
    >>> folds.kind, folds.k, folds.repeats, len(folds.splits)
    ('kfold', 2, 5, 10)
    >>> folds.line()  # doctest: +ELLIPSIS
    'validation: 2-fold cross-validation repeated 5 times (10 scores) ...'
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

#: The hold-out fraction ``val_split="auto"`` uses when the data is large enough.
HOLDOUT_FRACTION = 0.2
#: A hold-out must leave at least this many validation images in every class.
MIN_VAL_PER_CLASS = 5
#: At most this many folds.
MAX_FOLDS = 5
#: Repeat k-fold until at least this many fold scores make one estimate.
MIN_SCORES = 10

KINDS = ("holdout", "kfold", "none")


@dataclass(frozen=True)
class Folds:
    """The validation protocol drawn for one set of labels.

    Attributes:
        kind: ``"holdout"``, ``"kfold"`` or ``"none"`` (nothing can be validated).
        splits: ``(train_indices, val_indices)`` pairs (sorted int arrays into the labels);
            one pair for a hold-out, ``k * repeats`` for k-fold, none for ``"none"``.
        k: Folds per repeat (1 for a hold-out, 0 for none).
        repeats: Repeats of the k-fold (1 for a hold-out, 0 for none).
        reason: Why this protocol (one sentence, no newline).
        seed: The seed the splits were drawn with.
    """

    kind: str
    splits: tuple[tuple[np.ndarray, np.ndarray], ...]
    k: int
    repeats: int
    reason: str
    seed: int = 0

    @property
    def can_validate(self) -> bool:
        return bool(self.splits)

    @property
    def cross_validated(self) -> bool:
        return self.kind == "kfold"

    def line(self) -> str:
        """One line for the log: what was done and why."""
        if self.kind == "none":
            return f"validation: none; {self.reason}"
        if self.kind == "holdout":
            n = len(self.splits[0][1])
            return f"validation: stratified hold-out of {n} images; {self.reason}"
        scores = len(self.splits)
        repeated = f" repeated {self.repeats} times" if self.repeats > 1 else ""
        return (
            f"validation: {self.k}-fold cross-validation{repeated} ({scores} scores) "
            f"then refit on all labelled images; {self.reason}"
        )

    def as_dict(self) -> dict:
        """For ``metrics.json`` / ``config.yaml`` (no index arrays: they follow from the seed)."""
        return {
            "kind": self.kind,
            "k": self.k,
            "repeats": self.repeats,
            "scores": len(self.splits),
            "seed": self.seed,
            "reason": self.reason,
        }


def plan_folds(
    labels,
    seed: int = 0,
    val_split: float | str = "auto",
    *,
    min_val_per_class: int = MIN_VAL_PER_CLASS,
    min_scores: int = MIN_SCORES,
    max_folds: int = MAX_FOLDS,
) -> Folds:
    """Draw the validation protocol for ``labels`` (see the module docstring).

    Args:
        labels: One class label per labelled image (ints or strings).
        seed: Seed of every shuffle; the same labels and seed give the same folds.
        val_split: ``"auto"``, or a fraction in ``[0, 1)`` obeyed as a stratified hold-out
            (``0``: no validation).
        min_val_per_class: The hold-out threshold of ``"auto"``.
        min_scores: Fold scores an estimate needs; k-fold is repeated up to it.
        max_folds: The most folds per repeat.

    Returns:
        A frozen :class:`Folds`.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one label per image (1-D). Received: shape {y.shape}")
    counts = Counter(y.tolist())
    if isinstance(val_split, str):
        if val_split != "auto":
            raise ValueError(
                f"Invalid val_split: {val_split!r}. Expected 'auto' or a fraction in [0, 1)."
            )
    elif not 0 <= float(val_split) < 1:
        raise ValueError(
            f"Invalid val_split: {val_split!r}. Expected 'auto' or a fraction in [0, 1)."
        )
    if val_split == 0 or val_split == 0.0:
        return Folds("none", (), 0, 0, "val_split 0 was given", seed)
    if len(counts) < 2:
        return Folds("none", (), 0, 0, "fewer than 2 classes: there is nothing to score", seed)
    smallest_class, smallest = min(counts.items(), key=lambda kv: (kv[1], str(kv[0])))
    if val_split != "auto":
        return _holdout(y, float(val_split), seed, f"val_split {val_split} was given")
    per_class_val = {c: round(HOLDOUT_FRACTION * n) for c, n in counts.items()}
    if min(per_class_val.values()) >= min_val_per_class:
        return _holdout(
            y,
            HOLDOUT_FRACTION,
            seed,
            f"every class keeps >= {min_val_per_class} validation images "
            f"(smallest class {smallest_class!r}: {smallest} images)",
        )
    if smallest < 2:
        return Folds(
            "none",
            (),
            0,
            0,
            f"class {smallest_class!r} has 1 labelled image, so nothing can be cross-validated "
            "(an image cannot be in the training and the validation part at once): "
            "priors are used instead of measurement",
            seed,
        )
    k = min(max_folds, smallest)
    repeats = max(1, math.ceil(min_scores / k))
    splits = []
    for r in range(repeats):
        splits.extend(_kfold(y, k, _mix(seed, r)))
    reason = (
        f"a hold-out would leave fewer than {min_val_per_class} validation images in class "
        f"{smallest_class!r} ({smallest} images)"
    )
    return Folds("kfold", tuple(splits), k, repeats, reason, seed)


def _mix(seed: int, repeat: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(repeat)])


def _holdout(y: np.ndarray, fraction: float, seed: int, reason: str) -> Folds:
    """Per class: a shuffled ``round(fraction * n)`` to validation, at least one kept for
    training."""
    rng = _mix(seed, 0)
    val = []
    for c in _classes(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_val = min(len(idx) - 1, round(fraction * len(idx)))
        val.extend(idx[:n_val].tolist())
    val_idx = np.array(sorted(val), dtype="int64")
    train_idx = np.setdiff1d(np.arange(len(y)), val_idx).astype("int64")
    return Folds("holdout", ((train_idx, val_idx),), 1, 1, reason, seed)


def _kfold(y: np.ndarray, k: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold: each class shuffled and dealt round-robin into the k folds,
    starting where the previous class stopped so fold sizes stay within one image."""
    fold_of = np.empty(len(y), dtype="int64")
    start = 0
    for c in _classes(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        fold_of[idx] = (start + np.arange(len(idx))) % k
        start = (start + len(idx)) % k
    out = []
    for f in range(k):
        val_idx = np.flatnonzero(fold_of == f)
        out.append((np.flatnonzero(fold_of != f), val_idx))
    return out


def _classes(y: np.ndarray) -> list:
    """Classes in a stable order (sorted by their string form, so mixed types work)."""
    return sorted(set(y.tolist()), key=str)
