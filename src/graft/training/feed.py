"""What each phase trains on: the images, the cached features, or the cached activations.

The trainer asks one :class:`Feed` for a phase's :class:`Inputs` (the model it fits and
its datasets) and knows nothing of caches. A cache hands its datasets over as
:class:`Inputs`: the feature cache (:mod:`graft.training.cache`) for phases that leave the
whole backbone frozen, the activation cache (:mod:`graft.training.activations`) for the
partial fine-tuning phases it serves; every other phase fits the full model on the images.

The caches store plain NumPy rows (:mod:`graft.training.store`); :func:`entry_dataset` is
the one place they become ``tf.data`` batches (on TensorFlow) or
:class:`graft.data.neutral.Batches` (on any other backend).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from graft.data import neutral
from graft.data.pipelines import Ordered, on_tensorflow, ordered
from graft.training import distribute
from graft.training.store import reader

#: The kinds of input (what a phase trains on).
FULL, FEATURES, ACTIVATIONS = "full", "cached", "activations"


@dataclass(frozen=True)
class Inputs:
    """One kind of input: ``target`` is fitted on ``train`` (``steps`` batches per epoch;
    ``None``: one pass) and validated on ``val``. ``kind`` names it (:data:`FULL`,
    :data:`FEATURES`, :data:`ACTIVATIONS`)."""

    target: object
    train: object
    val: object = None
    steps: int | None = None
    kind: str = FULL


class Feed:
    """The inputs of every phase of a plan.

    Args:
        model: The full model (fitted on ``train``/``val`` when no cache serves a phase).
        train: Batches of ``(raw images, labels)``.
        val: Validation batches of the same kind, or ``None``.
        features: The feature cache's :class:`Inputs` (the head alone on cached features),
            used by every phase that leaves the whole backbone frozen; or ``None``.
        activations: An :class:`graft.training.activations.ActivationCache`, whose
            :class:`Inputs` serve the phases it was planned for; or ``None``.
    """

    def __init__(self, model, train, val=None, features: Inputs | None = None, activations=None):
        self.full = Inputs(model, train, val)
        self.features = features
        self.activations = activations

    def __repr__(self) -> str:
        kinds = [
            FULL,
            *([FEATURES] if self.features else []),
            *([ACTIVATIONS] if self.activations else []),
        ]
        return f"Feed({', '.join(kinds)})"

    def inputs(self, index: int, phase) -> Inputs:
        """The inputs of phase ``index`` (1-based) of the plan."""
        if self.features is not None and phase.backbone_frozen:
            return self.features
        if self.activations is not None and self.activations.serves(index):
            return self.activations.inputs()
        return self.full


def entry_dataset(entry, labels, batch_size: int, shuffle: bool = False, seed: int = 0):
    """``(rows, labels)`` batches of a stored entry, read from disk batch by batch (the
    ``tf.data`` reader of the store); shuffled in graft's epoch order
    (:class:`graft.data.pipelines.Ordered`: the same order of images as
    :func:`graft.data.pipelines.pipeline` with the same seed). ``entry`` may be a list of
    entries, views of the same rows: epoch ``e`` then reads view ``e mod len(entry)``
    (cached augmented views; shuffled only). On another backend than TensorFlow: a
    :class:`graft.data.neutral.Batches` in graft's epoch order
    (:mod:`graft.data.order`), like the image reader there."""
    entries = list(entry) if isinstance(entry, (list, tuple)) else [entry]
    if not on_tensorflow():
        if len(entries) > 1:  # one shuffled reader per view, epoch e reads view e mod K
            return neutral.Cycled(
                [
                    neutral.Batches(reader(e), labels, batch_size, shuffle, seed + v)
                    for v, e in enumerate(entries)
                ]
            )
        return neutral.Batches(reader(entries[0]), labels, batch_size, shuffle, seed)
    import tensorflow as tf

    labels = np.asarray(labels)
    labels = labels.astype("float32") if labels.ndim == 2 else labels.astype("int32")
    first, rows = entries[0], entries[0].rows
    readers = [reader(e) for e in entries]

    def read(indices):  # a batch never spans two views (an epoch reads one view)
        view = int(indices[0]) // rows if len(indices) else 0
        return readers[view](indices - view * rows)

    table = tf.constant(np.concatenate([labels] * len(entries)))

    def load(indices):
        x = tf.numpy_function(read, [indices], tf.float32)
        x.set_shape((None, *first.shape))
        return x, tf.gather(table, indices)

    def epoch(positions):
        return positions.batch(batch_size).map(load)

    def finish(ds):
        return ds.prefetch(tf.data.AUTOTUNE)

    if not shuffle:
        return finish(epoch(tf.data.Dataset.from_tensor_slices(np.arange(rows, dtype="int64"))))
    return Ordered(rows, seed, batch_size, epoch, finish, len(entries)).dataset()


def images_only(dataset):
    """The image batches of a dataset of ``(images, labels)`` batches."""
    if neutral.is_neutral(dataset):
        return dataset.images()
    return dataset.map(lambda x, y: x)


def split_evenly(inputs: Inputs, multiple: int) -> None:
    """Leave out of each epoch the rows that would make a batch of ``inputs``' readers
    (train and validation) split unevenly over ``multiple`` devices
    (:meth:`graft.data.neutral.Batches.split_evenly`); ``tf.data`` is left alone
    (tf.distribute splits unevenly)."""
    for dataset in (inputs.train, inputs.val):
        if isinstance(dataset, (neutral.Batches, neutral.Cycled)):
            dataset.split_evenly(multiple)


@contextlib.contextmanager
def evenly(inputs: Inputs):
    """``inputs``' readers split evenly over the devices of Keras's current distribution
    while the block fits on them (:func:`split_evenly`), and whole again after it: what
    graft reads afterwards (the final evaluation, drift, the report) sees every row."""
    split_evenly(inputs, distribute.Distribution(distribute.keras_distribution()).batch_multiple)
    try:
        yield
    finally:
        split_evenly(inputs, 1)


def order_callbacks(dataset) -> list:
    """The callback that sets a backend-neutral reader's epoch before ``fit`` reads it
    (:class:`graft.data.neutral.EpochOrder`); none for ``tf.data``."""
    if isinstance(dataset, (neutral.Batches, neutral.Cycled)) and dataset.shuffle:
        return [neutral.EpochOrder(dataset)]
    return []


def epoch_stream(dataset, steps: int | None, first: int) -> tuple:
    """What ``fit`` reads from run epoch ``first`` on: ``(dataset, steps_per_epoch)``.

    A shuffled ``tf.data`` reader in graft's order (:func:`graft.data.pipelines.ordered`)
    becomes the endless stream of its epochs ``first, first + 1, ...`` with its batches
    per epoch as ``steps_per_epoch``: one iterator serves every epoch of the fit, and
    epoch ``e`` follows ``epoch_order(rows, seed, e)`` whatever iterators Keras makes
    (a resumed run needs only the epoch it continues from). Anything else is fitted as
    it is (a backend-neutral reader is ordered by :func:`order_callbacks`)."""
    order = ordered(dataset)
    if order is None:
        return dataset, steps
    return order.epochs(first), order.batches


def one_epoch(dataset, epoch: int):
    """Run epoch ``epoch``'s batches of a shuffled reader, in that epoch's order (a pass
    made outside ``fit``, AdaBN's, is then the same in a resumed run); anything else as
    it is."""
    order = ordered(dataset)
    if order is not None:
        return order.epochs(epoch).take(order.batches)
    if isinstance(dataset, (neutral.Batches, neutral.Cycled)) and dataset.shuffle:
        dataset.set_epoch(epoch)
    return dataset
