"""keras-graft: graft a pre-trained Keras model into a custom model, correctly.

The public API::

    graft.train(data, backbone=..., strategy="feature"|"finetune"|"hybrid", out=...)
    graft.evaluate(run_or_model, data)
    graft.load(run_or_model)

and the building blocks it is made of: :mod:`graft.backbones` (registry, loaders),
:mod:`graft.model` (assembly), :mod:`graft.freezing` (mechanism),
:mod:`graft.strategies` (policy: plans of :class:`Phase`), :mod:`graft.training`.

Names are imported lazily so that ``import graft`` stays cheap and the CLI can quiet
TensorFlow before Keras is imported.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "train": "graft.api",
    "evaluate": "graft.api",
    "load": "graft.api",
    "Run": "graft.api",
    "GraftError": "graft.errors",
    "Phase": "graft.config",
    "plan": "graft.config",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'graft' has no attribute {name!r}")
