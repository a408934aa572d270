"""graft export: Keras, SavedModel (two serving signatures) and TFLite, each checked against
the Keras model; the check itself fails when outputs differ."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import graft
from graft.reporting import export, report
from graft.runs import files as runs


@pytest.fixture(scope="module")
def trained(caffe_run):
    return caffe_run


@pytest.fixture(scope="module")
def samples(trained, digits_folder):
    model, _ = graft.load(trained)
    x = export.load_calibration(digits_folder, (32, 32), 3)
    expected = model.predict_on_batch(x)
    assert expected.std(axis=0).max() > 1e-3  # outputs differ between images: a real check
    return x, expected


def test_savedmodel_serving_signatures_match_keras(trained, digits_folder, samples, tmp_path):
    import tensorflow as tf

    out = tmp_path / "saved"
    result = export.export(trained, "savedmodel", out, calibration=digits_folder)
    assert result.check["passed"] and result.check["images"] == 36
    assert json.loads((out / runs.LABELS_FILE).read_text()) == ["five", "seven", "six"]
    x, expected = samples
    loaded = tf.saved_model.load(str(out))
    assert {"serving_default", "serving_bytes"} <= set(loaded.signatures)
    got = loaded.signatures["serving_default"](images=tf.constant(x))
    assert np.abs(got["probabilities"].numpy() - expected).max() <= export.FLOAT_TOLERANCE
    labels = [s.decode() for s in got["label"].numpy()]
    assert labels == [["five", "seven", "six"][i] for i in expected.argmax(1)]
    # Encoded files straight from disk: PNG bytes in, the same probabilities out.
    files = sorted(digits_folder.rglob("*.png"))[:5]
    encoded = tf.constant([f.read_bytes() for f in files])
    from_bytes = loaded.signatures["serving_bytes"](image_bytes=encoded)["probabilities"]
    model, _ = graft.load(trained)
    from PIL import Image

    pixels = np.stack([np.asarray(Image.open(f).convert("RGB"), "float32") for f in files])
    assert np.abs(from_bytes.numpy() - model.predict_on_batch(pixels)).max() <= 1e-4


def test_tflite_float_matches_keras(trained, digits_folder, samples, tmp_path):
    out = tmp_path / "model.tflite"
    result = export.export(trained, "tflite", out, calibration=digits_folder)
    x, expected = samples
    got = export.run_tflite(out, x)
    assert np.abs(got - expected).max() <= export.FLOAT_TOLERANCE
    assert result.check["max_abs_diff"] == pytest.approx(np.abs(got - expected).max(), abs=1e-7)
    assert "tolerance 1e-04, ok" in result.summary_line()


def test_tflite_int8_reports_top1_agreement(trained, digits_folder, samples, tmp_path):
    import tensorflow as tf

    out = tmp_path / "int8.tflite"
    result = export.export(trained, "tflite", out, quantize="int8", calibration=digits_folder)
    x, expected = samples
    got = export.run_tflite(out, x)
    agreement = float(np.mean(got.argmax(1) == expected.argmax(1)))
    assert result.check["top1_agreement"] == pytest.approx(agreement)
    assert f"top-1 agreement {agreement:.3f}" in result.summary_line()
    interpreter = tf.lite.Interpreter(model_path=str(out))
    kinds = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in kinds  # really quantized
    # The export is recorded in the run folder and its model card.
    recorded = json.loads((trained / report.EXPORTS_FILE).read_text())
    assert any(e["path"] == str(out) and e["quantize"] == "int8" for e in recorded)
    assert str(out) in (trained / report.MODEL_CARD_FILE).read_text()


def test_a_float_export_that_differs_fails_the_check(trained, tmp_path, monkeypatch):
    real = export.run_tflite
    monkeypatch.setattr(export, "run_tflite", lambda path, x: real(path, x) + 1e-3)
    with pytest.raises(export.ExportCheckFailed, match=r"max abs diff 1\.00e-03.*FAILED"):
        export.export(trained, "tflite", tmp_path / "off.tflite")


def test_cli_export_prints_the_check_and_refuses_bad_requests(trained, tmp_path):
    out = tmp_path / "m.keras"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "graft.cli",
            "export",
            str(trained),
            "--format",
            "keras",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "check: keras vs Keras on 16 random images: max abs diff" in done.stdout
    assert "ok" in done.stdout and out.is_file() and (tmp_path / runs.LABELS_FILE).is_file()

    from graft.cli import main

    assert (
        main(
            [
                "export",
                str(trained),
                "--format",
                "tflite",
                "--quantize",
                "int8",
                "--out",
                str(tmp_path / "q.tflite"),
            ]
        )
        == 2
    )
    assert main(["export", str(trained), "--format", "keras", "--out", str(out)]) == 2  # exists
    assert (
        main(
            [
                "export",
                str(trained),
                "--format",
                "savedmodel",
                "--quantize",
                "dynamic",
                "--out",
                str(tmp_path / "sm"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "q.tflite").exists() and not (tmp_path / "sm").exists()
