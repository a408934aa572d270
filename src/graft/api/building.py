"""Small wiring helpers the steps share: backbone, precision, task, class balance, shipping."""

from __future__ import annotations

import contextlib
import platform
import sys
from collections.abc import Callable

import keras
import numpy as np

from graft.config.settings import TrainConfig
from graft.core import backbones
from graft.core.optim import make_optimizer
from graft.data import sources
from graft.errors import DataError


def resolve_backbone(
    cfg: TrainConfig, safe_mode: bool, model: keras.Model | None = None
) -> backbones.Backbone:
    """The run's backbone (``model``: a keras.Model object), built under its precision policy."""
    with precision(cfg.precision):
        return backbones.resolve(
            cfg.backbone if model is None else model,
            weights=cfg.weights,
            image_size=cfg.image_size,
            alpha=cfg.alpha,
            cut=cfg.cut,
            preprocess=cfg.preprocess,
            safe_mode=safe_mode,
        )


@contextlib.contextmanager
def precision(mode: str):
    """Build layers under a mixed policy: float16 on GPUs, bfloat16 on CPUs.

    The head's output layer is always float32 (see ``graft.model``).
    """
    if mode != "mixed":
        yield
        return
    previous = keras.mixed_precision.global_policy()
    gpu = any(d.device_type == "GPU" for d in _devices())
    keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _devices():
    try:
        import tensorflow as tf

        return tf.config.list_physical_devices()
    except ImportError:
        return []


def jit(mode: str):
    return {"auto": "auto", "on": True, "off": False}[mode]


def task(multi_label: bool) -> tuple[str, list]:
    """Loss and metrics: softmax classes, or independent sigmoid labels."""
    if multi_label:
        return "binary_crossentropy", [keras.metrics.BinaryAccuracy(name="accuracy")]
    return "sparse_categorical_crossentropy", ["accuracy"]


def balance(
    cfg: TrainConfig, labels, classes, multi_label: bool, log: Callable[[str], None]
) -> dict | None:
    """Warn about a >= 10x class imbalance; balanced class weights for ``class_weight="auto"``."""
    if labels is not None:
        labels = np.asarray(labels)
        if multi_label:
            counts = labels.reshape(-1, len(classes)).sum(axis=0)
        else:
            counts = np.bincount(labels, minlength=len(classes))
        found = sources.imbalance({c: int(n) for c, n in zip(classes, counts)})
        if found:
            big, n, small, m = found
            advice = "" if cfg.class_weight == "auto" else "; consider --class-weight auto"
            log(
                f"Warning: class imbalance: '{big}' has {n} training images, '{small}' only "
                f"{m} ({n / m:.0f}x){advice}"
            )
    if cfg.class_weight != "auto":
        return None
    if labels is None:
        raise DataError(
            "class_weight='auto' needs folder, CSV or array data, not a tf.data.Dataset. "
            "Received: class_weight='auto'"
        )
    weights = sources.class_weights(labels, multi_label)
    log(
        "Class weights (balanced): "
        + ", ".join(f"{classes[i]} {w:.2f}" for i, w in weights.items())
    )
    return weights


def compile_for_shipping(
    model: keras.Model, last_phase, loss="sparse_categorical_crossentropy", metrics=("accuracy",)
) -> None:
    """Recompile with a plain, serialisable optimizer so model.keras loads anywhere."""
    plain = type(last_phase)(**{**last_phase.as_dict(), "backbone_lr": None, "trainable": "none"})
    optimizer = make_optimizer(plain, model)
    model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics))
    optimizer.build(model.trainable_variables)  # saved state matches what loading rebuilds


def versions() -> dict:
    from graft import __version__

    info = {
        "graft": __version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "backend": keras.backend.backend(),
    }
    try:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    except ImportError:
        pass
    hub = sys.modules.get("keras_hub")  # imported only for a KerasHub backbone
    if hub is not None:
        info["keras_hub"] = hub.__version__
    return info
