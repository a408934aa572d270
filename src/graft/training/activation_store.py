"""Storage of the activation cache (:mod:`graft.training.activations`): one entry per
split and view, streamed to ``<key>.npy`` with its checksum in ``<key>.json``, read back
row by row so that it never has to fit in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from graft.training import cache

FORMAT_VERSION = 1
#: Largest difference of the top's predicted probabilities (first batch) between float16
#: and float32 activations for which entries are stored as float16.
PARITY = 1e-3
#: ``None``: choose by :data:`PARITY`; ``"float32"``/``"float16"``: always that dtype.
DTYPE: str | None = None


def cache_key(bottom: keras.Model, boundary, source: str, content: str, view: str):
    """Everything that determines the entry: layers, weights, boundary, sizes, data, view."""
    layers = bottom.get_layer("graft_bottom_backbone").layers
    description = {
        "format": FORMAT_VERSION,
        "source": source,
        "layers": [
            [type(x).__name__, {k: v for k, v in x.get_config().items() if k != "name"}]
            for x in [*bottom.layers[1:-1], *layers]
        ],
        "boundary": [boundary.index, boundary.layer, list(boundary.shape)],
        "input": list(bottom.input_shape[1:]),
        "weights": cache.weights_fingerprint(bottom),
        "content": content,
        "view": view,
        "keras": keras.__version__,
    }
    return cache.digest(description)


@dataclass
class Entry:
    """One stored split: ``rows`` activations of ``shape`` and ``dtype`` at ``offset``."""

    path: Path
    rows: int
    shape: tuple
    dtype: str
    offset: int
    hit: bool
    seconds: float
    bytes: int
    note: str | None = None


def _header(rows: int, shape: tuple, dtype: str) -> bytes:
    import io

    buffer = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (rows, *shape)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _verify(path: Path, rows: int, shape: tuple) -> tuple[Entry | None, str | None]:
    """The entry at ``path`` if its index, shape and streamed checksum agree."""
    if not path.is_file():
        return None, None
    try:
        index = json.loads(path.with_suffix(".json").read_text("utf-8"))
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    except (OSError, ValueError):
        return None, "its checksum index is missing or unreadable"
    if digest.hexdigest() != index.get("sha256"):
        return None, "its checksum does not match (the file was damaged)"
    if index.get("rows") != rows or tuple(index.get("shape", ())) != shape:
        return None, "its content does not fit the data"
    size = path.stat().st_size
    entry = Entry(path, rows, shape, index["dtype"], index["offset"], True, 0.0, size)
    entry.seconds = float(index.get("seconds", 0.0))
    return entry, None


def _choose_dtype(top: keras.Model, batch: np.ndarray) -> str:
    if DTYPE is not None:
        return DTYPE
    if not np.isfinite(batch.astype("float16")).all():
        return "float32"
    # Called once per entry on one batch: eagerly (tracing a predict function costs more).
    full = keras.ops.convert_to_numpy(top(batch, training=False))
    half = keras.ops.convert_to_numpy(
        top(batch.astype("float16").astype("float32"), training=False)
    )
    return "float16" if float(np.abs(full - half).max()) <= PARITY else "float32"


class _Overflow(Exception):
    """A later batch does not fit float16."""


def store(bottom, top, images, boundary, key: str, rows: int, directory: Path, dtype=None):
    """Stream ``bottom`` over ``images`` (a dataset of batches) into ``directory/<key>.npy``
    (reused when present and verified)."""
    path = directory / f"{key}.npy"
    entry, problem = _verify(path, rows, boundary.shape)
    if entry is not None:
        return entry
    start = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    digest, done, offset = hashlib.sha256(), 0, 0
    # One function traced once for any batch size (train and val share it; predict_on_batch
    # traces again for a last, smaller batch).
    forward = cache.forward_function(bottom, images.element_spec)
    try:
        with open(partial, "wb") as handle:
            for batch in images:
                values = np.asarray(forward(batch), dtype="float32")
                if dtype is None:
                    chosen = time.perf_counter()
                    dtype = _choose_dtype(top, values)
                    start += time.perf_counter() - chosen  # not a cost of the cache itself
                    head = _header(rows, boundary.shape, dtype)
                    offset = len(head)
                    handle.write(head)
                    digest.update(head)
                cast = np.ascontiguousarray(values.astype(dtype))
                if dtype == "float16" and not np.isfinite(cast).all():
                    raise _Overflow
                data = cast.tobytes()
                handle.write(data)
                digest.update(data)
                done += len(values)
    except BaseException as exc:  # nothing half-written stays behind
        partial.unlink(missing_ok=True)
        if isinstance(exc, _Overflow) and dtype == "float16":
            return store(bottom, top, images, boundary, key, rows, directory, "float32")
        raise
    if done != rows:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"Internal error: the bottom gave {done} activations for {rows}.")
    seconds = time.perf_counter() - start
    index = {
        "sha256": digest.hexdigest(),
        "rows": rows,
        "shape": list(boundary.shape),
        "dtype": dtype,
        "offset": offset,
        "seconds": seconds,
        "format": FORMAT_VERSION,
    }
    os.replace(partial, path)
    from graft.runs.files import atomic_write

    atomic_write(path.with_suffix(".json"), json.dumps(index))  # the commit point
    note = None if problem is None else f"entry {path.name} recomputed: {problem}"
    return Entry(
        path, rows, boundary.shape, dtype, offset, False, seconds, path.stat().st_size, note
    )


def reader(entry: Entry):
    """``rows(indices) -> float32 array``: reads only those rows from disk (contiguous
    runs in one read), so the entry never has to fit in memory."""
    width = math.prod(entry.shape)
    size = width * np.dtype(entry.dtype).itemsize
    fd = os.open(entry.path, os.O_RDONLY)

    def rows(indices) -> np.ndarray:
        indices = np.asarray(indices, "int64")
        out = np.empty((len(indices), width), entry.dtype)
        start = 0
        while start < len(indices):
            stop = start + 1
            while stop < len(indices) and indices[stop] == indices[stop - 1] + 1:
                stop += 1
            data = os.pread(fd, size * (stop - start), entry.offset + size * int(indices[start]))
            out[start:stop] = np.frombuffer(data, entry.dtype).reshape(stop - start, width)
            start = stop
        return out.reshape(len(indices), *entry.shape).astype("float32")

    weakref.finalize(rows, os.close, fd)
    return rows


def dataset(entry: Entry, labels, batch_size: int, shuffle: bool = False, seed: int = 0):
    """``(activations, labels)`` batches read from ``entry``; shuffled exactly like
    :func:`graft.data.pipelines.pipeline` with the same seed (same order of images)."""
    import tensorflow as tf

    labels = np.asarray(labels)
    labels = labels.astype("float32") if labels.ndim == 2 else labels.astype("int32")
    read = reader(entry)
    ds = tf.data.Dataset.from_tensor_slices(np.arange(entry.rows, dtype="int64"))
    if shuffle:
        ds = ds.shuffle(entry.rows, seed=seed, reshuffle_each_iteration=True)
    table = tf.constant(labels)

    def load(indices):
        x = tf.numpy_function(read, [indices], tf.float32)
        x.set_shape((None, *entry.shape))
        return x, tf.gather(table, indices)

    return ds.batch(batch_size).map(load).prefetch(tf.data.AUTOTUNE)
