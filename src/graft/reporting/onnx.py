"""ONNX: export with Keras's own exporter and run the result in ONNX Runtime.

``model.export(path, format="onnx")`` converts through ``tf2onnx`` on the TensorFlow
backend; the file takes ``images``, float32 ``(batch, H, W, C)`` raw pixels 0-255 (the
model preprocesses them itself, as in every other format), and returns
``probabilities``, float32 ``(batch, classes)``. The class names are in the file's
metadata (``labels``, a JSON list) as well as in ``labels.json`` beside it.

The packages are an optional extra: ``pip install "keras-graft[onnx]"``. A model that
tf2onnx cannot convert into something ONNX Runtime loads (Keras's grouped convolutions,
as in ConvNeXt) is refused with one line, and nothing is written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from graft import _quiet
from graft.errors import GraftError, first_line
from graft.runs import files as runs

#: Python modules the export and its check need (``keras-graft[onnx]``).
REQUIRED = ("tf2onnx", "onnx", "onnxruntime")
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


def require() -> None:
    """Raise one clear line when the ``onnx`` extra is not installed."""
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    if missing:
        raise GraftError(
            f"ONNX export needs {', '.join(missing)}, which is not installed.",
            hint='pip install "keras-graft[onnx]"',
        )


def to_onnx(
    model, out: str | os.PathLike, classes: list[str] | None = None, task: dict | None = None
) -> Path:
    """Write ``out`` (atomically) with Keras's ONNX exporter, once ONNX Runtime loads it.

    Keras converts with ``tf2onnx.convert.from_function``, which leaves tensors the model
    captured as constants (EfficientNet's ``Normalization`` mean and variance) as extra
    graph inputs; such a model is converted again with ``tf2onnx.convert.from_keras``,
    which freezes them.

    Args:
        model: The Keras model (raw 0-255 images in, probabilities out). Its batch
            dimension stays dynamic.
        out: The ``.onnx`` file.
        classes: Class names, stored in the file's metadata as ``labels``.
        task: More metadata: ``task`` (``single_label``/``multi_label``) and a multi-label
            model's ``threshold``.

    Returns:
        ``out``.

    Raises:
        GraftError: The conversion failed, or ONNX Runtime cannot load its result (a
            file is written only when it can).
    """
    require()
    try:
        # tf2onnx's and TensorFlow's log lines; Keras's numpy-2 patch of tf2onnx warns
        with _quiet.fd2_captured(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            proto = _convert(model)
    except Exception as exc:  # the converter raises many types; keep the first line
        raise GraftError(f"ONNX conversion failed: {first_line(exc)}") from exc
    _name_output(proto.graph, OUTPUT_NAME)
    if classes is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "labels", json.dumps(list(classes))
    for key, value in (task or {}).items():  # task, and a multi-label model's threshold
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    data = proto.SerializeToString()
    try:
        _session(data)
    except Exception as exc:  # onnxruntime's own exception types
        raise GraftError(
            f"The ONNX conversion gave a model ONNX Runtime cannot load: {first_line(exc)[:200]}",
            hint="export to savedmodel or tflite instead (tf2onnx cannot convert every "
            "layer, e.g. ConvNeXt's grouped convolutions).",
        ) from exc
    return runs.atomic_write(out, data)


def _convert(model):
    import keras
    import onnx

    _, h, w, ch = model.input_shape
    spec = keras.InputSpec(shape=(None, h, w, ch), dtype="float32", name=INPUT_NAME)
    with tempfile.TemporaryDirectory(prefix="graft-onnx-") as folder:
        tmp = os.path.join(folder, "model.onnx")
        model.export(tmp, format="onnx", verbose=False, input_signature=[spec])
        proto = onnx.load(tmp)
    if len(proto.graph.input) > 1 and keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        import tf2onnx

        signature = [tf.TensorSpec((None, h, w, ch), tf.float32, name=INPUT_NAME)]
        proto, _ = tf2onnx.convert.from_keras(model, signature)
    return proto


def _session(model):
    """An ONNX Runtime session (CPU) on a file or serialized model."""
    import onnxruntime

    if isinstance(model, os.PathLike):
        model = str(model)
    return onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])


def _name_output(graph, name: str) -> None:
    """Rename the graph's single output (tf2onnx calls it ``Identity:0``)."""
    if len(graph.output) != 1 or graph.output[0].name == name:
        return
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    graph.output[0].name = name


def run_onnx(path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Run an ``.onnx`` model on a batch of raw images in ONNX Runtime (CPU).

    Returns:
        The model's output, float32 ``(n, classes)``.
    """
    require()
    session = _session(Path(path))
    (inp,) = session.get_inputs()
    (y,) = session.run(None, {inp.name: np.asarray(images, "float32")})
    return np.asarray(y, "float32")


def labels(path: str | os.PathLike) -> list[str] | None:
    """The class names stored in an ``.onnx`` file's metadata (``None``: none)."""
    require()
    text = _session(Path(path)).get_modelmeta().custom_metadata_map.get("labels")
    return None if text is None else json.loads(text)
