"""The Python API: the only code that wires the layers together."""

from graft.api.evaluate import check_data, evaluate, labelled_batches, load
from graft.api.result import Run
from graft.api.run import lr_find, train
from graft.reporting.evaluation import summary_line

__all__ = [
    "Run",
    "check_data",
    "evaluate",
    "labelled_batches",
    "load",
    "lr_find",
    "summary_line",
    "train",
]
