"""``metrics.json``: the only code that writes it.

A run's metrics are assembled by several steps (training, evaluation, the auto
search); each hands its sections to :func:`record`, which merges them into the file, so
no step can drop another's keys.
"""

from __future__ import annotations

import os
from pathlib import Path

from graft.runs import files
from graft.runs.layout import METRICS_FILE


def read(run_dir: str | os.PathLike) -> dict:
    """The run's metrics (``{}`` when it has none yet)."""
    return files.read_json(Path(run_dir) / METRICS_FILE, {}) or {}


def record(run_dir: str | os.PathLike, sections: dict, fresh: bool = False) -> dict:
    """Merge ``sections`` into ``RUN_DIR/metrics.json`` (atomically); return the result.

    Args:
        run_dir: The run folder.
        sections: Top-level keys to set (a key present in the file is replaced).
        fresh: Start from nothing instead of the file's content (a new run's first write,
            so an overwritten folder keeps no stale numbers).
    """
    metrics = {} if fresh else read(run_dir)
    metrics.update(sections)
    files.write_json(Path(run_dir) / METRICS_FILE, metrics)
    return metrics
