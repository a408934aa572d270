"""Anti-forgetting: L2-SP, and BatchNorm recalibration (AdaBN).

**L2-SP** (Li, Grandvalet & Davoine 2018, "Explicit inductive bias for transfer
learning with convolutional networks") penalises the distance of the backbone's
weights from their *pre-trained* values ``w0`` instead of from zero::

    loss + alpha/2 * ||w - w0||^2    =>    gradient + alpha * (w - w0)

graft adds the penalty on the gradient side: :class:`L2SPOptimizer` is a
``keras.optimizers.MultiOptimizer`` that adds ``alpha * (w - w0)`` to the gradient of
every backbone variable before its sub-optimizer applies it. The model itself gets no
regularizer, loss or custom layer, so the saved model stays a plain Keras model. With
SGD this is exactly the paper's coupled penalty; with Adam the term goes through
Adam's normalisation like any L2 gradient (coupled, as in the paper's own code).
``w0`` is the backbone at the start of the run (before the first phase), so the pull is
always toward the pre-trained weights, not toward the previous phase's.

**AdaBN** (Li et al. 2016): :func:`recalibrate_bn` re-estimates every BatchNorm layer's
moving mean and variance on the target training images, changing no other weight.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from graft.core import keras_compat
from graft.core.model import backbone_of, preprocess_layers


class L2SPOptimizer(keras.optimizers.MultiOptimizer):
    """A ``MultiOptimizer`` that pulls anchored variables toward their anchor values.

    Args:
        optimizer_map: Selector ``variable -> sub-optimizer`` (as for ``MultiOptimizer``).
        alpha: L2-SP strength (the penalty is ``alpha/2 * ||w - w0||^2``).
        anchors: ``{id(variable): w0}``; variables not in it get no penalty.

    Example:
        >>> opt = L2SPOptimizer(lambda v: sgd, alpha=0.01, anchors={id(w): w0})  # doctest: +SKIP
    """

    def __init__(self, optimizer_map, alpha: float, anchors: dict, name=None, **kwargs):
        super().__init__(optimizer_map, name=name, **kwargs)
        self.alpha = float(alpha)
        self._anchor_values = anchors
        self._anchor_vars: dict = {}

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for variable in var_list:
            values = self._anchor_values.get(id(variable))
            if values is None:
                continue
            # Initialised with w0 (an assign here could run in Keras's stateless build scope).
            anchor = self.add_variable(
                shape=variable.shape,
                initializer=_constant(values),
                dtype=variable.dtype,
                name=f"{variable.path.replace('/', '_')}_l2sp_anchor",
            )
            self._anchor_vars[self._var_key(variable)] = anchor

    def apply(self, grads, trainable_variables=None):
        variables = (
            self._trainable_variables if trainable_variables is None else trainable_variables
        )
        if not self.built:
            self.build(list(variables))
            self.built = True
        pulled = []
        for grad, variable in zip(grads, variables):
            anchor = self._anchor_vars.get(self._var_key(variable))
            if grad is not None and anchor is not None:
                grad = ops.add(
                    grad, ops.multiply(ops.cast(self.alpha, grad.dtype), variable - anchor)
                )
            pulled.append(grad)
        return super().apply(pulled, trainable_variables)

    def get_config(self):
        raise NotImplementedError(
            "L2SPOptimizer is a training-time optimizer; graft recompiles the model with a "
            "plain optimizer before saving it."
        )


def _constant(values):
    def initializer(shape, dtype=None):
        return ops.convert_to_tensor(np.asarray(values).reshape(shape), dtype=dtype)

    return initializer


def bn_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer in a grafted model's backbone (nested ones too)."""
    return [
        layer
        for layer in keras_compat.sublayers(backbone_of(model))
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def recalibrate_bn(
    model: keras.Model, dataset, max_batches: int | None = None, only_trainable: bool = False
) -> int:
    """AdaBN: re-estimate the backbone's BN statistics on ``dataset``; nothing else changes.

    One pass in training mode with a cumulative average instead of Keras's momentum
    (0.99 would need hundreds of steps to forget the source statistics): after ``n``
    images, a batch of ``b`` images enters with weight ``b/n``. Each moving mean ends as
    the exact mean of the layer's inputs over the data (given the layers before it in
    training mode); each moving variance as the size-weighted average of the per-batch
    variances (slightly below the data's variance when batch means differ: use large
    batches). Gamma, beta, kernels and biases are not touched; trainability and
    momentum are restored afterwards.

    Args:
        model: A grafted model.
        dataset: Batches of raw images, or ``(images, labels, ...)`` tuples.
        max_batches: Stop after this many batches (``None``: one full pass).
        only_trainable: Re-estimate only the BN layers that are trainable now (precise
            BN after a phase: frozen BN layers keep their statistics and run in
            inference mode, as they did during the phase).

    Returns:
        The number of BatchNormalization layers recalibrated.
    """
    layers = [layer for layer in bn_layers(model) if layer.trainable or not only_trainable]
    if not layers:
        return 0
    backbone = backbone_of(model)
    preprocess = preprocess_layers(model)
    saved = [(layer, layer.trainable, layer.momentum) for layer in layers]
    seen = 0
    try:
        for layer in layers:
            layer.trainable = True  # a frozen BN ignores training=True in Keras 3
        for i, batch in enumerate(dataset):
            if max_batches is not None and i >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = ops.cast(x, "float32")
            size = int(ops.shape(x)[0])
            seen += size
            for layer in layers:
                layer.momentum = 1.0 - size / seen
            for layer in preprocess:
                x = layer(x)
            backbone(x, training=True)
    finally:
        for layer, trainable, momentum in saved:
            layer.trainable = trainable
            layer.momentum = momentum
    if seen == 0:
        raise ValueError("recalibrate_bn got no images.")
    return len(layers)


def distance(model: keras.Model, anchors: dict[int, np.ndarray]) -> float:
    """Euclidean distance of the backbone's weights from ``anchors`` (see
    :func:`graft.core.optim.backbone_anchors`)."""
    total = 0.0
    for v in backbone_of(model).weights:
        if id(v) in anchors:
            total += float(np.sum((np.asarray(v.numpy()) - anchors[id(v)]) ** 2))
    return total**0.5
