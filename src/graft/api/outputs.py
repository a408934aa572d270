"""A finished run's outputs on demand: its report again, predictions, an export.

Each function is the one call ``graft report``, ``graft predict`` and ``graft export``
make; the command line only parses flags and prints what comes back. Each imports its
own reporting module when called, so ``graft predict`` does not import the exporters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graft.reporting.export import ExportResult
    from graft.reporting.predict import Summary


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
    from graft.reporting.report import MODEL_CARD_FILE, regenerate
    from graft.runs.status import status_note

    path = regenerate(run_dir, data=data, batch_size=batch_size, safe_mode=safe_mode)
    return ReportFiles(path, path.parent / MODEL_CARD_FILE, status_note(run_dir))


def predict(model_or_run, sources, out=None, **options) -> Summary:
    """Predict image files and folders and write CSV or JSON
    (see :func:`graft.reporting.predict.predict_to_file` for ``options``)."""
    from graft.reporting.predict import predict_to_file

    return predict_to_file(model_or_run, sources, out, **options)


def export(model_or_run, fmt: str, out: str | os.PathLike, **options) -> ExportResult:
    """Export a trained model and check it against the Keras model
    (see :func:`graft.reporting.export.export` for ``options``)."""
    from graft.reporting.export import export as export_model

    return export_model(model_or_run, fmt, out, **options)
