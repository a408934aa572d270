"""Forgetting, measured: linear CKA / cosine feature drift and source-task accuracy."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import graft
from conftest import make_cnn
from graft import cli
from graft.api.demo import write_folder
from graft.errors import GraftError
from graft.reporting import drift


def test_cka_identity_scaling_rotation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12))
    rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert drift.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert drift.linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
    assert drift.linear_cka(x, x @ rotation) == pytest.approx(1.0, abs=1e-12)
    # A different representation of the same images is clearly less similar.
    assert drift.linear_cka(x, rng.normal(size=(64, 12))) < 0.5
    assert drift.mean_cosine(x, x) == pytest.approx(1.0, abs=1e-12)
    # Cosine is not rotation-invariant: it sees that the features themselves moved.
    assert drift.mean_cosine(x, x @ rotation) < 0.9
    with pytest.raises(ValueError, match="64 vs 10"):
        drift.linear_cka(x, x[:10])


@pytest.fixture(scope="module")
def source(tmp_path_factory, digits):
    """A tiny CNN really trained on digits 0-4 (its 5-class head kept), and test folders."""
    x, y = digits
    root = tmp_path_factory.mktemp("source")
    mask = np.isin(y, (0, 1, 2, 3, 4))
    train_idx = np.flatnonzero(mask)[:600]
    eval_idx = np.flatnonzero(mask)[600:700]
    model = make_cnn(seed=3)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x[train_idx] / 255.0, y[train_idx], epochs=4, batch_size=32, verbose=0)
    path = root / "source.keras"
    model.save(path)
    names = {c: f"digit_{c}" for c in range(5)}
    folder = write_folder(root / "eval", x[eval_idx], y[eval_idx], names)
    direct = float(
        np.mean(np.argmax(model.predict(x[eval_idx] / 255.0, verbose=0), 1) == y[eval_idx])
    )
    return path, folder, direct


def _train(path, folder, out, **settings):
    options = dict(
        cut="block3_pool", preprocess="unit", val_split=0.25, batch_size=16, head=(), pool="avg"
    )
    options.update(settings)
    return graft.train(folder, str(path), out, log=lambda _line: None, verbose=0, **options)


def test_feature_extraction_has_no_drift_and_keeps_source_accuracy(tmp_path, source, digits_folder):
    path, source_folder, direct = source
    run = _train(
        path,
        digits_folder,
        tmp_path / "run",
        strategy="feature",
        epochs=1,
        source_eval=source_folder,
    )
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    fd = saved["feature_drift"]
    assert fd["cka"] == 1.0 and fd["cosine"] == 1.0 and fd.get("unchanged") is True
    assert fd["images"] == saved["val_images"] == 9
    st = saved["source_task"]
    # "before" is the original model evaluated directly, on the same 100 images.
    assert st["images"] == 100
    assert st["accuracy_before"] == pytest.approx(direct, abs=1e-6)
    assert st["accuracy_before"] > 0.5  # really pre-trained, so forgetting is measurable
    assert st["accuracy_after"] == st["accuracy_before"]  # frozen backbone forgets nothing
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Source task" in html and "cka" in html and "Not measured for this run" not in html
    assert run.metrics["feature_drift"]["cka"] == 1.0


def test_finetuning_at_a_high_rate_drifts_and_forgets(tmp_path, source, digits_folder):
    path, source_folder, _ = source
    lines: list[str] = []
    common = dict(strategy="finetune", unfreeze="all", epochs=2, source_eval=source_folder)
    gentle = _train(path, digits_folder, None, finetune_lr=1e-6, **common)
    hard = graft.train(
        digits_folder,
        str(path),
        tmp_path / "hard",
        cut="block3_pool",
        preprocess="unit",
        val_split=0.25,
        batch_size=16,
        head=(),
        pool="avg",  # the scenario's pooling, not measured
        log=lines.append,
        verbose=0,
        finetune_lr=0.05,
        **common,
    )
    soft, strong = gentle.metrics["feature_drift"], hard.metrics["feature_drift"]
    assert "unchanged" not in strong
    assert strong["cka"] < soft["cka"] <= 1.0
    assert strong["cka"] < 0.95 and strong["cosine"] < soft["cosine"]
    st = hard.metrics["source_task"]
    assert st["accuracy_after"] < st["accuracy_before"] - 0.1
    assert any(line.startswith("Feature drift on 9 val images: linear CKA") for line in lines)
    assert any(line.startswith("Source task (100 images)") for line in lines)


def test_drift_measured_on_training_images_without_validation(tmp_path, source, digits_folder):
    path, _, _ = source
    run = _train(
        path, digits_folder, None, strategy="finetune", epochs=1, val_split=0.0,
        pool="avg",  # the scenario as tuned, not a measured pooling
    )  # fmt: skip
    fd = run.metrics["feature_drift"]
    assert fd["split"] == "train" and fd["images"] == 36 and fd["cka"] < 1.0


def test_source_eval_errors_are_one_line(tmp_path, source, digits_folder, capsys):
    path, source_folder, _ = source
    # 3 class folders, 5 source outputs: refused before training.
    code = cli.main(
        ["train", str(digits_folder), "-b", str(path), "--cut", "block3_pool", "-o",
         str(tmp_path / "a"), "--source-eval", str(digits_folder)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "has 5 outputs but the source data has 3 classes" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "a" / "model.keras").exists()
    # A source model whose layers are not the backbone's cannot get its head re-attached.
    other = tmp_path / "other.keras"
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="other_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x)).save(other)
    with pytest.raises(GraftError, match="block1_conv.*not in the source model"):
        _train(path, digits_folder, None, strategy="feature", epochs=1,
               source_eval=source_folder, source_model=other)  # fmt: skip
    with pytest.raises(GraftError, match="needs the original classifier"):
        graft.train(digits_folder, "mobilenet_v2", None, weights="none", alpha=0.35,
                    image_size=32, source_eval=source_folder)  # fmt: skip
