"""``graft compare``: several strategies on the same data, split and seed, side by side.

Each strategy is an ordinary :func:`graft.train` run into ``OUT/<strategy>`` with the
same settings apart from the strategy, so every row is backed by a full run folder
(model, metrics.json, report). The comparison is written as ``OUT/compare.csv``,
``OUT/compare.md`` and a bar chart ``OUT/compare.png``.

``scratch`` is a baseline that is not a strategy: the same architecture with freshly
initialised weights, everything trainable (BatchNormalization included) for ``epochs``
at ``lr``.

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

from graft.errors import GraftError, UnknownNameError, did_you_mean
from graft.runs import files as runs

SCRATCH = "scratch"
CSV_FILE = "compare.csv"
MARKDOWN_FILE = "compare.md"
PLOT_FILE = "compare.png"
COLUMNS = (
    "strategy",
    "val_accuracy",
    "test_accuracy",
    "feature_drift_cka",
    "trainable_params",
    "seconds",
)


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
        raise GraftError("--strategies needs at least one name, e.g. feature,finetune,hybrid.")
    return names


def _settings_for(strategy: str, settings: dict) -> dict:
    if strategy != SCRATCH:
        return {**settings, "strategy": strategy}
    from graft.config.strategies import Phase

    scratch = Phase(
        "scratch",
        "all",
        int(settings.get("epochs", 10)),
        float(settings.get("lr", 1e-3)),
        train_bn=True,
        optimizer=settings.get("optimizer", "adam"),
    )
    return {**settings, "weights": "none", "phases": [scratch]}


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
        verbose: Keras ``fit`` verbosity.
        safe_mode: Refuse model files whose loading could run code.
        **settings: Any other :class:`~graft.config.TrainConfig` field, shared by all runs.

    Returns:
        One row per strategy with the keys of :data:`COLUMNS`.
    """
    from graft.api.finish import execute
    from graft.api.steps import Request

    names = parse_strategies(strategies)
    if "strategy" in settings or "phases" in settings:
        raise GraftError("compare sets the strategy of each run; pass --strategies instead.")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GraftError(f"{out} is not empty.", hint="pass --overwrite or another --out.")
    rows = []
    for name in names:
        log(f"== {name} ==")
        request = Request(
            data_source, backbone, out / name, val=val, test=test, overwrite=overwrite,
            log=log, verbose=verbose, safe_mode=safe_mode, settings=_settings_for(name, settings),
        )  # fmt: skip
        run = execute(request)
        rows.append(row_of(name, run.metrics))
    write(rows, out)
    return rows


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


def cell(value, column: str) -> str:
    """One table cell: ``-`` for missing values, thousands separators for counts."""
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
    lines += ["| " + " | ".join(cell(r.get(c), c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str | os.PathLike) -> Path:
    """Bar chart: accuracy (val, and test when measured) and CKA per strategy."""
    import numpy as np

    from graft.reporting.plots import figure, save

    names = [r["strategy"] for r in rows]
    series = [
        (label, [np.nan if r.get(key) is None else float(r[key]) for r in rows])
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
    for i, (label, values) in enumerate(series):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
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
        "csv": runs.write_csv(out / CSV_FILE, [{c: r.get(c) for c in COLUMNS} for r in rows]),
        "markdown": runs.atomic_write(out / MARKDOWN_FILE, markdown(rows)),
        "plot": plot(rows, out / PLOT_FILE),
    }
