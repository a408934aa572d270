"""The backend-neutral reader: ``(x, y)`` batches for Keras's ``fit`` on any backend.

On a backend other than TensorFlow, every reader of training data is a
:class:`Batches`, a ``keras.utils.PyDataset`` over *rows* (a callable from positions to
a float32 array: image files through the Pillow recipe of :mod:`graft.data.decode`,
in-memory arrays, or the rows of a cache entry) and their labels. Its order is graft's
own (:func:`graft.data.order.epoch_order`): the batches of run epoch ``e`` follow the
permutation of ``(seed, e)``, set before each epoch by :class:`EpochOrder` (a callback
the trainer adds), so a resumed run needs only the epoch it continues from.

A :class:`Batches` holds paths, arrays or a row reader and labels (and, augmenting, the
augmentation's layers), never a model.
Image files are decoded by :data:`WORKERS` threads (one per core; ``GRAFT_READER_WORKERS``),
the images of a batch in parallel, and the next batch of the epoch's order while the
model runs on this one. Keras's own ``workers`` (its ``OrderedEnqueuer``) is not used:
when ``fit`` peeks at a batch before training (the JAX trainer's symbolic build) and
stops the enqueuer, the batches it had in flight are served first in the next epoch,
out of order; graft's prefetch is keyed by (epoch, batch) instead, so it never changes
what a batch holds.

Augmentation (``--augment``) runs here too, on training batches of raw 0-255 images:
the Keras layers of :func:`graft.data.pipelines.augmentation` (the same levels as on
TensorFlow), called by :class:`Augment` with random draws that are a pure function of
(run seed, epoch, batch index), never of the thread or the order that read the batch.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np

from graft.data import decode
from graft.data.order import epoch_order
from graft.errors import GraftError


def _workers() -> int:
    try:
        return max(1, int(os.environ.get("GRAFT_READER_WORKERS", "")))
    except ValueError:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return max(1, cores or os.cpu_count() or 1)


#: Threads that decode image files (``GRAFT_READER_WORKERS``; default one per core this
#: process may use). Threads, not processes: Pillow's decode and resize release the GIL,
#: and on 2 cores a thread pool read 500x375 JPEGs into 224 px arrays as fast as a
#: spawned process pool (191-197 vs 161-178 img/s), without the processes' start-up or a
#: ``__main__`` guard in the user's script.
WORKERS = _workers()


#: The stream of the training batches' draws; cached view ``v`` draws from ``1 + v``.
TRAINING = 0


class Augment:
    """A training augmentation whose random draws are a pure function of
    ``(seed, stream, epoch, batch index)``.

    ``layers`` is the ``keras.Sequential`` of :func:`graft.data.pipelines.augmentation`
    (Keras's random image layers). Each layer draws through a ``keras.random.SeedGenerator``
    whose state variable, ``[seed, counter]``, every call advances. Rather than keeping
    that state between batches (it would then depend on how many batches were augmented
    before, in which thread, and would be lost by a killed run), every batch passes its own
    states to ``stateless_call``: state ``i`` is ``[s_i, 0]`` with ``s_i`` drawn from
    ``SeedSequence([seed, stream, epoch, index])``; within the batch the counter advances as
    usual (RandomZoom/RandomTranslation draw twice). So the same batch of the same epoch gets
    the same transformations in any thread, in a second reader, or after a resume, and
    nothing needs saving in a checkpoint. The layers' own state variables are never
    changed.

    Args:
        layers: The augmentation layers (a built or unbuilt ``keras.Sequential``).
        seed: The run's seed.
        stream: :data:`TRAINING`, or ``1 + v`` for cached augmented view ``v``.
    """

    def __init__(self, layers, seed: int = 0, stream: int = TRAINING):
        self.layers = layers
        self.seed = int(seed)
        self.stream = int(stream)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Augment({self.layers.name}, seed {self.seed}, stream {self.stream})"

    def __getstate__(self):
        return {**self.__dict__, "_lock": None}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def states(self, epoch: int, index: int) -> list[np.ndarray]:
        """The seed-generator states of batch ``index`` of ``epoch``, one per state
        variable of the layers (in their order)."""
        variables = self.layers.non_trainable_variables
        entropy = [self.seed, self.stream, int(epoch), int(index)]
        seeds = np.random.SeedSequence(entropy).generate_state(len(variables))
        # 31 bits: a valid seed for every backend's seed dtype (int32 on torch), and torch
        # adds the counter to the seed: distinct seeds keep the draws apart.
        seeds = seeds & 0x7FFFFFFF
        return [
            np.asarray([s, 0], dtype=keras.backend.standardize_dtype(v.dtype))
            for s, v in zip(seeds, variables, strict=True)
        ]

    def __call__(self, images: np.ndarray, epoch: int, index: int) -> np.ndarray:
        """``images`` (float32, 0-255, NHWC) augmented in training mode."""
        if not len(images):
            return images
        with self._lock:  # building, and Keras's call machinery, once at a time
            if not self.layers.built:
                self.layers.build((None, *images.shape[1:]))
            out, _ = self.layers.stateless_call(
                self.layers.trainable_variables,
                self.states(epoch, index),
                images,
                training=True,
            )
            return np.asarray(keras.ops.convert_to_numpy(out), dtype="float32")


def augmenter(augment, seed: int) -> Augment | None:
    """``augment`` (the layers of :func:`graft.data.pipelines.augmentation`, an
    :class:`Augment` or ``None``) as an :class:`Augment` drawing from ``seed``."""
    if augment is None or isinstance(augment, Augment):
        return augment
    return Augment(augment, seed)


def _labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    return labels.astype("float32") if labels.ndim == 2 else labels.astype("int32")


class FileRows:
    """``rows(positions)``: the image files at those positions through the Pillow recipe,
    decoded by ``workers`` threads."""

    def __init__(self, paths, image_size, channels: int, workers: int = 1):
        self.paths = [os.fspath(p) for p in paths]
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.channels = int(channels)
        self.workers = max(1, int(workers))
        self._pool = None

    def __getstate__(self):
        return {**self.__dict__, "_pool": None}

    def _load(self, index: int) -> np.ndarray:
        return decode.load(self.paths[index], self.image_size, self.channels)

    def __call__(self, positions) -> np.ndarray:
        positions = [int(i) for i in positions]
        if self.workers > 1 and len(positions) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="graft-decode")
            images = list(self._pool.map(self._load, positions))
        else:
            images = [self._load(i) for i in positions]
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
        prefetch: Read the next batch of the epoch in a background thread while this one
            is used (for rows that are slow to read: image files).
        augment: An :class:`Augment` applied to every batch read (training batches), its
            draws keyed by (epoch, batch index); or ``None``.
    """

    def __init__(
        self, rows, labels, batch_size: int, shuffle=False, seed=0, prefetch=False, augment=None
    ):
        super().__init__(workers=1, use_multiprocessing=False)  # no Keras enqueuer: see above
        self.prefetch = bool(prefetch)
        self.augment = augment
        self._ahead: dict = {}  # (epoch, batch index) -> Future of that batch
        self._pool = None
        self.rows = rows
        self.labels = _labels(labels)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self.multiple = 1  # every batch a multiple of this many rows (split_evenly)
        self._order = self._draw(0)

    def __repr__(self) -> str:
        kind = f"shuffled, seed {self.seed}, epoch {self.epoch}" if self.shuffle else "in order"
        augmented = "" if self.augment is None else ", augmented"
        return f"Batches({len(self.labels)} rows, batch {self.batch_size}, {kind}{augmented})"

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

    def split_evenly(self, multiple: int) -> None:
        """Make every batch's size a multiple of ``multiple`` (a distribution that splits
        the batch axis evenly over its devices, JAX's ``DataParallel``): the last
        ``rows % multiple`` rows of each epoch's order are left out of that epoch (at most
        ``multiple - 1``; shuffled, different rows each epoch). The batch size must be a
        multiple already (the global batch is per replica x replicas)."""
        multiple = max(1, int(multiple))
        if multiple > 1 and self.batch_size % multiple:
            raise GraftError(
                f"a batch of {self.batch_size} cannot be split evenly over {multiple} devices.",
                hint=f"use a batch size that is a multiple of {multiple}.",
            )
        if 0 < len(self.labels) < multiple:  # nothing would be left to read
            raise GraftError(
                f"{len(self.labels)} image(s) cannot be split evenly over {multiple} devices "
                "(each batch is split over all of them).",
                hint=f"give at least {multiple} training and validation images, or use "
                "fewer devices (--devices).",
            )
        self.multiple = multiple
        self._ahead.clear()

    def _used(self) -> int:
        """Rows read per epoch: all of them, less what does not split evenly."""
        count = len(self.labels)
        return count - count % self.multiple

    def __len__(self) -> int:
        return math.ceil(self._used() / self.batch_size)

    @property
    def num_batches(self) -> int:
        return len(self)

    def cardinality(self) -> int:
        """Batches per pass (what ``tf.data``'s ``cardinality`` answers)."""
        return len(self)

    def positions(self, index: int) -> np.ndarray:
        """The row positions of batch ``index`` in the current epoch."""
        order = self._order[: self._used()]
        return order[index * self.batch_size : (index + 1) * self.batch_size]

    def __getstate__(self):
        return {**self.__dict__, "_ahead": {}, "_pool": None}

    def _read(self, positions: np.ndarray, epoch: int, index: int):
        x = self.rows(positions)
        if self.augment is not None:
            x = self.augment(x, epoch, index)
        return x, self.labels[positions]

    def __getitem__(self, index: int):
        if index >= len(self):
            raise IndexError(index)
        if not self.prefetch:
            return self._read(self.positions(index), self.epoch, index)
        epoch = self.epoch
        ahead = self._ahead.pop((epoch, index), None)
        self._ahead.clear()  # anything else in flight belongs to another order or batch
        if ahead is not None:
            batch = ahead.result()
        else:
            batch = self._read(self.positions(index), epoch, index)
        if index + 1 < len(self):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="graft-prefetch")
            positions = self.positions(index + 1)  # fixed now: a later set_epoch cannot move it
            future = self._pool.submit(self._read, positions, epoch, index + 1)
            self._ahead[(epoch, index + 1)] = future
        return batch

    def images(self) -> Images:
        """The same batches without their labels (for ``predict``)."""
        return Images(self)

    def repeat(self) -> Repeated:
        """Endless batches: pass after pass of the current epoch's order (the LR finder)."""
        return Repeated(self)


class Images(keras.utils.PyDataset):
    """The image batches of a :class:`Batches` alone."""

    def __init__(self, batches: Batches):
        super().__init__(workers=1, use_multiprocessing=False)
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


class Cycled(keras.utils.PyDataset):
    """The training batches of K cached augmented views, one view per epoch: run epoch
    ``e`` reads view ``e mod K`` in the order of ``(its seed, e)`` (each view a shuffled
    :class:`Batches` of the same rows). A pure function of the run's epoch, like
    :class:`Batches`: a resumed run continues the cycle where the killed one was."""

    #: Its order is a function of the run's epoch alone (nothing to replay on resume).
    epoch_ordered = True
    shuffle = True

    def __init__(self, views: list):
        super().__init__(workers=1, use_multiprocessing=False)
        if not views or len({len(v.labels) for v in views}) != 1:
            raise ValueError("Cycled needs views of the same rows")
        self.views = list(views)
        self.epoch = 0

    def __repr__(self) -> str:
        return f"Cycled({len(self.views)} views, epoch {self.epoch})"

    @property
    def current(self) -> Batches:
        return self.views[self.epoch % len(self.views)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.current.set_epoch(self.epoch)

    def split_evenly(self, multiple: int) -> None:
        for view in self.views:
            view.split_evenly(multiple)

    def __len__(self) -> int:
        return len(self.current)

    @property
    def num_batches(self) -> int:
        return len(self)

    def cardinality(self) -> int:
        return len(self)

    def __getitem__(self, index: int):
        return self.current[index]


class EpochOrder(keras.callbacks.Callback):
    """Sets the epoch of a :class:`Batches` before ``fit`` reads it (run epochs: ``fit``
    is called with ``initial_epoch`` = the run's epochs done, so the number Keras passes
    is the run's epoch index)."""

    def __init__(self, batches: Batches | Cycled):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)


def file_batches(
    files, image_size, channels: int, batch_size: int, shuffle=False, seed=0, augment=None
):
    """Batches of labelled image files (:class:`graft.data.sources.LabelledFiles`);
    ``augment`` (:func:`augmenter`) draws from ``seed``."""
    rows = FileRows(files.paths, image_size, channels, workers=WORKERS)
    return Batches(
        rows, files.labels, batch_size, shuffle, seed, WORKERS > 1, augmenter(augment, seed)
    )


def array_batches(x, y, batch_size: int, shuffle=False, seed=0, augment=None):
    """Batches of in-memory images (already at the model's input size) or features."""
    return Batches(ArrayRows(x), y, batch_size, shuffle, seed, augment=augmenter(augment, seed))


def is_neutral(dataset) -> bool:
    """Whether ``dataset`` is one of this module's readers."""
    return isinstance(dataset, (Batches, Images, Repeated, Cycled))
