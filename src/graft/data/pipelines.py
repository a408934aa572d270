"""``tf.data`` pipelines: the one decode+resize recipe, augmentation, batching.

Files are decoded in parallel and resized (bilinear) to the model's input size by
:func:`decode_image`, the recipe every reader of image files shares (training, predict,
export). Images stay raw (0-255 floats): the model does its own preprocessing. Files are
checked before they reach a pipeline (:mod:`graft.data.check`), so a bad file never
stops training halfway through an epoch.

Example:
    >>> ds = pipeline(files, (96, 96), augment=augmentation("light"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np

from graft.config.names import AUGMENT_LEVELS
from graft.data.sources import LabelledFiles, read_regular
from graft.errors import DataError, UnknownNameError, did_you_mean, first_line


def on_tensorflow() -> bool:
    """Whether Keras's backend is TensorFlow (its readers are ``tf.data``; on any other
    backend they are :mod:`graft.data.neutral`'s, decoding with :mod:`graft.data.decode`)."""
    import keras

    return keras.backend.backend() == "tensorflow"


def decode_image(data, image_size: tuple[int, int], channels: int):
    """Encoded image bytes (a string tensor) -> float32 ``(h, w, channels)``, 0-255.

    The one decode+resize recipe (``tf.io.decode_image``, first frame, bilinear resize);
    it works eagerly and inside ``tf.data``/``tf.function`` graphs.
    """
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=channels, expand_animations=False)
    image = tf.image.resize(image, image_size, method="bilinear")
    image.set_shape((*image_size, channels))
    return image


def check_pixels(data: bytes, max_pixels: int | None = None, min_size: int = 0) -> None:
    """Refuse an encoded image with more pixels than ``max_pixels`` (or a side under
    ``min_size``) before decoding it.

    The size is read from the header with Pillow (nothing is decoded); the default
    limit is Pillow's decompression-bomb limit, ``PIL.Image.MAX_IMAGE_PIXELS``.

    Raises:
        ValueError: The image is over the limit.
    """
    import io

    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image too large: {first_line(exc)}") from None
    except Exception:  # not an image Pillow knows: tf.io decides
        return
    if limit and width * height > limit:
        raise ValueError(
            f"image too large: {width}x{height} = {width * height} pixels, over the "
            f"decompression-bomb limit of {limit}"
        )
    if min(width, height) < min_size:
        raise ValueError(f"image too small: {width}x{height}. Received: min_size={min_size}")


def load_image(
    path: str | os.PathLike, image_size: tuple[int, int], channels: int, min_size: int = 0
) -> np.ndarray:
    """Read one image file with :func:`decode_image` (float32, 0-255); an image with a
    side under ``min_size`` is refused like the data check refuses it.

    Raises:
        OSError: The file cannot be read, or is not a regular file.
        ValueError: The file is not a decodable image, or has more pixels than
            :func:`check_pixels` allows.
    """
    data = read_regular(path)  # never a FIFO or a device, never unbounded
    check_pixels(data, min_size=min_size)
    if not on_tensorflow():
        from graft.data import decode

        return decode.decode(data, tuple(image_size), channels)
    import tensorflow as tf

    try:
        return decode_image(data, tuple(image_size), channels).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        detail = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\]", "", exc.message).strip()
        raise ValueError(f"not a readable image: {detail.splitlines()[0]}") from None


def match_channels(x, channels: int, what: str = "Images"):
    """Images (an array or a tensor, channels last) converted to ``channels``.

    The conversion every in-memory source shares with the file decoder: grayscale to RGB
    (repeated), RGB to grayscale (``tf.image.rgb_to_grayscale``); anything else is one
    :class:`~graft.errors.DataError`.
    """
    have = x.shape[-1]
    if have == channels or have is None:
        return x
    if not on_tensorflow():
        return _match_channels_numpy(np.asarray(x, "float32"), have, channels, what)
    import tensorflow as tf

    if have == 1 and channels == 3:
        return tf.image.grayscale_to_rgb(tf.convert_to_tensor(x))
    if have == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(tf.convert_to_tensor(x))
    raise channel_error(have, channels, what, x.shape)


def _match_channels_numpy(x: np.ndarray, have: int, channels: int, what: str) -> np.ndarray:
    """:func:`match_channels` in NumPy (TensorFlow's grayscale weights)."""
    if have == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    if have == 3 and channels == 1:
        weights = np.asarray([0.2989, 0.5870, 0.1140], "float32")
        return np.sum(x * weights, axis=-1, keepdims=True, dtype="float32")
    raise channel_error(have, channels, what, x.shape)


def channel_error(have: int, channels: int, what: str, shape) -> DataError:
    """The one error for images whose channel count cannot be converted."""
    return DataError(
        f"{what} have {have} channels; the backbone takes {channels}. "
        f"Received: images of shape {tuple(shape)}",
        hint="pass grayscale (1-channel) or RGB (3-channel) images.",
    )


def fit_arrays(x, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """In-memory images resized (bilinear) to ``image_size`` with ``channels`` (float32)."""
    x = np.asarray(x)
    if x.shape[-1] != channels:
        x = np.asarray(match_channels(x.astype("float32"), channels))
    if tuple(x.shape[1:3]) != tuple(image_size) and not on_tensorflow():
        import keras

        resized = keras.ops.image.resize(x.astype("float32"), tuple(image_size))
        x = np.asarray(keras.ops.convert_to_numpy(resized))
    elif tuple(x.shape[1:3]) != tuple(image_size):
        import tensorflow as tf

        x = tf.image.resize(x.astype("float32"), tuple(image_size)).numpy()
    return x.astype("float32")


def augmentation(level: str = "standard", seed: int | None = None):
    """Keras preprocessing layers that augment training batches.

    ``light``: horizontal flip, small rotation and zoom. ``standard``: flip, rotation,
    zoom, translation and contrast. The layers work on raw 0-255 images and are applied
    in the reader, never inside the model, so inference is unaffected: mapped in the
    ``tf.data`` pipeline on TensorFlow; on another backend called by
    :class:`graft.data.neutral.Augment` on each training batch, its draws a pure function
    of (seed, epoch, batch).

    Args:
        level: ``none``, ``light`` or ``standard``.
        seed: Seed for the random transformations.

    Returns:
        A ``keras.Sequential``, or ``None`` for ``none``.
    """
    if level not in AUGMENT_LEVELS:
        raise UnknownNameError(
            f"Unknown augment level: {level!r}.{did_you_mean(level, AUGMENT_LEVELS)} "
            f"Received: augment={level}",
            hint=f"expected one of {', '.join(AUGMENT_LEVELS)}.",
        )
    if level == "none":
        return None
    import keras

    layers = keras.layers
    if level == "light":
        stack = [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.05, seed=seed),
            layers.RandomZoom(0.1, seed=seed),
        ]
    else:
        stack = [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.1, seed=seed),
            layers.RandomZoom(0.2, seed=seed),
            layers.RandomTranslation(0.1, 0.1, seed=seed),
            layers.RandomContrast(0.2, seed=seed),
        ]
    return keras.Sequential(stack, name=f"graft_augment_{level}")


def _decoder(image_size: tuple[int, int], channels: int):
    import tensorflow as tf

    def load(path, label):
        return decode_image(tf.io.read_file(path), image_size, channels), label

    return load


#: Epochs of an endless :meth:`Ordered.epochs` stream (never reached).
_ENDLESS = 2**62


class Ordered:
    """A shuffled ``tf.data`` reader in graft's epoch order (:mod:`graft.data.order`).

    Run epoch ``e`` visits the rows in ``epoch_order(rows, seed, e)`` (with ``views`` > 1:
    view ``v = e mod views``, rows ``v * rows ..``, in ``epoch_order(rows, seed + v, e)``),
    the order the backend-neutral reader
    (:class:`graft.data.neutral.Batches`) visits on every other backend. Nothing depends
    on how many iterators Keras makes: the trainer fits on :meth:`epochs` (epoch
    ``first``, ``first + 1``, ... in one endless dataset, with ``steps_per_epoch`` =
    :attr:`batches`), so a resumed run needs only the epoch it continues from.

    The ``tf.data.Dataset`` a shuffled reader returns (:meth:`dataset`) carries its
    ``Ordered`` (:func:`ordered`); iterated on its own (``fit`` without graft's trainer,
    a loop), its ``k``-th pass follows epoch ``k``'s order.

    Args:
        rows: Rows of one view.
        seed: The run's seed.
        batch_size: Rows per batch (the last batch of an epoch may be smaller).
        epoch: ``epoch(positions dataset) -> dataset of (x, y) batches`` of one epoch,
            decoding or gathering in parallel.
        finish: ``finish(batches) -> batches``: what follows (augmentation, prefetch).
        views: Views of the rows that epochs cycle through (cached augmented views).
    """

    def __init__(self, rows: int, seed: int, batch_size: int, epoch, finish, views: int = 1):
        self.rows, self.seed, self.views = int(rows), int(seed), max(1, int(views))
        self.batch_size = int(batch_size)
        self._epoch, self._finish = epoch, finish
        self.options = None
        self._passes = 0  # passes made over dataset() iterated on its own

    def __repr__(self) -> str:
        views = f", {self.views} views" if self.views > 1 else ""
        return f"Ordered({self.rows} rows, batch {self.batch_size}, seed {self.seed}{views})"

    @property
    def batches(self) -> int:
        """Batches per epoch."""
        return -(-self.rows // self.batch_size)

    def positions(self, epoch) -> np.ndarray:
        """The row positions of run epoch ``epoch`` in the order it visits them."""
        from graft.data.order import epoch_order

        epoch = int(epoch)
        view = epoch % self.views
        return epoch_order(self.rows, self.seed + view, epoch) + view * self.rows

    def _one_epoch(self, epoch):
        import tensorflow as tf

        positions = tf.numpy_function(self.positions, [epoch], tf.int64, stateful=False)
        positions.set_shape((self.rows,))
        return self._epoch(tf.data.Dataset.from_tensor_slices(positions))

    def _done(self, ds):
        ds = self._finish(ds)
        return ds if self.options is None else ds.with_options(self.options)

    def epochs(self, first: int):
        """Run epochs ``first``, ``first + 1``, ... as one endless ``tf.data.Dataset`` of
        batches (:attr:`batches` per epoch): ``fit`` it with ``steps_per_epoch``."""
        import tensorflow as tf

        ds = tf.data.Dataset.range(int(first), _ENDLESS).flat_map(self._one_epoch)
        return self._done(ds)

    def _next_pass(self) -> np.int64:
        self._passes += 1
        return np.int64(self._passes - 1)

    def dataset(self):
        """One epoch per pass (pass ``k``: epoch ``k``'s order), carrying this object."""
        import tensorflow as tf

        def one(_):
            return self._one_epoch(tf.numpy_function(self._next_pass, [], tf.int64))

        ds = tf.data.Dataset.range(1).flat_map(one)
        ds = ds.apply(tf.data.experimental.assert_cardinality(self.batches))
        ds = self._done(ds)
        ds.graft_order = self
        return ds


def ordered(dataset) -> Ordered | None:
    """The :class:`Ordered` of a shuffled reader's dataset (``None``: not graft's order)."""
    found = getattr(dataset, "graft_order", None)
    return found if isinstance(found, Ordered) else None


def with_options(dataset, options):
    """``dataset.with_options(options)``, keeping graft's order (:func:`ordered`)."""
    order = ordered(dataset)
    if order is None:
        return dataset.with_options(options)
    order.options = options
    return order.dataset()


def _finisher(augment):
    import tensorflow as tf

    def finish(ds):
        if augment is not None:
            ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=1)
        return ds.prefetch(tf.data.AUTOTUNE)

    return finish


def _labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    return labels.astype("float32") if labels.ndim == 2 else labels.astype("int32")


def pipeline(
    files: LabelledFiles,
    image_size: tuple[int, int],
    channels: int = 3,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    augment=None,
):
    """A streaming ``tf.data.Dataset`` of ``(raw_image_batch, label_batch)``.

    Files are decoded in parallel, resized to ``image_size`` (bilinear), batched and
    prefetched; only a few batches are in memory at once. With ``shuffle`` the order
    changes every epoch, reproducibly from ``seed``: epoch ``e`` follows graft's
    ``epoch_order(len(files), seed, e)`` (:class:`Ordered`), the order of every backend.
    ``augment`` (e.g. :func:`augmentation`) runs on each batch in training mode.

    Args:
        files: Checked files (:func:`graft.data.check.check` drops the bad ones).
        image_size: ``(height, width)``.
        channels: Colour channels of the decoded images.
        batch_size: Images per batch.
        shuffle: Visit the files in a new order every epoch.
        seed: Shuffle seed.
        augment: A callable on image batches, or ``None`` (off TensorFlow: the layers of
            :func:`augmentation` or a :class:`graft.data.neutral.Augment`).

    Returns:
        A ``tf.data.Dataset`` (on another backend than TensorFlow: a
        :class:`graft.data.neutral.Batches` in graft's epoch order, Pillow recipe,
        augmented with draws keyed by ``(seed, epoch, batch)``).
    """
    if not on_tensorflow():
        from graft.data import neutral

        size = tuple(image_size)
        return neutral.file_batches(files, size, channels, batch_size, shuffle, seed, augment)
    import tensorflow as tf

    # Bytes, not str: file names need not be valid UTF-8.
    paths = np.asarray([os.fsencode(p) for p in files.paths], dtype=object)
    labels = _labels(files.labels)
    load = _decoder(tuple(image_size), channels)
    finish = _finisher(augment)
    if not shuffle:
        ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), labels))
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
        return finish(ds.batch(batch_size))
    path_table, label_table = tf.constant(paths, tf.string), tf.constant(labels)

    def element(i):
        return load(tf.gather(path_table, i), tf.gather(label_table, i))

    def epoch(positions):
        return positions.map(element, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)

    return Ordered(len(files), seed, batch_size, epoch, finish).dataset()


def array_pipeline(
    x, y, batch_size: int = 32, shuffle: bool = False, seed: int = 0, augment=None, views: int = 1
):
    """A ``tf.data.Dataset`` over in-memory arrays (images of the model's input size);
    on another backend than TensorFlow a :class:`graft.data.neutral.Batches`. Shuffled, in
    graft's epoch order (:class:`Ordered`); with ``views`` > 1, ``x`` and ``y`` hold that
    many views of the same rows one after another, and epoch ``e`` reads view
    ``e mod views`` (cached augmented views)."""
    if not on_tensorflow():
        from graft.data import neutral

        if views > 1:  # one shuffled reader per view, epoch e reads view e mod views
            n = len(x) // int(views)
            return neutral.Cycled(
                [
                    neutral.array_batches(
                        x[v * n : (v + 1) * n],
                        y[v * n : (v + 1) * n],
                        batch_size,
                        shuffle,
                        seed + v,
                        augment,
                    )
                    for v in range(views)
                ]
            )
        return neutral.array_batches(x, y, batch_size, shuffle, seed, augment)
    import tensorflow as tf

    x, y = np.asarray(x, "float32"), _labels(y)
    finish = _finisher(augment)
    if not shuffle:
        return finish(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size))
    x_table, y_table = tf.constant(x), tf.constant(y)

    def gather(indices):
        return tf.gather(x_table, indices), tf.gather(y_table, indices)

    def epoch(positions):
        return positions.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)

    rows = len(x) // max(1, int(views))
    return Ordered(rows, seed, batch_size, epoch, finish, views).dataset()


def dataset_pipeline(
    ds, image_size: tuple[int, int], channels: int = 3, batch_size: int = 32, augment=None
):
    """Adapt a user's ``tf.data.Dataset`` of ``(image, label)`` to a model's input.

    Unbatched datasets are batched; images are resized to ``image_size`` and cast to
    float32 (raw 0-255 values); ``augment`` runs on each batch.

    Args:
        ds: Yields ``(image, label)`` or ``(image_batch, label_batch)``.
        image_size: ``(height, width)``.
        channels: Colour channels the model takes.
        batch_size: Batch size for an unbatched dataset.
        augment: A callable on image batches, or ``None``.

    Returns:
        A ``tf.data.Dataset``.
    """
    import tensorflow as tf

    spec = ds.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise DataError(
            "A tf.data.Dataset must yield (image, label) pairs.",
            hint="map it to (image, label) first, e.g. ds.map(lambda d: (d['image'], d['label'])).",
        )
    rank = spec[0].shape.rank
    if rank == 3:
        ds = ds.batch(batch_size)
    elif rank != 4:
        raise DataError(f"Dataset images must have shape (H, W, C), got {spec[0].shape}.")

    have = spec[0].shape[-1]
    if have not in (None, channels) and {have, channels} != {1, 3}:
        raise channel_error(have, channels, "Dataset images", spec[0].shape)  # not mid-fit

    def fit(x, y):
        x = match_channels(tf.cast(x, tf.float32), channels, "Dataset images")
        x = tf.image.resize(x, image_size, method="bilinear")
        return x, y

    ds = ds.map(fit, num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        ds = ds.map(lambda a, b: (augment(a, training=True), b), num_parallel_calls=1)
    return ds.prefetch(tf.data.AUTOTUNE)
