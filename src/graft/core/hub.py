"""KerasHub backbones: the optional ``keras-hub`` package (``pip install keras-graft[hub]``).

graft uses a KerasHub backbone (``ViTBackbone``, ``DINOV2Backbone``, ``ResNetBackbone``,
...) as it is: a ``.keras`` file of one, a local preset directory written by
``Backbone.save_to_preset`` (with the preset's image converter deciding the
preprocessing), or the model object itself. The grafted model nests it unchanged, so
the saved run model loads again wherever ``keras_hub`` is installed.
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np

from graft.core import keras_compat
from graft.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from graft.errors import GraftError, first_line

PACKAGE = "keras-hub"  # what a saved model that holds a KerasHub layer needs to load
MODULE = "keras_hub"
INSTALL_HINT = "pip install 'keras-graft[hub]' (or pip install keras-hub)."
PRESET_CONFIG = "config.json"


def available() -> bool:
    return importlib.util.find_spec(MODULE) is not None


#: Why KerasHub cannot come to an install without TensorFlow, and what to do instead.
NEEDS_TENSORFLOW = (
    "KerasHub backbones need TensorFlow: keras-hub requires tensorflow-text (so TensorFlow) "
    "on Linux, and this install has no TensorFlow."
)
TENSORFLOW_HINT = (
    "pip install 'keras-graft[tensorflow,hub]' (the model then runs on any KERAS_BACKEND), "
    "or use a keras.applications backbone or a .keras file of plain Keras layers."
)


def require():
    """Import ``keras_hub`` (registering its layers for loading), or a clear error.

    On an install without TensorFlow (``keras-graft[jax]`` or ``[torch]``) the error says
    that KerasHub needs it (through tensorflow-text) rather than suggesting an install
    that would bring TensorFlow in unannounced.
    """
    from graft import _backend

    tensorflow = _backend.installed("tensorflow")
    if not _backend.installed(MODULE):
        if not tensorflow:
            raise GraftError(NEEDS_TENSORFLOW, hint=TENSORFLOW_HINT)
        raise GraftError("This model is built from KerasHub layers.", hint=INSTALL_HINT)
    try:
        import keras_hub
    except ImportError as exc:
        if not tensorflow or "tensorflow" in str(exc):
            raise GraftError(NEEDS_TENSORFLOW, hint=TENSORFLOW_HINT) from None
        raise GraftError(f"keras-hub does not import: {first_line(exc)}") from None
    return keras_hub


def is_hub_object(model) -> bool:
    """Whether ``model`` (or a layer nested in it) comes from KerasHub."""
    layers = keras_compat.sublayers(model, include_self=True)
    return any(type(layer).__module__.startswith(MODULE) for layer in layers)


#: The largest ``config.json``/``metadata.json`` inside a ``.keras`` archive (bytes).
MAX_CONFIG_BYTES = 64 << 20
#: The largest compression ratio of a big member (weights barely compress; a bomb does).
MAX_RATIO = 200
_BIG = 1 << 20


def check_archive(path: str | Path) -> None:
    """Refuse a ``.keras`` zip whose members would inflate to more than it can hold
    (a zip bomb), from the sizes its directory declares, before anything is read (by
    graft or by ``keras.saving.load_model``). Reading never yields more than the
    declared size, so the check bounds memory."""
    path = Path(path)
    try:
        if path.is_dir() or not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile):
        return  # the loader reports an unreadable file
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        small = member.filename.endswith(".json")
        if (small and member.file_size > MAX_CONFIG_BYTES) or (
            member.file_size > _BIG and ratio > MAX_RATIO
        ):
            raise GraftError(
                f"Refusing to load {path}: its member {member.filename!r} would inflate "
                f"from {member.compress_size:,} to {member.file_size:,} bytes "
                "(a zip bomb, or not a model saved by Keras).",
                hint="save the model again with model.save('model.keras').",
            )


def file_needs_hub(path: str | Path) -> bool:
    """Whether a ``.keras`` file (or preset directory) names KerasHub classes.

    Raises:
        GraftError: The file is a zip bomb (:func:`check_archive`).
    """
    path = Path(path)
    check_archive(path)
    try:
        if path.is_dir():
            text = (path / PRESET_CONFIG).read_text("utf-8")
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                text = archive.read("config.json").decode("utf-8")
        else:
            return False
    except (OSError, KeyError):
        return False
    return MODULE in text


def is_preset_dir(path: str | Path) -> bool:
    """A KerasHub preset directory: a ``config.json`` naming a KerasHub backbone."""
    path = Path(path)
    return path.is_dir() and (path / PRESET_CONFIG).is_file() and file_needs_hub(path)


def load_preset(path: str | Path):
    """``(backbone model, image converter or None)`` from a local preset directory."""
    keras_hub = require()
    try:
        model = keras_hub.models.Backbone.from_preset(str(path))
    except Exception as exc:
        raise GraftError(
            f"Cannot load a KerasHub backbone from {path}: {first_line(exc)}"
        ) from None
    converter = None
    if (Path(path) / "image_converter.json").is_file():
        converter = keras_hub.layers.ImageConverter.from_preset(str(path))
    return model, converter


def converter_mode(converter) -> str:
    """The graft preprocessing mode that does what a KerasHub image converter does.

    A converter maps raw 0-255 pixels to ``x * scale + offset``; graft builds the same
    scaling into the model as plain Keras layers (see :mod:`graft.core.preprocessing`).
    """
    scale = np.broadcast_to(np.asarray(1.0 if converter.scale is None else converter.scale), 3)
    offset = np.broadcast_to(np.asarray(0.0 if converter.offset is None else converter.offset), 3)
    known = {
        "none": (np.ones(3), np.zeros(3)),
        "unit": (np.full(3, 1 / 255), np.zeros(3)),
        "symmetric": (np.full(3, 1 / 127.5), np.full(3, -1.0)),
        "torch": (1 / (255 * IMAGENET_STD), -IMAGENET_MEAN / IMAGENET_STD),
    }
    for mode, (s, o) in known.items():
        if np.allclose(scale, s, rtol=1e-4, atol=1e-6) and np.allclose(offset, o, atol=1e-4):
            return mode
    raise GraftError(
        f"The preset's image converter scales pixels by {scale.tolist()} and shifts them by "
        f"{offset.tolist()}; graft has no preprocessing mode that does this.",
        hint="pass preprocess=none|unit|symmetric|torch|caffe to choose one.",
    )


def preset_name(path: str | Path) -> str:
    """The backbone class a preset directory holds (for messages)."""
    try:
        return json.loads((Path(path) / PRESET_CONFIG).read_text("utf-8"))["class_name"]
    except (OSError, KeyError, ValueError):
        return "KerasHub backbone"


def is_plain(model) -> bool:
    """A plain ``keras.Model``/``Sequential`` (its layers are serialised one by one)."""
    import keras

    return type(model) in (keras.Model, keras.Sequential) or type(model).__name__ == "Functional"


def check_round_trip(model, source: str) -> None:
    """Refuse a plain model holding a KerasHub layer whose config does not round-trip.

    A KerasHub backbone nested whole saves and loads through its own config; cutting one
    re-wraps its layers in a plain model, and some (``ViTPatchingAndEmbedding``) cannot
    be rebuilt from their own config, so the run's saved model would not load again.
    """
    import keras

    def plain_layers(container):
        for layer in container.layers:
            if isinstance(layer, keras.Model) and is_plain(layer):
                yield from plain_layers(layer)
            elif not isinstance(layer, keras.Model):
                yield layer

    for layer in plain_layers(model) if is_plain(model) else ():
        if not type(layer).__module__.startswith(MODULE):
            continue
        try:
            type(layer).from_config(layer.get_config())
        except Exception:
            raise GraftError(
                f"{source}: {type(layer).__name__} {layer.name!r} cannot be rebuilt from its "
                "own config, so a model cut out of this KerasHub backbone would not load again.",
                hint="use the backbone uncut (graft pools its output), or a cut before that layer.",
            ) from None
