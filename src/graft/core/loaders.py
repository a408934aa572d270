"""Backbone loaders: a registry name, a user model file (optionally cut) or either.

:func:`load_backbone` builds a registry architecture with ``weights="imagenet"``
(Keras's own download and cache), a local weights file, or ``None`` (random init);
:func:`load_user_backbone` loads any Keras model file or KerasHub preset directory and
optionally cuts it at a layer (:func:`from_model` does the same for a ``keras.Model``);
:func:`resolve` is the one entry point the rest uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import keras

from graft.config.catalog import BLOCK_COUNTS_FILE
from graft.core import blocks as _blocks
from graft.core import cutting, hub
from graft.core.blocks import Block
from graft.core.preprocessing import EFFICIENTNET_V1, check_mode, imagenet_stem_scaling
from graft.core.registry import REGISTRY, block_rule_for, get_spec
from graft.errors import GraftError, WeightsUnavailableError, first_line


@dataclass
class Backbone:
    """A built backbone ready to be grafted: the model, its blocks and how to feed it."""

    model: keras.Model
    blocks: list[Block]
    preprocess: str
    image_size: tuple[int, int]
    channels: int
    source: str
    weights: str
    requires: tuple[str, ...] = ()  # packages beyond Keras that loading the model needs
    #: How ``preprocess`` was inferred or checked (:mod:`graft.core.scaling`), if it was.
    scaling: dict | None = None

    def describe(self) -> dict:
        extra = {} if self.scaling is None else {"preprocess_evidence": self.scaling}
        return {
            **({"requires": list(self.requires)} if self.requires else {}),
            **extra,
            "source": self.source,
            "weights": self.weights,
            "preprocess": self.preprocess,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "blocks": len(self.blocks),
            "params": self.model.count_params(),
        }


def is_model_path(name: str) -> bool:
    """Whether a --backbone value names a model file/directory rather than the registry."""
    return (
        name.endswith((".keras", ".h5", ".hdf5"))
        or os.sep in name
        or "/" in name
        or Path(name).exists()
    )


def load_backbone(
    name: str,
    weights: str | None = "imagenet",
    image_size: int | None = None,
    alpha: float | None = None,
) -> Backbone:
    """Build a ``keras.applications`` backbone without its classifier.

    Args:
        name: Registry name, e.g. ``"mobilenet_v2"`` (see ``graft backbones``).
        weights: ``"imagenet"`` (Keras's cache, downloading once), the path of a
            weights file (``.weights.h5`` or Keras's ``*_notop.h5`` download), or
            ``None``/``"none"`` for random initialisation.
        image_size: Input side in pixels; defaults to the architecture's own.
        alpha: Width multiplier for the MobileNet families.

    Returns:
        A :class:`Backbone`.

    Example:
        >>> bb = load_backbone("mobilenet_v2", weights=None, image_size=96, alpha=0.35)
        >>> bb.preprocess, bb.image_size
        ('symmetric', (96, 96))
    """
    spec = get_spec(name)
    size = int(image_size or spec.default_size)
    if size < spec.min_size:
        raise GraftError(
            f"Image size {size} is below {spec.name}'s minimum of {spec.min_size} pixels.",
            hint=f"pass image_size={spec.min_size} or more.",
        )
    kwargs = {}
    if alpha is not None:
        if not spec.takes_alpha:
            raise GraftError(
                f"{spec.name} has no width multiplier (alpha is for MobileNets). "
                f"Received: alpha={alpha}"
            )
        kwargs["alpha"] = alpha
    weights_arg, weights_label = _resolve_weights(weights)
    constructor = getattr(keras.applications, spec.constructor)
    from_file = weights_arg not in (None, "imagenet")
    scaled = from_file and spec.constructor in EFFICIENTNET_V1
    try:
        model = _build_application(
            constructor,
            include_top=False,
            weights=None if scaled else weights_arg,
            input_shape=(size, size, 3),
            **kwargs,
        )
        if scaled:
            model = imagenet_stem_scaling(model)
            model.load_weights(weights_arg)
    except WeightsUnavailableError:
        raise
    except ValueError as exc:  # Keras's own validation (sizes, alpha, weight shapes)
        raise GraftError(f"Cannot build {spec.name}: {first_line(exc)}") from None
    return Backbone(
        model=model,
        blocks=_blocks.group(model, spec.blocks),
        preprocess=spec.preprocess,
        image_size=(size, size),
        channels=3,
        source=spec.name,
        weights=weights_label,
    )


def _resolve_weights(weights) -> tuple[str | None, str]:
    if weights is None or str(weights).lower() == "none":
        return None, "none"
    if weights == "imagenet":
        return "imagenet", "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Weights file not found: {weights}.",
            hint="pass weights=imagenet, weights=none, or the path of a weights file.",
        )
    return str(path), str(path.resolve())


class _LastChar:
    """A text stream that passes everything on and remembers its last character."""

    def __init__(self, stream):
        self.stream, self.last = stream, ""

    def write(self, text: str) -> int:
        if text:
            self.last = text[-1]
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


_URL = re.compile(r"https?://\S+?(?=[:\s]|$)")


def _build_application(constructor, **kwargs) -> keras.Model:
    """Call a keras.applications constructor; turn a failed download into one line."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)  # an unreachable host must fail fast, not hang
    stdout = _LastChar(sys.stdout)
    try:
        with contextlib.redirect_stdout(stdout):
            return constructor(**kwargs)
    except Exception as exc:
        if stdout.last not in ("", "\n"):  # Keras's "Downloading data from ..." line
            print(flush=True)  # the error goes on a line of its own
        text = str(exc)
        if kwargs.get("weights") == "imagenet" and (
            "URL fetch failure" in text or "urlopen" in text.lower()
        ):
            url = _URL.search(text)
            where = url.group(0) if url else "the Keras applications weights bucket"
            cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
            raise WeightsUnavailableError(
                "ImageNet weights are not in Keras's cache and could not be downloaded "
                "(no network?).",
                hint=f"on a connected machine download {where} and pass weights="
                f"PATH_TO_THAT_FILE, or put it in {cache}.",
            ) from None
        if isinstance(exc, ValueError):
            raise
        raise GraftError(f"Cannot build the backbone: {first_line(exc)}") from None
    finally:
        socket.setdefaulttimeout(previous)


def load_user_backbone(
    path: str,
    cut: str | None = None,
    preprocess: str | None = None,
    weights: str | None = None,
    safe_mode: bool = True,
    image_size: int | None = None,
) -> Backbone:
    """Use any saved Keras model as a backbone, optionally cut at a named layer.

    Args:
        path: A ``.keras`` or legacy ``.h5`` model file, or a KerasHub preset directory
            (``Backbone.save_to_preset``; needs ``keras-graft[hub]``).
        cut: Name of a layer; the backbone ends at its output and everything after it
            (the old head) is dropped. ``trunk/inner`` cuts inside the nested model
            ``trunk``. ``None`` keeps the whole model.
        preprocess: How raw 0-255 pixels must be scaled for this model (see
            ``graft.core.preprocessing.MODES``); ``None``: the preset's image converter's
            scaling if it has one, else ``none`` (the model scales its own input).
        weights: ``None`` keeps the file's weights; ``"none"`` re-initialises them
            (training from scratch on the same architecture); a path loads weights.
        safe_mode: Refuse files whose loading could run arbitrary code (Lambda layers).
        image_size: Input side for a model that takes any size (``(None, None, 3)``).

    Returns:
        A :class:`Backbone` whose blocks follow :mod:`graft.core.blocks` (nested
        sub-models are expanded into their own blocks).
    """
    if weights == "imagenet":
        raise GraftError(
            "weights=imagenet is for registry backbones; a model file brings its own.",
            hint="leave weights= out to keep the file's weights, or pass none or a path.",
        )
    file = Path(path).expanduser()
    if not file.exists():
        raise GraftError(
            f"Backbone file not found: {path}.",
            hint="pass a registry name (see 'graft backbones') or an existing .keras/.h5 file.",
        )
    converter = None
    if hub.is_preset_dir(file):
        model, converter = hub.load_preset(file)
    elif file.is_dir():
        raise GraftError(
            f"{path} is a directory; graft loads backbones from .keras or .h5 files "
            "and KerasHub preset directories.",
            hint="re-save the model with model.save('backbone.keras').",
        )
    else:
        model = _load_file(file, safe_mode)
    if preprocess is None and converter is not None:
        preprocess = hub.converter_mode(converter)
        if image_size is None and getattr(converter, "image_size", None):
            image_size = int(converter.image_size[0])
    return from_model(
        model,
        source=str(file.resolve()),
        cut=cut,
        preprocess=preprocess,
        weights=weights,
        image_size=image_size,
    )


def _load_file(file: Path, safe_mode: bool) -> keras.Model:
    if hub.file_needs_hub(file):
        hub.require()  # registers KerasHub's layers for deserialisation
    try:
        model = keras.saving.load_model(file, compile=False, safe_mode=safe_mode)
    except Exception as exc:
        text = first_line(exc)
        if "safe_mode" in text or "Lambda" in text:
            raise GraftError(
                f"{file} contains code (a Lambda layer) that would run when loaded; refused.",
                hint="only if you trust the file, pass safe_mode=False.",
            ) from None
        raise GraftError(f"Cannot load a Keras model from {file}: {text}") from None
    if not isinstance(model, keras.Model):
        raise GraftError(f"{file} does not hold a Keras model.")
    return model


def from_model(
    model: keras.Model,
    source: str | None = None,
    cut: str | None = None,
    preprocess: str | None = None,
    weights: str | None = None,
    image_size: int | None = None,
) -> Backbone:
    """A :class:`Backbone` from a ``keras.Model`` (loaded from a file, or the caller's own).

    Arguments as for :func:`load_user_backbone`; ``source`` names where it came from.
    """
    preprocess = check_mode(preprocess or "none")
    source = source or f"<{type(model).__name__} {model.name!r}>"
    rule = block_rule_for(model)  # the family's, also for a cut of it
    uncut = model
    if cut is not None:
        model = cutting.cut(model, cut, source)
        hub.check_round_trip(model, source)
    if weights is not None and str(weights).lower() == "none":
        model = _reinitialised(model)
        weights_label = "none"
    elif weights is not None:
        weights_file = _resolve_weights(weights)[0]
        model.load_weights(weights_file)
        weights_label = str(Path(weights_file).resolve())
    else:
        weights_label = source
    if len(model.inputs) != 1 or len(model.input_shape) != 4:
        raise GraftError(
            f"{source} takes inputs of shape {model.input_shape}; graft needs one "
            "(height, width, channels) image input.",
        )
    _, height, width, channels = model.input_shape
    if height is None or width is None:
        if image_size is None:
            raise GraftError(
                f"{source} takes images of any size {model.input_shape}; "
                "graft needs to know which.",
                hint="pass image_size=N.",
            )
        height = width = int(image_size)
    elif image_size is not None and (image_size, image_size) != (height, width):
        raise GraftError(
            f"{source} takes {height}x{width} images; image_size={image_size} does not fit it.",
            hint="leave image_size= out for model files; images are resized to fit.",
        )
    if channels is None:
        raise GraftError(f"{source} takes inputs of shape {model.input_shape}: channels unknown.")
    found = _blocks.group(uncut, rule)
    if uncut is not model:  # cut or re-initialised: the same blocks, up to the cut
        found = _blocks.restrict(found, uncut, model)
    return Backbone(
        model=model,
        blocks=found,
        preprocess=preprocess,
        image_size=(int(height), int(width)),
        channels=int(channels),
        source=source,
        weights=weights_label,
        requires=(hub.PACKAGE,) if hub.is_hub_object(model) else (),
    )


def _reinitialised(model: keras.Model) -> keras.Model:
    """Same architecture, fresh initialisers."""
    if hub.is_plain(model):
        return keras.models.clone_model(model)
    return type(model).from_config(model.get_config())  # a subclass (a KerasHub backbone)


def resolve(
    backbone: str | keras.Model,
    weights: str | None = None,
    image_size: int | None = None,
    alpha: float | None = None,
    cut: str | None = None,
    preprocess: str | None = None,
    safe_mode: bool = True,
) -> Backbone:
    """Registry name, model path or ``keras.Model`` -> :class:`Backbone`; the one entry point.

    ``weights=None`` means the backbone's own pre-trained weights: ImageNet for a
    registry name, the file's (or object's) weights otherwise. ``cut`` ends any of them
    at a layer (a registry backbone's blocks follow its family's rule, up to the cut).
    """
    if isinstance(backbone, keras.Model):
        return from_model(
            backbone, cut=cut, preprocess=preprocess, weights=weights, image_size=image_size
        )
    if is_model_path(backbone):
        return load_user_backbone(
            backbone,
            cut=cut,
            preprocess=preprocess,
            weights=weights,
            safe_mode=safe_mode,
            image_size=image_size,
        )
    bb = load_backbone(
        backbone,
        weights="imagenet" if weights is None else weights,
        image_size=image_size,
        alpha=alpha,
    )
    if preprocess is not None:
        bb.preprocess = check_mode(preprocess)
    return bb if cut is None else cut_backbone(bb, cut)


def cut_backbone(bb: Backbone, cut: str) -> Backbone:
    """``bb`` ending at the layer ``cut`` (``trunk/inner`` inside a nested model): its
    blocks are ``bb``'s, up to the cut (:func:`graft.core.blocks.restrict`), whatever the
    cut; preprocessing, size and weights are ``bb``'s."""
    model = cutting.cut(bb.model, cut, bb.source)
    found = _blocks.restrict(bb.blocks, bb.model, model)
    return dataclasses.replace(bb, model=model, blocks=found)


def _write_block_counts() -> None:  # python -m graft.core.loaders
    import json

    counts = {}
    for spec in REGISTRY.values():
        bb = load_backbone(spec.name, weights=None)
        counts[spec.name] = len(bb.blocks)
        print(spec.name, counts[spec.name], flush=True)
        keras.backend.clear_session()
    BLOCK_COUNTS_FILE.write_text(json.dumps(counts, indent=1) + "\n", "utf-8")


if __name__ == "__main__":
    _write_block_counts()
