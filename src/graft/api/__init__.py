"""The Python API: the only code that wires the layers together.

The training pipeline (``train``, ``lr_find``, ``Run``) is imported on first use (PEP 562),
so that a command which needs one corner of the API (``graft predict`` ->
:mod:`graft.api.outputs`) does not import it too (about 0.4 s once Keras is loaded).
The names of :mod:`graft.api.evaluate` are lazy too, so that :mod:`graft.api.preflight`
answers without Keras; its function ``evaluate`` shares its module's name, so loading
them puts the functions over the submodule the import system sets.
"""

import importlib

#: Names of :mod:`graft.api.evaluate` (``evaluate`` is also that module's name).
_EVALUATE = ("check_data", "evaluate", "labelled_batches", "load")

_LAZY = {
    "Run": "graft.api.result",
    "lr_find": "graft.api.run",
    "summary_line": "graft.reporting.evaluation",
    "train": "graft.api.run",
}

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


#: Lazy names whose modules import Keras (``summary_line`` is NumPy only).
_NEED_BACKEND = {*_EVALUATE, "Run", "lr_find", "train"}


def _quiet_backend() -> None:
    """Import Keras (and TensorFlow) as the CLI does: its start-up lines (oneDNN, CUDA
    probing, absl's banner) kept off the caller's terminal. ``TF_CPP_MIN_LOG_LEVEL=0``
    in the environment asks for them; after the CLI's own import (``--verbose`` or not)
    this changes nothing."""
    import os

    from graft import _quiet

    _quiet.import_backend(verbose=os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0")


def __getattr__(name):
    if name in _NEED_BACKEND:
        _quiet_backend()
    if name in _EVALUATE:
        module = importlib.import_module("graft.api.evaluate")
        globals().update({n: getattr(module, n) for n in _EVALUATE})
        return globals()[name]
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'graft.api' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY, *_EVALUATE})
