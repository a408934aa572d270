"""Assemble preprocessing + backbone + head into one plain ``keras.Model``.

The result takes raw images (0-255, uint8 or float) and returns class probabilities.
It contains only standard Keras layers, so ``keras.saving.load_model`` reads it with
``safe_mode=True`` in a Python that has never imported graft.

Layout (names are stable; the trainer and tests rely on them)::

    image -> graft_preprocess_* -> backbone (nested model) -> head_pool
          -> head_dense_1 .. head_dense_k (+ head_dropout) -> head_output
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from graft.core import hub
from graft.core.backbones import Backbone
from graft.core.preprocessing import LAYER_PREFIX, preprocessing_layers

BACKBONE_NAME = "backbone"
HEAD_PREFIX = "head_"


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


def build_model(
    backbone: Backbone, num_classes: int, head: HeadConfig = HeadConfig(), name: str = "graft"
) -> keras.Model:
    """Graft a new head onto ``backbone`` and put its preprocessing in front.

    Args:
        backbone: From :func:`graft.backbones.resolve`.
        num_classes: Number of outputs.
        head: Head layout.
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
    height, width = backbone.image_size
    inputs = keras.Input((height, width, backbone.channels), name="image")
    x = inputs
    for layer in preprocessing_layers(backbone.preprocess, backbone.channels):
        x = layer(x)
    # Re-wrap so the nested model is always called "backbone" (same layers, same weights).
    source = backbone.model
    if len(source.outputs) != 1:
        raise ValueError(
            f"A backbone needs exactly one output; {source.name} has {len(source.outputs)}."
        )
    if hub.is_plain(source):
        bb_model = keras.Model(source.inputs[0], source.outputs[0], name=BACKBONE_NAME)
    else:  # a subclass (a KerasHub backbone): nested as is, its own config round-trips
        source.name = BACKBONE_NAME
        bb_model = source
    x = bb_model(x)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(x)
    elif len(x.shape) != 2:
        x = keras.layers.Flatten(name=f"{HEAD_PREFIX}flatten")(x)
    for i, units in enumerate(head.hidden, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"{HEAD_PREFIX}dense_{i}")(x)
    if head.dropout:
        x = keras.layers.Dropout(head.dropout, name=f"{HEAD_PREFIX}dropout")(x)
    outputs = keras.layers.Dense(
        num_classes,
        activation="sigmoid" if head.multi_label else "softmax",
        dtype="float32",
        name=f"{HEAD_PREFIX}output",
    )(x)
    return keras.Model(inputs, outputs, name=name)


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested backbone model inside a grafted model."""
    return model.get_layer(BACKBONE_NAME)


def head_layers(model: keras.Model) -> list:
    """The grafted head's layers (everything after the backbone)."""
    return [layer for layer in model.layers if layer.name.startswith(HEAD_PREFIX)]


def preprocess_layers(model: keras.Model) -> list:
    """The model's built-in preprocessing layers."""
    return [layer for layer in model.layers if layer.name.startswith(LAYER_PREFIX)]
