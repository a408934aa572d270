"""Labelled images in: folders of class subfolders, numpy arrays, tf.data pipelines.

A :class:`LabelledFiles` is the plain description of a dataset on disk (paths, integer
labels and the class list); :func:`pipeline` turns one into a streaming ``tf.data``
pipeline (parallel decode, resize, batch, prefetch) that never holds the dataset in
memory. Images stay raw (0-255 floats): the model does its own preprocessing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graft.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


@dataclass
class LabelledFiles:
    """Image paths with integer labels into ``classes``."""

    paths: list[str]
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}

    def subset(self, index) -> LabelledFiles:
        index = np.asarray(index, dtype=int)
        return LabelledFiles([self.paths[i] for i in index], self.labels[index], self.classes)


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in ("Thumbs.db", "desktop.ini")


def _images_under(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        found += [
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if _visible(f) and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


def scan_folder(root: str | os.PathLike, classes: list[str] | None = None) -> LabelledFiles:
    """Read a folder with one subfolder of images per class.

    Args:
        root: The folder.
        classes: Fix the class list and order (e.g. from a trained model's
            ``labels.json``); a subfolder not in it is an error. Default: the sorted
            subfolder names.

    Returns:
        A :class:`LabelledFiles`.
    """
    folder = Path(root).expanduser()
    if not folder.exists():
        raise DataError(
            f"Data folder not found: {root}.",
            hint="pass a folder with one subfolder of images per class.",
        )
    if not folder.is_dir():
        raise DataError(f"{root} is not a folder.", hint="pass a folder of class subfolders.")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and _visible(d.name))
    if not found:
        raise DataError(
            f"{root} has no class subfolders.",
            hint="put the images of each class in their own subfolder, e.g. DATA/cat/1.jpg.",
        )
    if classes is None:
        classes = found
    else:
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise DataError(
                f"{root} has class(es) the model does not know: {', '.join(unknown)}.",
                hint=f"the model's classes are: {', '.join(classes)}.",
            )
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = _images_under(folder / name) if (folder / name).is_dir() else []
        paths += files
        labels += [index] * len(files)
    if not paths:
        raise DataError(
            f"No images found in {root}.",
            hint=f"supported extensions: {', '.join(IMAGE_EXTENSIONS)}.",
        )
    return LabelledFiles(paths, np.asarray(labels, dtype="int32"), list(classes))


def stratified_split(
    files: LabelledFiles, fraction: float, seed: int = 0
) -> tuple[LabelledFiles, LabelledFiles]:
    """Split off ``fraction`` of every class for validation, reproducibly by ``seed``.

    Every class with at least two images keeps at least one in each part.
    """
    if not 0 < fraction < 1:
        raise DataError(f"--val-split must be between 0 and 1, got {fraction}.")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in range(len(files.classes)):
        members = np.flatnonzero(files.labels == label)
        rng.shuffle(members)
        if len(members) < 2:
            train_idx += members.tolist()
            continue
        n_val = min(max(1, int(round(len(members) * fraction))), len(members) - 1)
        val_idx += members[:n_val].tolist()
        train_idx += members[n_val:].tolist()
    return files.subset(sorted(train_idx)), files.subset(sorted(val_idx))


def _decoder(image_size: tuple[int, int], channels: int):
    import tensorflow as tf

    def load(path, label):
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        image = tf.image.resize(image, image_size, method="bilinear")
        image.set_shape((*image_size, channels))
        return image, label

    return load


def pipeline(
    files: LabelledFiles,
    image_size: tuple[int, int],
    channels: int = 3,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
):
    """A streaming ``tf.data.Dataset`` of ``(raw_image_batch, label_batch)``.

    Files are decoded in parallel, resized to ``image_size`` (bilinear), batched and
    prefetched; only a few batches are in memory at once. With ``shuffle`` the order
    changes every epoch, reproducibly from ``seed``.
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((files.paths, files.labels))
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(_decoder(tuple(image_size), channels), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def array_pipeline(x, y, batch_size: int = 32, shuffle: bool = False, seed: int = 0):
    """A ``tf.data.Dataset`` over in-memory arrays (images of the model's input size)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((np.asarray(x, "float32"), np.asarray(y, "int32")))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
