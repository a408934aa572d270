"""Small wiring helpers the steps share: backbone, precision, task, class balance, shipping."""

from __future__ import annotations

import contextlib
import platform
import sys
from collections.abc import Callable

import keras
import numpy as np

from graft.config.settings import TrainConfig
from graft.core import backbones, backend, keras_compat
from graft.core.optim import make_optimizer
from graft.data import sources
from graft.errors import DataError


def resolve_backbone(
    cfg: TrainConfig, safe_mode: bool, model: keras.Model | None = None
) -> backbones.Backbone:
    """The run's backbone (``model``: a keras.Model object, used through a copy of its
    own), built under its precision policy."""
    with precision(cfg.precision):
        return backbones.resolve(
            cfg.backbone if model is None else private_copy(model),
            weights=cfg.weights,
            image_size=cfg.image_size,
            alpha=cfg.alpha,
            cut=cfg.cut,
            preprocess=cfg.preprocess,
            safe_mode=safe_mode,
        )


def private_copy(model: keras.Model) -> keras.Model:
    """A copy of a caller's ``keras.Model`` with the same weights, so a run neither
    trains the caller's object nor calls its layers again (a second call on a layer makes
    a later cut at it ambiguous: ``strategy="auto"`` runs many times on one object). A
    model that cannot be rebuilt from its config (a layer without ``get_config``) is used
    as it is."""
    try:
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    except Exception:  # noqa: BLE001 - any failure to rebuild: the object itself
        return model
    return copy


@contextlib.contextmanager
def precision(mode: str):
    """Build layers under a mixed policy: float16 on GPUs, bfloat16 on CPUs.

    The head's output layer is always float32 (see ``graft.model``).
    """
    if mode != "mixed":
        yield
        return
    previous = keras.mixed_precision.global_policy()
    gpu = backend.gpu_available()
    keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


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
    """Recompile with a plain, serialisable optimizer so model.keras loads anywhere.

    ``keras.saving.load_model(path)`` (``compile=True``) rebuilds the optimizer on the
    *reloaded* model's trainable variables and skips the saved optimizer state, with a
    warning, when their number differs. Most models keep their per-layer ``trainable``
    flags through a save, so the optimizer is built on the trainable variables the last
    phase left (only the head's after feature extraction: a small file). Some do not:
    a KerasHub backbone is rebuilt from its constructor arguments, so every one of its
    layers comes back trainable. The config is round-tripped here to see what loading
    will rebuild; where it differs, the shipped model is made wholly trainable (which
    round-trips everywhere) before the optimizer is built, so loading finds exactly the
    state that was saved. Freeze layers again before fitting such a model further.
    """
    # The same optimizer kind and rate, none of the training-time extras (L2-SP anchors,
    # per-block rates, schedules): those are not serialisable, and shipping needs none.
    plain = type(last_phase)(
        last_phase.name, "none", last_phase.epochs, last_phase.lr, optimizer=last_phase.optimizer
    )
    model.compile(optimizer=make_optimizer(plain, model), loss=loss, metrics=list(metrics))
    if not _builtin(model) and _reloaded_trainable(model) != [
        v.path for v in model.trainable_variables
    ]:
        # Every layer: a KerasHub backbone's own setter does not reach its layers.
        for layer in keras_compat.sublayers(model, include_self=True):
            layer.trainable = True
        model.compile(optimizer=make_optimizer(plain, model), loss=loss, metrics=list(metrics))
    model.optimizer.build(model.trainable_variables)  # saved state matches what loading rebuilds


def _builtin(model: keras.Model) -> bool:
    """Whether every layer of ``model`` is one of Keras's own: their configs carry their
    ``trainable`` flag, so a save and load keeps it and no round trip need check."""
    return all(
        type(layer).__module__.startswith("keras.")
        for layer in keras_compat.sublayers(model, include_self=True)
    )


def _reloaded_trainable(model: keras.Model) -> list[str]:
    """Paths of the variables that are trainable after a save and a load of ``model``."""
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)  # the training optimizer is replaced anyway
    # Our own in-memory model: any Lambda in it was already allowed when it was loaded.
    clone = keras.saving.deserialize_keras_object(config, safe_mode=False)
    return [v.path for v in clone.trainable_variables]


def versions() -> dict:
    from graft import __version__

    info = {
        "graft": __version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "backend": keras.backend.backend(),
    }
    tf = sys.modules.get("tensorflow")  # loaded with its backend; never imported for this
    if tf is not None and hasattr(tf, "__version__"):
        info["tensorflow"] = tf.__version__
    hub = sys.modules.get("keras_hub")  # imported only for a KerasHub backbone
    if hub is not None:
        info["keras_hub"] = hub.__version__
    return info
