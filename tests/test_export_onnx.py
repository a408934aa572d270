"""graft export --format onnx: Keras's own exporter, checked in ONNX Runtime; one clear
line when the extra is missing."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import graft
from graft.cli import main
from graft.reporting import export
from graft.runs import files as runs


@pytest.fixture(scope="module")
def trained(caffe_run):
    return caffe_run


def test_onnx_export_matches_keras_in_onnx_runtime(trained, digits_folder, tmp_path, capsys):
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "ship" / "model.onnx"
    code = main(["export", str(trained), "--format", "onnx", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "check: onnx vs Keras on 16 random images" in printed and "ok" in printed

    result = export.export(
        trained, "onnx", out, calibration=digits_folder, overwrite=True
    )  # real images this time
    assert result.check["passed"] and result.check["images"] == 36
    classes = ["five", "seven", "six"]
    assert json.loads((out.parent / runs.LABELS_FILE).read_text()) == classes

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape[1:], outp.name) == ("images", [32, 32, 3], "probabilities")
    assert json.loads(session.get_modelmeta().custom_metadata_map["labels"]) == classes
    model, _ = graft.load(trained)
    x = export.load_calibration(digits_folder, (32, 32), 3)  # raw pixels, 0-255
    expected = model.predict_on_batch(x)
    assert expected.std(axis=0).max() > 1e-3  # outputs differ between images: a real check
    for batch in (x[:1], x):  # a dynamic batch dimension
        (got,) = session.run(None, {"images": batch})
        assert np.abs(got - expected[: len(batch)]).max() <= export.FLOAT_TOLERANCE
    recorded = runs.read_json(trained / "exports.json")
    assert any(e["format"] == "onnx" and e["check"]["passed"] for e in recorded)


def test_onnx_without_the_extra_is_one_line(trained, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "tf2onnx" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    out = tmp_path / "model.onnx"
    assert main(["export", str(trained), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "keras-graft[onnx]"' in err, err
    assert "tf2onnx" in err and not out.exists()


def _tiny_file(folder, *layers):
    """A .keras model (raw pixels in, 3 probabilities out) with labels.json beside it."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = inputs
    for layer in (*layers, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)):
        x = layer(x)
    model = keras.Model(inputs, keras.layers.Softmax()(x))
    folder.mkdir()
    model.save(folder / "model.keras")
    runs.write_json(folder / runs.LABELS_FILE, ["a", "b", "c"])
    return folder / "model.keras"


def test_captured_constants_become_part_of_the_file(tmp_path):
    """Normalization's mean and variance (as in EfficientNet) are constants the traced
    function captures; Keras's tf2onnx call leaves them as graph inputs."""
    import keras

    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    norm = keras.layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[4e3, 3e3, 2e3])
    source = _tiny_file(tmp_path / "m", norm, keras.layers.Conv2D(4, 3))
    result = export.export(source, "onnx", tmp_path / "m.onnx")
    assert result.check["passed"], result.summary_line()
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]


def test_a_model_onnx_runtime_cannot_load_is_one_line_and_no_file(tmp_path, capsys):
    """tf2onnx leaves Keras's grouped convolutions (ConvNeXt) as unconvertible calls."""
    import keras

    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    grouped = _tiny_file(
        tmp_path / "g", keras.layers.Conv2D(6, 3), keras.layers.Conv2D(6, 3, groups=3)
    )
    out = tmp_path / "g.onnx"
    assert main(["export", str(grouped), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ONNX Runtime cannot load" in err, err
    assert not out.exists()
