"""A finished run's outputs on demand: its report again, predictions, an export.

Each function is the one call ``graft report``, ``graft predict`` and ``graft export``
make; the command line only parses flags and prints what comes back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from graft.reporting import export as exporting
from graft.reporting import predict as predicting
from graft.reporting import report as reporting
from graft.runs.status import status_note

#: What :func:`export` returns (its ``path`` and ``summary_line()``).
ExportResult = exporting.ExportResult
#: What :func:`predict` returns (``predicted`` and ``skipped``).
PredictSummary = predicting.Summary


@dataclass(frozen=True)
class ReportFiles:
    """The files :func:`report` (re)wrote, and a line on a run that did not complete."""

    report: Path
    model_card: Path
    status_note: str | None


def report(
    run_dir: str | os.PathLike, data=None, batch_size: int = 32, safe_mode: bool = True
) -> ReportFiles:
    """Rebuild a run folder's plots, ``report.html`` and ``MODEL_CARD.md`` (re-evaluated
    on ``data`` first if given; see :func:`graft.reporting.report.regenerate`)."""
    path = reporting.regenerate(run_dir, data=data, batch_size=batch_size, safe_mode=safe_mode)
    return ReportFiles(path, path.parent / reporting.MODEL_CARD_FILE, status_note(run_dir))


def predict(model_or_run, sources, out=None, **options) -> PredictSummary:
    """Predict image files and folders and write CSV or JSON
    (see :func:`graft.reporting.predict.predict_to_file` for ``options``)."""
    return predicting.predict_to_file(model_or_run, sources, out, **options)


def export(model_or_run, fmt: str, out: str | os.PathLike, **options) -> ExportResult:
    """Export a trained model and check it against the Keras model
    (see :func:`graft.reporting.export.export` for ``options``)."""
    return exporting.export(model_or_run, fmt, out, **options)
