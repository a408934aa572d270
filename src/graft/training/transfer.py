"""Which layer transfers best: every candidate cut x pooling scored by the converged probe.

Where to cut a pre-trained model is the decision that matters most in feature extraction,
and transferability falls with depth at a rate that depends on the task (Yosinski et al.,
2014), so it is measured on the user's labelled images, as :mod:`graft.training.candidates`
measures scaling and pooling at one cut.

Candidates: the ends of the backbone's blocks (:mod:`graft.core.blocks`; at most
:data:`MAX_CUTS`, spread over depth) and the model's own output. **One forward pass per
image per scaling**: one multi-output model over every candidate layer
(:func:`graft.core.cutting.outputs_at`); each batch's maps are pooled at once (``avg``,
``max``, ``avgmax``, and ``flatten`` up to :data:`~graft.training.candidates.MAX_FLATTEN`
features; larger flattens are skipped and said so), so memory stays at images x features.

Score: the cross-validated accuracy of :func:`graft.training.probe.fit_probe` (its ``C``
chosen on the same folds). Choice: the best mean (ties: the lower log-loss, the deeper cut,
the fewer features); every candidate's standard error is recorded. Not the one-standard-
error rule with the fewest features that the issue proposed: on a few labelled images the
standard error spans most candidates and the fewest features are a shallow layer pooled to
a few numbers; measured on the few-shot bench's CNN (digits, 2 splits x 3 seeds, test
accuracy of each rule's pick, ``bench/results-cut-auto-cpu.md``) that rule gave 0.526 /
0.829 / 0.909 (0-4 -> 5-9) and 0.530 / 0.683 / 0.931 (even -> odd) at 2 / 4 / 10 labels per
class, the best mean 0.686 / 0.829 / 0.940 and 0.530 / 0.840 / 0.941 (even -> odd, 4
labels, one seed: block1_pool + avg 0.511 against block2_pool + flatten 0.873). Only the
images given are used: the caller passes the labelled (training) images, never a test
split.

Example:
    >>> result = measure_transfer(backbone.model, backbone.blocks, images, labels, folds)
    ...                                                               # doctest: +SKIP
    >>> result.cut, result.pool, result.line()                        # doctest: +SKIP
    ('block2_pool', 'flatten', 'cut: block2_pool + flatten (2048 features) by ...')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from graft.core import keras_compat
from graft.core.blocks import walk
from graft.core.cutting import outputs_at
from graft.training.candidates import (
    MAX_FLATTEN,
    POOLS_BY_RANK,
    feature_count,
    pool_features,
    pool_prior,
    scale_images,
)
from graft.training.probe import C_GRID, CVScore, fit_probe

#: At most this many block boundaries are candidates (plus the model's own output).
MAX_CUTS = 8
#: The name of the model's own output among the candidates.
OUTPUT = "output"


@dataclass(frozen=True)
class CutPoint:
    """A layer the backbone could end at.

    Attributes:
        path: The layer's path (``trunk/inner`` inside a nested model); the model's own
            output is the path of its last layer.
        depth: Position of the layer among the backbone's units (1 = first).
        shape: Its output shape without the batch axis.
        block: The block it ends (``OUTPUT`` for the model's own output).
    """

    path: str
    depth: int
    shape: tuple
    block: str


@dataclass(frozen=True)
class CutScore:
    """One (scaling, cut, pooling) candidate and its cross-validated probe score."""

    scaling: str
    cut: CutPoint
    pool: str
    features: int
    score: CVScore | None = None
    C: float | None = None
    skipped: str = ""

    @property
    def name(self) -> str:
        return f"{self.cut.path}+{self.pool}"

    def as_dict(self) -> dict:
        out = {
            "cut": self.cut.path,
            "block": self.cut.block,
            "depth": self.cut.depth,
            "shape": list(self.cut.shape),
            "scaling": self.scaling,
            "pool": self.pool,
            "features": self.features,
        }
        if self.score is not None:
            out.update(self.score.as_dict(), se=round(self.score.se, 4), C=self.C)
        if self.skipped:
            out["skipped"] = self.skipped
        return out


@dataclass(frozen=True)
class TransferResult:
    """What :func:`measure_transfer` found.

    Attributes:
        cut: Path of the chosen layer.
        pool: The chosen pooling.
        scaling: The scaling the choice was measured with.
        features: Features of the head's input at that cut and pooling.
        scores: Every candidate (measured or skipped), in the order measured.
        output: Path of the model's own output (the default cut).
        how: ``"measured"`` or ``"prior"`` (nothing could be cross-validated).
        protocol: The validation protocol line (:meth:`graft.data.folds.Folds.line`).
        forward_passes: Passes over the images (one per scaling).
        images: Labelled images the choice used.
        rule: The choice rule, in words.
    """

    cut: str
    pool: str
    scaling: str
    features: int
    scores: tuple[CutScore, ...] = ()
    output: str = ""
    how: str = "measured"
    protocol: str = ""
    forward_passes: int = 0
    images: int = 0
    rule: str = "best CV accuracy (ties: lower log-loss, deeper cut, fewer features)"
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def chosen(self) -> CutScore | None:
        for s in self.scores:
            if (s.cut.path, s.pool, s.scaling) == (self.cut, self.pool, self.scaling):
                return s
        return None

    @property
    def measured(self) -> tuple[CutScore, ...]:
        return tuple(s for s in self.scores if s.score is not None)

    def default(self) -> CutScore | None:
        """The best-scored pooling at the model's own output (the usual cut)."""
        at_output = [s for s in self.measured if s.cut.path == self.output]
        return max(at_output, key=lambda s: s.score.mean, default=None)

    def line(self) -> str:
        """One line for the log: the choice, its score and the default's."""
        text = f"cut: {self.cut} + {self.pool} ({self.features} features, {self.how})"
        if self.forward_passes > 1:  # the scaling was measured with the cut
            text += f", preprocess {self.scaling}"
        chosen, default = self.chosen, self.default()
        if chosen is not None and chosen.score is not None:
            text += f"; probe accuracy {chosen.score.text()}"
            if default is not None and default is not chosen:
                text += f" vs the model's output ({default.pool}) {default.score.text()}"
            text += f" over {len(self.measured)} candidates"
        return text

    def as_dict(self) -> dict:
        """For ``metrics.json``: the choice, the rule, and every score."""
        return {
            "cut": self.cut,
            "pool": self.pool,
            "scaling": self.scaling,
            "features": self.features,
            "how": self.how,
            "rule": self.rule,
            "output": self.output,
            "protocol": self.protocol,
            "forward_passes": self.forward_passes,
            "images": self.images,
            "notes": list(self.notes),
            "candidates": [s.as_dict() for s in self.scores],
        }


def candidate_cuts(
    model, found_blocks, max_cuts: int = MAX_CUTS, input_shape: Sequence | None = None
) -> list[CutPoint]:
    """Block ends (at most ``max_cuts``, spread evenly over depth) and the model's output;
    when the output is a global pooling of a map, that map too (its other poolings and
    flatten are candidates the pooled output hides: the issue's own table had the last
    map before the pooled output).

    A block end whose output is not one tensor of rank 2-4 (an image map, tokens or a
    vector) is not a candidate. ``input_shape`` (without the batch axis): the size the
    images are fed at, which gives the shapes of a model that takes any size.
    """
    walked = walk(model)
    depth_of = {id(layer): i + 1 for i, (_, layer) in enumerate(walked)}
    path_of = {id(layer): path for path, layer in walked}
    last_path, last_layer = walked[-1]
    output = CutPoint(last_path, len(walked), _shape(model.outputs[0]), OUTPUT)
    ends = []
    for block in found_blocks:
        layer = block.layers[-1]
        path = path_of.get(id(layer))
        if path is None or path == last_path:
            continue
        shape = _layer_shape(layer)
        if shape is None or not 1 <= len(shape) <= 3:
            continue
        ends.append(CutPoint(path, depth_of[id(layer)], shape, block.name))
    if len(ends) > max_cuts:
        keep = sorted({round(i) for i in np.linspace(0, len(ends) - 1, max_cuts)})
        ends = [ends[i] for i in keep]
    pooled = _pooled_map(last_layer)
    if pooled is not None and id(pooled) in path_of:
        path = path_of[id(pooled)]
        if path not in {c.path for c in ends}:
            ends.append(CutPoint(path, depth_of[id(pooled)], _layer_shape(pooled), OUTPUT_MAP))
    cuts = [*ends, output]
    if input_shape is not None and any(None in c.shape for c in cuts):
        cuts = _at_size(model, cuts, input_shape)
    return [c for c in cuts if None not in c.shape or c.block == OUTPUT]


#: Global poolings whose input map is a candidate when they are the model's output.
GLOBAL_POOLS = ("GlobalAveragePooling2D", "GlobalMaxPooling2D")
#: The ``block`` of that candidate.
OUTPUT_MAP = "map before the output's pooling"


def _pooled_map(layer):
    """The layer whose 4-D map ``layer`` (a global pooling) pools, else ``None``."""
    if type(layer).__name__ not in GLOBAL_POOLS:
        return None
    producer = keras_compat.producer(layer.input)
    shape = None if producer is None else _layer_shape(producer)
    return producer if shape is not None and len(shape) == 3 else None


def _at_size(model, cuts: list[CutPoint], input_shape: Sequence) -> list[CutPoint]:
    """``cuts`` with the shapes their layers give at ``input_shape`` (symbolically: no
    image is computed)."""
    import keras

    taps = outputs_at(model, [c.path for c in cuts])
    specs = taps.compute_output_spec(keras.KerasTensor((1, *input_shape)))
    specs = specs if isinstance(specs, (list, tuple)) else [specs]
    return [
        CutPoint(c.path, c.depth, tuple(int(d) for d in spec.shape[1:]), c.block)
        for c, spec in zip(cuts, specs)
    ]


def cut_pools(shape: Sequence, max_flatten: int = MAX_FLATTEN) -> tuple[list[str], list[str]]:
    """``(pools measured, pools skipped)`` at a layer of output ``shape``."""
    pools = list(POOLS_BY_RANK.get(len(shape) + 1, ()))
    skipped = [p for p in pools if p == "flatten" and math.prod(shape) > max_flatten]
    return [p for p in pools if p not in skipped], skipped


def measure_transfer(
    model,
    found_blocks,
    images,
    labels,
    folds,
    *,
    scalings: Sequence[str] = ("none",),
    cuts: Sequence[CutPoint] | None = None,
    num_classes: int | None = None,
    grid: tuple[float, ...] = C_GRID,
    max_cuts: int = MAX_CUTS,
    max_flatten: int = MAX_FLATTEN,
    batch_size: int = 32,
    seed: int = 0,
    forward: Callable | None = None,
) -> TransferResult:
    """Score every candidate cut x pooling (x scaling) on the labelled images.

    Args:
        model: The backbone (without graft's preprocessing: ``images`` are scaled here).
        found_blocks: Its blocks (the ``blocks`` of a :class:`graft.core.loaders.Backbone`).
        images: Raw 0-255 labelled images, NHWC, at the model's input size. Only these
            images are seen: pass the training images, never a test split.
        labels: Integer class per image.
        folds: :class:`graft.data.folds.Folds` over ``labels``; without splits the
            model's own output with :func:`~graft.training.candidates.pool_prior` is kept.
        scalings: Input scalings to measure (one forward pass each).
        cuts: Candidate layers (default: :func:`candidate_cuts`).
        num_classes: Classes (default ``max(labels) + 1``).
        grid: ``C`` values of the probe.
        max_cuts: Block ends considered at most.
        max_flatten: ``flatten`` only up to this many features.
        batch_size: Images per forward batch.
        seed: Seed of the probe.
        forward: ``forward(taps_model, scaled_batch) -> list of maps`` (default: the
            model called in inference mode); tests count the images through it.

    Returns:
        A frozen :class:`TransferResult`.
    """
    x = np.asarray(images, "float32")
    y = np.asarray(labels).astype("int64")
    num_classes = int(num_classes or y.max() + 1)
    cuts = list(cuts or candidate_cuts(model, found_blocks, max_cuts, x.shape[1:]))
    output = cuts[-1].path
    protocol = folds.line() if folds is not None else ""
    if folds is None or not folds.can_validate:
        pool = pool_prior(cuts[-1].shape, max_flatten)
        features = feature_count(cuts[-1].shape, pool)
        return TransferResult(
            output, pool, scalings[0], features, (), output, "prior", protocol, 0, len(y)
        )
    taps = outputs_at(model, [c.path for c in cuts])
    forward = forward or _call
    plan = [(c, *cut_pools(c.shape, max_flatten)) for c in cuts]
    notes = tuple(
        f"flatten skipped at {c.path}: {math.prod(c.shape)} features > {max_flatten}"
        for c, _, skipped in plan
        if skipped
    )
    scores: list[CutScore] = []
    for scaling in scalings:
        pooled = _pooled_features(taps, x, scaling, plan, forward, batch_size)
        for c, pools, skipped in plan:
            for pool in pools:
                probe = fit_probe(
                    pooled[c.path, pool], y, folds, num_classes=num_classes, grid=grid, seed=seed
                )
                features = pooled[c.path, pool].shape[1]
                scores.append(CutScore(scaling, c, pool, features, probe.cv, probe.C))
            for pool in skipped:
                reason = f"{feature_count(c.shape, pool)} features > {max_flatten}"
                scores.append(
                    CutScore(scaling, c, pool, feature_count(c.shape, pool), skipped=reason)
                )
    pick = choose(scores)
    return TransferResult(
        pick.cut.path,
        pick.pool,
        pick.scaling,
        pick.features,
        tuple(scores),
        output,
        "measured",
        protocol,
        len(scalings),
        len(y),
        notes=notes,
    )


def choose(scores: Sequence[CutScore]) -> CutScore:
    """The best cross-validated mean (ties: the lower log-loss, the deeper cut, the fewer
    features); the module docstring says why not the one-standard-error rule."""
    measured = [s for s in scores if s.score is not None]
    return max(measured, key=lambda s: (s.score.mean, -s.score.log_loss, s.cut.depth, -s.features))


def _pooled_features(taps, x, scaling, plan, forward, batch_size) -> dict:
    """``(path, pool) -> (images, features)``: one pass, each batch pooled at once."""
    channels = x.shape[-1]
    parts: dict = {}
    for start in range(0, len(x), batch_size):
        batch = scale_images(x[start : start + batch_size], scaling, channels)
        maps = forward(taps, batch)
        maps = maps if isinstance(maps, (list, tuple)) else [maps]
        for (c, pools, _), fmap in zip(plan, maps):
            fmap = np.asarray(fmap)
            for pool in pools:
                parts.setdefault((c.path, pool), []).append(pool_features(fmap, pool))
    return {key: np.concatenate(v).astype("float64") for key, v in parts.items()}


def _call(taps, batch):
    import keras

    # convert_to_numpy: torch refuses np.asarray on a tensor that requires grad
    return [keras.ops.convert_to_numpy(t) for t in _as_list(taps(batch, training=False))]


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _shape(tensor) -> tuple:
    return tuple(int(d) if d is not None else None for d in tensor.shape[1:])


def _layer_shape(layer) -> tuple | None:
    """The layer's output shape (``None`` when it has no single output)."""
    try:
        return _shape(layer.output)
    except (AttributeError, ValueError):
        return None
