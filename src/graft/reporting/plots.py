"""The run's pictures, drawn with matplotlib (Agg, no display needed) and saved as PNG.

Each function draws one figure and writes it atomically; none touches pyplot's global
state, so they are safe in servers and tests. :func:`write_all` draws every plot a run
has data for into ``RUN_DIR/plots/``.
"""

from __future__ import annotations

import functools
import io
import math
import os
from pathlib import Path

import numpy as np

from graft.runs import files as runs
from graft.runs.layout import PLOTS_DIR  # noqa: F401

CURVES = "training_curves.png"
CONFUSION = "confusion_matrix.png"
F1 = "per_class_f1.png"
ERRORS = "worst_errors.png"
RELIABILITY = "reliability.png"
DPI = 110


def _plain_text(draw):
    """Draw with every string taken literally: class and phase names come from the user's
    data, and ``$\\badcmd$`` must not reach matplotlib's mathtext (or LaTeX)."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return draw(*args, **kwargs)

    return wrapper


def figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    # Fast zlib: the default level costs seconds on a grid of images, for a few % of size.
    fig.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    return runs.atomic_write(path, buffer.getvalue())


def warm_up() -> None:
    """Import matplotlib and draw a small figure with text, unsaved: what the first
    figure of a process costs (fonts loaded, text rendering set up) is paid before the
    first real one (the plot worker calls it as it starts)."""
    fig = figure(1, 1)
    ax = fig.subplots()
    ax.set_title("warm-up")
    ax.text(0.5, 0.5, "0.50\n(1)", fontsize=7)
    fig.savefig(io.BytesIO(), format="png", dpi=DPI, pil_kwargs={"compress_level": 1})


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@_plain_text
def training_curves(history: list[dict], path: str | os.PathLike) -> Path:
    """Loss and accuracy per epoch across all phases, phase boundaries marked, and the
    learning rates in a third panel (log axis, plain tick labels).

    Args:
        history: Rows of ``history.csv`` (``epoch``, ``phase``, ``loss``, ``val_loss``,
            ``accuracy``, ``val_accuracy``, ``lr``, ``backbone_lr``; strings or numbers).
        path: Where to write the PNG.

    Returns:
        ``path``.
    """
    return save(curves_figure(history), path)


def curves_figure(history: list[dict]):
    """The figure of :func:`training_curves` (call it inside :func:`_plain_text`)."""
    epochs = np.array([_number(r.get("epoch")) for r in history])
    series = {
        key: np.array([_number(r.get(key)) for r in history])
        for key in ("loss", "val_loss", "accuracy", "val_accuracy", "lr", "backbone_lr")
    }
    from matplotlib.ticker import MaxNLocator

    rates = {
        key: series[key]
        for key in ("lr", "backbone_lr")
        if np.isfinite(series[key]).any() and (series[key][np.isfinite(series[key])] > 0).all()
    }
    fig = figure(13 if rates else 10, 4.2)
    axes = fig.subplots(1, 3 if rates else 2, width_ratios=[1, 1, 0.7] if rates else None)
    for ax, metric in zip(axes, ("loss", "accuracy", "learning rate")):
        if metric == "learning rate":
            for (key, values), color in zip(rates.items(), ("tab:gray", "tab:purple")):
                ax.step(epochs, values, where="mid", color=color, label=key)
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis)
        else:
            for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
                if np.isfinite(series[key]).any():
                    ax.plot(epochs, series[key], style, markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        if len(epochs) and np.isfinite(epochs).all():
            ax.set_xlim(epochs.min() - 0.6, epochs.max() + 0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _mark_phases(ax, history, epochs)
        if ax.lines:  # below the panel: a legend inside would cover the curves
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return fig


def _plain_log_ticks(axis) -> None:
    """Log-axis tick labels as plain text (``0.001``, ``1e-05``): the default ones are
    mathtext, shown raw (``$\\mathdefault{10^{-3}}$``) when mathtext is off."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, numticks=6))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _mark_phases(ax, history: list[dict], epochs: np.ndarray) -> None:
    """A dashed line where each new phase starts, with the phase's name."""
    previous = None
    for row, epoch in zip(history, epochs):
        phase = str(row.get("phase", ""))
        if previous is not None and phase != previous:
            ax.axvline(epoch - 0.5, color="black", linestyle=":", alpha=0.7)
        if phase != previous:
            ax.annotate(
                phase,
                xy=(epoch - 0.5, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize=8,
                color="dimgray",
            )
        previous = phase


@_plain_text
def confusion_matrix(matrix, classes: list[str], path: str | os.PathLike) -> Path:
    """The confusion matrix, normalised per true class (rows), with counts in each cell.

    Args:
        matrix: Counts, rows = true class, columns = predicted class.
        classes: Class names.
        path: Where to write the PNG.

    Returns:
        ``path``.
    """
    counts = np.asarray(matrix, dtype="int64")
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = min(2.5 + 0.45 * len(classes), 16)
    fig = figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of true class")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45 if len(classes) > 4 else 0, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (normalised per true class)")
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    f"{normalised[i, j]:.2f}\n({counts[i, j]})",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if normalised[i, j] > 0.5 else "black",
                )
    return save(fig, path)


@_plain_text
def per_class_f1(per_class: dict, path: str | os.PathLike) -> Path:
    """Horizontal bars of each class's F1 score (with precision and recall as ticks).

    Args:
        per_class: ``{name: {"precision", "recall", "f1", "support"}}``.
        path: Where to write the PNG.

    Returns:
        ``path``.
    """
    names = list(per_class)
    f1 = np.array([per_class[n]["f1"] for n in names])
    fig = figure(7, min(1.5 + 0.3 * len(names), 20))
    ax = fig.subplots()
    y = np.arange(len(names))
    ax.barh(y, f1, color="tab:blue", label="F1")
    ax.plot([per_class[n]["precision"] for n in names], y, "k|", markersize=12, label="precision")
    ax.plot([per_class[n]["recall"] for n in names], y, "rx", label="recall")
    ax.set_yticks(y, [f"{n} (n={per_class[n]['support']})" for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("score")
    ax.set_title("Per-class F1")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


@_plain_text
def worst_errors(worst: list, classes: list[str], path: str | os.PathLike) -> Path:
    """A grid of the most confidently wrong images, each titled true / predicted (confidence).

    Args:
        worst: :class:`graft.reporting.evaluation.WorstError` items (with ``image`` pixels).
        classes: Class names.
        path: Where to write the PNG.

    Returns:
        ``path``.
    """
    # One axes showing one mosaic: sixteen titled subplots cost seconds to lay out.
    columns = min(4, max(1, len(worst)))
    rows = max(1, math.ceil(len(worst) / columns))
    fig = figure(2.3 * columns, 2.5 * rows + 0.4, layout=None)
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 0.5 / (2.5 * rows + 0.4)))
    ax.axis("off")
    fig.suptitle("Most confidently wrong predictions")
    if not worst:
        ax.text(0.5, 0.5, "no errors", ha="center", va="center", transform=ax.transAxes)
        return save(fig, path)
    first = np.asarray(worst[0].image)
    h, w = first.shape[:2]
    band, gap = round(0.45 * h), round(0.08 * w)  # title band above each image, gap between
    cell_h, cell_w = h + band, w + gap
    gray = first.ndim == 2
    mosaic = np.full((rows * cell_h, columns * cell_w, *(() if gray else (first.shape[2],))), 255)
    for i, item in enumerate(worst):
        r, c = divmod(i, columns)
        top, left = r * cell_h + band, c * cell_w + gap // 2
        mosaic[top : top + h, left : left + w] = np.asarray(item.image)[:h, :w]
        ax.text(
            left + w / 2,
            top - band * 0.1,
            f"true: {classes[item.true]}\npred: {classes[item.predicted]} ({item.confidence:.2f})",
            fontsize=8,
            ha="center",
            va="bottom",
        )
    ax.imshow(mosaic.astype("uint8"), cmap="gray" if gray else None, vmin=0, vmax=255)
    return save(fig, path)


@_plain_text
def reliability(bins: list[dict], ece: float, path: str | os.PathLike) -> Path:
    """The reliability diagram: accuracy against mean confidence per confidence bin
    (the diagonal is perfect calibration), with how many images each bin holds below.

    Args:
        bins: ``metrics.json``'s ``"calibration"``: ``{"lower", "upper", "count",
            "accuracy", "confidence"}`` for each non-empty bin.
        ece: The expected calibration error of those bins.
        path: Where to write the PNG.

    Returns:
        ``path``.
    """
    fig = figure(5.2, 5.4)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    lower = np.array([b["lower"] for b in bins], dtype="float64")
    width = np.array([b["upper"] - b["lower"] for b in bins], dtype="float64")
    accuracy = np.array([b["accuracy"] for b in bins], dtype="float64")
    confidence = np.array([b["confidence"] for b in bins], dtype="float64")
    top.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect")
    top.bar(
        lower,
        accuracy,
        width,
        align="edge",
        color="tab:blue",
        alpha=0.8,
        edgecolor="white",
        label="accuracy",
    )
    gap = confidence - accuracy
    top.bar(
        lower,
        gap,
        width,
        bottom=accuracy,
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        hatch="//",
        label="gap to confidence",
    )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability diagram (ECE {ece:.3f})")
    top.legend(fontsize=8, loc="upper left")
    top.grid(alpha=0.3)
    bottom.bar(lower, [b["count"] for b in bins], width, align="edge", color="tab:gray")
    bottom.set_xlabel("confidence of the top prediction")
    bottom.set_ylabel("images")
    return save(fig, path)


def write_all(
    run_dir: str | os.PathLike,
    history: list[dict],
    metrics: dict | None = None,
    classes: list[str] | None = None,
    worst: list | None = None,
    worker=None,
) -> dict[str, Path]:
    """Draw every plot the run has data for into ``RUN_DIR/plots``.

    Args:
        run_dir: The run folder.
        history: Rows of ``history.csv``.
        metrics: Evaluation metrics (``metrics.json``'s ``"evaluation"``); without them
            only the training curves are drawn.
        classes: Class names (needed with ``metrics``).
        worst: Confidently wrong predictions with pixels; ``None`` keeps an existing
            error grid (its images are not stored elsewhere).
        worker: A :class:`graft.reporting.plot_worker.PlotWorker`: every plot is drawn
            there (curves it already has are not redrawn; this process then never
            imports matplotlib); returns once every plot is written.

    Returns:
        ``{"curves" | "confusion" | "f1" | "reliability" | "errors": path}`` for the plots written.
    """
    jobs = _jobs(run_dir, history, metrics, classes, worst)
    here = {k: job for k, job in jobs.items() if worker is None}
    if worker is not None:
        submit_all(worker, jobs)
    for name, args in here.values():
        globals()[name](*args)
    if worker is not None:
        worker.wait()
    return {key: Path(args[-1]) for key, (_, args) in jobs.items()}


def submit_all(worker, jobs: dict) -> None:
    """Queue in ``worker`` each of ``jobs`` (:func:`plot_jobs`) it does not have yet."""
    for name, args in jobs.values():
        if not worker.submitted(name, args[-1]):
            worker.submit(name, *args)


def plot_jobs(run_dir, history: list[dict], metrics: dict | None, classes, worst) -> dict:
    """``{key: (function name, arguments)}`` of the plots :func:`write_all` draws (the
    same arguments): queue them early with :func:`submit_all`."""
    return _jobs(run_dir, history, metrics, classes, worst)


def _jobs(run_dir, history, metrics, classes, worst) -> dict[str, tuple[str, tuple]]:
    folder = Path(run_dir) / PLOTS_DIR
    jobs: dict[str, tuple[str, tuple]] = {}
    if history:
        jobs["curves"] = ("training_curves", (history, folder / CURVES))
    if metrics and metrics.get("images"):
        if metrics.get("task") == "multi_label":
            jobs["f1"] = ("per_class_f1", (metrics["per_label"], folder / F1))
        else:
            jobs["confusion"] = (
                "confusion_matrix",
                (metrics["confusion_matrix"], classes, folder / CONFUSION),
            )
            jobs["f1"] = ("per_class_f1", (metrics["per_class"], folder / F1))
            if metrics.get("calibration"):
                jobs["reliability"] = (
                    "reliability",
                    (metrics["calibration"], metrics.get("ece", 0.0), folder / RELIABILITY),
                )
            if worst is not None:
                jobs["errors"] = ("worst_errors", (worst, classes, folder / ERRORS))
    return jobs
