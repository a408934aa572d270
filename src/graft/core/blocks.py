"""Group a backbone's layers into blocks: the natural units to freeze and unfreeze.

A :class:`BlockRule` is a short list of ``(regex, template)`` anchors. A top-level layer
whose name matches an anchor belongs to the block the template names (``{0}`` is the
first regex group, ``{name}`` the layer's name). A layer that matches nothing
(Inception's auto-named ``conv2d_17``, an ``add`` or an ``activation``) joins the block
of the next anchored layer (``attach="next"``) or of the previous one
(``attach="previous"``). A layer that is itself a model (a nested sub-model) is one
unit: it belongs to one block as a whole.

Models graft does not know get :func:`fallback_rule`: names such as
``block3_conv``/``stage2_...`` if most weighted layers follow that pattern; else every
nested model and every weighted layer that is not a normalization layer starts a block
(BN, activations and pooling join the block before them).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

import keras


@dataclass(frozen=True)
class BlockRule:
    """How to name the blocks of one architecture family."""

    anchors: tuple[tuple[str, str], ...]
    attach: Literal["next", "previous"] = "next"


@dataclass
class Block:
    """One block of a backbone: a name and its top-level layers, in model order."""

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


def group(model: keras.Model, rule: BlockRule | None = None) -> list[Block]:
    """Split ``model``'s top-level layers into contiguous blocks, in model order.

    Args:
        model: A functional or sequential Keras model.
        rule: The architecture's rule; ``None`` uses :func:`fallback_rule`.

    Returns:
        Blocks from the input side to the output side. Every top-level layer is in
        exactly one block.
    """
    layers = units(model)
    rule = rule or fallback_rule(model)
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
    if not any(labels):
        labels = [model.name] * len(layers)
    order = range(len(labels) - 1, -1, -1) if rule.attach == "next" else range(len(labels))
    _fill(labels, order)
    _fill(labels, reversed(list(order)))  # leading/trailing layers with no anchor beyond them
    blocks: list[Block] = []
    for layer, label in zip(layers, labels):
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


def fallback_rule(model: keras.Model) -> BlockRule:
    """A block rule for a model graft has no entry for (see the module docstring)."""
    layers = units(model)
    weighted = [layer for layer in layers if layer.weights]
    if not any(isinstance(layer, keras.Model) for layer in layers):
        prefixed = [m for m in (re.match(_GENERIC_PREFIX, x.name) for x in weighted) if m]
        if len({m.group(1) for m in prefixed}) >= 2 and len(prefixed) * 2 >= len(weighted):
            return BlockRule(((_GENERIC_PREFIX, "{0}"),), attach="next")
    starts = [
        layer
        for layer in weighted
        if isinstance(layer, keras.Model) or not isinstance(layer, _NORMALIZATION)
    ]
    anchors = tuple((f"^{re.escape(layer.name)}$", "{name}") for layer in starts)
    return BlockRule(anchors, attach="previous")
