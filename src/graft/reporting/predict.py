"""Predictions for image files: batched, streamed, skipping (and reporting) unreadable files.

Files are read and decoded exactly as in training (``tf.io.decode_image``, bilinear
resize to the model's input size), a batch at a time, so any number of files can be
predicted in constant memory. A file that cannot be read or decoded is skipped and
reported; it never stops the run.

Example:
    >>> import graft
    >>> from graft.reporting import predict
    >>> model, classes = graft.load("runs/pets")                       # doctest: +SKIP
    >>> for row in predict.predict_files(model, classes, ["a.jpg"], top_k=2):  # doctest: +SKIP
    ...     print(row.path, row.top[0])
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft.config.defaults import MULTI_LABEL_THRESHOLD
from graft.data.pipelines import load_image
from graft.data.sources import IMAGE_EXTENSIONS, image_files
from graft.errors import DataError, GraftError
from graft.runs import files as runs
from graft.runs import model_io

FORMATS = ("csv", "json")
DECIMALS = 4  # probabilities are rounded to this many decimals


@dataclass
class Prediction:
    """The top-k classes of one image, most probable first: ``[(label, probability)]``."""

    path: str
    top: list[tuple[str, float]]

    @property
    def label(self) -> str:
        return self.top[0][0] if self.top else ""

    @property
    def probability(self) -> float | None:
        return self.top[0][1] if self.top else None


@dataclass
class Skipped:
    """A file that could not be predicted, and why."""

    path: str
    reason: str


@dataclass
class Summary:
    """Counts of a prediction run."""

    predicted: int = 0
    skipped: list[Skipped] = field(default_factory=list)


def expand(sources: Iterable[str | os.PathLike]) -> list[str]:
    """Image files named by ``sources``: files as given, folders searched recursively.

    In folders, only files with an image extension (``.jpg``, ``.png``, ...) are taken,
    hidden files, OS junk and hidden folders are ignored, and the order is sorted
    (:func:`graft.data.sources.image_files`).

    Raises:
        DataError: A source does not exist, or nothing was found.
    """
    files: list[str] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            files += image_files(path)
        elif path.exists():
            files.append(str(path))
        else:
            raise DataError(f"No such file or folder: {source}.")
    if not files:
        raise DataError(
            "No images to predict.",
            hint=f"pass image files or folders holding {', '.join(IMAGE_EXTENSIONS)} files.",
        )
    return files


def predict_files(
    model,
    classes: list[str],
    files: Iterable[str],
    top_k: int = 1,
    batch_size: int = 32,
    on_skip: Callable[[Skipped], None] | None = None,
    min_size: int = 0,
    threshold: float | None = None,
) -> Iterator[Prediction]:
    """Predict image files a batch at a time, yielding one :class:`Prediction` per readable file.

    Args:
        model: A trained Keras model (raw images in, probabilities out).
        classes: Class names in output order.
        files: Image paths (an iterator is fine; it is consumed lazily).
        top_k: How many classes to report per image.
        batch_size: Images per model call.
        on_skip: Called with a :class:`Skipped` for each unreadable file.
        min_size: Skip images with a side under this many pixels (as training did).
        threshold: A multi-label model's: every label at least this probable, most
            probable first (maybe none), instead of the top ``top_k``.

    Yields:
        Predictions, in the order of ``files``.
    """
    if top_k < 1:
        raise GraftError(f"top_k must be at least 1. Received: top_k={top_k}")
    if batch_size < 1:
        raise GraftError(f"batch_size must be at least 1. Received: batch_size={batch_size}")
    top_k = min(top_k, len(classes))
    _, h, w, ch = model.input_shape
    paths: list[str] = []
    images: list[np.ndarray] = []

    def flush():
        probs = np.asarray(model.predict_on_batch(np.stack(images)), dtype="float64")
        order = np.argsort(-probs, axis=1, kind="stable")
        for path, p, idx in zip(paths, probs, order):
            idx = idx[:top_k] if threshold is None else [i for i in idx if p[i] >= threshold]
            yield Prediction(path, [(classes[i], round(float(p[i]), DECIMALS)) for i in idx])
        paths.clear()
        images.clear()

    for path, image, error in _decoded(files, (h, w), ch, batch_size, min_size):
        if error is not None:
            if on_skip is not None:
                reason = (
                    error.strerror if isinstance(error, OSError) and error.strerror else str(error)
                )
                on_skip(Skipped(str(path), reason))
            continue
        images.append(image)
        paths.append(str(path))
        if len(images) == batch_size:
            yield from flush()
    if images:
        yield from flush()


def _decoded(files: Iterable[str], image_size, channels: int, lookahead: int, min_size: int = 0):
    """``(path, image, error)`` in input order; decoding runs ahead in a thread pool.

    At most ``lookahead`` files beyond the one being yielded are read ahead, so a batch
    is decoded while the model predicts the previous one, and memory stays bounded.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pending: deque = deque()
    source = iter(files)
    with ThreadPoolExecutor(max_workers=4) as pool:

        def submit() -> bool:
            path = next(source, None)
            if path is None:
                return False
            pending.append((path, pool.submit(load_image, path, image_size, channels, min_size)))
            return True

        while len(pending) < lookahead and submit():
            pass
        while pending:
            path, future = pending.popleft()
            submit()
            try:
                yield path, future.result(), None
            except (OSError, ValueError) as exc:
                yield path, None, exc


def csv_header(top_k: int) -> list[str]:
    """CSV columns: ``path,label,probability`` then ``label_2,probability_2``, ... up to k."""
    header = ["path", "label", "probability"]
    for rank in range(2, top_k + 1):
        header += [f"label_{rank}", f"probability_{rank}"]
    return header


#: A cell starting with one of these is a formula to a spreadsheet (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert(cell: str) -> str:
    """A text cell a spreadsheet shows as text: ``'`` before a leading ``= + - @``."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def csv_row(prediction: Prediction) -> list:
    """One CSV row; text cells (path, labels) are made inert for spreadsheets."""
    row: list = [inert(prediction.path)]
    for label, probability in prediction.top:
        row += [inert(label), f"{probability:.{DECIMALS}f}"]
    return row


#: CSV columns of a multi-label model: every label over the threshold, ``|``-separated.
MULTI_LABEL_HEADER = ["path", "labels", "probabilities"]


def multi_label_row(prediction: Prediction) -> list:
    """``path, "cat|dog", "0.9100|0.6200"`` (empty cells: no label over the threshold)."""
    labels = "|".join(label for label, _ in prediction.top)
    probabilities = "|".join(f"{p:.{DECIMALS}f}" for _, p in prediction.top)
    return [inert(prediction.path), inert(labels), probabilities]


def multi_label_record(prediction: Prediction, threshold: float) -> dict:
    return {
        "path": prediction.path,
        "labels": [{"label": label, "probability": p} for label, p in prediction.top],
        "threshold": threshold,
    }


def json_record(prediction: Prediction) -> dict:
    return {
        "path": prediction.path,
        "label": prediction.label,
        "probability": prediction.probability,
        "top_k": [{"label": label, "probability": p} for label, p in prediction.top],
    }


class _Stdout:
    """``sys.stdout`` that writes file names that are not valid UTF-8 as their bytes, and
    a row its encoding cannot hold (``café`` on an ASCII stdout) as UTF-8 bytes: every
    prediction is written, its names unaltered."""

    def write(self, text: str) -> None:
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:
            sys.stdout.write(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
            return
        sys.stdout.flush()
        try:
            data = text.encode(sys.stdout.encoding or "utf-8", "surrogateescape")
        except UnicodeEncodeError:
            data = text.encode("utf-8", "surrogateescape")
        buffer.write(data)


@contextmanager
def _output(out: str | os.PathLike | None):
    """A text stream for ``out`` (stdout for ``None``/``-``), renamed into place on success.

    File names that are not valid UTF-8 are written as their own bytes (surrogate
    escapes), the way ``ls`` prints them: nothing is lost or altered.
    """
    if out is None or str(out) == "-":
        yield _Stdout()
        sys.stdout.flush()
        return
    with runs.atomic_open(Path(out).expanduser(), "wb") as raw:
        handle = io.TextIOWrapper(raw, "utf-8", errors="surrogateescape", newline="")
        yield handle
        handle.flush()
        handle.detach()


def predict_to_file(
    model_or_run,
    sources: Iterable[str | os.PathLike],
    out: str | os.PathLike | None = None,
    fmt: str = "csv",
    top_k: int = 1,
    batch_size: int = 32,
    on_skip: Callable[[Skipped], None] | None = None,
    safe_mode: bool = True,
    min_size: int | None = None,
) -> Summary:
    """Predict files and folders with a run's model and write CSV or JSON.

    CSV has one row per readable image (see :func:`csv_header`); JSON is one object
    ``{"predictions": [{"path", "label", "probability", "top_k": [...]}, ...],
    "skipped": [{"path", "reason"}, ...]}``. Rows are streamed to the file as batches
    finish; the file appears under its name only once complete.

    Args:
        model_or_run: A run folder or a ``.keras`` file (class names from ``labels.json``).
        sources: Image files and folders (searched recursively).
        out: Output file; ``None`` or ``"-"`` writes to stdout.
        fmt: ``"csv"`` or ``"json"``.
        top_k: Classes per image.
        batch_size: Images per model call.
        on_skip: Called for each unreadable file.
        safe_mode: Refuse model files whose loading could run code.
        min_size: Skip images with a side under this many pixels; ``None``: the run's
            own ``min_size`` (from its ``config.yaml``), so images are read as in training.

    Returns:
        A :class:`Summary` (number predicted, files skipped).
    """
    if fmt not in FORMATS:
        raise GraftError(
            f"Unknown format: {fmt!r}. Expected one of {', '.join(FORMATS)}. Received: fmt={fmt}"
        )
    files = expand(sources)
    model, classes = model_io.load(model_or_run, safe_mode=safe_mode)
    summary = Summary()

    def skipped(item: Skipped) -> None:
        summary.skipped.append(item)
        if on_skip is not None:
            on_skip(item)

    if min_size is None:
        min_size = model_io.run_min_size(model_or_run)
    # A multi-label model: every label over the threshold, not the top-k of the outputs.
    threshold = MULTI_LABEL_THRESHOLD if model_io.is_multi_label(model) else None
    predictions = predict_files(
        model, classes, files, top_k, batch_size, skipped, min_size, threshold
    )
    with _output(out) as handle:
        if fmt == "csv":
            writer = csv.writer(handle, lineterminator="\n")
            header = csv_header(min(top_k, len(classes)))
            writer.writerow(header if threshold is None else MULTI_LABEL_HEADER)
            for prediction in predictions:
                row = csv_row if threshold is None else multi_label_row
                writer.writerow(row(prediction))
                summary.predicted += 1
        else:
            handle.write('{"predictions": [')
            for prediction in predictions:
                handle.write(("," if summary.predicted else "") + "\n  ")
                record = (
                    json_record(prediction)
                    if threshold is None
                    else multi_label_record(prediction, threshold)
                )
                handle.write(json.dumps(record))
                summary.predicted += 1
            handle.write("\n],\n")
            skipped_json = [{"path": s.path, "reason": s.reason} for s in summary.skipped]
            handle.write(f'"skipped": {json.dumps(skipped_json)}}}\n')
    return summary
