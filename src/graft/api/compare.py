"""``graft compare``: several strategies on the same data, split and seed, side by side.

Each strategy is an ordinary :func:`graft.train` run into ``OUT/<strategy>`` with the
same settings apart from the strategy, so every row is backed by a full run folder
(model, metrics.json, report). The comparison is written as ``OUT/compare.csv``,
``OUT/compare.md`` and a bar chart ``OUT/compare.png``.

``scratch`` is a baseline that is not a strategy (see :func:`scratch_phase`): the same
architecture with freshly initialised weights, everything trainable (BatchNormalization
included) at the full ``lr``, for the largest epoch budget of the compared strategies
(hybrid's head and fine-tuning epochs together) and, with ``epochs="auto"``, at least
:func:`graft.config.budget.scratch_epochs`'s optimizer steps on the images it trains on
(:func:`scratch_budget`: counted in epochs, scratch on ten images would get ten steps
while the grafted rows get hundreds), with precise BN after training (BN statistics
re-estimated on the training images, so they match the final weights).

Every row is validated the same way (the same ``val_split``, or the same folds when
``val_split="auto"`` cross-validates few labels and trains on every labelled image), so
the rows stay comparable.

``seeds=N`` repeats every row with the seeds ``seed``, ``seed + 1``, ... into
``OUT/<strategy>/seed<k>`` and reports the mean and standard deviation of each accuracy.

Example:
    >>> from graft.api.compare import compare
    >>> rows = compare("data/flowers", "mobilenet_v2", ["feature", "hybrid"],
    ...                out="runs/cmp")                                     # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from graft.config.defaults import DEFAULT_VAL_SPLIT
from graft.errors import GraftError, UnknownNameError, did_you_mean
from graft.runs import files as runs

SCRATCH = "scratch"
CSV_FILE = "compare.csv"
MARKDOWN_FILE = "compare.md"
PLOT_FILE = "compare.png"
#: Each compared run's own log, in its folder.
LOG_FILE = "train.log"

COLUMNS = (
    "strategy",
    "val_accuracy",
    "test_accuracy",
    "feature_drift_cka",
    "trainable_params",
    "seconds",
)
#: Columns averaged over seeds; each gets a ``<column>_std`` companion.
AVERAGED = ("val_accuracy", "test_accuracy", "feature_drift_cka", "seconds")


def known_strategies() -> list[str]:
    """Everything ``compare`` accepts: the registered strategies and ``scratch``."""
    from graft.config.strategies import STRATEGIES

    return [*STRATEGIES, SCRATCH]


def parse_strategies(text: str | Sequence[str]) -> list[str]:
    """``"feature,hybrid"`` (or a list) -> checked, de-duplicated names in order."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = list(dict.fromkeys(n for n in names if n))
    known = known_strategies()
    for name in names:
        if name not in known:
            raise UnknownNameError(
                f"Unknown strategy: {name!r}. Expected some of {', '.join(known)}."
                + did_you_mean(name, known)
            )
    if not names:
        raise GraftError("strategies needs at least one name, e.g. strategies=feature,hybrid.")
    return names


def scratch_phase(epochs: int, lr=None, optimizer: str | None = None):
    """The scratch baseline's one phase: everything trains (BN too) at the full ``lr``,
    with precise BN after it. Its run uses ``weights="none"``."""
    from graft.config import defaults
    from graft.config.strategies import Phase

    lr = defaults.DEFAULT_LR if lr in (None, "auto") else float(lr)
    optimizer = optimizer or defaults.DEFAULT_OPTIMIZER
    return Phase(
        "scratch", "all", int(epochs), lr, train_bn=True, optimizer=optimizer, precise_bn=True
    )


def epoch_budget(backbone: str, strategies: Sequence[str], settings: dict) -> int:
    """The most epochs any of ``strategies`` trains for with ``settings`` (all phases)."""
    from graft.config.defaults import DEFAULT_EPOCHS
    from graft.config.settings import TrainConfig

    epochs = settings.get("epochs", "auto")
    totals = [DEFAULT_EPOCHS if epochs == "auto" else int(epochs)]
    for name in strategies:
        if name != SCRATCH:
            cfg = TrainConfig(backbone=backbone, **{**settings, "strategy": name, "lr": 1e-3})
            totals.append(sum(p.epochs for p in cfg.resolved_plan()))
    return max(totals)


def trained_images(data_source, settings: dict, val=None) -> int | None:
    """How many labelled images the final model of a run with ``settings`` trains on:
    every one with ``val`` given or when ``val_split="auto"`` cross-validates (then refits
    on all), else the hold-out's training part; ``None`` for unlabelled streams."""
    from graft.data.adapter import adapt
    from graft.data.folds import plan_folds

    source = adapt(data_source)
    if source.labels is None:
        return None
    images, split = len(source.labels), settings.get("val_split", "auto")
    if val is not None:
        return images
    if source.multi_label:  # multi-label keeps a hold-out
        return round(images * (1 - (DEFAULT_VAL_SPLIT if split == "auto" else float(split))))
    folds = plan_folds(source.labels, int(settings.get("seed", 0)), split)
    return len(folds.splits[0][0]) if folds.kind == "holdout" else images


def scratch_budget(
    backbone: str, strategies: Sequence[str], settings: dict, images: int | None
) -> int:
    """Scratch's epochs: :func:`epoch_budget` and, with ``epochs="auto"`` and the number of
    ``images`` it trains on known, at least :func:`graft.config.budget.scratch_epochs`'s
    optimizer steps (at most its epoch cap)."""
    from graft.config.budget import scratch_epochs
    from graft.config.defaults import DEFAULT_BATCH_SIZE

    budget = epoch_budget(backbone, strategies, settings)
    if images and settings.get("epochs", "auto") == "auto":
        batch = int(settings.get("batch_size") or DEFAULT_BATCH_SIZE)
        budget = scratch_epochs(images, batch, budget)
    return budget


def _settings_for(strategy: str, settings: dict, budget: int) -> dict:
    if strategy != SCRATCH:
        return {**settings, "strategy": strategy}
    phase = scratch_phase(budget, settings.get("lr"), settings.get("optimizer"))
    return {**settings, "weights": "none", "phases": [phase]}


def compare(
    data_source,
    backbone: str,
    strategies: str | Sequence[str],
    out: str | os.PathLike,
    *,
    test=None,
    val=None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    verbose="auto",
    safe_mode: bool = True,
    seeds: int = 1,
    **settings,
) -> list[dict]:
    """Train every strategy on the same data and split; write the comparison.

    Args:
        data_source: Training data, as for :func:`graft.train`.
        backbone: Registry name or model file.
        strategies: Names from :data:`graft.strategies.STRATEGIES` and/or ``scratch``
            (a list or a comma-separated string).
        out: Folder; each strategy's run goes to ``out/<strategy>``.
        test: Test data evaluated once per run.
        val: Validation data (default: the same ``val_split`` of ``data_source``).
        overwrite: Replace existing run folders.
        log: Receives progress lines.
        verbose: Unused: each run's log goes to its folder (``train.log``).
        safe_mode: Refuse model files whose loading could run code.
        seeds: Train every row with this many seeds (``seed``, ``seed + 1``, ...) and
            report mean and standard deviation.
        **settings: Any other :class:`~graft.config.TrainConfig` field, shared by all runs.

    Returns:
        One row per strategy with the keys of :data:`COLUMNS` (means over the seeds),
        ``<column>_std`` for :data:`AVERAGED` columns and ``seeds``.
    """
    from graft.api.pipeline import Request, execute

    names = parse_strategies(strategies)
    if "strategy" in settings or "phases" in settings:
        raise GraftError("compare sets the strategy of each run; pass strategies=... instead.")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GraftError(f"{out} is not empty.", hint="pass overwrite=True or another out=DIR.")
    if int(seeds) < 1:
        raise GraftError(f"seeds must be at least 1. Received: seeds={seeds}")
    budget = epoch_budget(str(backbone), names, settings)
    if SCRATCH in names:
        images = trained_images(data_source, settings, val)
        budget = scratch_budget(str(backbone), names, settings, images)
    settings = shared_scaling(data_source, str(backbone), settings, safe_mode, log)
    first = int(settings.pop("seed", 0))
    rows = []
    for name in names:
        runs_of_row = []
        for k in range(int(seeds)):
            log(f"== {name} ==" if seeds == 1 else f"== {name} (seed {first + k}) ==")
            folder = out / name if seeds == 1 else out / name / f"seed{first + k}"
            lines: list[str] = []  # each run's own log goes to its folder, not the screen
            request = Request(
                data_source,
                backbone,
                folder,
                val=val,
                test=test,
                overwrite=overwrite,
                log=lines.append,
                verbose=0,
                safe_mode=safe_mode,
                settings={**_settings_for(name, settings, budget), "seed": first + k},
            )
            try:
                metrics = execute(request).metrics
            finally:
                if folder.is_dir():
                    runs.atomic_write(folder / LOG_FILE, "".join(f"{x}\n" for x in lines))
            runs_of_row.append(row_of(name, metrics))
            log(_run_line(runs_of_row[-1], folder))
        rows.append(summarise(runs_of_row))
    write(rows, out)
    return rows


def _run_line(row: dict, folder: Path) -> str:
    """One line per compared run: its numbers, and where its full log is."""
    acc = row.get("val_accuracy")
    numbers = f"val_accuracy {acc:.4f}, " if isinstance(acc, (int, float)) else ""
    return f"   {numbers}{row.get('seconds')} s; log: {folder / LOG_FILE}"


def shared_scaling(data_source, backbone: str, settings: dict, safe_mode: bool, log) -> dict:
    """``settings`` with the input scaling inferred once for a model file, so every row
    (scratch, whose fresh weights hold no evidence, too) scales its input the same way."""
    from graft.api import building, pipeline
    from graft.config.settings import TrainConfig
    from graft.core import backbones
    from graft.data.adapter import adapt

    if settings.get("preprocess") is not None or not backbones.is_model_path(backbone):
        return settings
    weights = settings.get("weights")
    weights = None if weights is not None and str(weights).lower() == "none" else weights
    cfg = TrainConfig(backbone=backbone, **{**settings, "weights": weights})
    bb = building.resolve_backbone(cfg, safe_mode)
    bb = pipeline.match_scaling(cfg, bb, adapt(data_source), log)
    if bb.scaling is None or bb.scaling["choice"] is None:
        return settings
    return {**settings, "preprocess": bb.preprocess}


def summarise(rows: list[dict]) -> dict:
    """One row for several seeds of a strategy: means, ``<column>_std`` and ``seeds``."""
    import numpy as np

    out = dict(rows[0])
    for column in AVERAGED:
        values = [r[column] for r in rows if r.get(column) is not None]
        out[column] = float(np.mean(values)) if values else None
        out[f"{column}_std"] = float(np.std(values)) if len(values) > 1 else None
    out["seeds"] = len(rows)
    return out


def row_of(strategy: str, metrics: dict) -> dict:
    """The comparison row of one run's ``metrics.json`` content."""
    drift = metrics.get("feature_drift") or {}
    return {
        "strategy": strategy,
        "val_accuracy": metrics.get("val_accuracy"),
        "test_accuracy": metrics.get("test_accuracy"),
        "feature_drift_cka": drift.get("cka"),
        "trainable_params": max((p["trainable_params"] for p in metrics["phases"]), default=0),
        "seconds": metrics.get("seconds"),
    }


def cell(value, column: str, std=None) -> str:
    """One table cell: ``-`` for missing values, thousands separators for counts,
    ``mean ± std`` where several seeds give a standard deviation."""
    if std is not None and value is not None:
        return f"{cell(value, column)} ± {cell(std, column)}"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column == "trainable_params":
        return f"{int(value):,}"
    if column == "seconds":
        return f"{float(value):.1f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    """The comparison as a markdown table (columns without any value are left out)."""
    columns = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    right = {c: "---:" if c != "strategy" else "---" for c in columns}
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(right[c] for c in columns) + "|"]
    lines += [
        "| " + " | ".join(cell(r.get(c), c, r.get(f"{c}_std")) for c in columns) + " |"
        for r in rows
    ]
    seeds = max((r.get("seeds") or 1 for r in rows), default=1)
    note = f"\nMean ± standard deviation over {seeds} seeds.\n" if seeds > 1 else ""
    return "\n".join(lines) + "\n" + note


def plot(rows: list[dict], path: str | os.PathLike) -> Path:
    """Bar chart: accuracy (val, and test when measured) and CKA per strategy."""
    import numpy as np

    from graft.reporting.plots import figure, save

    names = [r["strategy"] for r in rows]
    series = [
        (
            label,
            [np.nan if r.get(key) is None else float(r[key]) for r in rows],
            [0.0 if r.get(f"{key}_std") is None else float(r[f"{key}_std"]) for r in rows],
        )
        for key, label in (
            ("val_accuracy", "val accuracy"),
            ("test_accuracy", "test accuracy"),
            ("feature_drift_cka", "feature CKA (1 = unchanged)"),
        )
        if any(r.get(key) is not None for r in rows)
    ]
    fig = figure(max(4.5, 1.3 * len(names) + 2), 3.4)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    width = 0.8 / max(1, len(series))
    for i, (label, values, errors) in enumerate(series):
        bars = ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            values,
            width,
            label=label,
            yerr=errors,
            capsize=2,
        )
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy / CKA")
    ax.set_title("graft compare")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    return save(fig, path)


def write(rows: list[dict], out: str | os.PathLike) -> dict[str, Path]:
    """Write ``compare.csv``, ``compare.md`` and ``compare.png`` into ``out``."""
    out = Path(out)
    return {
        "csv": runs.write_csv(out / CSV_FILE, [_csv_row(r) for r in rows]),
        "markdown": runs.atomic_write(out / MARKDOWN_FILE, markdown(rows)),
        "plot": plot(rows, out / PLOT_FILE),
    }


def _csv_row(row: dict) -> dict:
    """The CSV columns of a row: :data:`COLUMNS`, plus ``seeds`` and the ``_std`` columns
    when the row averages several seeds."""
    out = {c: row.get(c) for c in COLUMNS}
    if (row.get("seeds") or 1) > 1:
        out["seeds"] = row["seeds"]
        out.update({f"{c}_std": row.get(f"{c}_std") for c in AVERAGED})
    return out
