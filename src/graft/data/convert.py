"""Images ``tf.io`` cannot decode correctly (palette or 1-bit BMPs, formats it does not
read) are converted once to PNG in a folder that lives as long as the process."""

from __future__ import annotations

import os
import tempfile
import threading

# Format/mode combinations tf.io.decode_image reads correctly; the rest go through Pillow.
_TF_NATIVE = {
    "JPEG": {"RGB", "L", "CMYK"},
    "PNG": None,  # every PNG mode, 16-bit included (tf scales it properly; Pillow clips)
    "GIF": None,
    "BMP": {"RGB", "RGBA"},
    "WEBP": None,
}
_MODE_NAMES = {
    "L": "grayscale",
    "LA": "grayscale with alpha",
    "RGBA": "RGBA",
    "CMYK": "CMYK",
    "P": "palette",
    "PA": "palette with alpha",
    "1": "1-bit",
    "I;16": "16-bit",
    "I;16B": "16-bit",
    "I;16L": "16-bit",
    "I": "32-bit integer",
    "F": "32-bit float",
    "YCbCr": "YCbCr",
    "LAB": "LAB",
    "HSV": "HSV",
}


def describe_mode(image) -> str:
    """A readable name of a Pillow image's colour mode."""
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        return "palette with transparency"
    return _MODE_NAMES.get(mode, mode)


def needs_pillow(fmt: str, mode: str, frames: int = 1) -> bool:
    """Whether ``tf.io.decode_image`` would misread this format/mode (Pillow converts it)."""
    native = _TF_NATIVE.get(fmt, set())
    return (native is not None and mode not in native) or (fmt == "WEBP" and frames > 1)


def write_png_copy(image, folder: str, digest: str) -> str:
    """An RGB PNG copy of ``image`` named by content, written whole then renamed."""
    image.seek(0)
    path = os.path.join(folder, f"{digest}.png")
    if not os.path.exists(path):
        partial = f"{path}.{threading.get_ident()}.tmp"
        image.convert("RGB").save(partial, "PNG")
        os.replace(partial, path)
    return path


_CONVERTED: list = []


def converted_dir() -> tempfile.TemporaryDirectory:
    """The folder of converted copies: one per process, removed when the process ends.

    The copies are named by content digest, so each image is converted once. The folder
    must outlive every pipeline that reads from it (the check's report and even the
    split objects may be gone by then), hence the lifetime of the process.
    """
    if not _CONVERTED:
        _CONVERTED.append(tempfile.TemporaryDirectory(prefix="graft-converted-"))
    return _CONVERTED[0]
