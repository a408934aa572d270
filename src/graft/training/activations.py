"""The activation cache: fine-tune the top of a backbone on cached bottom activations.

A phase that trains only the top of the backbone (``blocks:N``, ``layers:N``,
``from:X``) leaves every layer below its lowest trainable layer frozen, and frozen
layers (BN in inference mode, no dropout) compute the same activation for the same
image in every epoch. graft computes that *bottom* once per image (raw image ->
in-model preprocessing -> backbone up to the *boundary*, the input of the lowest
trainable layer), streams it to disk, and trains a *top* model (boundary -> rest of the
backbone -> pooling -> head) on it. Both models are built from the full model's own layer
objects, so training the top trains the full model, and the saved ``model.keras`` is the
plain full model.

Exactly one tensor must cross the boundary. Where a skip connection also crosses it,
the boundary moves down to the nearest block edge that one tensor crosses (the layers in
between run frozen in the top, as without the cache); with none, there is no cache and
the run says why in one line. An entry is keyed by everything that determines it (data
content, the bottom's layers and weights, boundary, image size, dtype, view) and its
checksum is verified before use (:mod:`graft.training.store`). Entries are float16 when
the top's predictions on the first batch agree with float32 activations (:data:`PARITY`),
else float32. Training reads rows from disk batch by batch, so memory stays flat as the
dataset grows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from graft.core import keras_compat
from graft.core.blocks import Block, units
from graft.core.freezing import select
from graft.core.model import backbone_of, preprocess_layers
from graft.core.model_utils import forward_function, layer_key, weights_fingerprint
from graft.training import cache, distribute
from graft.training.feed import ACTIVATIONS, Inputs, entry_dataset
from graft.training.store import Entry, Float16Overflow, Store, open_store

#: Version of what a key describes (the files' own format: :data:`graft.training.store.FORMAT`).
KEY_VERSION = 1
#: Largest difference of the top's predicted probabilities (first batch) between float16
#: and float32 activations for which entries are stored as float16.
PARITY = 1e-3
#: ``None``: choose by :data:`PARITY`; ``"float32"``/``"float16"``: always that dtype.
DTYPE: str | None = None

_STOCHASTIC = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
)


@dataclass
class Boundary:
    """Where the bottom ends: ``index`` is the first top layer in ``backbone.layers``."""

    index: int
    layer: str
    tensor: object
    moved_from: str | None = None

    @property
    def shape(self) -> tuple:
        return tuple(int(d) for d in self.tensor.shape[1:])


def lowest_index(backbone: keras.Model, blocks: list[Block], spec) -> int | None:
    """Index in ``backbone.layers`` of the lowest layer ``spec`` trains; ``None`` when the
    spec trains nothing (``none``), everything (``all``) or a layer inside a nested model."""
    chosen = select(backbone, blocks, spec)
    if not chosen or len(chosen) == len(units(backbone)):
        return None
    index = {id(layer): i for i, layer in enumerate(backbone.layers)}
    found = [index.get(id(layer)) for layer in chosen]
    return None if None in found else min(found)


def _own_nodes(model: keras.Model) -> list:
    return keras_compat.graph_nodes(model)


def crossing(backbone: keras.Model, index: int) -> list:
    """The distinct tensors made below ``backbone.layers[index]`` and read at or above it."""
    below = {id(layer) for layer in backbone.layers[:index]}
    above = {id(layer) for layer in backbone.layers[index:]}
    found: dict[int, object] = {}
    for node in _own_nodes(backbone):
        if id(node.operation) not in above:
            continue
        for tensor in keras.tree.flatten(node.input_tensors):
            if id(keras_compat.producer(tensor)) in below:
                found[id(tensor)] = tensor
    if any(id(keras_compat.producer(t)) in below for t in backbone.outputs):
        found.update({id(t): t for t in backbone.outputs})
    return list(found.values())


def find_boundary(
    backbone: keras.Model, blocks: list[Block], index: int
) -> tuple[Boundary | None, str | None]:
    """The boundary below ``backbone.layers[index]``, moved down to the nearest block
    edge one tensor crosses if needed; ``(None, why)`` when there is none."""
    name = backbone.layers[index].name
    tensors = crossing(backbone, index)
    if len(tensors) == 1:
        return Boundary(index, name, tensors[0]), None
    position = {id(layer): i for i, layer in enumerate(backbone.layers)}
    edges = sorted(
        {position[id(b.layers[0])] for b in blocks if b.layers and id(b.layers[0]) in position},
        reverse=True,
    )
    for edge in (e for e in edges if 1 < e < index):
        tensors = crossing(backbone, edge)
        if len(tensors) == 1:
            return Boundary(edge, backbone.layers[edge].name, tensors[0], moved_from=name), None
    return None, (
        f"{len(crossing(backbone, index))} tensors cross the boundary below {name} "
        "(a skip connection) and no lower block edge is crossed by one tensor"
    )


def _preprocessed(model: keras.Model):
    layers = preprocess_layers(model)
    return layers[-1].output if layers else model.input


def bottom_model(model: keras.Model, boundary: Boundary) -> keras.Model:
    """Raw images -> the boundary activation (in-model preprocessing included)."""
    backbone = backbone_of(model)
    inner = keras.Model(backbone.input, boundary.tensor, name="graft_bottom_backbone")
    return keras.Model(model.input, inner(_preprocessed(model)), name="graft_bottom")


def top_model(model: keras.Model, boundary: Boundary) -> keras.Model:
    """The boundary activation -> probabilities, through the *same* layers as ``model``."""
    backbone = backbone_of(model)
    inner = keras.Model(boundary.tensor, backbone.output, name="graft_top_backbone")
    called = next(n for n in _own_nodes(model) if n.operation is backbone)
    after = keras.Model(called.output_tensors[0], model.output, name="graft_top_head")
    inputs = keras.Input(boundary.shape, name="activations")
    return keras.Model(inputs, after(inner(inputs)), name="graft_top")


def stochastic_bottom(model: keras.Model, boundary: Boundary) -> list[str]:
    """Layers of the bottom that act randomly in training (so cannot be cached)."""
    backbone = backbone_of(model)
    layers = [*preprocess_layers(model), *backbone.layers[: boundary.index]]
    return [
        x.name
        for layer in layers
        for x in keras_compat.sublayers(layer, include_self=True)
        if isinstance(x, _STOCHASTIC) or type(x).__name__.startswith("Random")
    ]


@dataclass
class ActivationCache:
    """What the trainer needs: the top model, its datasets, and the phases it serves."""

    top: keras.Model
    train: object
    val: object
    steps: int | None
    boundary: Boundary
    phases: set = field(default_factory=set)  # indices (1-based) of the phases it serves
    summary: dict = field(default_factory=dict)
    #: The model whose layers ``top`` shares, its bottom, and the digest of the bottom's
    #: weights when the activations were computed.
    source: keras.Model | None = None
    bottom: keras.Model | None = None
    bottom_weights: str | None = None
    #: The stored entries by ``(split, view)`` (``view`` ``None``: the plain images).
    entries: dict = field(default_factory=dict)

    def serves(self, index: int) -> bool:
        return index in self.phases

    def evaluator(self, model: keras.Model) -> tuple:
        """``(val_batches, top)`` to evaluate ``model`` on the cached validation
        activations, when they are still what its bottom computes (every phase left the
        bottom as it was); else ``()``."""
        if self.val is None or model is not self.source or self.bottom is None:
            return ()
        if weights_fingerprint(self.bottom) != self.bottom_weights:
            return ()
        return self.val, self.top

    def inputs(self) -> Inputs:
        """The top model and its datasets, for the phases this cache serves."""
        return Inputs(self.top, self.train, self.val, self.steps, ACTIVATIONS)


def cache_key(bottom: keras.Model, boundary: Boundary, source: str, content: str, view: str):
    """Everything that determines an entry: layers, weights, boundary, sizes, data, view."""
    layers = bottom.get_layer("graft_bottom_backbone").layers
    description = {
        "format": KEY_VERSION,
        "source": source,
        "layers": [layer_key(x) for x in [*bottom.layers[1:-1], *layers]],
        "boundary": [boundary.index, boundary.layer, list(boundary.shape)],
        "input": list(bottom.input_shape[1:]),
        "weights": weights_fingerprint(bottom),
        "content": content,
        "view": view,
        "keras": keras.__version__,
    }
    return cache.digest(description)


def choose_dtype(top: keras.Model, batch: np.ndarray) -> str:
    """float16 when the top's predictions on ``batch`` move by at most :data:`PARITY`."""
    if DTYPE is not None:
        return DTYPE
    if not np.isfinite(batch.astype("float16")).all():
        return "float32"
    # Called once per entry on one batch: eagerly (tracing a predict function costs more).
    full = keras.ops.convert_to_numpy(top(batch, training=False))
    half = keras.ops.convert_to_numpy(
        top(batch.astype("float16").astype("float32"), training=False)
    )
    return "float16" if float(np.abs(full - half).max()) <= PARITY else "float32"


def bottom_pass(bottom: keras.Model, images):
    """``bottom`` over a dataset of image batches, one float32 array per batch, through
    one function traced once for any batch size (train and val share it)."""
    forward = forward_function(bottom, getattr(images, "element_spec", None))
    for batch in images:
        with distribute.local():  # no data split: any batch size
            computed = np.asarray(forward(batch), dtype="float32")
        yield computed


def stream(store: Store, key: str, rows: int, batches, dtype):
    """Write ``batches()`` into entry ``key`` (``dtype``: a name, or a chooser of one on
    the first batch); a float16 entry that overflows on a later batch is written again
    as float32."""
    try:
        return store.write(key, rows, batches(), dtype)
    except Float16Overflow:
        return store.write(key, rows, batches(), "float32")


def plan(model: keras.Model, blocks: list[Block], phases) -> tuple:
    """The boundary of the deepest partial phase and the phases (1-based) that can use it.

    A phase that trains from a lower layer than the boundary cannot use it; so the
    boundary goes below the lowest trainable layer of every partial phase, and phases that
    train less run their extra frozen layers in the top (as without the cache).
    """
    backbone = backbone_of(model)
    if not keras_compat.has_graph(backbone):
        return None, set(), "the backbone is not a functional model"
    lows, changes = {}, []
    for i, phase in enumerate(phases, start=1):
        low = None if phase.backbone_frozen else lowest_index(backbone, blocks, phase.trainable)
        if low is not None and low > 1 and not phase.recalibrate_bn:
            lows[i] = low
        elif phase.recalibrate_bn or not phase.backbone_frozen:
            changes.append((i, 0))  # trains or re-estimates the whole backbone
    if not lows:
        return None, set(), None
    boundary, why = find_boundary(backbone, blocks, min(lows.values()))
    if boundary is None:
        return None, set(), why
    # The entry holds the bottom as it is before training: a phase that changes the
    # bottom (trains all of it, or re-estimates its BN) ends the phases that can use it.
    first = min((i for i, _ in changes), default=len(phases) + 1)
    served = {i for i, low in lows.items() if low >= boundary.index and i < first}
    if not served:
        return None, set(), f"phase {first} changes the frozen bottom before any phase uses it"
    return boundary, served, None


def cached_activations(model, bb, blocks, phases, splits, cfg, augment=None, log=print):
    """An :class:`ActivationCache` for the plan's partial fine-tuning phases, or ``None``
    (with a one-line note in ``log`` when a phase could have used one).

    Args:
        model: The grafted model.
        bb: Its :class:`graft.core.backbones.Backbone`.
        blocks: The backbone's blocks.
        phases: The plan.
        splits: ``{"train": DataAdapter, "val": DataAdapter or None}`` (files or arrays;
            see :class:`graft.data.adapter.DataAdapter`).
        cfg: The run's settings (``batch_size``, ``seed``, ``cache_dir``, ``cache_views``,
            ``augment``).
        augment: The training augmentation (``None``: none).
        log: Receives the run's lines.
    """
    boundary, served, why = plan(model, blocks, phases)
    if boundary is None:
        if why:
            log(f"Activation cache off: {why}.")
        return None
    views = cfg.cache_views if augment is not None else 0
    if augment is not None and not views:
        log(
            "Activation cache off: augmentation changes every training image in every epoch "
            "(cache_views=K caches K augmented views instead)."
        )
        return None
    bottom = bottom_model(model, boundary)
    noisy = stochastic_bottom(model, boundary)
    if noisy:
        log(
            f"Activation cache off: {', '.join(noisy[:3])} below the boundary act randomly "
            "in training."
        )
        return None
    top = top_model(model, boundary)
    root = Path(cfg.cache_dir) if cfg.cache_dir else cache.default_dir().parent
    store = open_store(root / "activations")
    bs = cfg.batch_size
    chosen: dict = {}
    hits: list[bool] = []

    def entry(split, view=None) -> Entry:
        content = cache.split_fingerprint(split)
        tag = cache.view_tag(cfg, view)
        key = cache_key(bottom, boundary, bb.source, content, tag)
        rows = len(cache.split_labels(split))
        found, problem = store.find(key, rows, boundary.shape)
        hits.append(found is not None)
        if found is None:
            # One bottom pass in large batches (inference only; the batch size is no
            # setting); the float16/float32 choice is made once, on the first entry.
            aug = None if view is None else augment
            images = cache.split_images(split, bb, max(bs, 64), aug, (cfg.seed, view or 0))
            dtype = chosen.get("dtype") or (lambda batch: choose_dtype(top, batch))
            found = stream(store, key, rows, lambda: bottom_pass(bottom, images), dtype)
        chosen.setdefault("dtype", found.dtype)
        if problem:
            log(f"Activation cache: entry {found.path.name} recomputed: {problem}")
        return found

    try:
        train, val = splits["train"], splits["val"]
        labels = cache.split_labels(train)
        if views:
            entries = [entry(train, v) for v in range(views)]
            # Epoch e trains on view e mod views (graft's epoch order).
            train_ds = entry_dataset(entries, labels, bs, True, cfg.seed)
            steps = None  # the reader knows its batches per epoch
        else:
            entries = [entry(train)]
            train_ds, steps = entry_dataset(entries[0], labels, bs, True, cfg.seed), None
        named = {("train", v if views else None): e for v, e in enumerate(entries)}
        val_ds = None
        if val is not None:
            entries.append(entry(val))
            val_ds = entry_dataset(entries[-1], cache.split_labels(val), bs)
            named["val", None] = entries[-1]
    except OSError as exc:  # a read-only or full cache disk costs speed, not the run
        log(f"Activation cache off: cannot write its entries ({exc.strerror or exc}).")
        return None
    summary = _summary(boundary, entries, phases, served, all(hits))
    log(_line(summary, all(hits)))
    weights = weights_fingerprint(bottom)
    return ActivationCache(
        top, train_ds, val_ds, steps, boundary, served, summary, model, bottom, weights, named
    )


def _summary(boundary: Boundary, entries: list[Entry], phases, served: set, hit: bool) -> dict:
    epochs = sum(phases[i - 1].epochs for i in served)
    one_pass = sum(e.seconds for e in entries)  # the bottom over every image, once
    spent = 0.0 if hit else one_pass
    return {
        "boundary": boundary.layer,
        "moved_from": boundary.moved_from,
        "bottom_layers": boundary.index - 1,
        "shape": list(boundary.shape),
        "dtype": entries[0].dtype,
        "images": sum(e.rows for e in entries),
        "bytes": sum(e.bytes for e in entries),
        "phases": sorted(served),
        "epochs": epochs,
        # Wall-clock only (0 spent: the entries were reused): the bottom's pass over
        # every image, what this run spent on it, and about what it saved.
        "seconds": {
            "one_pass": round(one_pass, 2),
            "spent": round(spent, 2),
            "saved_estimate": round(max(one_pass * epochs - spent, 0.0), 2),
        },
    }


def _line(s: dict, hit: bool) -> str:
    moved = f" (moved down from {s['moved_from']}: a skip connection)" if s["moved_from"] else ""
    phases = ", ".join(map(str, s["phases"]))
    seconds = s["seconds"]
    done = "reused" if hit else f"computed in {seconds['spent']:.1f} s"
    return (
        f"Activation cache: boundary at the input of {s['boundary']}{moved}, "
        f"{_count(s['bottom_layers'], 'frozen layer')} cached as {tuple(s['shape'])} {s['dtype']}; "
        f"{done} for {s['images']} images ({s['bytes'] / 1e6:.1f} MB); phase(s) {phases} "
        f"train on it over {s['epochs']} epochs"
    )  # no time "saved": that would need the run without the cache, which is not measured


def _count(n: int, noun: str) -> str:
    """``1 frozen layer``, ``2 frozen layers``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
