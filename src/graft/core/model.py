"""Assemble preprocessing + backbone + head into one plain ``keras.Model``.

The result takes raw images (0-255, uint8 or float) and returns class probabilities.
It contains only standard Keras layers, so ``keras.saving.load_model`` reads it with
``safe_mode=True`` in a Python that has never imported graft.

Layout (names are stable; the trainer and tests rely on them)::

    image -> graft_preprocess_* -> backbone (nested model) -> [pooling] -> head_features
          -> head_dense_1 .. head_dense_k (+ head_dropout) -> head_output

``head_features`` is *the head's input*, whatever the rank of the backbone's output
(:func:`pooling_layers` says how each rank gets there, :func:`head_input` returns it):
the feature cache, the drift snapshot, evaluation and export all start from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras

from graft.config.names import POOLS, POOLS_2D, POOLS_3D, POOLS_4D
from graft.core import hub, keras_compat
from graft.core.backbones import Backbone
from graft.core.preprocessing import LAYER_PREFIX, preprocessing_layers
from graft.errors import GraftError

BACKBONE_NAME = "backbone"
HEAD_PREFIX = "head_"
#: The layer whose output is the head's input (pooled backbone features, always 2-D).
HEAD_INPUT = f"{HEAD_PREFIX}features"
# Names older runs gave the head's input (before ``head_features`` existed).
_LEGACY_HEAD_INPUTS = (f"{HEAD_PREFIX}pool", f"{HEAD_PREFIX}flatten")


@dataclass(frozen=True)
class HeadConfig:
    """The new classifier grafted onto the backbone.

    Attributes:
        hidden: Units of each hidden Dense(relu) layer; ``()`` gives a linear probe.
        dropout: Dropout rate before the output layer (0 disables it).
        multi_label: Sigmoid outputs (one per label) instead of a softmax.
    """

    hidden: tuple[int, ...] = (128,)
    dropout: float = 0.2
    multi_label: bool = False
    pool: str = "auto"


def _dropout_seed() -> int | None:
    """The head's dropout seed: ``None`` (Keras draws it) except on PyTorch, where an
    unseeded ``Dropout`` draws its masks from torch's global generator (consumed by other
    work and not in graft's checkpoints); a seed from Python's seeded generator gives it
    a ``SeedGenerator``, a model variable saved with the weights as on TF and JAX."""
    if keras.backend.backend() != "torch":
        return None
    import random

    return random.randint(0, 2**31 - 1)


def build_model(
    backbone: Backbone, num_classes: int, head: HeadConfig = HeadConfig(), name: str = "graft"
) -> keras.Model:
    """Graft a new head onto ``backbone`` and put its preprocessing in front.

    Args:
        backbone: From :func:`graft.backbones.resolve`.
        num_classes: Number of outputs.
        head: Head layout (its ``pool`` picks how the backbone's output is pooled).
        name: Model name.

    Returns:
        An uncompiled ``keras.Model`` mapping raw images to probabilities.

    Example:
        >>> from graft.core.backbones import load_backbone
        >>> bb = load_backbone("mobilenet_v2", weights=None, image_size=96, alpha=0.35)
        >>> model = build_model(bb, num_classes=5)
        >>> model.output_shape
        (None, 5)
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    if backbone.channels not in (1, 3):
        raise GraftError(
            f"{backbone.source} takes {backbone.channels}-channel images; graft decodes images "
            f"as grayscale (1 channel) or RGB (3). Received: input channels {backbone.channels}",
            hint="cut or re-save the model with a 1- or 3-channel image input.",
        )
    height, width = backbone.image_size
    inputs = keras.Input((height, width, backbone.channels), name="image")
    x = inputs
    for layer in preprocessing_layers(backbone.preprocess, backbone.channels):
        x = layer(x)
    # Re-wrap so the nested model is always called "backbone" (same layers, same weights).
    source = backbone.model
    output = single_output(source)
    if hub.is_plain(source):
        bb_model = keras.Model(source.inputs[0], output, name=BACKBONE_NAME)
    else:  # a subclass (a KerasHub backbone): nested as is, its own config round-trips
        source.name = BACKBONE_NAME
        bb_model = source
    x = bb_model(x)
    for layer in pooling_layers(tuple(x.shape), head.pool):
        x = layer(x)
    for i, units in enumerate(head.hidden, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"{HEAD_PREFIX}dense_{i}")(x)
    if head.dropout:
        x = keras.layers.Dropout(head.dropout, seed=_dropout_seed(), name=f"{HEAD_PREFIX}dropout")(
            x
        )
    outputs = keras.layers.Dense(
        num_classes,
        activation="sigmoid" if head.multi_label else "softmax",
        dtype="float32",
        name=f"{HEAD_PREFIX}output",
    )(x)
    return keras.Model(inputs, outputs, name=name)


def single_output(model: keras.Model):
    """The one output of ``model``; a multi-output model is one clear error naming its outputs."""
    if len(model.outputs) == 1:
        return model.outputs[0]
    names = [keras_compat.producer(t).name for t in model.outputs]
    raise GraftError(
        f"{model.name} has {len(names)} outputs ({', '.join(names)}); a backbone needs exactly "
        f"one. Received: a model with outputs {names}",
        hint=f"pass cut=LAYER to end the backbone at one layer, e.g. cut={names[-1]}",
    )


def pooling_layers(shape: tuple, pool: str = "auto") -> list[keras.layers.Layer]:
    """Standard Keras layers from a backbone output of ``shape`` to the head's input.

    The last layer is always named :data:`HEAD_INPUT` and outputs ``(batch, features)``.

    - 4-D ``(h, w, c)`` feature maps: ``avg`` (global average, the default), ``max``,
      ``avgmax`` (both, concatenated) or ``flatten``.
    - 3-D ``(tokens, dim)`` outputs (ViT, DINOv2): ``mean`` (the default: the mean of the
      patch tokens, i.e. every token after token 0, which ViT, DeiT and DINOv2 reserve for
      the class token; a sequence of one token is used as it is), ``cls`` (token 0) or
      ``flatten``.
    - 2-D ``(features,)`` outputs (a cut at a pooling/Flatten/Dense layer, an uncut
      classifier): used directly (an ``Identity`` layer).

    Args:
        shape: The backbone's output shape, batch axis included.
        pool: ``"auto"`` or one of :data:`graft.config.names.POOLS`.
    """
    layers = keras.layers
    if pool not in POOLS:
        raise GraftError(f"Unknown pool: {pool!r}. Expected one of {', '.join(POOLS)}.")
    accepted = pool_choices(shape)
    if not accepted:
        raise GraftError(
            f"The backbone's output has shape {shape}; graft grafts a head onto 2-D (features), "
            "3-D (tokens) or 4-D (feature map) outputs.",
            hint="pass cut=LAYER at a layer with such an output (run 'graft inspect MODEL').",
        )
    if pool == "auto":
        pool = accepted[0]
    if pool not in accepted and len(shape) == 2:
        raise GraftError(
            f"The backbone's output {shape} is already a feature vector; pool={pool!r} does "
            f"not apply. Received: pool={pool!r}",
            hint="leave pool= out, or cut= at an earlier layer (a feature map or tokens).",
        )
    if pool not in accepted:
        raise GraftError(
            f"pool={pool!r} does not apply to a backbone output of shape {shape}; it takes "
            f"{', '.join(accepted)}. Received: pool={pool!r}",
            hint="leave pool= out for the default, or cut= at another layer.",
        )
    name = HEAD_INPUT
    if pool == "identity":
        return [layers.Identity(name=name)]
    if pool == "avg":
        return [layers.GlobalAveragePooling2D(name=name)]
    if pool == "max":
        return [layers.GlobalMaxPooling2D(name=name)]
    if pool == "flatten":
        return [layers.Flatten(name=name)]
    if pool == "avgmax":
        return [_AvgMax(name)]
    tokens = shape[1]
    if pool == "cls" or tokens == 1:
        crop = (0, tokens - 1) if tokens else (0, 0)
        return [layers.Cropping1D(crop, name=f"{HEAD_PREFIX}cls_token"), layers.Flatten(name=name)]
    return [  # mean of the patch tokens
        layers.Cropping1D((1, 0), name=f"{HEAD_PREFIX}patch_tokens"),
        layers.GlobalAveragePooling1D(name=name),
    ]


_POOL_WORDS = {
    "avg": "global average pooling of {}",
    "max": "global max pooling of {}",
    "avgmax": "global average and max pooling of {}, concatenated,",
    "flatten": "flattening of {}",
    "mean": "the mean of the patch tokens of {}",
    "cls": "the CLS token of {}",
    "identity": "the {} output as it is",
}


def pool_choices(shape: tuple) -> tuple[str, ...]:
    """The ``pool`` values a backbone output of ``shape`` (batch first) takes; the first
    is what ``"auto"`` picks."""
    return {4: POOLS_4D, 3: POOLS_3D, 2: POOLS_2D}.get(len(shape), ())


def pooling_summary(shape: tuple, pool: str = "auto") -> str:
    """How the head's input is made from a backbone output of ``shape`` (batch first),
    e.g. ``"global average pooling of (4, 4, 64) -> 64 features"``."""
    choices = pool_choices(shape)
    chosen = choices[0] if pool == "auto" and choices else pool
    if chosen == "mean" and len(shape) == 3 and shape[1] == 1:
        chosen = "cls"  # a single token is its own mean (see pooling_layers)
    dims = tuple(shape[1:])
    last = dims[-1] if dims else None
    if chosen == "avgmax":
        n = None if last is None else 2 * last
    elif chosen == "flatten":
        n = None if any(d is None for d in dims) else math.prod(dims)
    else:
        n = last
    words = _POOL_WORDS.get(chosen, chosen + " of {}").format(dims)
    return f"{words} -> {n if n else '?'} features"


class _AvgMax:
    """Global average and global max pooling, concatenated (standard layers only)."""

    def __init__(self, name: str):
        self.name = name
        self.avg = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool_avg")
        self.max = keras.layers.GlobalMaxPooling2D(name=f"{HEAD_PREFIX}pool_max")
        self.concat = keras.layers.Concatenate(name=name)

    def __call__(self, x):
        return self.concat([self.avg(x), self.max(x)])


def head_input_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer of a grafted model whose output is the head's input (see the module doc)."""
    names = [layer.name for layer in model.layers]
    for name in (HEAD_INPUT, *_LEGACY_HEAD_INPUTS):
        if name in names:
            return model.get_layer(name)
    raise GraftError(f"{model.name} is not a grafted model: it has no {HEAD_INPUT!r} layer.")


def head_input(model: keras.Model):
    """The head's input tensor of a grafted model: pooled backbone features, ``(batch, n)``."""
    return head_input_layer(model).output


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested backbone model inside a grafted model."""
    return model.get_layer(BACKBONE_NAME)


def head_layers(model: keras.Model) -> list:
    """The grafted head's layers (everything after the backbone)."""
    return [layer for layer in model.layers if layer.name.startswith(HEAD_PREFIX)]


def preprocess_layers(model: keras.Model) -> list:
    """The model's built-in preprocessing layers."""
    return [layer for layer in model.layers if layer.name.startswith(LAYER_PREFIX)]
