"""How much of an image the data check decodes: enough to find every damage the training
pipeline's ``tf.io`` decode would fail on, and no more.

The pixels a model trains on always come from the pipeline's ``tf.io`` decode (the
decoder the exported model and ``predict`` use); the check's decode only decides
whether a file is usable.

* JPEG: decoded at 1/8 scale (:meth:`PIL.Image.Image.draft`). libjpeg still parses the
  whole entropy-coded stream, so a truncated or corrupt scan fails just as it does at
  full size, but the inverse DCT and colour conversion run on 1/64 of the pixels.
* PNG: decoded in full (only inflating the data finds a broken zlib stream whose
  chunk checksums are intact; inflating is most of the cost of a PNG decode), and
  the chunk structure is checked the way libpng, ``tf.io``'s PNG decoder, checks it
  (:func:`png_chunk_problem`): Pillow's decode accepts a file without its ``IEND``
  chunk or with a damaged checksum after the pixel data, ``tf.io`` does not.
* Everything else, and every image the check converts to PNG for the pipeline: full
  decode.
"""

from __future__ import annotations

import struct
import zlib

_CHUNK = struct.Struct(">I4s")
_CRC = struct.Struct(">I")


def decode_for_check(image, full: bool = False) -> None:
    """Decode an opened Pillow ``image`` as far as the check needs (see the module).

    Args:
        image: A freshly opened Pillow image; its ``size`` and ``mode`` are read first.
        full: Decode every pixel (the image is written out as a converted copy).

    Raises:
        Exception: Whatever Pillow raises for a damaged file.
    """
    if image.format == "JPEG" and not full:
        width, height = image.size
        image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
    image.load()


def png_chunk_problem(payload: bytes) -> str | None:
    """What libpng would refuse in a PNG's chunks, or ``None``.

    Every critical chunk (``IHDR``, ``PLTE``, ``IDAT``, ``IEND``) must be complete with a
    matching CRC, and the file must reach ``IEND``. Ancillary chunks with a bad CRC are
    skipped, as libpng skips them.
    """
    view = memoryview(payload)
    pos = 8  # after the signature
    while True:
        if pos + 12 > len(view):
            return "truncated PNG file (no IEND chunk)"
        length, cid = _CHUNK.unpack_from(view, pos)
        end = pos + 12 + length
        name = cid.decode("latin-1")
        if end > len(view):
            return f"truncated PNG file (in {name})"
        critical = not cid[0] & 0x20
        if critical and zlib.crc32(view[pos + 4 : end - 4]) != _CRC.unpack_from(view, end - 4)[0]:
            return f"broken PNG file (bad checksum in {name})"
        if cid == b"IEND":
            return None
        pos = end
