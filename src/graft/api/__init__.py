"""The Python API and the only place that wires the layers together."""

from graft.api.steps import Run, check_data, evaluate, load, lr_find, train

__all__ = ["Run", "check_data", "evaluate", "load", "lr_find", "train"]
