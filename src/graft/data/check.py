"""The pre-flight data check: every file read once, every problem named before training.

:func:`check` opens every image of the train/validation/test data once, in parallel
(a thread pool; Pillow decodes outside the GIL), and sorts what it finds into problem
kinds (:data:`KINDS`). Files that cannot be used (unreadable, empty, not images, too
small, decompression bombs) are dropped from the data it returns, so a training
pipeline never meets them. Images that ``tf.io`` cannot decode correctly (palette or
1-bit BMPs, and any format it does not read) are converted once to PNG in a temporary
cache, so the pipeline decodes the same pixels the check saw.

What it decodes (:mod:`graft.data.integrity`): only as much as it takes to find the
files the pipeline's ``tf.io`` decode would fail on. JPEGs at 1/8 scale (libjpeg still
parses the whole compressed stream, so truncation and corrupt scans are still found),
PNGs in full (only inflating finds a broken zlib stream) plus libpng's chunk checks,
everything else, and every image it converts, in full. The pixels a model sees always
come from the pipeline's ``tf.io`` decode, never from the check: the exported model
and ``predict`` decode the same way (no train/serve skew).

Example:
    >>> from graft.data import check, sources
    >>> report = check.check(sources.load_source("data/pets"))   # doctest: +SKIP
    >>> print("\\n".join(report.lines()))                        # doctest: +SKIP
    >>> train = report.splits["train"]                           # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from graft import progress
from graft.config.defaults import DEFAULT_MIN_SIZE
from graft.data import balance, content
from graft.data.convert import converted_dir, describe_mode, needs_pillow, write_png_copy
from graft.data.integrity import decode_for_check, png_chunk_problem
from graft.data.sources import LabelledFiles, display, read_regular
from graft.errors import DataError, first_line

#: Problem kinds: key -> (severity, description). Severity ``skipped``: the file is
#: left out; ``warning``: kept, but worth fixing (``--strict`` fails on both);
#: ``info``: handled, nothing to fix (converted images, animated GIFs).
KINDS: dict[str, tuple[str, str]] = {
    "unreadable": ("skipped", "unreadable, truncated or corrupt images"),
    "empty_file": ("skipped", "zero-byte files"),
    "not_image": ("skipped", "files that are not images despite an image extension"),
    "too_small": ("skipped", "images smaller than the minimum size"),
    "too_large": ("skipped", "images over the decompression-bomb pixel limit"),
    "csv_bad_line": ("skipped", "malformed CSV lines"),
    "csv_missing_file": ("skipped", "CSV lines whose file does not exist"),
    "csv_empty_label": ("skipped", "CSV lines with an empty label"),
    "csv_conflict": ("skipped", "CSV lines listing one file under different labels"),
    "outside_class": ("skipped", "files outside class folders"),
    "empty_class": ("warning", "class folders without usable images"),
    "single_class": ("warning", "training data with a single class"),
    "tiny_class": ("warning", "classes with fewer than 2 images"),
    "duplicate": ("warning", "exact duplicate images within a split"),
    "leakage": ("warning", "exact duplicates across train/validation/test (leakage)"),
    "converted": (
        "info",
        "images converted to the backbone's channels when read (not stored as RGB)",
    ),
    "animated": ("info", "animated GIFs (first frame used)"),
}

SPLITS = ("train", "val", "test")


@dataclass
class FileResult:
    """What the check found for one file."""

    path: str
    kind: str | None = None  # a skipped-kind key, or None if the file is usable
    detail: str = ""
    digest: str = ""
    notes: tuple[tuple[str, str], ...] = ()  # info-kind findings: (kind, detail)
    mode: str = ""  # the stored colour mode, e.g. "RGB", "grayscale"
    use_path: str | None = None  # the file the pipeline should read


@dataclass
class CheckReport:
    """The outcome of :func:`check`.

    Attributes:
        splits: The usable data per split (``train``, ``val``, ``test``), bad files
            removed, converted files pointing at their converted copy.
        scanned: Files scanned per split.
        problems: Per kind (a :data:`KINDS` key), ``(where, detail)`` in file order.
        min_size: The minimum image side that was applied.
    """

    splits: dict[str, LabelledFiles]
    scanned: dict[str, int]
    problems: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    min_size: int = DEFAULT_MIN_SIZE
    _cache: object = field(default=None, repr=False)  # keeps converted files alive
    modes: dict[str, str] = field(default_factory=dict)  # used path -> stored colour mode

    def too_small_hint(self) -> str:
        """A hint naming ``min_size`` when it is what left images out, else ``""``."""
        if not self.count("too_small"):
            return ""
        return (
            f"{self.count('too_small')} image(s) were smaller than min_size={self.min_size} "
            f"pixels; pass a smaller min_size to keep them"
        )

    def channel_line(self, channels: int) -> str | None:
        """What decoding for a ``channels``-channel model does to these images (or ``None``)."""
        target = "RGB" if channels == 3 else "grayscale"
        modes: dict[str, int] = defaultdict(int)
        for files in self.splits.values():
            for path in files.paths:
                mode = self.modes.get(path, "RGB")
                if mode != target:
                    modes[mode] += 1
        if not modes:
            return None
        found = ", ".join(f"{n} {m}" for m, n in sorted(modes.items()))
        return (
            f"Channels: {sum(modes.values())} image(s) converted to {target} for a "
            f"{channels}-channel backbone ({found})"
        )

    def count(self, kind: str) -> int:
        """How many times ``kind`` was found."""
        return len(self.problems.get(kind, []))

    def counts(self) -> dict[str, int]:
        """``{kind: count}`` for every kind found."""
        return {k: len(v) for k, v in self.problems.items() if v}

    @property
    def skipped(self) -> int:
        """Files (or CSV lines) left out."""
        return sum(self.count(k) for k, (sev, _) in KINDS.items() if sev == "skipped")

    def issues(self) -> dict[str, int]:
        """Counts of the kinds ``--strict`` refuses (everything but ``info``)."""
        return {k: n for k, n in self.counts().items() if KINDS[k][0] != "info"}

    def lines(self, examples: int = 3) -> list[str]:
        """A human summary: one headline, then one line per kind with a few examples."""
        scanned = ", ".join(f"{s} {n}" for s, n in self.scanned.items() if n)
        usable = sum(len(f) for f in self.splits.values())
        total = sum(self.scanned.values())
        head = f"Data check: {total} file{'' if total == 1 else 's'} scanned ({scanned}); "
        head += f"{usable} usable, {self.skipped} skipped"
        if self.count("leakage"):
            head += f", {self.count('leakage')} leaked copies dropped from validation/test"
        converted = self.count("converted")
        if converted:
            head += f", {converted} converted"
        out = [head]
        for kind, (severity, text) in KINDS.items():
            found = self.problems.get(kind)
            if not found:
                continue
            if kind == "too_small":
                n = self.min_size
                text = f"images smaller than {n}x{n} px (min_size={n})"
            label = {"skipped": "skipped", "warning": "warning", "info": "note"}[severity]
            shown = "; ".join(
                f"{where} ({detail})" if detail else where for where, detail in found[:examples]
            )
            more = f"; and {len(found) - examples} more" if len(found) > examples else ""
            out.append(f"  {label}: {len(found)} {text}: {shown}{more}")
        return out

    def class_rows(self) -> list[dict]:
        """Usable images per class and split, and each class's share of train."""
        return balance.class_rows(self.splits)

    def imbalance(self, class_weight: str = "none") -> dict:
        """The training classes' imbalance ratio and note (:mod:`graft.data.balance`)."""
        return balance.imbalance_summary(self.splits["train"].counts(), class_weight)

    def as_dict(self) -> dict:
        """Everything the check found, for ``graft data check --json``."""
        return {
            "scanned": self.scanned,
            "usable": {name: len(files) for name, files in self.splits.items()},
            "skipped": self.skipped,
            "problems": {k: [list(p) for p in v] for k, v in self.problems.items()},
            "classes": self.class_rows(),
            "imbalance": self.imbalance(),
        }

    def raise_if_strict(self, strict: bool) -> None:
        """With ``strict``, any problem (not just a converted image) is a DataError."""
        issues = self.issues()
        if strict and issues:
            parts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in issues.items())
            first = next(k for k in KINDS if k in issues)
            where = self.problems[first][0][0]
            raise DataError(
                f"strict=True: the data check found problems: {parts} (first: {where}).",
                hint="run 'graft data check DATA' for details, or drop strict=True to skip them.",
            )


def check_file(
    path: str,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int | None = None,
    convert_dir: str | None = None,
) -> FileResult:
    """Read one file once: hash it, open it with Pillow and decode as much as
    :func:`~graft.data.integrity.decode_for_check` needs.

    Args:
        path: The file.
        min_size: Smallest allowed width and height.
        max_pixels: Decompression-bomb limit (default: Pillow's ``MAX_IMAGE_PIXELS``).
        convert_dir: Where to write a PNG copy of an image ``tf.io`` cannot decode;
            ``None`` writes nothing.

    Returns:
        A :class:`FileResult`.
    """
    from PIL import Image, UnidentifiedImageError

    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    result = FileResult(path, use_path=path)
    try:
        info = os.stat(path)  # before reading: a later change moves its ctime
        payload = read_regular(path)  # never a FIFO or a device, never unbounded
    except OSError as exc:
        detail = exc.strerror or type(exc).__name__
        result.kind = "too_large" if detail.startswith("file too large") else "unreadable"
        result.detail = detail
        return result
    if not payload:
        result.kind = "empty_file"
        return result
    result.digest = content.bytes_digest(payload)
    content.remember(path, info, result.digest)
    try:
        image = Image.open(io.BytesIO(payload))
        fmt, mode, (w, h) = image.format, image.mode, image.size
        if limit and w * h > limit:
            result.kind, result.detail = "too_large", f"{w}x{h}"
            return result
        frames = getattr(image, "n_frames", 1)
        convert = convert_dir is not None and needs_pillow(fmt, mode, frames)
        decode_for_check(image, full=convert)
        described = describe_mode(image)
        damaged = png_chunk_problem(payload) if fmt == "PNG" else None
    except UnidentifiedImageError:
        result.kind = "not_image"
        return result
    except Image.DecompressionBombError as exc:
        result.kind, result.detail = "too_large", str(exc).split(" pixels")[0]
        return result
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
        result.kind = "unreadable"
        result.detail = first_line(exc)[:80]
        return result
    if damaged:
        result.kind, result.detail = "unreadable", damaged
        return result
    if min(w, h) < min_size:
        result.kind, result.detail = "too_small", f"{w}x{h}"
        return result
    notes = []
    result.mode = "RGB" if mode == "RGB" else described
    if mode != "RGB":
        notes.append(("converted", f"{described} {fmt}"))
    if frames > 1:
        notes.append(("animated", f"{frames} frames"))
    result.notes = tuple(notes)
    if convert:
        result.use_path = write_png_copy(image, convert_dir, result.digest)
    return result


def check(
    train: LabelledFiles,
    val: LabelledFiles | None = None,
    test: LabelledFiles | None = None,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_pixels: int | None = None,
    convert: bool = True,
    workers: int | None = None,
) -> CheckReport:
    """Check every file of the given splits once, in parallel, and drop the bad ones.

    Args:
        train: Training data (:func:`graft.data.sources.load_source`).
        val: Validation data with the same classes, if any.
        test: Test data with the same classes, if any.
        min_size: Smallest allowed image width and height (pixels).
        max_pixels: Decompression-bomb limit (default: Pillow's ``MAX_IMAGE_PIXELS``).
        convert: Write PNG copies of images ``tf.io`` cannot decode (to a temporary
            folder that lives as long as the process); needed before training.
        workers: Threads (default: 4 per CPU, at most 32).

    Returns:
        A :class:`CheckReport`; ``report.splits`` holds the usable data.
    """
    if min_size < 1:
        raise DataError(f"min_size must be at least 1. Received: min_size={min_size}")
    given = {"train": train, "val": val, "test": test}
    splits = {name: files for name, files in given.items() if files is not None}
    problems: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for files in splits.values():
        for p in files.problems:
            problems[p.kind].append((display(p.where), p.detail))
    cache = converted_dir() if convert else None
    convert_dir = cache.name if cache else None
    every = [(name, i) for name, files in splits.items() for i in range(len(files))]
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    from PIL import Image

    with (
        warnings.catch_warnings(),
        ThreadPoolExecutor(max_workers=workers) as pool,
        progress.track("Data check", len(every), "files") as bar,
    ):
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        results = []
        for result in pool.map(
            lambda item: check_file(
                splits[item[0]].paths[item[1]], min_size, max_pixels, convert_dir
            ),
            every,
        ):
            results.append(result)
            bar.advance()
    by_split: dict[str, list[FileResult]] = defaultdict(list)
    for (name, _), res in zip(every, results):
        by_split[name].append(res)
        if res.kind:
            problems[res.kind].append((display(res.path), res.detail))
        for kind, detail in res.notes:
            problems[kind].append((display(res.path), detail))
    clean: dict[str, LabelledFiles] = {}
    for name, files in splits.items():
        res = by_split[name]
        keep = [i for i, r in enumerate(res) if r.kind is None]
        usable = files.subset(keep)
        usable.paths = [res[i].use_path for i in keep]
        usable.problems = list(files.problems)
        clean[name] = usable
    digests = {
        name: [(r.path, r.digest) for r in by_split[name] if r.kind is None] for name in clean
    }
    _duplicates(clean, digests, problems)
    _classes(clean, problems)
    ordered = {k: problems[k] for k in KINDS if problems.get(k)}
    report = CheckReport(clean, {n: len(f) for n, f in splits.items()}, ordered, min_size, cache)
    report.modes = {r.use_path: r.mode for r in results if r.kind is None}
    return report


def _duplicates(clean, digests, problems) -> None:
    """Duplicates within each split; val/test copies of earlier splits are leakage (dropped)."""
    earlier: dict[str, tuple[str, str]] = {}
    for name in [s for s in SPLITS if s in clean]:
        files = clean[name]
        first: dict[str, str] = {}
        keep = []
        for i, (path, digest) in enumerate(digests[name]):
            if digest in earlier:
                other_split, other = earlier[digest]
                problems["leakage"].append(
                    (display(path), f"{name} copy of {other_split} {display(other)}; dropped")
                )
                continue
            if digest in first:
                problems["duplicate"].append((display(path), f"same as {display(first[digest])}"))
            else:
                first[digest] = path
            keep.append(i)
        if len(keep) < len(files):
            subset = files.subset(keep)
            subset.problems = files.problems
            clean[name] = subset
        for digest, path in first.items():
            earlier.setdefault(digest, (name, path))


def _classes(clean, problems) -> None:
    train = clean["train"]
    counts = train.counts()
    for name, n in counts.items():
        reported = [os.path.basename(w) for w, _ in problems.get("empty_class", [])]
        if n == 0 and name not in reported:
            problems["empty_class"].append((name, "every image was skipped"))
        elif n == 1:
            problems["tiny_class"].append((name, "1 image"))
    if sum(1 for n in counts.values() if n > 0) == 1:
        only = next(c for c, n in counts.items() if n > 0)
        problems["single_class"].append((train.source or "train", f"only class {only!r}"))
