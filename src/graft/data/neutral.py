"""The backend-neutral reader: ``(x, y)`` batches for Keras's ``fit`` on any backend.

On a backend other than TensorFlow, every reader of training data is a
:class:`Batches`, a ``keras.utils.PyDataset`` over *rows* (a callable from positions to
a float32 array: image files through the Pillow recipe of :mod:`graft.data.decode`,
in-memory arrays, or the rows of a cache entry) and their labels. Its order is graft's
own (:func:`graft.data.order.epoch_order`): the batches of run epoch ``e`` follow the
permutation of ``(seed, e)``, set before each epoch by :class:`EpochOrder` (a callback
the trainer adds), so a resumed run needs only the epoch it continues from.

A :class:`Batches` holds paths, arrays or a row reader and labels, never a model.
Image files are decoded by :data:`WORKERS` threads (``GRAFT_READER_WORKERS`` sets it).
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np

from graft.data import decode
from graft.data.order import epoch_order
from graft.errors import GraftError


def _workers() -> int:
    try:
        return max(1, int(os.environ.get("GRAFT_READER_WORKERS", "")))
    except ValueError:
        return max(1, min(4, os.cpu_count() or 1))


#: Threads that decode image files (``GRAFT_READER_WORKERS``; default up to 4).
WORKERS = _workers()


def refuse_augment(augment) -> None:
    """One line: augmentation runs in ``tf.data`` only, for now (no silent no-op)."""
    if augment is not None:
        raise GraftError(
            f"augment is not available on the {keras.backend.backend()} backend yet "
            "(it runs in TensorFlow's tf.data pipeline).",
            hint="train with --augment none, or with KERAS_BACKEND=tensorflow.",
        )


def _labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    return labels.astype("float32") if labels.ndim == 2 else labels.astype("int32")


class FileRows:
    """``rows(positions)``: the image files at those positions through the Pillow recipe."""

    def __init__(self, paths, image_size, channels: int):
        self.paths = [os.fspath(p) for p in paths]
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.channels = int(channels)

    def __call__(self, positions) -> np.ndarray:
        images = [decode.load(self.paths[i], self.image_size, self.channels) for i in positions]
        if not images:
            return np.zeros((0, *self.image_size, self.channels), "float32")
        return np.stack(images)


class ArrayRows:
    """``rows(positions)`` of an in-memory array (float32)."""

    def __init__(self, x):
        self.x = np.asarray(x, "float32")

    def __call__(self, positions) -> np.ndarray:
        return self.x[np.asarray(positions, "int64")]


class Batches(keras.utils.PyDataset):
    """``(x, y)`` batches of ``rows`` and ``labels`` in graft's epoch order.

    Args:
        rows: ``rows(positions) -> float32 array``.
        labels: One label (or label vector) per row.
        batch_size: Rows per batch (the last batch may be smaller).
        shuffle: Visit the rows in the epoch's permutation (else in order).
        seed: The run's seed.
        workers: Threads calling ``rows`` (1: in the training loop's thread).
    """

    #: A resumed run sets the epoch; it replays no reader (checkpoints.fast_forward).
    epoch_ordered = True

    def __init__(self, rows, labels, batch_size: int, shuffle=False, seed=0, workers=1):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=4)
        self.rows = rows
        self.labels = _labels(labels)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self._order = self._draw(0)

    def __repr__(self) -> str:
        kind = f"shuffled, seed {self.seed}, epoch {self.epoch}" if self.shuffle else "in order"
        return f"Batches({len(self.labels)} rows, batch {self.batch_size}, {kind})"

    def _draw(self, epoch: int) -> np.ndarray:
        count = len(self.labels)
        if not self.shuffle:
            return np.arange(count, dtype=np.int64)
        return epoch_order(count, self.seed, epoch)

    def set_epoch(self, epoch: int) -> None:
        """Batches from now on follow the order of run epoch ``epoch`` (0-based)."""
        if self.shuffle and int(epoch) != self.epoch:
            self._order = self._draw(int(epoch))
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    @property
    def num_batches(self) -> int:
        return len(self)

    def cardinality(self) -> int:
        """Batches per pass (what ``tf.data``'s ``cardinality`` answers)."""
        return len(self)

    def positions(self, index: int) -> np.ndarray:
        """The row positions of batch ``index`` in the current epoch."""
        order = self._order
        return order[index * self.batch_size : (index + 1) * self.batch_size]

    def __getitem__(self, index: int):
        if index >= len(self):
            raise IndexError(index)
        positions = self.positions(index)
        return self.rows(positions), self.labels[positions]

    def images(self) -> Images:
        """The same batches without their labels (for ``predict``)."""
        return Images(self)

    def repeat(self) -> Repeated:
        """Endless batches: pass after pass of the current epoch's order (the LR finder)."""
        return Repeated(self)


class Images(keras.utils.PyDataset):
    """The image batches of a :class:`Batches` alone."""

    def __init__(self, batches: Batches):
        super().__init__(workers=batches.workers, use_multiprocessing=False, max_queue_size=4)
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def cardinality(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        return self.batches[index][0]


class Repeated(keras.utils.PyDataset):
    """A :class:`Batches` read endlessly (``num_batches`` is ``None``)."""

    def __init__(self, batches: Batches):
        super().__init__(workers=1, use_multiprocessing=False)
        self.batches = batches

    @property
    def num_batches(self):
        return None

    def __getitem__(self, index: int):
        return self.batches[index % len(self.batches)]


class EpochOrder(keras.callbacks.Callback):
    """Sets the epoch of a :class:`Batches` before ``fit`` reads it (run epochs: ``fit``
    is called with ``initial_epoch`` = the run's epochs done, so the number Keras passes
    is the run's epoch index)."""

    def __init__(self, batches: Batches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)


def file_batches(files, image_size, channels: int, batch_size: int, shuffle=False, seed=0):
    """Batches of labelled image files (:class:`graft.data.sources.LabelledFiles`)."""
    rows = FileRows(files.paths, image_size, channels)
    return Batches(rows, files.labels, batch_size, shuffle, seed, workers=WORKERS)


def array_batches(x, y, batch_size: int, shuffle=False, seed=0):
    """Batches of in-memory images (already at the model's input size) or features."""
    return Batches(ArrayRows(x), y, batch_size, shuffle, seed)


def is_neutral(dataset) -> bool:
    """Whether ``dataset`` is one of this module's readers."""
    return isinstance(dataset, (Batches, Images, Repeated))
