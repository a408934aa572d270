"""Data sources, splits, class imbalance, augmentation and test-set evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import graft
from conftest import QUICK_CLI
from graft.cli import main
from graft.data import pipelines
from graft.data import sources as data
from graft.errors import DataError

TINY = dict(weights="none", alpha=0.35, image_size=32, batch_size=8, strategy="feature", epochs=1)


def _write(path: Path, seed: int, tint: int = 0) -> Path:
    a = np.random.default_rng(seed).integers(0, 256, (32, 32, 3)).astype("uint8")
    a[..., tint] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def _folder(root: Path, per_class: dict[str, int], offset: int = 0) -> Path:
    for c, (name, n) in enumerate(per_class.items()):
        for i in range(n):
            _write(root / name / f"{i}.png", offset + 1000 * c + i, tint=c % 3)
    return root


def _one_line_error(capsys, *needles):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]


# ---------------------------------------------------------------- CSV manifests


@pytest.fixture
def manifest(tmp_path):
    """images/ with 6 files and a CSV one folder up listing them with relative paths."""
    for i in range(6):
        _write(tmp_path / "images" / f"im {i}.png", i, tint=i % 2)
    return tmp_path


def test_csv_relative_paths_single_label(manifest):
    lines = ["path,label"] + [f"images/im {i}.png,{'ab'[i % 2]}" for i in range(6)]
    (manifest / "sub").mkdir()
    csv_path = manifest / "sub" / "train.csv"
    csv_path.write_text("\n".join(f"../{ln}" if i else ln for i, ln in enumerate(lines)) + "\n")
    files = data.load_source(csv_path)
    assert files.classes == ["a", "b"] and not files.multi_label
    assert files.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert all(Path(p).is_file() for p in files.paths)


def test_csv_multi_label(manifest):
    rows = ["label,path", "cat|dog,images/im 0.png", "dog,images/im 1.png", "cat,images/im 2.png"]
    (manifest / "m.csv").write_text("\n".join(rows))
    files = data.load_source(manifest / "m.csv")
    assert files.multi_label and files.classes == ["cat", "dog"]
    assert files.labels.tolist() == [[1, 1], [0, 1], [1, 0]]
    assert files.counts() == {"cat": 2, "dog": 2}


def test_csv_bad_lines_are_reported_with_line_numbers(manifest, capsys):
    rows = [
        "path,label",
        "images/im 0.png,a",
        "images/missing.png,a",  # line 3
        "images/im 1.png,",  # line 4
        "images/im 2.png,b,extra",  # line 5
        "images/im 3.png,b",
        "images/im 4.png,a",
        "images/im 5.png,b",
    ]
    (manifest / "bad.csv").write_text("\n".join(rows))
    files = data.load_source(manifest / "bad.csv")
    where = {p.kind: p.where for p in files.problems}
    assert where["csv_missing_file"].endswith("bad.csv:3")
    assert where["csv_empty_label"].endswith("bad.csv:4")
    assert where["csv_bad_line"].endswith("bad.csv:5")
    assert len(files) == 4
    assert main(["data", "check", str(manifest / "bad.csv")]) == 0
    out = capsys.readouterr().out
    assert "bad.csv:3" in out and "missing.png does not exist" in out and "bad.csv:4" in out
    assert main(["data", "check", str(manifest / "bad.csv"), "--strict"]) == 2
    _one_line_error(capsys, "csv")


def test_csv_missing_column_is_one_line_exit_2(manifest, capsys):
    (manifest / "nolabel.csv").write_text("path,kind\nimages/im 0.png,a\n")
    assert main(["train", str(manifest / "nolabel.csv"), *QUICK_CLI, "--out", "unused"]) == 2
    _one_line_error(capsys, "nolabel.csv", "label column")


def test_multi_label_training_uses_sigmoid_and_binary_crossentropy(manifest, tmp_path):
    labels = ["cat|dog", "cat", "dog", "cat|dog", "cat", "dog"]
    rows = ["path,label"] + [f"images/im {i}.png,{lab}" for i, lab in enumerate(labels)]
    (manifest / "ml.csv").write_text("\n".join(rows))
    run = graft.train(
        str(manifest / "ml.csv"), "mobilenet_v2", tmp_path / "ml", log=lambda s: None,
        verbose=0, val_split=0.0, **TINY,
    )  # fmt: skip
    assert run.model.get_layer("head_output").activation.__name__ == "sigmoid"
    assert run.model.loss == "binary_crossentropy"
    config = (tmp_path / "ml" / "config.yaml").read_text()
    assert "multi_label: true" in config
    probs = run.model.predict(np.zeros((2, 32, 32, 3)), verbose=0)
    assert probs.shape == (2, 2) and not np.allclose(probs.sum(axis=1), 1.0)
    result = graft.evaluate(tmp_path / "ml", str(manifest / "ml.csv"))
    assert result["images"] == 6 and 0.0 <= result["accuracy"] <= 1.0


# ---------------------------------------------------------------- folders and splits


def test_unknown_class_in_validation_is_named(tmp_path, capsys):
    train = _folder(tmp_path / "train", {"a": 3, "b": 3})
    val = _folder(tmp_path / "val", {"a": 1, "zebra": 1}, offset=50)
    code = main(["train", str(train), "--val", str(val), *QUICK_CLI, "--out", str(tmp_path / "r")])
    assert code == 2
    _one_line_error(capsys, "zebra")
    (tmp_path / "t.csv").write_text("path,label\nval/a/0.png,a\nval/zebra/0.png,zebra\n")
    with pytest.raises(DataError, match="zebra"):
        data.load_source(tmp_path / "t.csv", ["a", "b"])


def test_stratified_split_keeps_every_class_and_is_seeded():
    labels = np.repeat(np.arange(4), [2, 3, 10, 25]).astype("int32")
    files = data.LabelledFiles([f"f{i}" for i in range(len(labels))], labels, list("abcd"))
    train, val = data.stratified_split(files, 0.2, seed=7)
    assert set(train.labels) == set(val.labels) == {0, 1, 2, 3}
    assert sorted(train.paths + val.paths) == sorted(files.paths)
    again_train, again_val = data.stratified_split(files, 0.2, seed=7)
    assert again_val.paths == val.paths and again_train.paths == train.paths
    other = [data.stratified_split(files, 0.2, seed=s)[1].paths for s in range(1, 4)]
    assert any(o != val.paths for o in other)


def test_class_weight_auto_and_imbalance_warning(tmp_path):
    train = _folder(tmp_path / "train", {"big": 20, "small": 2})
    lines = []
    run = graft.train(
        str(train), "mobilenet_v2", tmp_path / "r", log=lines.append, verbose=0,
        val_split=0.0, class_weight="auto", **TINY,
    )  # fmt: skip
    text = "\n".join(lines)
    assert "class imbalance" in text and "'big' has 20" in text and "'small' only 2" in text
    # Balanced weights: n_samples / (n_classes * count).
    assert run.metrics["class_weight"] == pytest.approx({"big": 22 / 40, "small": 22 / 4})
    unweighted = []
    plain = graft.train(
        str(train), "mobilenet_v2", None, log=unweighted.append, verbose=0, val_split=0.0,
        **TINY,
    )  # fmt: skip
    assert "consider --class-weight auto" in "\n".join(unweighted)
    # Same seed, same data: only the weights differ, so fit must have used them.
    assert run.history[0]["loss"] != pytest.approx(plain.history[0]["loss"], rel=1e-3)


def test_balanced_class_weights():
    labels = np.array([0] * 9 + [1], "int32")
    weights = data.class_weights(labels)
    assert weights[1] == pytest.approx(10 / 2) and weights[0] == pytest.approx(10 / 18)
    with pytest.raises(DataError, match="multi-label"):
        data.class_weights(np.eye(2)[labels], multi_label=True)


def test_test_set_is_evaluated_once_into_metrics(tmp_path, capsys):
    train = _folder(tmp_path / "train", {"a": 6, "b": 6})
    test = _folder(tmp_path / "test", {"a": 3, "b": 3}, offset=500)
    out = tmp_path / "run"
    code = main(["train", str(train), "--test", str(test), *QUICK_CLI, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_images"] == 6
    again = graft.evaluate(out, str(test))
    assert metrics["test_accuracy"] == pytest.approx(again["accuracy"], abs=1e-6)
    assert metrics["test_loss"] == pytest.approx(again["loss"], rel=1e-4)


# ---------------------------------------------------------------- arrays and tf.data


def test_tf_data_dataset_source(small_arrays, tmp_path):
    import tensorflow as tf

    x, y = small_arrays
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    with pytest.raises(DataError, match="class names"):
        graft.train(ds, "mobilenet_v2", None, log=lambda s: None, verbose=0, **TINY)
    run = graft.train(
        ds, "mobilenet_v2", None, classes=["five", "six", "seven"], val=(x, y),
        log=lambda s: None, verbose=0, **TINY,
    )  # fmt: skip
    assert run.model.output_shape == (None, 3) and "val_accuracy" in run.metrics


# ---------------------------------------------------------------- augmentation


def test_augmentation_changes_training_batches_only(tmp_path):
    folder = _folder(tmp_path / "d", {"a": 4, "b": 4})
    files = data.load_source(folder)
    plain = pipelines.pipeline(files, (32, 32), batch_size=8)
    augmented = pipelines.pipeline(
        files, (32, 32), batch_size=8, augment=pipelines.augmentation("standard", seed=1)
    )
    first, second = (next(iter(plain))[0].numpy() for _ in range(2))
    np.testing.assert_array_equal(first, second)
    aug1, aug2 = (next(iter(augmented))[0].numpy() for _ in range(2))
    assert not np.allclose(aug1, first) and not np.allclose(aug1, aug2)
    assert pipelines.augmentation("none") is None
    with pytest.raises(graft.GraftError, match="Unknown augment level.*Received: augment=heavy"):
        pipelines.augmentation("heavy")


def test_augmentation_is_not_part_of_the_saved_model(tmp_path, capsys):
    folder = _folder(tmp_path / "d", {"a": 4, "b": 4})
    out = tmp_path / "run"
    code = main(["train", str(folder), *QUICK_CLI, "--augment", "standard", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "augment: standard" in (out / "config.yaml").read_text()
    model = keras.saving.load_model(out / "model.keras")
    kinds = {type(layer).__name__ for layer in model._flatten_layers(recursive=True)}
    assert not {k for k in kinds if k.startswith("Random")}, kinds
    x = np.asarray(Image.open(folder / "a" / "0.png"), "float32")[None]
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
