"""Failures that must stay one clear line: NaN losses, unsafe model files, full disks, OOM."""

from __future__ import annotations

import errno
import json
import pickle

import keras
import numpy as np
import pytest

from conftest import IMAGE, conv_block, make_cnn, one_error_line
from graft import api, cli
from graft.core import backbones
from graft.errors import GraftError, TrainingFailed
from graft.runs import files as runs

TINY = dict(cut="block3_pool", epochs=1, finetune_epochs=1, batch_size=8, verbose=0)


@pytest.fixture(scope="module")
def lambda_file(tmp_path_factory):
    """A small CNN whose first layer is a Lambda (arbitrary Python code on load)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = keras.layers.Lambda(lambda t: t * 1.0, name="scale")(inputs)
    for i, filters in enumerate((8, 8), start=1):
        x = conv_block(x, i, filters)
    outputs = keras.layers.Dense(3, activation="softmax", name="old_head")(
        keras.layers.GlobalAveragePooling2D(name="gap")(x)
    )
    path = tmp_path_factory.mktemp("lambda") / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def test_nan_loss_stops_the_phase_at_that_epoch_and_keeps_the_last_checkpoint(
    tmp_path, cnn_file, small_arrays
):
    out = tmp_path / "run"
    with pytest.raises(TrainingFailed) as info:
        api.train(
            small_arrays, str(cnn_file), out, val_split=0, optimizer="sgd", log=lambda s: None,
            **{**TINY, "finetune_epochs": 3, "finetune_lr": 1e12, "unfreeze": "all"},
        )  # fmt: skip
    message = str(info.value)
    assert "phase 2 'finetune'" in message and "at its epoch 1 (epoch 2 of the run)" in message
    assert "lower the learning rate" in message and "\n" not in message
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1 and state["phase_index"] == 1  # the last finite epoch
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and "loss became" in status["error"]
    assert status["last_checkpoint"]["epoch"] == 1


def test_lambda_backbone_refused_by_default_accepted_with_unsafe(
    tmp_path, capsys, lambda_file, digits_folder
):
    args = ["train", str(digits_folder), "-b", str(lambda_file), "--cut", "block2_pool"]
    args += ["--epochs", "1", "--finetune-epochs", "1", "--batch-size", "8", "--no-cache"]
    assert cli.main([*args, "--out", str(tmp_path / "safe")]) == 2
    line = one_error_line(capsys)
    assert "Lambda" in line and "--unsafe" in line
    assert cli.main([*args, "--out", str(tmp_path / "unsafe"), "--unsafe"]) == 0, capsys
    capsys.readouterr()
    # The trained model holds the Lambda too: evaluate and predict refuse it by default ...
    run_dir = str(tmp_path / "unsafe")
    assert cli.main(["evaluate", run_dir, str(digits_folder)]) == 2
    assert "Lambda" in one_error_line(capsys)
    image = next(digits_folder.glob("five/*.png"))
    assert cli.main(["predict", run_dir, str(image)]) == 2
    assert "--unsafe" in one_error_line(capsys)
    # ... and accept it when asked.
    assert cli.main(["evaluate", run_dir, str(digits_folder), "--json", "--unsafe"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 36


def test_legacy_h5_full_model_is_accepted(tmp_path):
    model = make_cnn(seed=4)
    path = tmp_path / "legacy.h5"
    model.save(path)
    bb = backbones.resolve(str(path), cut="block3_pool")
    assert bb.image_size == (IMAGE, IMAGE)
    compared = 0
    for layer in model.layers:
        if layer.weights and layer.name != "old_head":
            for a, b in zip(bb.model.get_layer(layer.name).get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(a, b)
                compared += 1
    assert compared == 15  # 3 conv kernels + 3 BN x (gamma, beta, mean, variance)


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickles_are_never_loaded(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "model.pkl"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    for attempt in (
        lambda: backbones.resolve(str(evil)),
        lambda: api.load(evil),
    ):
        with pytest.raises(GraftError):
            attempt()
    assert not marker.exists()


def test_full_disk_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch, digits_folder):
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    # runs.atomic_open writes through open(fd, ...): make every such write fail.
    monkeypatch.setattr(
        runs, "open", lambda fd, mode, **kw: Full(real_open(fd, mode, **kw)), raising=False
    )
    out = tmp_path / "run"
    # A model file that exists (the early checks pass): the disk fills up when the run
    # folder's config.yaml is written, before the backbone is read.
    backbone = tmp_path / "x.keras"
    backbone.write_bytes(b"not read before config.yaml")
    code = cli.main(["train", str(digits_folder), "-b", str(backbone), "--out", str(out)])
    assert code == 2
    line = one_error_line(capsys)
    assert "No space left" in line and str(out / "config.yaml") in line
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no half-written file


def test_out_of_memory_suggests_a_smaller_batch(
    tmp_path, capsys, monkeypatch, cnn_file, digits_folder
):
    import tensorflow as tf

    from graft.training import trainer as training

    def oom(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(training.Trainer, "fit", oom)
    out = tmp_path / "run"
    args = ["train", str(digits_folder), "-b", str(cnn_file), "--cut", "block3_pool"]
    assert cli.main([*args, "--batch-size", "64", "--no-cache", "--out", str(out)]) == 1
    line = one_error_line(capsys)
    assert "Out of memory" in line and "--batch-size 64" in line and "--batch-size 32" in line
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
