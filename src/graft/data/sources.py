"""Labelled images in: class folders, CSV manifests, numpy arrays and ``tf.data``.

A :class:`LabelledFiles` is the plain description of a dataset on disk (paths, labels
and the class list); :func:`load_source` reads one from a folder of class subfolders or
a ``path,label`` CSV manifest, and :func:`pipeline` turns it into a streaming
``tf.data`` pipeline (parallel decode, resize, batch, optional augmentation, prefetch)
that never holds the dataset in memory. Images stay raw (0-255 floats): the model does
its own preprocessing. Files are checked before they reach a pipeline
(:mod:`graft.datacheck`), so a bad file never stops training halfway through an epoch.

Example:
    >>> files = load_source("data/pets")                      # doctest: +SKIP
    >>> train, val = stratified_split(files, 0.2, seed=0)     # doctest: +SKIP
    >>> ds = pipeline(train, (96, 96), augment=augmentation("light"))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft.config.names import AUGMENT_LEVELS
from graft.errors import DataError, UnknownNameError, did_you_mean

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
JUNK_FILES = ("Thumbs.db", "desktop.ini")
MULTI_LABEL_SEPARATOR = "|"


@dataclass(frozen=True)
class Problem:
    """One problem found in a data source.

    Attributes:
        kind: A :data:`graft.datacheck.KINDS` key, e.g. ``"unreadable"``.
        where: The file (or ``file:line`` for CSV manifests) it concerns.
        detail: What exactly is wrong, in a few words.
    """

    kind: str
    where: str
    detail: str = ""


@dataclass
class LabelledFiles:
    """Image paths with their labels.

    Attributes:
        paths: Image files (``str``; non-UTF-8 names are kept as ``os.fsdecode`` gives them).
        labels: Integer class indices ``(N,)``, or a multi-hot ``(N, C)`` float array
            when ``multi_label``.
        classes: Class names; the model's outputs in this order.
        multi_label: Each image may have several labels (sigmoid head).
        problems: Problems found while reading the source (CSV lines, empty class
            folders, files outside class folders).
        source: Where the data came from, for messages.
    """

    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    multi_label: bool = False
    problems: list[Problem] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        kind = ", multi_label" if self.multi_label else ""
        return f"LabelledFiles({len(self)} images, {len(self.classes)} classes{kind})"

    def counts(self) -> dict[str, int]:
        """Images per class (for multi-label data: images carrying each label)."""
        if self.multi_label:
            counts = np.asarray(self.labels).reshape(-1, len(self.classes)).sum(axis=0)
        else:
            counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}

    def subset(self, index) -> LabelledFiles:
        """The images at ``index`` (same classes; no source problems)."""
        index = np.asarray(index, dtype=int)
        return LabelledFiles(
            [self.paths[i] for i in index],
            self.labels[index],
            self.classes,
            self.multi_label,
            source=self.source,
        )

    def strata(self) -> np.ndarray:
        """One integer per image to stratify on: its class, or its rarest label."""
        if not self.multi_label:
            return np.asarray(self.labels)
        labels = np.asarray(self.labels) > 0
        freq = labels.sum(axis=0).astype(float)
        rarity = np.where(labels, freq[None, :], np.inf)
        return np.argmin(rarity, axis=1)


def display(path: str | bytes | os.PathLike) -> str:
    """A printable form of a file name, even one that is not valid UTF-8."""
    if isinstance(path, bytes):
        return path.decode("utf-8", "replace")
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in JUNK_FILES


def is_image_name(name: str) -> bool:
    """Whether a file name has one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        found += [
            os.path.join(dirpath, f) for f in sorted(filenames) if _visible(f) and is_image_name(f)
        ]
    return found


def load_source(source: str | os.PathLike, classes: list[str] | None = None) -> LabelledFiles:
    """Read a folder of class subfolders or a ``.csv`` manifest.

    Args:
        source: A folder (one subfolder of images per class) or a CSV file.
        classes: Fix the class list (e.g. from the training data or a trained model);
            a class not in it is an error that names it.

    Returns:
        A :class:`LabelledFiles`.
    """
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_csv(path, classes)
    if path.is_file():
        raise DataError(
            f"{display(source)} is a file, not a data folder or a .csv manifest.",
            hint="pass a folder with one subfolder of images per class, or a path,label CSV.",
        )
    return scan_folder(path, classes)


def scan_folder(root: str | os.PathLike, classes: list[str] | None = None) -> LabelledFiles:
    """Read a folder with one subfolder of images per class.

    Images in nested folders count for the class folder they are in; hidden files and
    OS junk (``.DS_Store``, ``Thumbs.db``) are ignored. Empty class folders and files
    lying outside class folders are recorded in ``problems``; an empty class folder is
    left out of the class list unless ``classes`` fixes it.

    Args:
        root: The folder.
        classes: Fix the class list and order (e.g. from a trained model's
            ``labels.json``); a subfolder not in it is an error. Default: the sorted
            names of the subfolders that hold images.

    Returns:
        A :class:`LabelledFiles`.
    """
    folder = Path(root).expanduser()
    shown = display(root)
    if not folder.exists():
        raise DataError(
            f"Data folder not found: {shown}.",
            hint="pass a folder with one subfolder of images per class, or a .csv manifest.",
        )
    if not folder.is_dir():
        raise DataError(f"{shown} is not a folder.", hint="pass a folder of class subfolders.")
    entries = sorted(folder.iterdir())
    found = [d.name for d in entries if d.is_dir() and _visible(d.name)]
    problems = [
        Problem("outside_class", str(f), "not inside a class folder")
        for f in entries
        if f.is_file() and _visible(f.name)
    ]
    if not found:
        raise DataError(
            f"{shown} has no class subfolders.",
            hint="put the images of each class in their own subfolder, e.g. DATA/cat/1.jpg.",
        )
    if classes is not None:
        unknown = [c for c in found if c not in classes and _images_under(folder / c)]
        if unknown:
            raise DataError(
                f"{shown} has class(es) the training data does not have: {', '.join(unknown)}.",
                hint=f"the known classes are: {', '.join(classes)}.",
            )
    per_class = {name: _images_under(folder / name) for name in found}
    for name, files in per_class.items():
        if not files:
            problems.append(Problem("empty_class", str(folder / name), "no images"))
    if classes is None:
        classes = [name for name in found if per_class[name]]
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = per_class.get(name, [])
        paths += files
        labels += [index] * len(files)
    if not paths:
        raise DataError(
            f"No images found in {shown}.",
            hint=f"supported extensions: {', '.join(IMAGE_EXTENSIONS)}.",
        )
    return LabelledFiles(
        paths, np.asarray(labels, dtype="int32"), list(classes), False, problems, shown
    )


def read_csv(path: str | os.PathLike, classes: list[str] | None = None) -> LabelledFiles:
    """Read a ``path,label`` CSV manifest.

    Paths are relative to the CSV's folder (absolute paths work too). A label cell
    with ``a|b`` gives an image several labels and makes the task multi-label.
    Lines with a missing file, an empty path or label, or the wrong number of fields
    are recorded in ``problems`` with their line number and skipped.

    Args:
        path: The CSV file; its header must have ``path`` and ``label`` columns.
        classes: Fix the class list; a label not in it is an error naming it.

    Returns:
        A :class:`LabelledFiles`.
    """
    path = Path(path).expanduser()
    shown = display(path)
    try:
        text = path.read_text("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"CSV manifest not found: {shown}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read CSV manifest {shown}: {exc}.") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise DataError(
            f"CSV manifest {shown} is empty.", hint="its first line must be path,label."
        )
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        raise DataError(
            f"CSV manifest {shown} has no {' or '.join(missing)} column "
            f"(header: {','.join(rows[0]) or 'empty'}).",
            hint="its first line must name the columns: path,label.",
        )
    ip, il = header.index("path"), header.index("label")
    base = path.parent
    problems: list[Problem] = []
    items: list[tuple[str, list[str]]] = []
    for line, row in enumerate(rows[1:], start=2):
        where = f"{shown}:{line}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.append(
                Problem("csv_bad_line", where, f"{len(row)} fields, expected {len(header)}")
            )
            continue
        rel, label = row[ip].strip(), row[il].strip()
        names = [n.strip() for n in label.split(MULTI_LABEL_SEPARATOR) if n.strip()]
        if not rel:
            problems.append(Problem("csv_bad_line", where, "empty path"))
            continue
        if not names:
            problems.append(Problem("csv_empty_label", where, f"empty label for {rel}"))
            continue
        file = Path(rel) if Path(rel).is_absolute() else base / rel
        if not file.is_file():
            problems.append(Problem("csv_missing_file", where, f"{rel} does not exist"))
            continue
        items.append((str(file), names))
    multi = any(len(names) > 1 for _, names in items) or any(
        MULTI_LABEL_SEPARATOR in (row[il] if len(row) > il else "") for row in rows[1:]
    )
    seen = sorted({n for _, names in items for n in names})
    if classes is None:
        classes = seen
    else:
        unknown = [n for n in seen if n not in classes]
        if unknown:
            raise DataError(
                f"{shown} has label(s) the training data does not have: {', '.join(unknown)}.",
                hint=f"the known classes are: {', '.join(classes)}.",
            )
    if not items:
        raise DataError(
            f"No usable images listed in {shown}"
            + (f" ({len(problems)} bad lines, e.g. line {problems[0].where})" if problems else "")
            + ".",
            hint="each line is path,label with the path relative to the CSV.",
        )
    index = {c: i for i, c in enumerate(classes)}
    if multi:
        labels = np.zeros((len(items), len(classes)), "float32")
        for row, (_, names) in enumerate(items):
            labels[row, [index[n] for n in names]] = 1.0
    else:
        labels = np.asarray([index[names[0]] for _, names in items], "int32")
    return LabelledFiles([p for p, _ in items], labels, list(classes), multi, problems, shown)


def stratified_split(
    files: LabelledFiles, fraction: float, seed: int = 0
) -> tuple[LabelledFiles, LabelledFiles]:
    """Split off ``fraction`` of every class for validation, reproducibly by ``seed``.

    Every class with at least two images keeps at least one in each part. Multi-label
    data is stratified by each image's rarest label.

    Args:
        files: The data to split.
        fraction: Share of each class for validation, in (0, 1).
        seed: Same seed, same split.

    Returns:
        ``(train, validation)``.
    """
    if not 0 < fraction < 1:
        raise DataError(f"--val-split must be between 0 and 1, got {fraction}.")
    rng = np.random.default_rng(seed)
    strata = files.strata()
    train_idx, val_idx = [], []
    for label in range(len(files.classes)):
        members = np.flatnonzero(strata == label)
        rng.shuffle(members)
        if len(members) < 2:
            train_idx += members.tolist()
            continue
        n_val = min(max(1, int(round(len(members) * fraction))), len(members) - 1)
        val_idx += members[:n_val].tolist()
        train_idx += members[n_val:].tolist()
    return files.subset(sorted(train_idx)), files.subset(sorted(val_idx))


def class_weights(labels, multi_label: bool = False) -> dict[int, float]:
    """Balanced class weights (scikit-learn's ``compute_class_weight("balanced")``).

    Args:
        labels: Integer training labels.
        multi_label: Multi-hot labels (not supported: raises a DataError).

    Returns:
        ``{class_index: weight}`` for Keras ``fit(class_weight=...)``.
    """
    from sklearn.utils.class_weight import compute_class_weight

    if multi_label or np.asarray(labels).ndim != 1:
        raise DataError(
            "--class-weight auto does not apply to multi-label data.",
            hint="drop --class-weight for a CSV with a|b labels.",
        )
    labels = np.asarray(labels)
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)}


def imbalance(counts: dict[str, int], ratio: float = 10.0) -> tuple[str, int, str, int] | None:
    """``(largest, n, smallest, m)`` when the largest class has >= ``ratio`` x the smallest's.

    Args:
        counts: Images per class (:meth:`LabelledFiles.counts`).
        ratio: The threshold.

    Returns:
        The two classes and their counts, or ``None`` when the data is balanced enough.
    """
    counts = {c: n for c, n in counts.items() if n > 0}
    if len(counts) < 2:
        return None
    big = max(counts, key=counts.get)
    small = min(counts, key=counts.get)
    if counts[big] >= ratio * counts[small]:
        return big, counts[big], small, counts[small]
    return None


def augmentation(level: str = "standard", seed: int | None = None):
    """Keras preprocessing layers that augment training batches.

    ``light``: horizontal flip, small rotation and zoom. ``standard``: flip, rotation,
    zoom, translation and contrast. The layers work on raw 0-255 images and are applied
    in the ``tf.data`` pipeline, never inside the model, so inference is unaffected.

    Args:
        level: ``none``, ``light`` or ``standard``.
        seed: Seed for the random transformations.

    Returns:
        A ``keras.Sequential``, or ``None`` for ``none``.
    """
    if level not in AUGMENT_LEVELS:
        raise UnknownNameError(
            f"Unknown --augment level: {level!r}.{did_you_mean(level, AUGMENT_LEVELS)}",
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
    augment=None,
):
    """A streaming ``tf.data.Dataset`` of ``(raw_image_batch, label_batch)``.

    Files are decoded in parallel, resized to ``image_size`` (bilinear), batched and
    prefetched; only a few batches are in memory at once. With ``shuffle`` the order
    changes every epoch, reproducibly from ``seed``. ``augment`` (e.g.
    :func:`augmentation`) runs on each batch in training mode.

    Args:
        files: Checked files (:func:`graft.datacheck.check` drops the bad ones).
        image_size: ``(height, width)``.
        channels: Colour channels of the decoded images.
        batch_size: Images per batch.
        shuffle: Reshuffle the files every epoch.
        seed: Shuffle seed.
        augment: A callable on image batches, or ``None``.

    Returns:
        A ``tf.data.Dataset``.
    """
    import tensorflow as tf

    # Bytes, not str: file names need not be valid UTF-8.
    paths = np.asarray([os.fsencode(p) for p in files.paths], dtype=object)
    labels = np.asarray(files.labels, "float32" if files.multi_label else "int32")
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), labels))
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(_decoder(tuple(image_size), channels), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=1)
    return ds.prefetch(tf.data.AUTOTUNE)


def array_pipeline(x, y, batch_size: int = 32, shuffle: bool = False, seed: int = 0, augment=None):
    """A ``tf.data.Dataset`` over in-memory arrays (images of the model's input size)."""
    import tensorflow as tf

    y = np.asarray(y)
    y = y.astype("float32") if y.ndim == 2 else y.astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(x, "float32"), y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda a, b: (augment(a, training=True), b), num_parallel_calls=1)
    return ds.prefetch(tf.data.AUTOTUNE)


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

    def fit(x, y):
        x = tf.cast(x, tf.float32)
        if x.shape[-1] == 1 and channels == 3:
            x = tf.image.grayscale_to_rgb(x)
        x = tf.image.resize(x, image_size, method="bilinear")
        return x, y

    ds = ds.map(fit, num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None:
        ds = ds.map(lambda a, b: (augment(a, training=True), b), num_parallel_calls=1)
    return ds.prefetch(tf.data.AUTOTUNE)
