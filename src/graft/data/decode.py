"""The Pillow decode recipe: image file bytes -> the float array the model takes.

On a backend other than TensorFlow, training, evaluation and prediction read image
files with this one recipe (TensorFlow runs keep ``tf.io`` in their ``tf.data``
pipelines, :func:`graft.data.pipelines.decode_image`). The recipe is pure Pillow and
NumPy, so the same file gives the same array bit for bit whatever the backend:

1. the first frame, turned upright by its EXIF orientation (``ImageOps.exif_transpose``);
2. converted to RGB (or grayscale for a one-channel model) the way the data check's
   convert step converts what ``tf.io`` cannot read (palette, 1-bit, RGBA, CMYK: Pillow's
   ``convert``); 16-bit images are scaled to 8 bits (``/ 257``, as ``tf.io`` does);
3. resized to the model's input size with one named filter (:data:`FILTER`), uint8 HWC;
4. returned as float32, 0-255, like the ``tf.io`` recipe (the model preprocesses).

:func:`recipe` names it for ``config.yaml`` and ``metrics.json``.
"""

from __future__ import annotations

import io
import os

import numpy as np

from graft.data.regular import read_regular

#: The one resize filter of the recipe (Pillow's name for it).
FILTER = "bilinear"


def recipe(backend: str | None = None) -> dict:
    """What decodes image files on ``backend`` (default: Keras's), for the run's record:
    ``{"library": "pillow", "version": ..., "filter": "bilinear"}``, or ``tf.io`` on
    TensorFlow."""
    if backend is None:
        import keras

        backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return {"library": "tf.io", "version": tf.__version__, "filter": "bilinear"}
    import PIL

    return {"library": "pillow", "version": PIL.__version__, "filter": FILTER}


def _resample():
    from PIL import Image

    return getattr(Image.Resampling, FILTER.upper())


def _to_mode(image, channels: int):
    """``image`` as 8-bit RGB (``channels=3``) or grayscale (``channels=1``)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.float64)
        if image.mode != "I" or wide.max(initial=0) > 255:
            wide = wide / 257.0
        image = Image.fromarray(np.clip(np.round(wide), 0, 255).astype(np.uint8), "L")
    target = "RGB" if channels == 3 else "L"
    if image.mode != target:
        image = image.convert(target)
    return image


def decode(data: bytes, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """Encoded image bytes -> float32 ``(height, width, channels)``, 0-255 (the recipe).

    Raises:
        ValueError: The bytes are not an image Pillow can read.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)  # the first frame of an animation
            upright = ImageOps.exif_transpose(image)
            converted = _to_mode(upright, channels)
            height, width = int(image_size[0]), int(image_size[1])
            if converted.size != (width, height):
                converted = converted.resize((width, height), _resample())
            array = np.asarray(converted, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"not a readable image: {exc}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return array.astype(np.float32)


def load(path: str | os.PathLike, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """One image file through :func:`decode` (never a FIFO or a device)."""
    return decode(read_regular(path), image_size, channels)
