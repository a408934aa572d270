"""Group a backbone's layers into blocks: the natural units to freeze and unfreeze.

The *units* of a backbone are its layers with nested sub-models expanded: a model
inside the backbone (at any depth) contributes its own layers, and a layer that holds a
stack of repeated composite layers (a transformer encoder's layers) contributes each of
them. Every unit has a *path* (``middle/inner/inner_conv``; a top-level layer's path is
its name), and blocks are contiguous runs of units in model order.

A :class:`BlockRule` is a short list of ``(regex, template)`` anchors. A unit whose name
matches an anchor belongs to the block the template names (``{0}`` is the first regex
group, ``{name}`` the unit's name). A unit that matches nothing (Inception's auto-named
``conv2d_17``, an ``add`` or an ``activation``) joins the block of the next anchored
unit (``attach="next"``) or of the previous one (``attach="previous"``).

Models graft has no rule for get :func:`fallback_blocks`: names such as
``block3_conv``/``stage2_...`` if most weighted units follow that pattern; else a block
ends after every merge (``Add``, ``Concatenate``, ...) or downsampling pooling layer, so a residual
module is one block; each member of a transformer stack is one block; a nested model
starts its own blocks; a run of units holding only normalization weights joins the block
before it. A model with no such boundaries gets one block per weighted layer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

import keras

from graft.core import keras_compat

SEP = "/"  # separates a nested model's name from its layers' names in a unit path


@dataclass(frozen=True)
class BlockRule:
    """How to name the blocks of one architecture family."""

    anchors: tuple[tuple[str, str], ...]
    attach: Literal["next", "previous"] = "next"
    #: An unanchored normalization layer right after a weighted unit joins that unit's
    #: block (``conv1``/``bn1`` naming: the BN must not start the next block).
    norm_follows: bool = False


@dataclass
class Block:
    """One block of a backbone: a name and its units (layers), in model order."""

    name: str
    layers: list = field(default_factory=list)

    @property
    def param_count(self) -> int:
        return count_params(w for layer in self.layers for w in layer.weights)

    def __repr__(self) -> str:
        return f"Block({self.name!r}, layers={len(self.layers)}, params={self.param_count:,})"


def count_params(weights) -> int:
    """Number of scalars in an iterable of variables."""
    return int(sum(math.prod(int(d) for d in w.shape) for w in weights))


def units(model: keras.Model) -> list:
    """The model's top-level layers, without input layers."""
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def children(layer) -> list:
    """The direct sub-units of a container (a model, or a layer holding a stack)."""
    if isinstance(layer, keras.Model):
        return units(layer)
    return keras_compat.sublayers(layer, recursive=False)


def _composite(layer) -> bool:
    return bool(keras_compat.sublayers(layer, recursive=False))


def stack_members(layer) -> list:
    """Members of a stack of repeated composite layers held by ``layer`` (else ``[]``).

    A transformer encoder holding ``transformer_block_1..N`` (or ``layers_0..N``) is a
    stack: two or more direct sub-layers of one class, each made of layers itself.
    """
    if isinstance(layer, keras.Model):
        return []
    subs = children(layer)
    by_class: dict[type, list] = {}
    for sub in subs:
        if sub.weights and _composite(sub):
            by_class.setdefault(type(sub), []).append(sub)
    members = max(by_class.values(), key=len, default=[])
    return members if len(members) >= 2 else []


def is_container(layer) -> bool:
    """Whether graft expands ``layer`` into its own units (a nested model or a stack)."""
    return isinstance(layer, keras.Model) or bool(stack_members(layer))


def walk(model: keras.Model) -> list[tuple[str, object]]:
    """``(path, unit)`` for every unit of ``model``, nested containers expanded, in order."""
    found: list[tuple[str, object]] = []

    def visit(container, prefix: str) -> None:
        for layer in children(container):
            path = f"{prefix}{layer.name}"
            if is_container(layer):
                visit(layer, path + SEP)
            else:
                found.append((path, layer))

    visit(model, "")
    return found


def leaf_units(model: keras.Model) -> list:
    """Every unit of ``model`` (see :func:`walk`), without paths."""
    return [layer for _, layer in walk(model)]


def containers(model: keras.Model) -> dict[str, list]:
    """Path of every nested container -> its units, in order."""
    found: dict[str, list] = {}
    for path, layer in walk(model):
        parts = path.split(SEP)
        for depth in range(1, len(parts)):
            found.setdefault(SEP.join(parts[:depth]), []).append(layer)
    return found


def group(model: keras.Model, rule: BlockRule | None = None) -> list[Block]:
    """Split ``model``'s units into contiguous blocks, in model order.

    Args:
        model: A functional or sequential Keras model.
        rule: The architecture's rule; ``None`` uses :func:`fallback_blocks`.

    Returns:
        Blocks from the input side to the output side. Every unit is in exactly one block.
    """
    if rule is None:
        return fallback_blocks(model)
    layers = leaf_units(model)
    compiled = [(re.compile(pattern), template) for pattern, template in rule.anchors]
    labels: list[str | None] = []
    for layer in layers:
        label = None
        for pattern, template in compiled:
            match = pattern.search(layer.name)
            if match:
                label = template.format(*match.groups(), name=layer.name)
                break
        labels.append(label)
    if rule.norm_follows:
        _norms_follow(labels, layers)
    if not any(labels):  # no layer name matches the family's rule: one block, not none
        labels = [model.name] * len(layers)
    order = range(len(labels) - 1, -1, -1) if rule.attach == "next" else range(len(labels))
    _fill(labels, order)
    _fill(labels, reversed(list(order)))  # leading/trailing layers with no anchor beyond them
    return _blocks(zip(labels, layers))


def _norms_follow(labels: list, layers: list) -> None:
    """Give an unlabelled normalization layer the label of the weighted unit before it."""
    for i in range(1, len(layers)):
        previous = layers[i - 1]
        if (
            labels[i] is None
            and labels[i - 1] is not None
            and isinstance(layers[i], _NORMALIZATION)
            and previous.weights
            and not isinstance(previous, _NORMALIZATION)
        ):
            labels[i] = labels[i - 1]


def restrict(found: list[Block], uncut: keras.Model, model: keras.Model) -> list[Block]:
    """The blocks of ``model``, a cut of ``uncut``: ``found`` (``uncut``'s blocks) keeping
    only the units of ``model``, matched by path, so the cut's blocks are exactly a prefix of the
    uncut model's (the last one possibly shortened), whatever the cut.

    Grouping the cut model afresh would not do: a naming convention, a fork or a trailing
    layer can read differently once the layers after the cut are gone.
    """
    by_path = dict(walk(model))
    # A unit of a nested container keeps its path: the cut rebuilds the container under
    # the same name (and a re-initialised clone keeps every name).
    path_of = {id(layer): path for path, layer in walk(uncut)}
    out = []
    for block in found:
        paths = (path_of.get(id(layer)) for layer in block.layers)
        kept = [by_path[p] for p in paths if p in by_path]
        if kept:
            out.append(Block(block.name, kept))
    return out


def _blocks(labelled) -> list[Block]:
    blocks: list[Block] = []
    for label, layer in labelled:
        if not blocks or blocks[-1].name != label:
            if any(b.name == label for b in blocks):  # keep names unique, blocks contiguous
                label = f"{label}~{len(blocks)}"
            blocks.append(Block(label))
        blocks[-1].layers.append(layer)
    return blocks


def _fill(labels: list, order) -> None:
    carried = None
    for i in order:
        if labels[i] is None:
            labels[i] = carried
        else:
            carried = labels[i]


_GENERIC_PREFIX = r"^((?:block|stage|layer|conv|res|group)_?\d+[a-z]?)(?:_|$)"
_NORMALIZATION = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)
_MERGE = (
    keras.layers.Add,
    keras.layers.Concatenate,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Subtract,
)
_POOL = tuple(
    getattr(keras.layers, name)
    for name in dir(keras.layers)
    if "Pooling" in name and "Global" not in name and isinstance(getattr(keras.layers, name), type)
)


_ELEMENTWISE = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Dropout,
)


def _fork(layer, inside: set) -> bool:
    """Whether two or more units of the same container read ``layer``'s output."""
    nodes = keras_compat.outbound_nodes(layer)
    # Readers in other graphs (the model that wraps this one) are not a fork here.
    return len({id(n.operation) for n in nodes if id(n.operation) in inside}) >= 2


def _boundary(layer) -> bool:
    """A merge, or a pooling layer that downsamples (stride-1 pooling is a branch's)."""
    if isinstance(layer, _MERGE):
        return True
    return isinstance(layer, _POOL) and any(int(s) > 1 for s in (layer.strides or (1,)))


def fallback_blocks(model: keras.Model) -> list[Block]:
    """Blocks of a model graft has no rule for (see the module docstring)."""
    walked = walk(model)
    nested = any(SEP in path for path, _ in walked)
    weighted = [layer for _, layer in walked if layer.weights]
    if not nested:
        prefixed = [m for m in (re.match(_GENERIC_PREFIX, x.name) for x in weighted) if m]
        # A naming convention only when at least two prefixes cover half the weighted
        # layers: a stray "conv1" in an otherwise unnamed model must not make the blocks.
        if len({m.group(1) for m in prefixed}) >= 2 and len(prefixed) * 2 >= len(weighted):
            rule = BlockRule(((_GENERIC_PREFIX, "{0}"),), attach="next", norm_follows=True)
            return group(model, rule)
    runs = _runs(model, "")
    # One weighted run (a plain stack with no merges or strided pooling) gives nothing to
    # choose between: one block per weighted layer, so "blocks:N" still means something.
    if sum(1 for run in runs if any(layer.weights for _, layer in run)) < 2:
        runs = _runs(model, "", per_layer=True)
    return _name_runs(model, runs)


def _runs(container, prefix: str, per_layer: bool = False) -> list[list[tuple[str, object]]]:
    """Contiguous runs of ``(path, unit)``: the fallback's block boundaries."""
    runs: list[list] = [[]]
    members = {id(m) for m in stack_members(container)}

    def start() -> None:
        if runs[-1]:
            runs.append([])

    inside = {id(x) for x in children(container)}
    soft = hard = False
    for layer in children(container):
        path = f"{prefix}{layer.name}"
        if is_container(layer):
            start()
            runs.extend(_runs(layer, path + SEP, per_layer))
            runs.append([])
            soft = hard = False
            continue
        if per_layer:
            begins = layer.weights and not isinstance(layer, _NORMALIZATION)
        else:  # a boundary was passed: only an activation of the merge may still join
            begins = id(layer) in members or hard or (soft and not isinstance(layer, _ELEMENTWISE))
        if begins:
            start()
        runs[-1].append((path, layer))
        hard = _fork(layer, inside)
        soft = _boundary(layer) or (soft and isinstance(layer, _ELEMENTWISE))
    runs = [run for run in runs if run]
    merged: list[list] = []
    for run in runs:  # only normalization weights (a final LayerNorm): join the previous
        if merged and all(not x.weights or isinstance(x, _NORMALIZATION) for _, x in run):
            merged[-1].extend(run)
        else:
            merged.append(run)
    return merged


def _name_runs(model: keras.Model, runs) -> list[Block]:
    """Name a run by its whole container's path if it is one, else its first weighted unit."""
    whole = {tuple(id(x) for x in layers): path for path, layers in containers(model).items()}
    labelled = []
    for run in runs:
        ids = tuple(id(x) for _, x in run)
        first = next((path for path, x in run if x.weights), run[0][0])
        labelled.extend((whole.get(ids, first), layer) for _, layer in run)
    return _blocks(labelled)
