"""Keep TensorFlow's start-up noise off the user's terminal.

TensorFlow writes its oneDNN notice, CUDA probing and absl's "log messages before
InitializeLog" banner straight to file descriptor 2 from C++ while it is imported, so
neither ``TF_CPP_MIN_LOG_LEVEL`` nor Python's logging can hide all of it. The CLI
therefore imports TensorFlow once with fd 2 pointed at a temporary file, and shows
what was captured only with ``--verbose``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings

from graft import _backend


@contextlib.contextmanager
def fd2_captured():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield tmp
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


#: Set once :func:`import_backend` has run: the first caller (the CLI, with or without
#: ``--verbose``) decides; later calls (the Python API's) change nothing.
_done: list[bool] = []


def import_backend(verbose: bool = False) -> None:
    """Import Keras (and TensorFlow when it is the backend) without start-up noise."""
    if _done:
        return
    backend = _backend.check()  # one line naming the extra to add when none is installed
    _done.append(True)
    if verbose:
        import keras  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with fd2_captured():
        if backend == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # device probing logs too; do it now
        import keras  # noqa: F401
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"keras(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
