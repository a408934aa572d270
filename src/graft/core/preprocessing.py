"""Input preprocessing as standard Keras layers.

Each backbone expects its own input scaling (MobileNetV2 wants [-1, 1], ResNet50 wants
caffe-style BGR mean subtraction, EfficientNet rescales inside the model). graft builds
that scaling into the model as plain Keras layers, so the saved model takes raw 0-255
images and loads anywhere without graft or custom objects.

Modes:
    none       identity (the backbone scales its own input)
    unit       x / 255
    symmetric  x / 127.5 - 1                     (Keras's "tf" mode)
    caffe      RGB -> BGR, minus the ImageNet BGR mean   (Keras's "caffe" mode)
    torch      x / 255, minus ImageNet mean, over ImageNet std   (Keras's "torch" mode)
"""

from __future__ import annotations

import math

import keras
import numpy as np

from graft.config.names import PREPROCESS_MODES
from graft.errors import UnknownNameError, did_you_mean

MODES = PREPROCESS_MODES
LAYER_PREFIX = "graft_preprocess"

_CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype="float32")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype="float32")
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
IMAGENET_STD = np.array(IMAGENET_STD_RGB, dtype="float32")


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known preprocessing mode, else raise."""
    if mode not in MODES:
        raise UnknownNameError(
            f"Unknown preprocessing mode: {mode!r}. Expected one of {', '.join(MODES)}."
            + did_you_mean(mode, MODES)
        )
    return mode


def preprocessing_layers(mode: str, channels: int = 3) -> list[keras.layers.Layer]:
    """Frozen Keras layers that map raw 0-255 pixels to what a backbone expects.

    Args:
        mode: One of :data:`MODES`.
        channels: Number of image channels; ``caffe`` and ``torch`` need 3.

    Returns:
        Layers to apply in order (empty for ``none``). None has trainable weights.

    Example:
        >>> layers = preprocessing_layers("symmetric")
        >>> [type(layer).__name__ for layer in layers]
        ['Rescaling']
    """
    check_mode(mode)
    if mode in ("caffe", "torch") and channels != 3:
        raise UnknownNameError(
            f"Preprocessing {mode!r} needs 3-channel images, the backbone takes {channels}.",
            hint="use preprocess=unit, symmetric or none for grayscale backbones.",
        )
    name = f"{LAYER_PREFIX}_{mode}"
    if mode == "none":
        return []
    if mode == "unit":
        return [keras.layers.Rescaling(1.0 / 255.0, name=name)]
    if mode == "symmetric":
        return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)]
    if mode == "torch":
        return [
            keras.layers.Rescaling(1.0 / 255.0, name=f"{name}_scale"),
            keras.layers.Normalization(
                mean=IMAGENET_MEAN, variance=np.square(IMAGENET_STD), name=f"{name}_normalize"
            ),
        ]
    # caffe: a frozen 1x1 linear map that swaps R and B and subtracts the BGR mean.
    # A permutation matrix times x, plus a bias, is exact in float32.
    permute = np.zeros((3, 3), dtype="float32")
    for out_channel in range(3):
        permute[2 - out_channel, out_channel] = 1.0
    layer = keras.layers.Dense(3, name=name, trainable=False)
    layer.build((None, 3))
    layer.set_weights([permute, -_CAFFE_BGR_MEAN])
    return [layer]


EFFICIENTNET_V1 = {f"EfficientNetB{i}" for i in range(8)}


def imagenet_stem_scaling(model: keras.Model) -> keras.Model:
    """EfficientNet V1 as ``weights="imagenet"`` builds it, for a weights *file*.

    Keras adds a ``Rescaling(1/sqrt(std))`` after the stem's ``Normalization`` only when
    ``weights == "imagenet"`` (it compensates a quirk of the original weights); the same
    weights loaded from a file need the same layer. It has no weights, so the file loads.
    """
    scale = [1.0 / math.sqrt(s) for s in IMAGENET_STD_RGB]  # as Keras's efficientnet.py

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        if isinstance(layer, keras.layers.Normalization):
            out = keras.layers.Rescaling(scale, name=f"{layer.name}_imagenet_scale")(out)
        return out

    return keras.models.clone_model(model, call_function=call)
