"""The one optimizer factory: the optimizer of a phase, from one rate up to per-block
learning rates, weight decay and L2-SP (:func:`make_optimizer`):

* **Head and backbone rates**: the head trains at ``lr``, the unfrozen backbone at
  :attr:`~graft.config.strategies.Phase.effective_backbone_lr`.

* **Discriminative learning rates** (``lr_mult``, fastai-style): the top trainable
  backbone block trains at the phase's backbone rate ``b`` (``backbone_lr``, default
  ``lr``); a trainable block ``d`` blocks below it at ``b * lr_mult**d``. The head
  trains at ``lr``.
* **Layer-wise decay** (``layer_decay``, timm-style): block ``i`` counted from the top of
  the backbone (``i = 1`` for the last block) trains at ``lr * layer_decay**i``; the head
  at ``lr``.
* **Weight decay** (``weight_decay``): Keras's own decoupled decay
  (``w -= lr * wd * w`` per step, AdamW-style; with SGD it equals an L2 penalty
  ``wd/2 * ||w||^2``), with every BatchNormalization/LayerNormalization weight and every
  bias excluded via ``Optimizer.exclude_from_weight_decay``.
* **L2-SP** (``l2sp``): see :class:`graft.core.regularizers.L2SPOptimizer`.

One sub-optimizer per distinct learning rate, combined by
``keras.optimizers.MultiOptimizer`` with a selector by variable identity. Only
``keras`` is imported, so this runs on every Keras 3 backend.
"""

from __future__ import annotations

import keras
import numpy as np

from graft.config.strategies import OPTIMIZERS, Phase
from graft.core import keras_compat
from graft.core.blocks import Block
from graft.core.model import backbone_of
from graft.core.regularizers import L2SPOptimizer

#: Optimizer classes by name (the names of :data:`graft.config.strategies.OPTIMIZERS`).
CLASSES: dict[str, type] = {
    cls.__name__.lower(): cls
    for cls in vars(keras.optimizers).values()
    if isinstance(cls, type)
    and issubclass(cls, keras.optimizers.Optimizer)
    and cls.__name__.lower() in OPTIMIZERS
}

_NORMALIZATION = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)


def block_rates(phase: Phase, model: keras.Model, blocks: list[Block]) -> dict[int, float]:
    """The learning rate of every trainable backbone variable, by ``id(variable)``.

    Call it after the phase's trainability was applied. Variables not in the result
    (the head) train at ``phase.lr``.

    Args:
        phase: The phase (its ``lr``, ``backbone_lr``, ``lr_mult``, ``layer_decay``).
        model: The grafted model.
        blocks: The backbone's blocks, input side first.

    Returns:
        ``{id(variable): learning_rate}`` for the trainable backbone variables.
    """
    trainable = {id(v) for v in model.trainable_weights}
    in_block = [
        [v for layer in block.layers for v in layer.weights if id(v) in trainable]
        for block in blocks
    ]
    if phase.backbone_frozen:
        return {}
    used = [i for i, variables in enumerate(in_block) if variables]
    top = used[-1] if used else 0
    base = phase.effective_backbone_lr
    rates = {}
    for i in used:
        if phase.layer_decay is not None:
            rate = phase.lr * phase.layer_decay ** (len(blocks) - i)
        elif phase.lr_mult is not None:
            rate = base * phase.lr_mult ** (top - i)
        else:
            rate = base
        rates.update({id(v): rate for v in in_block[i]})
    for v in backbone_of(model).weights:  # trainable backbone weights outside every block
        if id(v) in trainable and id(v) not in rates:
            rates[id(v)] = base
    return rates


def decay_exclusions(model: keras.Model) -> list:
    """Variables weight decay must not touch: normalization weights and biases."""
    excluded = {}
    for layer in keras_compat.sublayers(model):
        if isinstance(layer, _NORMALIZATION):
            excluded.update({id(v): v for v in layer.weights})
    for v in model.weights:
        if v.name == "bias" or v.path.endswith("/bias"):
            excluded[id(v)] = v
    return list(excluded.values())


def backbone_anchors(model: keras.Model) -> dict[int, np.ndarray]:
    """The current values of the backbone's weights (the L2-SP starting point)."""
    return {id(v): np.array(v.numpy()) for v in backbone_of(model).weights}


def make_optimizer(
    phase: Phase,
    model: keras.Model,
    blocks: list[Block] = (),
    anchors: dict[int, np.ndarray] | None = None,
) -> keras.optimizers.Optimizer:
    """The optimizer of a phase: one rate, head and backbone rates, per-block rates,
    weight decay and/or L2-SP.

    Args:
        phase: The phase.
        model: The grafted model, with the phase's trainability applied.
        blocks: The backbone's blocks (for ``lr_mult`` and ``layer_decay``).
        anchors: L2-SP anchors ``{id(variable): values}`` (default: the backbone's
            current weights, see :func:`backbone_anchors`).

    Returns:
        A plain optimizer when one rate serves every variable and no L2-SP is asked
        for; otherwise a ``keras.optimizers.MultiOptimizer`` (an
        :class:`~graft.core.regularizers.L2SPOptimizer` with ``l2sp``).
    """
    rates = block_rates(phase, model, blocks)
    excluded = decay_exclusions(model) if phase.weight_decay else []

    def make(rate: float) -> keras.optimizers.Optimizer:
        kwargs = {"learning_rate": rate}
        if phase.weight_decay:
            kwargs["weight_decay"] = phase.weight_decay
        opt = CLASSES[phase.optimizer](**kwargs)
        if phase.weight_decay:
            opt.exclude_from_weight_decay(var_list=excluded)
        return opt

    by_rate = {rate: make(rate) for rate in sorted({phase.lr, *rates.values()}, reverse=True)}
    l2sp_on = bool(phase.l2sp) and not phase.backbone_frozen
    if len(by_rate) == 1 and not l2sp_on:
        return by_rate[phase.lr]

    def select(variable):
        return by_rate[rates.get(id(variable), phase.lr)]

    if l2sp_on:
        if anchors is None:
            anchors = backbone_anchors(model)
        return L2SPOptimizer(select, alpha=phase.l2sp, anchors=anchors)
    return keras.optimizers.MultiOptimizer(select)


def sub_optimizers(optimizer, variables=None) -> list:
    """The optimizers that hold learning rates (inside a MultiOptimizer or a
    LossScaleOptimizer), in a stable order.

    A ``MultiOptimizer`` with a selector knows its sub-optimizers only once built:
    pass the model's trainable ``variables`` to build it first if needed.
    """
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        return sub_optimizers(inner, variables)
    if isinstance(optimizer, keras.optimizers.MultiOptimizer):
        if not optimizer.built and variables is not None:
            optimizer.build(list(variables))
        return list(optimizer.optimizers)
    return [optimizer]
