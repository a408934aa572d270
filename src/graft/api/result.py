"""What a training run hands back: :class:`Run`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import keras

from graft.config.settings import TrainConfig
from graft.core import backbones
from graft.runs.layout import REPORT_FILE


@dataclass
class Run:
    """The outcome of :func:`graft.train`."""

    model: keras.Model
    classes: list[str]
    metrics: dict
    history: list[dict]
    config: TrainConfig
    run_dir: Path | None = None
    backbone: backbones.Backbone | None = field(default=None, repr=False)

    @property
    def report_file(self) -> Path | None:
        """The run's ``report.html`` (``None`` for a run without a folder)."""
        return None if self.run_dir is None else self.run_dir / REPORT_FILE

    def __repr__(self) -> str:
        acc = self.metrics.get("val_accuracy")
        acc_text = f", val_accuracy={acc:.4f}" if acc is not None else ""
        return f"Run(run_dir={str(self.run_dir)!r}, classes={len(self.classes)}{acc_text})"
