"""Which Keras backend graft runs on, found before Keras is imported.

Keras 3 cannot be imported when its backend's package is missing (its default backend is
TensorFlow, which keras-graft no longer installs by itself), and the traceback it raises
does not say what to install. :func:`check` looks first, without importing anything
heavy, and raises one :class:`~graft.errors.GraftError` line naming the extra to add.

Some commands still need TensorFlow whatever the backend (the tf.data input pipelines,
SavedModel/TFLite/ONNX export): :func:`require_tensorflow` says so in one line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from graft.errors import GraftError

#: Keras backend -> the package it imports (the extra of the same name installs it).
PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}


class BackendMissing(GraftError):
    """No importable Keras backend, or a command that needs TensorFlow without it."""


def _config_dir() -> str:
    """Keras's own folder for ``keras.json`` (as ``keras.src.backend.config`` finds it)."""
    if "KERAS_HOME" in os.environ:
        return os.environ["KERAS_HOME"]
    base = os.path.expanduser("~")
    return os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")


def name() -> str:
    """The backend Keras uses or will use: ``KERAS_BACKEND``, else ``keras.json``'s,
    else TensorFlow (Keras's default), read without importing Keras."""
    keras = sys.modules.get("keras")
    config = getattr(keras, "config", None)
    if config is not None and hasattr(config, "backend"):
        return config.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    try:
        with open(os.path.join(_config_dir(), "keras.json")) as f:
            configured = json.load(f).get("backend")
    except (OSError, ValueError, AttributeError):
        configured = None
    return configured if isinstance(configured, str) and configured else "tensorflow"


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (without importing it)."""
    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def check() -> str:
    """The backend's name when its package is importable; else one line saying what to add."""
    backend = name()
    package = PACKAGES.get(backend, backend)
    if installed(package):
        return backend
    if backend not in PACKAGES and backend != "openvino":
        raise BackendMissing(
            f"KERAS_BACKEND={backend!r} is not a Keras backend.",
            hint="set KERAS_BACKEND to tensorflow, jax or torch.",
        )
    others = [b for b in ("jax", "torch", "tensorflow") if b != backend and installed(b)]
    if others and not os.environ.get("KERAS_BACKEND"):
        raise BackendMissing(
            f"Keras's backend here is {backend}, which is not installed; {others[0]} is.",
            hint=f'run with KERAS_BACKEND={others[0]}, or pip install "keras-graft[{backend}]".',
        )
    alternatives = " or ".join(f"[{b}]" for b in ("tensorflow", "jax", "torch") if b != backend)
    raise BackendMissing(
        f"No Keras backend: Keras's backend here is {backend}, which is not installed.",
        hint=f'pip install "keras-graft[{backend}]" (or {alternatives}, with KERAS_BACKEND '
        "set to it).",
    )


def tensorflow_missing() -> bool:
    """Whether TensorFlow cannot be imported (cheap: no import)."""
    return not installed("tensorflow")


def require_tensorflow(what: str) -> None:
    """One line when ``what`` (a command, an export format) needs TensorFlow and it is missing."""
    if tensorflow_missing():
        raise BackendMissing(
            f"{what} needs TensorFlow for now (Keras's backend here is {name()}, and "
            "TensorFlow is not installed).",
            hint='pip install "keras-graft[tensorflow]" and run with KERAS_BACKEND=tensorflow.',
        )
