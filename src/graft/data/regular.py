"""Reading a data file safely: regular files only, never unbounded.

A folder of images or a CSV manifest is data someone may hand you: an entry can be a
FIFO (``open`` blocks forever), a link to ``/dev/zero`` (``read`` never ends) or a huge
sparse file. :func:`read_regular` refuses all three before reading anything.
"""

from __future__ import annotations

import errno
import os
import stat

#: The largest image file graft reads (bytes): a bigger one is refused, never read.
MAX_FILE_BYTES = 1 << 29
_FILE_TYPES = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


def _shown(path) -> str:
    return os.fsencode(path).decode("utf-8", "replace")


def read_regular(path: str | os.PathLike, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file (symlinks followed), never more than ``limit``.

    The file is opened without blocking and checked on the open descriptor, so a FIFO,
    a device (e.g. a link to ``/dev/zero``) or a socket is refused before anything is
    read, and a file over ``limit`` bytes is refused instead of filling memory.

    Raises:
        OSError: The file cannot be opened, is not a regular file, or is too large
            (``strerror`` says which).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _FILE_TYPES.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise OSError(errno.EINVAL, f"not a regular file ({kind})", _shown(path))
        if info.st_size > limit:
            message = f"file too large ({info.st_size} bytes, limit {limit})"
            raise OSError(errno.EFBIG, message, _shown(path))
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"file too large (over {limit} bytes)", _shown(path))
    return data
