"""The feature cache: run a frozen backbone once, train the head on what it computed.

In a phase that leaves the whole backbone frozen (feature extraction, hybrid's first
phase), the backbone's output for an image never changes, yet the classic recipe
recomputes it for every image in every epoch. graft computes the head's input (the
pooled backbone features) once in a streamed, batched pass in inference mode, stores it
on disk, and trains the head alone on it. The head model reuses the very layer objects
of the full model, so the trained weights are already in place afterwards: the saved
model is the same plain Keras model as without the cache.

A cache entry is keyed by everything that determines the features: the backbone's
source, a fingerprint of all its weights, the preprocessing layers (their configuration
and weights), the image size and channels, the exact content of every image file (or
array) in order, and the augmentation view. A changed file, other weights, another
preprocessing or another size never reuse stale features. Entries live in the one
verified store (:mod:`graft.training.store`), which refuses a damaged, edited or swapped
entry; the feature cache hands the head and its datasets to the trainer as
:class:`graft.training.feed.Inputs`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from graft import progress
from graft.core.model import preprocess_layers
from graft.core.model_utils import (
    features_model,
    forward_function,
    head_model,
    layer_key,
    pooling_layers_of,
    weights_fingerprint,
)
from graft.data import decode
from graft.data.content import file_digest
from graft.training import distribute
from graft.training.feed import FEATURES, Inputs, images_only
from graft.training.store import open_store

#: Version of what a key describes (a new one orphans every entry); the files' own format
#: is :data:`graft.training.store.FORMAT`.
KEY_VERSION = 1


def default_dir() -> Path:
    """``$GRAFT_CACHE/features`` or ``~/.cache/keras-graft/features``."""
    root = os.environ.get("GRAFT_CACHE") or Path.home() / ".cache" / "keras-graft"
    return Path(root) / "features"


def content_fingerprint(paths=None, images=None) -> str:
    """A digest of the exact inputs, in order: file contents, or an image array."""
    digest = hashlib.blake2b(digest_size=16)
    if images is not None:
        array = np.ascontiguousarray(images)
        digest.update(f"array:{array.shape}:{array.dtype};".encode())
        digest.update(array.tobytes())
        return digest.hexdigest()
    with ThreadPoolExecutor(max_workers=8) as pool:
        for item in pool.map(file_digest, list(paths)):
            digest.update(item.encode())
    return digest.hexdigest()


def cache_key(
    model: keras.Model, source: str, content: str, view: str = "plain", weights: str | None = None
) -> str:
    """The cache key for the features of ``model`` on inputs with fingerprint ``content``.

    ``weights`` is :func:`weights_fingerprint` of ``features_model(model)`` if already known.
    """
    features = features_model(model)
    description = {
        "format": KEY_VERSION,
        "source": source,
        # Preprocessing layers may have no weights (Rescaling): key them by their config.
        "preprocessing": [layer_key(layer) for layer in preprocess_layers(model)],
        # The pooling between backbone and head (avg and max give the same shape).
        "pooling": [layer_key(layer) for layer in pooling_layers_of(model)],
        "input": list(model.input_shape[1:]),
        "output": list(features.output_shape[1:]),
        "weights": weights or weights_fingerprint(features),
        "content": content,
        "view": view,
        "keras": keras.__version__,
        # What turned files into pixels: tf.io on TensorFlow, Pillow elsewhere; the two
        # differ by a few levels on most pixels of a JPEG, so a cache filled by one is not
        # the other's (arrays key the same way: only a missed reuse across backends).
        "decode": decode.recipe(),
    }
    return digest(description)


def digest(description: dict) -> str:
    """The cache key of an entry's ``description`` (any JSON-able dict, order-free)."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


@dataclass
class CacheStats:
    """What the cache did for one dataset."""

    key: str
    hit: bool
    images: int
    seconds: float
    note: str | None = None


#: Images per batch of an inference-only pass over plain images (no gradients are kept,
#: so a larger batch than training's costs little memory and runs nearer the backbone's rate).
INFERENCE_BATCH = 64


def compute(extractor: keras.Model, inputs, verbose: int = 1) -> np.ndarray:
    """Run a feature extractor (:func:`features_model`) over images in inference mode.

    A ``tf.data`` input runs through one compiled function traced once for any batch
    size (a last, smaller batch does not trace the backbone again), batch by batch.

    Args:
        extractor: ``features_model(model)``; reuse one for several calls.
        inputs: A dataset of image batches, or an array of images.
        verbose: A progress bar on a live terminal (1, cleared when done; nothing where
            the output is not live, :func:`graft.progress.keras_verbosity`) or silence (0).
    """
    # graft's own bar on a live terminal, cleared when done; elsewhere nothing. Never
    # Keras's bar: its "1/1 ━━━ 0s 20ms/step" stays behind on the terminal, and the cache
    # logs one line of its own when done.
    live = progress.keras_verbosity(verbose) == 1
    if isinstance(inputs, np.ndarray) or keras.backend.backend() != "tensorflow":
        with distribute.local():  # no data split: any batch, any number of images
            return np.asarray(extractor.predict(inputs, verbose=0), dtype="float32")
    forward = forward_function(extractor, inputs.element_spec)
    total = int(inputs.cardinality().numpy())
    parts = []
    with progress.track("Computing features", total if live else 0, "batches") as bar:
        for batch in inputs:
            parts.append(np.asarray(forward(batch), dtype="float32"))
            bar.advance()
    if not parts:
        return np.zeros((0, *extractor.output_shape[1:]), "float32")
    return np.concatenate(parts)


def load_or_compute(
    extractor: keras.Model,
    inputs,
    key: str,
    total: int,
    directory: Path | None = None,
    verbose: int = 1,
) -> tuple[np.ndarray, CacheStats]:
    """Features from entry ``key`` of the store in ``directory``
    (:mod:`graft.training.store`) if it is there and intact, else computed and stored.

    Every entry is verified (content and description) before use; a refused one is
    recomputed, and ``CacheStats.note`` says why.
    """
    store = open_store(directory or default_dir())
    start = time.perf_counter()
    shape = tuple(extractor.output_shape[1:])
    features, _, problem = store.load(key, total, shape)
    if features is not None:
        return features, CacheStats(key, True, total, time.perf_counter() - start)
    name = store.path(key).name
    note = None if problem is None else f"cache entry {name} recomputed: {problem}"
    features = compute(extractor, inputs, verbose)
    try:
        store.write(key, total, [features])
    except OSError:
        pass  # a read-only or full cache disk costs speed next time, not this run
    return features, CacheStats(key, False, total, time.perf_counter() - start, note)


def split_images(split, bb, batch_size: int, augment=None, view: tuple[int, int] = (0, 0)):
    """A dataset of the raw image batches of a split (files or arrays), in order;
    ``augment``ed in training mode if given. ``view`` is ``(seed, v)`` of an augmented
    view: off TensorFlow the view's draws are keyed by it
    (:class:`graft.data.neutral.Augment`, stream ``1 + v``); tf.data's augmentation draws
    from the layers' own state."""
    from graft.data import neutral
    from graft.data import pipelines as data

    if split.kind == "arrays":
        ds = data.array_pipeline(split.images, split.labels, batch_size)
    else:
        ds = data.pipeline(split.files, bb.image_size, bb.channels, batch_size)
    if augment is None:
        return images_only(ds)
    if neutral.is_neutral(ds):
        seed, v = view
        ds.augment = neutral.Augment(augment, seed, neutral.TRAINING + 1 + v)
        return images_only(ds)
    return ds.map(lambda x, y: augment(x, training=True))


def view_tag(cfg, view: int | None) -> str:
    """The cache key's ``view``: ``plain``, or the augmented view ``view`` of the run's
    level and seed (off TensorFlow also the backend: its random draws differ from
    tf.data's and from the other backends')."""
    if view is None:
        return "plain"
    tag = f"{cfg.augment}:seed{cfg.seed}:view{view}"
    backend = keras.backend.backend()
    return tag if backend == "tensorflow" else f"{tag}:{backend}"


def split_labels(split):
    """The labels of a split (files or arrays), in order."""
    return split.labels


def split_fingerprint(split) -> str:
    if split.kind == "arrays":
        return content_fingerprint(images=split.images)
    return content_fingerprint(paths=split.files.paths)


def split_features(model, bb, split, cfg, name: str, log=print) -> np.ndarray:
    """The backbone's features of one more split (the test split), from the feature cache
    when a run on the same images, backbone and weights stored them, else computed once
    and stored: the same entry a later run reuses. ``split`` is a files or arrays
    :class:`graft.data.adapter.DataAdapter` at the backbone's size."""
    directory = Path(cfg.cache_dir) if cfg.cache_dir else None
    extractor = features_model(model)
    key = cache_key(
        model,
        bb.source,
        split_fingerprint(split),
        view="plain",
        weights=weights_fingerprint(extractor),
    )
    batches = split_images(split, bb, max(cfg.batch_size, INFERENCE_BATCH))
    values, stats = load_or_compute(extractor, batches, key, len(split_labels(split)), directory, 0)
    if stats.note:
        log(f"Feature cache ({name}): {stats.note}")
    done = "reused" if stats.hit else "computed"
    log(f"Feature cache ({name}): {done} {stats.images} images in {stats.seconds:.1f} s")
    return values


def cached_datasets(
    model, bb, splits: dict, cfg, augment=None, log=print, verbose: int = 1, derive=None
):
    """Cached-feature datasets for the trainer's frozen-backbone phases.

    Args:
        model: The grafted model (its preprocessing, backbone and pooling are cached).
        bb: Its :class:`graft.backbones.Backbone`.
        splits: ``{"train": DataAdapter, "val": DataAdapter or None}`` (files or arrays;
            see :class:`graft.data.adapter.DataAdapter`).
        cfg: The run's :class:`graft.config.TrainConfig` (batch size, seed, cache dir,
            ``cache_views`` and ``augment``).
        augment: The training augmentation; with ``cfg.cache_views = K`` the training
            features are cached for K augmented views of every image, and epoch ``e``
            trains on view ``e mod K``.
        log: Receives one line per cached split.
        verbose: Show a progress bar while computing features.
        derive: ``derive(split, view) -> (extractor, batches, key) | None``: features
            computed from other inputs than the images (the cached activations of the
            frozen bottom, :func:`graft.training.derived.from_activations`); ``None`` for
            a split (or no ``derive``): from its images.

    Returns:
        The head alone (:func:`graft.core.model_utils.head_model`) and its datasets, as
        :class:`graft.training.feed.Inputs` for :meth:`graft.training.Trainer.fit`'s
        ``cached`` argument.
    """

    from graft.data import pipelines as data

    directory = Path(cfg.cache_dir) if cfg.cache_dir else None
    views = cfg.cache_views if augment is not None else 0
    extractor = features_model(model)
    weights = weights_fingerprint(extractor)

    def features(split, name, view=None):
        tag = view_tag(cfg, view)
        n = len(split_labels(split))
        found = derive(name, view) if derive is not None else None
        if found is None:
            aug = None if view is None else augment
            # Plain images: large inference batches; augmented views keep the training
            # batch (an augmentation draws its randomness per batch).
            batch = cfg.batch_size if aug is not None else max(cfg.batch_size, INFERENCE_BATCH)
            key = cache_key(model, bb.source, split_fingerprint(split), view=tag, weights=weights)
            found = extractor, split_images(split, bb, batch, aug, (cfg.seed, view or 0)), key
        values, stats = load_or_compute(*found, n, directory, verbose)
        label = name if view is None else f"{name}, augmented view {view + 1}/{views}"
        if stats.note:
            log(f"Feature cache ({label}): {stats.note}")
        source = "" if found[0] is extractor else " from the cached activations"
        log(
            f"Feature cache ({label}): {'reused' if stats.hit else 'computed'} "
            f"{stats.images} images{source} in {stats.seconds:.1f} s"
        )
        return values

    train, val = splits["train"], splits["val"]
    labels = split_labels(train)
    bs = cfg.batch_size
    if views:  # epoch e trains on view e mod views (graft's epoch order)
        stacked = np.concatenate([features(train, "train", v) for v in range(views)])
        tiled = np.concatenate([np.asarray(labels)] * views)
        train_ds = data.array_pipeline(stacked, tiled, bs, True, cfg.seed, views=views)
        steps = None  # the reader knows its batches per epoch
    else:
        train_ds = data.array_pipeline(features(train, "train"), labels, bs, True, cfg.seed)
        steps = None
    val_ds = None
    if val is not None:
        val_ds = data.array_pipeline(features(val, "val"), split_labels(val), bs)
    return Inputs(head_model(model), train_ds, val_ds, steps, FEATURES)
