"""Loading a trained model: a run folder or a ``.keras`` file, with its class names."""

from __future__ import annotations

import os
from pathlib import Path

from graft.errors import GraftError
from graft.runs import files
from graft.runs.layout import LABELS_FILE, MODEL_FILE

#: The name of a grafted model's output layer (see :mod:`graft.core.model`).
OUTPUT_LAYER = "head_output"


def load_file(path: str | os.PathLike, safe_mode: bool = True, compile: bool = True, what="model"):
    """``keras.saving.load_model`` with graft's errors (a refused Lambda layer says so).

    Args:
        path: A ``.keras``/``.h5`` file.
        safe_mode: Refuse files whose loading could run code.
        compile: Restore the training configuration too.
        what: How messages name the file (e.g. ``"source model"``).
    """
    import zipfile

    import keras

    if str(path).endswith(".keras") and os.path.isfile(path) and not zipfile.is_zipfile(path):
        raise GraftError(
            f"The {what} {path} is corrupt or truncated (not a complete .keras zip archive).",
            hint="save or copy it again; a run folder's model.keras is written by 'graft train'.",
        )
    from graft.core import hub

    if hub.file_needs_hub(path):
        hub.require()  # KerasHub layers register themselves for loading on import
    try:
        try:
            return keras.saving.load_model(path, compile=compile, safe_mode=safe_mode)
        except Exception as exc:
            if not (compile and _other_backends_optimizer(first_line(exc))):
                raise
            # Saved on PyTorch: Keras records the optimizer as its torch class
            # (keras.src.backend.torch.optimizers.torch_adam.Adam), which no other backend
            # can import. The optimizer's config is Keras's own: rebuild it from that.
            return keras.saving.load_model(
                path, compile=compile, safe_mode=safe_mode, custom_objects=_optimizers()
            )
    except Exception as exc:
        text = first_line(exc)
        if isinstance(exc, zipfile.BadZipFile) or "zip" in text.lower() and os.path.isfile(path):
            raise GraftError(f"The {what} {path} is corrupt or truncated: {text}") from None
        if safe_mode and ("safe_mode" in text or "Lambda" in text):
            raise GraftError(
                f"{path} contains code (a Lambda layer) that would run when loaded; refused.",
                hint="only if you trust the file, pass safe_mode=False.",
            ) from None
        raise GraftError(f"Cannot load the {what} {path}: {text}") from None


def _other_backends_optimizer(text: str) -> bool:
    """Whether a load failed on an optimizer class saved by another backend."""
    return "keras.src.backend." in text and ".optimizers." in text


def _optimizers() -> dict:
    """Keras's optimizer classes by name (for :func:`load_file`'s cross-backend retry)."""
    import keras

    return {
        name: value
        for name, value in vars(keras.optimizers).items()
        if isinstance(value, type) and issubclass(value, keras.optimizers.Optimizer)
    }


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def run_setting(model_or_run: str | os.PathLike, name: str, default=None):
    """A setting of the run that made a model (its ``config.yaml``), or ``default``.

    ``model_or_run`` is a run folder or a model file inside one; a model file anywhere
    else has no run settings.
    """
    from graft.runs.layout import CONFIG_FILE

    path = Path(model_or_run).expanduser()
    folder = path if path.is_dir() else path.parent
    config = files.read_yaml(folder / CONFIG_FILE, {}) if (folder / CONFIG_FILE).is_file() else {}
    value = config.get(name) if isinstance(config, dict) else None
    return default if value is None else value


def run_min_size(model_or_run: str | os.PathLike) -> int:
    """The ``min_size`` the run that made a model read its images with (or the default)."""
    from graft.config.defaults import DEFAULT_MIN_SIZE

    return int(run_setting(model_or_run, "min_size", DEFAULT_MIN_SIZE))


def load(model_or_run: str | os.PathLike, safe_mode: bool = True):
    """A trained model and its class names from a run folder or a ``.keras`` file.

    Returns:
        ``(model, classes)``; without a ``labels.json`` beside the model the classes are
        ``"0"``, ``"1"``, ...
    """
    path = Path(model_or_run).expanduser()
    model_file = path / MODEL_FILE if path.is_dir() else path
    if not model_file.is_file():
        raise GraftError(
            f"No model at {model_or_run}.",
            hint="pass a run folder made by 'graft train' or a .keras file.",
        )
    model = load_file(model_file, safe_mode=safe_mode)
    if (model_file.parent / LABELS_FILE).is_file():
        classes = files.read_labels(model_file.parent)
    else:
        classes = [str(i) for i in range(model.output_shape[-1])]
    return model, classes


def is_multi_label(model) -> bool:
    """Whether a grafted model ends in sigmoid outputs (several labels per image)."""
    names = {layer.name for layer in model.layers}
    last = model.get_layer(OUTPUT_LAYER) if OUTPUT_LAYER in names else model.layers[-1]
    return getattr(getattr(last, "activation", None), "__name__", "") == "sigmoid"
