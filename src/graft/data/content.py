"""A data file's content digest: the one owner of "is this the same file?".

The data check reads every file once and records the digest of what it read
(:func:`remember`); later questions (a run's data fingerprint, the feature cache's key)
ask :func:`file_digest`, which reuses that digest only while the file's size, mtime
*and* ctime (which nobody can set back) are the ones seen when it was read, and hashes
the file again, in chunks, otherwise. Paths are never part of a digest: a file moved or
spelled another way is the same file; a file whose pixels changed is not.
"""

from __future__ import annotations

import hashlib
import os
import stat

_CHUNK = 1 << 20
#: ``{path: (stat key, digest)}`` for the files read in this process.
_SEEN: dict[str, tuple[tuple, str]] = {}


def _key(info: os.stat_result) -> tuple:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def bytes_digest(payload: bytes) -> str:
    """The digest of ``payload`` (the same as :func:`file_digest` of a file holding it)."""
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def remember(path: str | os.PathLike, info: os.stat_result, digest: str) -> None:
    """Record that ``path``, as ``info`` (its stat taken before reading), holds ``digest``."""
    _SEEN[os.fspath(path)] = (_key(info), digest)


def file_digest(path: str | os.PathLike) -> str:
    """The digest of a regular file's bytes (``"missing"``, ``"not a regular file"``)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError:
        return "missing"
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        seen = _SEEN.get(os.fspath(path))
        if seen is not None and seen[0] == _key(info):
            return seen[1]
        digest = hashlib.blake2b(digest_size=16)
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
