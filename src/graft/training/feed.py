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
from graft.data.pipelines import on_tensorflow
from graft.training import distribute
from graft.training.store import Entry, reader

#: Keys of the shuffled datasets in a checkpoint's ``passes`` (one per kind of input).
FULL, FEATURES, ACTIVATIONS = "full", "cached", "activations"


@dataclass(frozen=True)
class Inputs:
    """One kind of input: ``target`` is fitted on ``train`` (``steps`` batches per epoch;
    ``None``: one pass) and validated on ``val``. ``kind`` names the shuffled dataset for
    an exact resume (:data:`FULL`, :data:`FEATURES`, :data:`ACTIVATIONS`)."""

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


def cycled(views: list, steps: int) -> tuple:
    """One training dataset over the datasets of K cached views of the training split, in
    which epoch ``e`` trains on view ``e mod K``: ``(dataset, steps per epoch)``. Off
    TensorFlow a :class:`graft.data.neutral.Cycled` keyed by the run's epoch (``steps``
    ``None``: it knows its length)."""
    if neutral.is_neutral(views[0]):
        return neutral.Cycled(views), None
    train = views[0]
    for view in views[1:]:
        train = train.concatenate(view)
    return train.repeat(), steps


def entry_dataset(entry: Entry, labels, batch_size: int, shuffle: bool = False, seed: int = 0):
    """``(rows, labels)`` batches of a stored entry, read from disk batch by batch (the
    ``tf.data`` reader of the store); shuffled exactly like
    :func:`graft.data.pipelines.pipeline` with the same seed (same order of images).
    On another backend than TensorFlow: a :class:`graft.data.neutral.Batches` in graft's
    epoch order (:mod:`graft.data.order`), like the image reader there."""
    if not on_tensorflow():
        return neutral.Batches(reader(entry), labels, batch_size, shuffle, seed)
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
