"""TFLite: convert a Keras model (float, dynamic-range or full int8) and run the result."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from graft import _quiet
from graft.errors import GraftError, first_line
from graft.runs import files as runs


def to_tflite(
    model, out: str | os.PathLike, quantize: str = "none", calibration: np.ndarray | None = None
) -> Path:
    """Convert to a ``.tflite`` file with ``tf.lite.TFLiteConverter``.

    Args:
        model: The Keras model. Its input keeps a dynamic batch dimension.
        out: The ``.tflite`` file.
        quantize: ``"none"`` (float32), ``"dynamic"`` (int8 weights, float activations)
            or ``"int8"`` (int8 weights and activations; float32 input and output).
        calibration: Representative raw images ``(n, H, W, C)`` for ``"int8"``.

    Returns:
        ``out``.
    """
    import keras
    import tensorflow as tf

    _, h, w, ch = model.input_shape
    # Through a SavedModel: the converter then freezes the variables into constants
    # (a concrete function of a Keras 3 model would keep them as resource variables).
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda images: model(images, training=False),
        input_signature=[tf.TensorSpec((None, h, w, ch), tf.float32, name="images")],
    )
    saved = Path(tempfile.mkdtemp(prefix="graft-tflite-"))
    try:
        archive.write_out(str(saved), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        flatbuffer = _convert(converter, quantize, calibration)
    finally:
        shutil.rmtree(saved, ignore_errors=True)
    return runs.atomic_write(out, flatbuffer)


def _convert(converter, quantize: str, calibration) -> bytes:
    import tensorflow as tf

    if quantize in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        if calibration is None or not len(calibration):
            raise GraftError("quantize=int8 needs calibration images (calibration=DATA).")

        def representative():
            for image in calibration:
                yield [np.asarray(image, "float32")[None]]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with _quiet.fd2_captured():  # the converter's C++ log lines
            return converter.convert()
    except Exception as exc:  # the converter raises many types; keep the first line
        first = first_line(exc)
        raise GraftError(f"TFLite conversion failed: {first}") from exc


def _interpreter(path: Path):
    import tensorflow as tf

    try:  # LiteRT, where TensorFlow's own interpreter has been removed
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice
        warnings.simplefilter("ignore", UserWarning)
        return Interpreter(model_path=str(path))


def run_tflite(path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Run a ``.tflite`` model on a batch of raw images in the TFLite interpreter.

    Args:
        path: The ``.tflite`` file.
        images: Raw images ``(n, H, W, C)``.

    Returns:
        The model's output, float32 ``(n, classes)``.
    """
    with _quiet.fd2_captured():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
        interpreter = _interpreter(Path(path))
        (inp,) = interpreter.get_input_details()
        (outp,) = interpreter.get_output_details()
        interpreter.resize_tensor_input(inp["index"], list(images.shape))
        interpreter.allocate_tensors()
    x = np.asarray(images, "float32")
    if inp["dtype"] in (np.int8, np.uint8):
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale + zero), *_limits(inp["dtype"]))
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    with _quiet.fd2_captured():
        interpreter.invoke()
    y = interpreter.get_tensor(outp["index"])
    if outp["dtype"] in (np.int8, np.uint8):
        scale, zero = outp["quantization"]
        y = (y.astype("float32") - zero) * scale
    return np.asarray(y, "float32")


def _limits(dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)
