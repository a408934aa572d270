"""The Python API: the only code that wires the layers together."""

from graft.api.evaluate import check_data, evaluate, labelled_batches, load
from graft.api.result import Run
from graft.api.run import lr_find, train

__all__ = ["Run", "check_data", "evaluate", "labelled_batches", "load", "lr_find", "train"]
