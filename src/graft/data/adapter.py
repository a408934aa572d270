"""One adapter per kind of input: the input is classified once, here.

:func:`adapt` turns a folder, a CSV manifest, a :class:`LabelledFiles`, ``(images,
labels)`` arrays or a ``tf.data.Dataset`` into a :class:`DataAdapter` (cf. Keras's
``get_data_adapter``); everything downstream asks the adapter (its labels, its split,
its pipeline) and never checks the input's type again.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from graft.data import check as datacheck
from graft.data import pipelines
from graft.data.sources import LabelledFiles, load_source, stratified_split
from graft.errors import DataError


@dataclass(frozen=True, eq=False)
class DataAdapter:
    """Labelled images of one kind, classified once by :func:`adapt`.

    This is the one description of the data that every later step reads: its ``kind``,
    ``classes``, ``labels``, ``files``/``paths`` or ``images``, and where it came from
    (``origin``). Nothing downstream looks at the raw input again. Frozen: a step that
    needs other class names or a resized copy derives a new adapter
    (:meth:`with_classes`, :meth:`fitted`, :meth:`split`).
    """

    #: ``"files"``, ``"arrays"`` or ``"dataset"``.
    kind: ClassVar[str] = ""

    @property
    def classes(self) -> list[str] | None:
        raise NotImplementedError

    @property
    def multi_label(self) -> bool:
        raise NotImplementedError

    @property
    def labels(self) -> np.ndarray | None:
        """Every label (``None`` for a stream)."""
        return None

    @property
    def count(self) -> int | str:
        """The number of images (``"streamed"`` for a stream)."""
        return len(self.labels)

    @property
    def files(self) -> LabelledFiles | None:
        """The files on disk (``None`` for in-memory data)."""
        return None

    @property
    def paths(self) -> list[str] | None:
        """The image files in their (unshuffled) batch order (``None`` for in-memory data)."""
        return None if self.files is None else [str(p) for p in self.files.paths]

    @property
    def images(self) -> np.ndarray | None:
        """The in-memory images ``(N, H, W, C)`` (``None`` for files and streams)."""
        return None

    @property
    def origin(self) -> str | None:
        """The folder or CSV file the data was read from, absolute (``None`` when the
        data was not given as a path)."""
        return None

    @property
    def spelled(self) -> str | None:
        """``origin`` as the caller typed it (``config.yaml`` keeps both)."""
        return None

    def with_classes(self, classes: list[str]) -> DataAdapter:
        """The same data with other names for its labels (arrays and streams)."""
        return dataclasses.replace(self, names=list(classes))

    def fitted(self, image_size, channels: int) -> DataAdapter:
        """The same data, in-memory images already resized for a model."""
        return self

    def split(self, fraction: float, seed: int) -> tuple[DataAdapter, DataAdapter]:
        """A stratified ``(train, val)`` split."""
        raise DataError("A tf.data.Dataset cannot be split; pass val=... instead.")

    def subset(self, index) -> DataAdapter:
        """The images at ``index`` (positions into :attr:`labels`), same classes: one
        fold of a cross-validation."""
        raise DataError("A tf.data.Dataset cannot be cross-validated; pass val=... instead.")

    def batches(
        self, image_size, channels: int, batch_size: int, shuffle=False, seed=0, augment=None
    ):
        """A ``tf.data.Dataset`` of ``(raw_image_batch, label_batch)`` of the given size."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class FilesAdapter(DataAdapter):
    kind = "files"
    source: LabelledFiles
    #: The path as typed, when the files were read from one (see ``origin``).
    typed: str | None = None

    classes = property(lambda self: list(self.source.classes))
    multi_label = property(lambda self: bool(self.source.multi_label))
    labels = property(lambda self: self.source.labels)
    count = property(lambda self: len(self.source))
    files = property(lambda self: self.source)
    spelled = property(lambda self: self.typed)

    @property
    def origin(self) -> str | None:
        return None if self.typed is None else str(Path(self.typed).expanduser().resolve())

    def with_classes(self, classes):
        return self  # a folder's class names are its subfolders (fixed when it is read)

    def split(self, fraction, seed):
        train, val = stratified_split(self.source, fraction, seed)
        return FilesAdapter(train), FilesAdapter(val)

    def subset(self, index):
        return FilesAdapter(self.source.subset(index))

    def batches(self, image_size, channels, batch_size, shuffle=False, seed=0, augment=None):
        return pipelines.pipeline(
            self.source, image_size, channels, batch_size, shuffle, seed, augment
        )


@dataclass(frozen=True, eq=False)
class ArrayAdapter(DataAdapter):
    kind = "arrays"
    x: np.ndarray
    y: np.ndarray
    #: The label names (default ``"0"``, ``"1"``, ... up to the largest label).
    names: list[str] | None = None

    def __post_init__(self):
        if not self.names:
            y = self.y
            n = y.shape[1] if y.ndim == 2 else int(y.max()) + 1 if len(y) else 0
            # Frozen: the default is set once, here, not by a later step.
            object.__setattr__(self, "names", [str(i) for i in range(n)])

    classes = property(lambda self: list(self.names))
    multi_label = property(lambda self: self.y.ndim == 2)
    labels = property(lambda self: self.y)
    images = property(lambda self: self.x)

    def split(self, fraction, seed):
        names = [str(i) for i in range(int(np.max(self.y)) + 1)]
        index = LabelledFiles([str(i) for i in range(len(self.y))], np.asarray(self.y), names)
        train, val = stratified_split(index, fraction, seed)
        pick = [[int(p) for p in part.paths] for part in (train, val)]
        return tuple(ArrayAdapter(self.x[i], self.y[i], self.names) for i in pick)

    def subset(self, index):
        index = np.asarray(index, dtype=int)
        return ArrayAdapter(self.x[index], self.y[index], self.names)

    def fitted(self, image_size, channels: int) -> ArrayAdapter:
        x = pipelines.fit_arrays(self.x, image_size, channels)
        return ArrayAdapter(x, self.y, self.names)

    def batches(self, image_size, channels, batch_size, shuffle=False, seed=0, augment=None):
        x = pipelines.fit_arrays(self.x, image_size, channels)
        return pipelines.array_pipeline(x, self.y, batch_size, shuffle, seed, augment)


@dataclass(frozen=True, eq=False)
class DatasetAdapter(DataAdapter):
    kind = "dataset"
    ds: object
    names: list[str] | None = None

    classes = property(lambda self: None if not self.names else list(self.names))
    count = property(lambda self: "streamed")

    @property
    def multi_label(self) -> bool:
        spec = self.ds.element_spec
        return spec[1].shape.rank == (2 if spec[0].shape.rank == 4 else 1)

    def batches(self, image_size, channels, batch_size, shuffle=False, seed=0, augment=None):
        return pipelines.dataset_pipeline(self.ds, image_size, channels, batch_size, augment)


def is_tf_dataset(source) -> bool:
    return type(source).__module__.startswith("tensorflow") and hasattr(source, "element_spec")


def adapt(source, classes: list[str] | None = None) -> DataAdapter:
    """Classify ``source`` once and wrap it.

    Args:
        source: A folder of class subfolders, a ``.csv`` manifest, a
            :class:`LabelledFiles`, ``(images, labels)`` arrays (integer or multi-hot
            labels) or a ``tf.data.Dataset`` of ``(image, label)``; an adapter is
            returned as it is.
        classes: Fix the class list (files), or name the labels (arrays, tf.data).
    """
    if isinstance(source, DataAdapter):
        return source
    if isinstance(source, (str, os.PathLike)):
        return FilesAdapter(load_source(source, classes), typed=str(source))
    if isinstance(source, LabelledFiles):
        return FilesAdapter(source)
    if is_tf_dataset(source):
        return DatasetAdapter(source, classes)
    if isinstance(source, tuple) and len(source) == 2:
        x, y = (np.asarray(a) for a in source)
        if len(x) != len(y):
            raise DataError(f"Got {len(x)} images but {len(y)} labels.")
        if x.ndim not in (3, 4):
            raise DataError(f"Images must be an array (N, H, W[, C]), got shape {x.shape}.")
        y = y.astype("float32") if y.ndim == 2 else y.astype("int32")
        return ArrayAdapter(x if x.ndim == 4 else x[..., None], y, classes)
    raise DataError(
        f"Unsupported data: {type(source).__name__}.",
        hint="pass a folder of class subfolders, a .csv manifest, a tuple "
        "(images, integer_labels) or a tf.data.Dataset of (image, label).",
    )


def checked(
    splits: dict[str, DataAdapter | None],
    min_size: int = datacheck.DEFAULT_MIN_SIZE,
    strict: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, DataAdapter | None], datacheck.CheckReport | None]:
    """Run the pre-flight check on the file splits (``train``, ``val``, ``test``).

    Logs the check's summary and drops the files it rejects; in-memory data passes
    through. Returns the usable splits and the report (``None`` if nothing was checked).
    """
    train = splits["train"]
    if train.files is None:
        return splits, None
    on_disk = {k: v.files for k, v in splits.items() if v is not None and v.files is not None}
    report = datacheck.check(
        on_disk["train"], on_disk.get("val"), on_disk.get("test"), min_size=min_size
    )
    for line in report.lines():
        log(line)
    report.raise_if_strict(strict)
    usable = dict(splits)
    for name, files in report.splits.items():  # the same description, its usable files
        usable[name] = dataclasses.replace(splits[name], source=files)
    empty = [c for c, n in usable["train"].files.counts().items() if n == 0]
    if empty:
        small = report.too_small_hint()
        raise DataError(
            f"Class(es) without a single usable training image: {', '.join(empty)}."
            + (f" {small}." if small else ""),
            hint="add readable images to them or remove their folders"
            + (" (or lower min_size)." if small else "."),
        )
    for name in ("val", "test"):
        if usable.get(name) is not None and usable[name].files is not None:
            if not usable[name].count:
                small = report.too_small_hint()
                raise DataError(
                    f"No usable images left in the {name} data after the check."
                    + (f" {small}." if small else "")
                )
    return usable, report


def labelled_batches(
    data_source,
    classes: list[str],
    image_size: tuple[int, int],
    channels: int,
    batch_size: int = 32,
    min_size: int = datacheck.DEFAULT_MIN_SIZE,
    with_paths: bool = False,
):
    """Labelled ``(images, labels)`` batches of ``data_source`` sized for a model.

    Files go through the pre-flight check first; files it rejects are skipped.

    Args:
        data_source: Anything :func:`adapt` takes (classes known to the model).
        classes: The model's class names (fixes the label order).
        image_size: The model's ``(height, width)``.
        channels: The model's colour channels.
        batch_size: Images per batch.
        min_size: Smallest image side the check accepts.

        with_paths: Also return the file of every image in batch order (``None`` for
            in-memory data).

    Returns:
        ``(dataset, number_of_images_or_None, number_of_skipped_files)`` (and the paths).
    """
    source = adapt(data_source, classes)
    skipped = 0
    if source.files is not None:
        report = datacheck.check(source.files, min_size=min_size)
        source, skipped = FilesAdapter(report.splits["train"]), report.skipped
        if not source.count:
            small = report.too_small_hint()
            raise DataError(
                f"No usable images in {source.files.source} (all {skipped} skipped)."
                + (f" {small}." if small else "")
            )
    count = source.count if isinstance(source.count, int) else None
    out = (source.batches(image_size, channels, batch_size), count, skipped)
    if with_paths:
        out += (None if source.files is None else [str(p) for p in source.files.paths],)
    return out
