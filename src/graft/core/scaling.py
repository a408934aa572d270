"""Which input scaling a model file expects, inferred from evidence in the model.

A model file does not say whether it was trained on 0-255 pixels, on [0, 1] or on
[-1, 1]. Two kinds of evidence do:

1. **Its own scaling layers**: a ``Rescaling`` or ``Normalization`` layer before the
   first layer with weights means the model scales its own input (``none``).
2. **Its first BatchNormalization layer**: the moving mean and variance record the
   statistics of that layer's input during pre-training. Each candidate scaling
   (:data:`~graft.core.preprocessing.MODES`) is applied to the user's images, the
   layer's input is computed, and the candidate whose batch statistics are closest to
   the moving statistics (a per-channel Gaussian KL divergence, averaged) wins.

Without either (no BN, no rescaling, or re-initialised weights) the evidence is weak,
and the caller says so and suggests ``preprocess``.

Example:
    >>> evidence = infer(model, images)            # doctest: +SKIP
    >>> evidence.choice, evidence.line()           # doctest: +SKIP
    ('unit', "preprocess unit inferred: first BatchNormalization 'block1_bn' ...")
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from graft.core.preprocessing import MODES, preprocessing_layers

#: The best candidate must beat the runner-up by this factor to count as clear evidence.
CLEAR_RATIO = 3.0
_SCALING_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)


@dataclass
class Evidence:
    """What the model says about its input scaling.

    Attributes:
        choice: The inferred mode, or ``None`` when the evidence is weak.
        source: Where the evidence comes from (a layer, or why there is none).
        scores: Mismatch of each candidate with the BN statistics (lower is better).
    """

    choice: str | None
    source: str
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def clear(self) -> bool:
        return self.choice is not None

    def ranking(self) -> str:
        """``"unit 0.02, torch 0.9, ..."``: the candidates, best first."""
        ordered = sorted(self.scores.items(), key=lambda kv: kv[1])
        return ", ".join(f"{name} {score:.3g}" for name, score in ordered)

    def line(self) -> str:
        """One line for the log: the choice and its evidence."""
        if self.choice is None:
            text = f"input scaling not inferred: {self.source}"
            if self.scores:
                text += f" (mismatch: {self.ranking()})"
            return text + "; pass preprocess=... (--preprocess) if the model expects scaled input"
        text = f"preprocess {self.choice} inferred from {self.source}"
        if self.scores:
            text += f" (mismatch with its statistics: {self.ranking()})"
        return text

    def as_dict(self) -> dict:
        return {
            "choice": self.choice,
            "source": self.source,
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
        }


def own_scaling(model: keras.Model) -> keras.layers.Layer | None:
    """A ``Rescaling``/``Normalization`` layer before the model's first weighted layer."""
    for layer in model.layers:
        if isinstance(layer, _SCALING_LAYERS) and not layer.name.startswith("graft_"):
            return layer
        if layer.weights and not isinstance(layer, _SCALING_LAYERS):
            return None
    return None


def first_bn(model: keras.Model) -> keras.layers.BatchNormalization | None:
    """The first top-level BatchNormalization layer (``None``: none at the top level)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            return layer
    return None


def mismatch(x: np.ndarray, bn: keras.layers.BatchNormalization) -> float:
    """Mean per-channel KL divergence of N(batch stats of ``x``) from N(moving stats)."""
    axis = bn.axis if isinstance(bn.axis, int) else bn.axis[0]
    axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    mean, var = x.mean(axis=axes), x.var(axis=axes) + bn.epsilon
    m_mean = np.asarray(bn.moving_mean, "float64")
    m_var = np.asarray(bn.moving_variance, "float64") + bn.epsilon
    kl = 0.5 * (np.log(m_var / var) + (var + (mean - m_mean) ** 2) / m_var - 1.0)
    return float(np.mean(kl))


def infer(model: keras.Model, images: np.ndarray, channels: int | None = None) -> Evidence:
    """Infer the input scaling of ``model`` from ``images`` (raw 0-255, NHWC).

    Args:
        model: The backbone with its pre-trained weights.
        images: A sample of the user's images, already at the model's input size.
        channels: Image channels (``caffe``/``torch`` need 3); default: from ``images``.

    Returns:
        :class:`Evidence`; ``choice`` is ``None`` when the evidence is weak.
    """
    layer = own_scaling(model)
    if layer is not None:
        return Evidence("none", f"the model's own {type(layer).__name__} layer {layer.name!r}")
    bn = first_bn(model)
    if bn is None:
        return Evidence(None, "the model has no scaling layer and no top-level BatchNormalization")
    moving = np.asarray(bn.moving_variance)
    if np.allclose(moving, 1.0) and np.allclose(np.asarray(bn.moving_mean), 0.0):
        return Evidence(None, f"{bn.name!r} holds initial statistics (mean 0, variance 1)")
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, bn.input)
    x = np.asarray(images, "float32")
    channels = channels or x.shape[-1]
    scores = {}
    for mode in MODES:
        if mode in ("caffe", "torch") and channels != 3:
            continue
        scaled = x
        for step in preprocessing_layers(mode, channels):
            scaled = step(scaled)
        output = keras.ops.convert_to_numpy(probe(scaled, training=False))
        scores[mode] = mismatch(np.asarray(output, "float64"), bn)
    ordered = sorted(scores.values())
    source = f"the first BatchNormalization {bn.name!r}"
    if len(ordered) > 1 and ordered[1] < CLEAR_RATIO * max(ordered[0], 1e-3):
        return Evidence(None, f"{source} does not single out one scaling", scores)
    return Evidence(min(scores, key=scores.get), source, scores)
