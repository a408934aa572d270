"""What Keras's backend runs on: devices per backend, each imported only for its own backend."""

from __future__ import annotations

import keras


def gpu_available() -> bool:
    """Whether the running Keras backend sees a GPU."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available())
    return False
