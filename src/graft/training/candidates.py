"""Input scaling and pooling chosen by measurement on the user's labelled images.

A model file rarely says how its input was scaled, and nothing says which pooling of a
small feature map transfers best. Where the model's own evidence is clear (a scaling
layer, or BatchNormalization statistics that single out one scaling:
:func:`graft.core.scaling.infer`) that evidence decides the scaling and nothing is
searched. Otherwise every remaining candidate is measured: the cross-validated accuracy
of the converged linear probe (:mod:`graft.training.probe`) on the features it gives.

Cost: **one forward pass per scaling candidate** over the labelled images; the pooling
variants (``avg``, ``max``, ``avgmax``, ``flatten`` up to :data:`MAX_FLATTEN` features;
``mean``/``cls``/``flatten`` for tokens) are computed from that one feature map in NumPy,
exactly as the Keras pooling layers of :func:`graft.core.model.pooling_layers` compute
them, so a probe fitted here can be written into the grafted model's head.

The choice: the best mean accuracy; among the candidates within one standard error of
the best, the one with the fewest features (then the higher mean, then the lower
cross-validated log-loss, which separates candidates that classify every held-out image
right but with different confidence). The candidate the BN
evidence ranks worst is never measured, so never chosen. When nothing can be
cross-validated (a class with one image) the priors decide: scaling by evidence (its best
candidate even when not clear; ``none`` without any), pooling by :func:`pool_prior`.

Example:
    >>> choice = choose_inputs(backbone, images, labels, folds)   # doctest: +SKIP
    >>> choice.scaling, choice.pool, choice.line()                  # doctest: +SKIP
    ('symmetric', 'flatten', 'inputs: symmetric + flatten (2048 features) by 2-fold CV ...')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from graft.core import scaling as scaling_evidence
from graft.core.preprocessing import MODES, preprocessing_layers
from graft.training import distribute
from graft.training.probe import C_GRID, CVScore, cross_validate, fold_designs, small_blas

#: ``flatten`` is a candidate only up to this many features.
MAX_FLATTEN = 8192
#: Maps with at most this many positions are "small": flatten is the prior there.
SMALL_MAP = 16
POOLS_BY_RANK = {
    4: ("avg", "max", "avgmax", "flatten"),
    3: ("mean", "cls", "flatten"),
    2: ("identity",),
}


@dataclass(frozen=True)
class Candidate:
    """One (scaling, pooling) pair and its cross-validated probe score."""

    scaling: str
    pool: str
    features: int
    score: CVScore | None
    C: float | None = None

    @property
    def name(self) -> str:
        return f"{self.scaling}+{self.pool}"

    def as_dict(self) -> dict:
        out = {"scaling": self.scaling, "pool": self.pool, "features": self.features}
        if self.score is not None:
            out.update(self.score.as_dict(), C=self.C)
        return out


@dataclass(frozen=True)
class InputChoice:
    """What :func:`choose_inputs` decided, and on what.

    Attributes:
        scaling: The chosen input scaling (a :data:`~graft.core.preprocessing.MODES` name).
        pool: The chosen pooling (a :data:`graft.config.names.POOLS` name).
        features: Features of the head's input with that pooling.
        candidates: Every measured candidate, best first (empty when not measured).
        evidence: :meth:`graft.core.scaling.Evidence.as_dict` (or ``None`` when the scaling
            was given).
        how: ``"measured"``, ``"evidence"``, ``"given"`` or ``"prior"`` for scaling and
            pooling: ``{"scaling": ..., "pool": ...}``.
        protocol: The validation protocol line (:meth:`graft.data.folds.Folds.line`).
        forward_passes: Forward passes over the images that the measurement took.
    """

    scaling: str
    pool: str
    features: int
    candidates: tuple[Candidate, ...] = ()
    evidence: dict | None = None
    how: dict = field(default_factory=dict)
    protocol: str = ""
    forward_passes: int = 0

    @property
    def best(self) -> Candidate | None:
        for c in self.candidates:
            if c.scaling == self.scaling and c.pool == self.pool:
                return c
        return None

    def line(self) -> str:
        """One line: the choice, how, and its score against the runner-up."""
        text = (
            f"inputs: preprocess {self.scaling} ({self.how.get('scaling')}), "
            f"pool {self.pool} ({self.how.get('pool')}, {self.features} features)"
        )
        best = self.best
        if best is not None and best.score is not None:
            others = [c for c in self.candidates if c is not best][:2]
            text += f"; probe accuracy {best.score.text()}"
            if others:
                text += " vs " + ", ".join(f"{c.name} {c.score.text()}" for c in others)
        return text

    def as_dict(self) -> dict:
        """For ``metrics.json``: the choice, how it was made, and every score."""
        return {
            "scaling": self.scaling,
            "pool": self.pool,
            "features": self.features,
            "how": dict(self.how),
            "protocol": self.protocol,
            "forward_passes": self.forward_passes,
            "evidence": self.evidence,
            "candidates": [c.as_dict() for c in self.candidates],
        }


def pool_features(feature_map: np.ndarray, pool: str) -> np.ndarray:
    """``(images, features)`` from a backbone output, as the Keras layer of ``pool`` would.

    4-D maps: ``avg``/``max`` (global, over height and width), ``avgmax`` (avg then max,
    concatenated), ``flatten`` (row-major, as ``keras.layers.Flatten``). 3-D tokens:
    ``mean`` (patch tokens: all but token 0, unless there is a single token), ``cls``,
    ``flatten``. 2-D: ``identity``.
    """
    x = np.asarray(feature_map)
    n = len(x)
    if x.ndim == 4:
        if pool == "avg":
            return x.mean(axis=(1, 2))
        if pool == "max":
            return x.max(axis=(1, 2))
        if pool == "avgmax":
            return np.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=1)
    if x.ndim == 3:
        if pool == "cls" or (pool == "mean" and x.shape[1] == 1):
            return x[:, 0]
        if pool == "mean":
            return x[:, 1:].mean(axis=1)
    if pool == "flatten" and x.ndim > 2:
        return x.reshape(n, -1)
    if pool == "identity" and x.ndim == 2:
        return x
    raise ValueError(f"pool={pool!r} does not apply to a backbone output of shape {x.shape[1:]}.")


def pool_candidates(shape: Sequence, max_flatten: int = MAX_FLATTEN) -> tuple[str, ...]:
    """The pooling candidates of a backbone output of ``shape`` (no batch axis)."""
    shape = tuple(shape)
    pools = POOLS_BY_RANK.get(len(shape) + 1, ())
    if "flatten" in pools and (None in shape or math.prod(shape) > max_flatten):
        pools = tuple(p for p in pools if p != "flatten")
    return pools


def pool_prior(shape: Sequence, max_flatten: int = MAX_FLATTEN) -> str:
    """The pooling used without measurement: ``flatten`` for a small map (at most
    :data:`SMALL_MAP` positions and :data:`MAX_FLATTEN` features), where global pooling
    throws away where things are (the issue measured 0.46 -> 0.95 on a 4x4 map and
    0.41 -> 0.93 on a 3x3 one); else the first candidate (``avg``, ``mean``, ``identity``)."""
    shape = tuple(shape)
    pools = pool_candidates(shape, max_flatten)
    if len(shape) == 3 and "flatten" in pools and shape[0] * shape[1] <= SMALL_MAP:
        return "flatten"
    return pools[0]


def feature_count(shape: Sequence, pool: str) -> int:
    shape = tuple(shape)
    if pool == "flatten":
        return math.prod(shape)
    if pool == "avgmax":
        return 2 * shape[-1]
    return shape[-1]


def choose_inputs(
    backbone,
    images,
    labels,
    folds,
    *,
    scaling: str | None = None,
    pool: str | None = None,
    scalings: Sequence[str] | None = None,
    pools: Sequence[str] | None = None,
    num_classes: int | None = None,
    grid: tuple[float, ...] = C_GRID,
    max_flatten: int = MAX_FLATTEN,
    batch_size: int = 64,
    evidence=None,
    forward: Callable | None = None,
) -> InputChoice:
    """Choose the input scaling and pooling of ``backbone`` for these labelled images.

    Args:
        backbone: The cut backbone, a ``keras.Model`` taking scaled images (no graft
            preprocessing in front), with one output.
        images: Raw 0-255 labelled images, NHWC, at the backbone's input size.
        labels: Integer class per image.
        folds: :class:`graft.data.folds.Folds` over ``labels``; without splits the priors
            decide.
        scaling: A scaling the user gave (not searched).
        pool: A pooling the user gave (not searched).
        scalings: Scaling candidates (default: every mode that applies to the channels).
        pools: Pooling candidates (default: :func:`pool_candidates`).
        num_classes: Classes of the head (default ``max(labels) + 1``).
        grid: ``C`` values of the probe; each candidate is scored at its best ``C``.
        max_flatten: ``flatten`` only up to this many features.
        batch_size: Images per forward batch.
        evidence: A precomputed :class:`graft.core.scaling.Evidence` (default: inferred).
        forward: ``forward(backbone, scaled_images) -> feature map`` (default: batched
            ``backbone.predict``); tests count passes through it.

    Returns:
        A frozen :class:`InputChoice`.
    """
    x = np.asarray(images, "float32")
    y = np.asarray(labels).astype("int64")
    channels = x.shape[-1]
    num_classes = int(num_classes or y.max() + 1)
    forward = forward or _predict(batch_size)
    how: dict = {}
    ev = None
    can_measure = folds is not None and folds.can_validate
    if scaling is not None:
        modes, how["scaling"] = [scaling], "given"
    else:
        ev = evidence if evidence is not None else scaling_evidence.infer(backbone, x, channels)
        applicable = [
            m for m in (scalings or MODES) if channels == 3 or m not in ("caffe", "torch")
        ]
        if ev.clear:
            modes, how["scaling"] = [ev.choice], "evidence"
        else:
            modes = _without_worst(applicable, ev.scores)
            how["scaling"] = "measured" if len(modes) > 1 and can_measure else "prior"
    protocol = folds.line() if folds is not None else ""
    evidence_dict = None if ev is None else ev.as_dict()
    if not can_measure and len(modes) > 1:
        # Priors: the evidence's best candidate, else "none" (graft's default for a file).
        ranked = sorted(modes, key=lambda m: ev.scores.get(m, math.inf)) if ev and ev.scores else []
        modes = [ranked[0] if ranked else ("none" if "none" in modes else modes[0])]
    first = None
    shape = _output_shape(backbone)
    if shape is None:  # unknown until a pass: the first candidate's map gives it
        first = np.asarray(forward(backbone, scale_images(x, modes[0], channels)))
        shape = first.shape[1:]
    if pool is not None:
        pool_list, how["pool"] = [pool], "given"
    else:
        pool_list = list(pools or pool_candidates(shape, max_flatten))
        how["pool"] = "measured" if len(pool_list) > 1 and can_measure else "prior"
        if not can_measure:
            pool_list = [pool_prior(shape, max_flatten)]
    if len(modes) == 1 and len(pool_list) == 1 or not can_measure:
        mode, chosen = modes[0], pool_list[0]
        passes = int(first is not None)
        count = feature_count(shape, chosen)
        return InputChoice(mode, chosen, count, (), evidence_dict, how, protocol, passes)
    measured = []
    for i, mode in enumerate(modes):
        # One pass per scaling; every pooling from its map, which is dropped before the next.
        fmap = first if i == 0 and first is not None else None
        if fmap is None:
            fmap = np.asarray(forward(backbone, scale_images(x, mode, channels)))
        for p in pool_list:
            feats = pool_features(fmap, p).astype("float64")
            best_c, best = None, None
            with small_blas(feats):
                designs = fold_designs(feats, folds.splits)
            for c in grid:
                with small_blas(feats):
                    score, _ = cross_validate(feats, y, folds.splits, c, num_classes, 0, designs)
                if best is None or (score.mean, -score.log_loss) > (best.mean, -best.log_loss):
                    best_c, best = c, score
            measured.append(Candidate(mode, p, feats.shape[1], best, best_c))
        del fmap
    ranked = sorted(measured, key=lambda c: (-c.score.mean, c.score.log_loss, c.features))
    top = ranked[0]
    near = [c for c in ranked if c.score.mean >= top.score.mean - top.score.se - 1e-12]
    pick = min(near, key=lambda c: (c.features, -c.score.mean, c.score.log_loss))
    ordered = (pick, *[c for c in ranked if c is not pick])
    return InputChoice(
        pick.scaling, pick.pool, pick.features, ordered, evidence_dict, how, protocol, len(modes)
    )


def _output_shape(model) -> tuple | None:
    """The backbone's output shape without the batch axis (``None`` if not fully known)."""
    try:
        shape = tuple(model.outputs[0].shape[1:])
    except (AttributeError, IndexError, ValueError):
        return None
    return None if None in shape else shape


def _without_worst(modes: list[str], scores: dict) -> list[str]:
    """``modes`` less the one the BN evidence ranks worst (when there is evidence)."""
    scored = [m for m in modes if m in scores]
    if len(scored) < 2:
        return modes
    worst = max(scored, key=lambda m: scores[m])
    return [m for m in modes if m != worst]


def scale_images(x: np.ndarray, mode: str, channels: int) -> np.ndarray:
    """Raw 0-255 images scaled as ``mode`` (graft's preprocessing layers, in NumPy)."""
    out = x
    for layer in preprocessing_layers(mode, channels):
        out = np.asarray(layer(out))
    return out


def _predict(batch_size: int) -> Callable:
    def forward(model, x):
        with distribute.local():  # no data split: any number of images
            return model.predict(x, batch_size=batch_size, verbose=0)

    return forward
