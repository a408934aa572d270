"""The one verified, streaming store behind every cache (features, activations, derived
features): NumPy files on disk, plain arrays in and out, no framework.

An entry is two files in the store's folder:

- ``<key>.npy``: a valid ``.npy`` file (``np.load`` reads it) of ``rows`` rows of ``shape``
  and ``dtype``, its data starting at byte ``offset``;
- ``<key>.json``: its *description* (``format``, ``key``, ``rows``, ``shape``, ``dtype``,
  ``offset``, ``seconds``) and a ``sha256`` that covers the description **and** the
  content. Written last, it is the commit point.

Why the description is inside the checksum: the description says how to read the
content, so an edited offset or dtype would make the reader return other numbers from an
intact file, and an entry copied from another key (another backbone, other data) would be
"intact" too. Both are refused; so is an entry whose ``.npy`` header disagrees with its
description, or whose file size is not exactly what the description implies (checked
before a byte of content is read, so a huge file is never read). Content is hashed in
chunks: an entry never has to fit in memory to be verified.

Writes stream to ``<key>.npy.<host>.<pid>.part`` (created exclusively, never through a
link) and are renamed into place; a writer killed with ``kill -9`` leaves its part file
behind, and the next :func:`open_store` removes parts whose process is gone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import socket
import stat
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The on-disk format. Entries written by another format are refused (and recomputed) with
#: a line naming both versions. 1: checksum of the content only (graft <= 0.x).
FORMAT = 2
#: The dtypes an entry may hold (which also bounds its size by what the caller expects).
DTYPES = ("float16", "float32")
#: Bytes per read while hashing or loading an entry.
CHUNK = 1 << 22
#: Largest description file read (a real one is a few hundred bytes).
MAX_INDEX_BYTES = 1 << 16
#: Part files of another host are removed once this old (seconds): their pid says nothing.
STALE_FOREIGN_PART = 24 * 3600
_KEY = re.compile(r"[0-9A-Za-z_-]{1,128}")
_HOST = re.sub(r"[^0-9A-Za-z-]", "-", socket.gethostname())[:64] or "host"

# The reasons an entry is refused (one clause each, completing "recomputed: ...").
MISSING_INDEX = "its checksum index is missing or unreadable"
DAMAGED = "its checksum does not match (the file was damaged)"
MISFIT = "its content does not fit the data"
FOREIGN = "its description names another entry (copied from another key)"
RESIZED = "its size does not fit its description"
REHEADED = "its .npy header does not match its description (offset, dtype or shape edited)"


def _old_format(version) -> str:
    return f"it was written in cache format {version}; this graft reads format {FORMAT}"


@dataclass(frozen=True)
class Entry:
    """One verified (or just written) entry: ``rows`` rows of ``shape`` and ``dtype``,
    starting at byte ``offset`` of ``path``; ``seconds`` is what computing it cost."""

    key: str
    path: Path
    rows: int
    shape: tuple
    dtype: str
    offset: int
    sha256: str
    seconds: float = 0.0

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def bytes(self) -> int:
        return self.offset + self.rows * self.row_bytes

    def description(self) -> dict:
        return {
            "format": FORMAT,
            "key": self.key,
            "rows": self.rows,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "offset": self.offset,
            "seconds": self.seconds,
        }


class Float16Overflow(Exception):
    """A chunk does not fit float16: write the entry again as float32."""


def _checksum(description: dict, content: str) -> str:
    """The checksum of an entry: its description (without the checksum) and the digest of
    its content, so neither can change alone."""
    text = json.dumps({**description, "content": content}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _header(rows: int, shape: tuple, dtype: str) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (rows, *shape)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _open_regular(path: Path) -> int:
    """A read descriptor of ``path`` if it is a regular file (never through a link)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path.name} is not a regular file")
    return fd


def _read(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from ``fd`` (the one place entries are read, in bounded calls)."""
    return os.read(fd, size)


def _write_new(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``path`` through an exclusive part file renamed into place."""
    part = _part(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(part, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(part, path)
    except BaseException:  # nothing half-written stays behind
        part.unlink(missing_ok=True)
        raise


def _part(path: Path) -> Path:
    return path.with_name(f"{path.name}.{_HOST}.{os.getpid()}.part")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


class Store:
    """A folder of verified entries (see the module's docstring). Use :func:`open_store`."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"Store({str(self.directory)!r})"

    def path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"Invalid cache key: {key!r}. Expected letters, digits, '-' or '_'.")
        return self.directory / f"{key}.npy"

    def clean(self) -> list[str]:
        """Remove part files left by writers that died (``kill -9``); their names."""
        removed = []
        for part in self.directory.glob("*.part"):
            fields = part.name.rsplit(".", 3)  # <name>.<host>.<pid>.part
            try:
                host, pid = fields[1], int(fields[2])
                old = time.time() - part.lstat().st_mtime > STALE_FOREIGN_PART
            except (IndexError, ValueError, OSError):
                continue  # not a part file of this store
            if (host == _HOST and not _alive(pid)) or (host != _HOST and old):
                part.unlink(missing_ok=True)
                removed.append(part.name)
        return removed

    # ------------------------------------------------------------------ reading

    def find(self, key: str, rows: int, shape: tuple):
        """``(entry, None)`` if ``key`` is stored, intact and holds ``rows`` rows of
        ``shape``; ``(None, why)`` if it is stored but refused; ``(None, None)``
        if it is not stored. The content is hashed in chunks, never read whole."""
        return self._verify(key, rows, shape, into=None)

    def load(self, key: str, rows: int, shape: tuple):
        """Like :meth:`find`, but also reads the content (one pass: hashed while read):
        ``(array, entry, None)`` or ``(None, None, why_or_None)``."""
        holder: list = []
        entry, why = self._verify(key, rows, shape, into=holder)
        return (holder[0] if entry is not None else None), entry, why

    def _description(self, key: str) -> dict:
        index = self.path(key).with_suffix(".json")
        fd = _open_regular(index)
        try:
            if os.fstat(fd).st_size > MAX_INDEX_BYTES:
                raise ValueError("index too large")
            data = _read(fd, MAX_INDEX_BYTES + 1)
        finally:
            os.close(fd)
        description = json.loads(data.decode("utf-8"))
        if not isinstance(description, dict):
            raise ValueError("not an object")
        return description

    def _verify(self, key: str, rows: int, shape, into):
        path = self.path(key)
        if not path.is_file():
            return None, None
        try:
            index = self._description(key)
        except (OSError, ValueError, UnicodeDecodeError):
            return None, MISSING_INDEX
        if index.get("format") != FORMAT:
            return None, _old_format(index.get("format", 1))
        try:
            entry = Entry(
                str(index["key"]),
                path,
                int(index["rows"]),
                tuple(int(d) for d in index["shape"]),
                np.dtype(index["dtype"]).name,
                int(index["offset"]),
                str(index["sha256"]),
                float(index.get("seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError):
            return None, MISSING_INDEX
        if entry.key != key:
            return None, FOREIGN
        if entry.rows != rows or entry.shape != tuple(shape) or entry.dtype not in DTYPES:
            return None, MISFIT
        if entry.offset != len(_header(entry.rows, entry.shape, entry.dtype)):
            return None, REHEADED
        try:
            fd = _open_regular(path)
        except OSError as exc:
            return None, f"it cannot be read ({exc})"
        try:
            return self._check(fd, entry, index, into)
        finally:
            os.close(fd)

    def _check(self, fd: int, entry: Entry, index: dict, into):
        if os.fstat(fd).st_size != entry.bytes:
            return None, RESIZED  # decided before a byte of content is read
        header = _read(fd, entry.offset)
        if header != _header(entry.rows, entry.shape, entry.dtype):
            return None, REHEADED
        digest = hashlib.sha256(header)
        target = np.empty((entry.rows, *entry.shape), entry.dtype) if into is not None else None
        view = None if target is None else memoryview(target.reshape(-1).view("uint8"))
        done, total = 0, entry.rows * entry.row_bytes
        while done < total:
            chunk = _read(fd, min(CHUNK, total - done))
            if not chunk:
                return None, RESIZED
            digest.update(chunk)
            if view is not None:
                view[done : done + len(chunk)] = chunk
            done += len(chunk)
        description = {k: v for k, v in index.items() if k != "sha256"}
        if _checksum(description, digest.hexdigest()) != entry.sha256:
            return None, DAMAGED
        if target is not None:
            if target.dtype.kind == "f" and not np.isfinite(target).all():
                return None, MISFIT
            into.append(target)
        return entry, None

    # ------------------------------------------------------------------ writing

    def write(self, key: str, rows: int, chunks: Iterable, dtype="float32") -> Entry:
        """Stream ``chunks`` (arrays of rows, ``rows`` in all) into entry ``key``.

        ``dtype`` is the stored dtype, or ``dtype(first_chunk) -> str`` to choose it on
        the first chunk (its time is not counted in the entry's ``seconds``). A float16
        entry whose later chunk does not fit raises :class:`Float16Overflow` (write it
        again as float32); nothing half-written stays behind. The description is
        written last: an entry without one is never used.
        """
        path = self.path(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        found = {"rows": 0, "shape": (), "dtype": None, "start": time.perf_counter()}

        def header(values) -> bytes:
            chosen = time.perf_counter()
            kind = dtype if isinstance(dtype, str) else dtype(values)
            found["start"] += time.perf_counter() - chosen  # not a cost of the cache itself
            found["dtype"] = np.dtype(kind)
            found["shape"] = tuple(int(d) for d in values.shape[1:])
            return _header(rows, found["shape"], found["dtype"])

        def data():
            for chunk in chunks:
                values = np.asarray(chunk)
                if found["dtype"] is None:
                    yield _hashed(digest, header(values))
                with np.errstate(over="ignore"):  # an overflow is checked just below
                    cast = np.ascontiguousarray(values.astype(found["dtype"]))
                if cast.dtype == "float16" and not np.isfinite(cast).all():
                    raise Float16Overflow
                found["rows"] += len(cast)
                yield _hashed(digest, cast.tobytes())
            if found["rows"] != rows:
                raise RuntimeError(f"Internal error: {found['rows']} rows computed for {rows}.")
            if found["dtype"] is None:  # no rows at all: still a valid .npy file
                yield _hashed(digest, header(np.zeros((0,), "float32")))

        _write_new(path, data())
        shape, kind = found["shape"], found["dtype"].name
        entry = Entry(key, path, rows, shape, kind, len(_header(rows, shape, kind)), "")
        entry = dataclasses.replace(entry, seconds=round(time.perf_counter() - found["start"], 6))
        description = entry.description()
        checksum = _checksum(description, digest.hexdigest())
        index = json.dumps({**description, "sha256": checksum}, sort_keys=True).encode()
        _write_new(path.with_suffix(".json"), [index])  # the commit point
        return dataclasses.replace(entry, sha256=checksum)


def reader(entry: Entry) -> Callable[[np.ndarray], np.ndarray]:
    """``rows(indices) -> float32 array``: reads only those rows of a verified entry
    (contiguous runs in one read), so the entry never has to fit in memory."""
    width = math.prod(entry.shape)
    size = entry.row_bytes
    fd = _open_regular(entry.path)

    def rows(indices) -> np.ndarray:
        indices = np.asarray(indices, "int64")
        out = np.empty((len(indices), width), entry.dtype)
        start = 0
        while start < len(indices):
            stop = start + 1
            while stop < len(indices) and indices[stop] == indices[stop - 1] + 1:
                stop += 1
            at = entry.offset + size * int(indices[start])
            data = os.pread(fd, size * (stop - start), at)
            out[start:stop] = np.frombuffer(data, entry.dtype).reshape(stop - start, width)
            start = stop
        return out.reshape(len(indices), *entry.shape).astype("float32")

    weakref.finalize(rows, os.close, fd)
    return rows


def _hashed(digest, data: bytes) -> bytes:
    digest.update(data)
    return data


def open_store(directory: str | os.PathLike) -> Store:
    """The store in ``directory``, with the part files of dead writers removed."""
    store = Store(directory)
    if store.directory.is_dir():
        store.clean()
    return store
