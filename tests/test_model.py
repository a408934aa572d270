"""The grafted model as a user ships it: plain Keras, raw images in, loads without graft."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graft


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, digits_folder):
    out = tmp_path_factory.mktemp("runs") / "hybrid"
    graft.train(
        digits_folder,
        "mobilenet_v2",
        out,
        weights="none",
        image_size=32,
        alpha=0.35,
        strategy="hybrid",
        epochs=1,
        finetune_epochs=1,
        batch_size=8,
        val_split=0.2,  # the artifacts of a run with a hold-out
        verbose=0,
        log=lambda _: None,
    )
    return out


def test_model_loads_and_predicts_in_a_python_that_never_imports_graft(trained_run, digits):
    x, _ = digits
    raw = x[:4]  # uint8, 0-255
    np.save(trained_run / "batch.npy", raw)
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import keras
        model = keras.saving.load_model({str(trained_run / "model.keras")!r}, safe_mode=True)
        probs = model.predict(np.load({str(trained_run / "batch.npy")!r}), verbose=0)
        assert "graft" not in sys.modules, "graft was imported"
        print(json.dumps(probs.tolist()))
    """)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    model, classes = graft.load(trained_run)
    ours = model.predict(raw, verbose=0)
    assert theirs.shape == (4, len(classes))
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(theirs.sum(axis=1), 1.0, rtol=1e-5)


def test_uint8_and_float_inputs_agree(trained_run, digits):
    model, _ = graft.load(trained_run)
    x, _ = digits
    a = model.predict(x[:3], verbose=0)
    b = model.predict(x[:3].astype("float32"), verbose=0)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_run_artifacts_have_the_right_content(trained_run, digits_folder):
    import csv

    import yaml

    labels = json.loads((trained_run / "labels.json").read_text())
    assert labels == ["five", "seven", "six"]  # sorted folder names = output order
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["backbone"] == "mobilenet_v2" and config["strategy"] == "hybrid"
    assert [p["name"] for p in config["phases"]] == ["head", "finetune"]
    assert config["phases"][1]["trainable"] == "blocks:2"
    assert config["resolved_backbone"]["weights"] == "none"
    rows = list(csv.DictReader((trained_run / "history.csv").open()))
    assert [(r["phase"], r["epoch"]) for r in rows] == [("head", "1"), ("finetune", "2")]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert [p["name"] for p in metrics["phases"]] == ["head", "finetune"]
    assert metrics["train_images"] + metrics["val_images"] == 36


def test_config_yaml_reproduces_the_plan(trained_run):
    import yaml

    from graft.config.settings import TrainConfig

    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    again = TrainConfig.from_dict(config)
    assert [p.as_dict() for p in again.resolved_plan()] == config["phases"]


def test_evaluate_uses_the_runs_class_order(trained_run, digits_folder):
    result = graft.evaluate(trained_run, digits_folder)
    assert result["images"] == 36 and 0.0 <= result["accuracy"] <= 1.0


def test_refuses_to_overwrite_a_run(trained_run, digits_folder):
    with pytest.raises(graft.GraftError, match="overwrite=True"):
        graft.train(
            digits_folder,
            "mobilenet_v2",
            trained_run,
            weights="none",
            image_size=32,
            alpha=0.35,
            strategy="feature",
            epochs=1,
            verbose=0,
            log=lambda _: None,
        )


@pytest.mark.parametrize("strategy", ["feature", "finetune"])
def test_plain_keras_loads_model_keras_with_no_warning(tmp_path, cnn_file, small_arrays, strategy):
    """compile=True in a fresh Python: no optimizer-variable mismatch, same predictions."""
    x, y = small_arrays
    run = graft.train(
        (x, y), str(cnn_file), tmp_path / "run", cut="block3_pool", strategy=strategy,
        epochs=1, batch_size=8, verbose=0, log=lambda _: None,
    )  # fmt: skip
    expected = np.asarray(run.model.predict(x[:4], verbose=0))
    np.save(tmp_path / "batch.npy", x[:4])
    code = textwrap.dedent(f"""
        import warnings
        import numpy as np
        import keras
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = keras.saving.load_model({str(tmp_path / "run" / "model.keras")!r})
        for w in caught:
            if issubclass(w.category, UserWarning):
                print("WARNING:", w.message)
        p = model.predict(np.load({str(tmp_path / "batch.npy")!r}), verbose=0)
        np.save({str(tmp_path / "loaded.npy")!r}, p)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "WARNING:" not in done.stdout, done.stdout
    assert "Skipping variable loading" not in done.stderr, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "loaded.npy"), expected, atol=1e-5)
