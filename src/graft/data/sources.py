"""Labelled images in: class folders, CSV manifests, numpy arrays and ``tf.data``.

A :class:`LabelledFiles` is the plain description of a dataset on disk (paths, labels
and the class list); :func:`load_source` reads one from a folder of class subfolders or
a ``path,label`` CSV manifest. :mod:`graft.data.pipelines` turns it into ``tf.data``.

Example:
    >>> files = load_source("data/pets")                      # doctest: +SKIP
    >>> train, val = stratified_split(files, 0.2, seed=0)     # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft.data.regular import MAX_FILE_BYTES, read_regular  # noqa: F401
from graft.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
JUNK_FILES = ("Thumbs.db", "desktop.ini")
MULTI_LABEL_SEPARATOR = "|"


@dataclass(frozen=True)
class Problem:
    """One problem found in a data source.

    Attributes:
        kind: A :data:`graft.data.check.KINDS` key, e.g. ``"unreadable"``.
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


def image_files(folder: str | os.PathLike) -> list[str]:
    """Every image file under ``folder`` (recursively, sorted), the one folder walk.

    Hidden files and folders and OS junk (``Thumbs.db``, ``desktop.ini``) are skipped.
    """
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
        unknown = [c for c in found if c not in classes and image_files(folder / c)]
        if unknown:
            raise DataError(
                f"{shown} has class(es) the training data does not have: {', '.join(unknown)}.",
                hint=f"the known classes are: {', '.join(classes)}.",
            )
    per_class = {name: image_files(folder / name) for name in found}
    for name, files in per_class.items():
        if not files:
            problems.append(Problem("empty_class", str(folder / name), "no images"))
    if classes is None:
        classes = [name for name in found if per_class[name]]
        _distinct(classes, shown, "class folders")
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
        text = read_regular(path).decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"CSV manifest not found: {shown}.") from None
    except OSError as exc:
        raise DataError(f"Cannot read CSV manifest {shown}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"Cannot read CSV manifest {shown}: {exc}.") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, lines, end = [], [], 0
    try:  # csv splits the records: a quoted newline or U+2028 stays inside its cell
        for row in reader:
            rows.append(row)
            lines.append(end + 1)  # the line the record starts on
            end = reader.line_num
    except csv.Error as exc:
        raise DataError(f"CSV manifest {shown} is malformed at line {end + 1}: {exc}.") from None
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
    lines_of: list[str] = []
    for line, row in zip(lines[1:], rows[1:]):
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
        bad = [n for n in names if any(ch.isspace() and ch != " " for ch in n)]
        if bad:  # a class name is one line everywhere: refuse it, never alter it
            problems.append(Problem("csv_bad_line", where, f"label {bad[0]!r} has a line break"))
            continue
        file = Path(rel) if Path(rel).is_absolute() else base / rel
        if not file.is_file():
            problems.append(Problem("csv_missing_file", where, f"{rel} does not exist"))
            continue
        items.append((str(file), names))
        lines_of.append(where)
    items = _without_conflicts(items, lines_of, problems)
    multi = any(len(names) > 1 for _, names in items) or any(
        MULTI_LABEL_SEPARATOR in (row[il] if len(row) > il else "") for row in rows[1:]
    )
    seen = sorted({n for _, names in items for n in names})
    if classes is None:
        classes = seen
        _distinct(classes, shown, "labels")
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


def _distinct(names: list[str], shown: str, what: str) -> None:
    """Refuse class names that differ only in Unicode normalisation (``café`` typed as
    one code point or as ``e`` + a combining accent): two classes that print the same."""
    first: dict[str, str] = {}
    for name in names:
        key = unicodedata.normalize("NFC", name)
        if key in first:
            raise DataError(
                f"{shown} has {what} {ascii(first[key])} and {ascii(name)} that differ only "
                f"in Unicode normalisation (both read {key!r}).",
                hint="rename one so that they are one class (or two names that differ).",
            )
        first[key] = name


def _without_conflicts(items: list, lines_of: list[str], problems: list) -> list:
    """``items`` without the files listed under different labels (every line of such a
    file is dropped and recorded: which label is right cannot be told). A file listed
    twice with the same labels stays (the data check reports the duplicate)."""
    labels_of: dict[str, list[tuple[str, frozenset]]] = {}
    for (file, names), where in zip(items, lines_of):
        labels_of.setdefault(os.path.realpath(file), []).append((where, frozenset(names)))
    conflicted = {key for key, seen in labels_of.items() if len({s for _, s in seen}) > 1}
    kept = []
    for (file, names), where in zip(items, lines_of):
        key = os.path.realpath(file)
        if key not in conflicted:
            kept.append((file, names))
            continue
        others = [
            f"{'|'.join(sorted(s))!r} at line {w.rsplit(':', 1)[-1]}"
            for w, s in labels_of[key]
            if s != frozenset(names)
        ]
        detail = f"{display(file)} is also listed as {', '.join(others)}; dropped"
        problems.append(Problem("csv_conflict", where, detail))
    return kept


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
        raise DataError(f"val_split must be between 0 and 1. Received: val_split={fraction}")
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
            hint="drop class_weight=auto for a CSV with a|b labels.",
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
