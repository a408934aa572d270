"""``graft train --distribute mirrored`` on JAX, end to end: ``keras.distribution.DataParallel``
over two host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``), from the CLI.

Runs the CLI in a JAX interpreter (this one under ``KERAS_BACKEND=jax``; from the TensorFlow
venv, ``GRAFT_TEST_PYTHON_JAX``; skipped otherwise). The splits have odd numbers of images,
so graft's own predictions inside the run (the input measurement, the caches, AdaBN and
precise BN, the evaluations) meet batches that do not divide by the two devices: they run
outside the distribution (:func:`graft.training.distribute.local`), and only ``fit`` splits
its batches.

Same rows: the distributed run (5 images per replica, global batch 10) and the one-device
run (batch 10) train on 34 images, which split into batches of 10, 10, 10 and 4, all even:
no training row is left out, so both see the same batches in the same order. The tolerance
is float32 round-off: each device sums the gradient over its half of the batch and the
halves are then added (XLA's all-reduce), which rounds differently from one sum over the
whole batch (~1e-7 relative per step): measured 1.5e-8 to 3e-8 after these few epochs
of Adam, so the weights must agree within 1e-6.
Keras's validation inside ``fit`` reads 6 of the 7 validation images under two devices
(what does not split is left out), so its history differs by design; the final
evaluation (``metrics.json``'s ``evaluation``, after the run leaves the distribution) reads
all 7 and is compared. The layers a strategy leaves frozen are compared bit for bit with
the pre-trained file. A distributed run stopped mid-way resumes exactly (bit for bit).

All are marked ``backend``, so CI's JAX job runs them (its TensorFlow job has no JAX
interpreter yet and skips them; the torch job skips them): the training cases run one or
two CLI processes each (20-45 s on 2 shared cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.backend
BACKEND = keras.backend.backend()
#: Two devices, 5 images per replica: the global batch is 10.
TWO = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
COMMON = ["--cut", "block3_pool", "--image-size", "32", "--keep", "last", "--seed", "3"]


def _jax_python() -> str:
    if BACKEND == "jax":
        return sys.executable
    if BACKEND != "tensorflow":  # JAX's distribution: the torch venv has nothing to run
        pytest.skip("run under KERAS_BACKEND=jax, or from the TensorFlow venv")
    python = os.environ.get("GRAFT_TEST_PYTHON_JAX")
    if not python:
        pytest.skip("no JAX here (run under KERAS_BACKEND=jax, or set GRAFT_TEST_PYTHON_JAX)")
    return python


def _cli(*args, env: dict | None = None):
    environ = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONWARNINGS": "ignore"}
    environ.pop("XLA_FLAGS", None)
    environ.update(env or {})
    cmd = [_jax_python(), "-m", "graft.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=environ)


@pytest.fixture(scope="module")
def odd_splits(tmp_path_factory, digits):
    """Digits 5, 6, 7 as PNG folders: ``train`` 34 images (12/11/11), ``val`` 7 (3/2/2,
    other images), ``odd`` 35 (12/12/11)."""
    from graft.api.demo import write_folder

    x, y = digits
    names = {5: "five", 6: "six", 7: "seven"}
    root = tmp_path_factory.mktemp("odd")

    def folder(name, counts, skip=0):
        idx = np.concatenate([np.flatnonzero(y == c)[skip : skip + n] for c, n in counts])
        return write_folder(root / name, x[idx], y[idx], names)

    return {
        "train": folder("train", ((5, 12), (6, 11), (7, 11))),
        "val": folder("val", ((5, 3), (6, 2), (7, 2)), skip=12),
        "odd": folder("odd", ((5, 12), (6, 12), (7, 11))),
    }


def _weights(path) -> dict:
    model = keras.saving.load_model(path)
    found = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if layer.weights:
            found[layer.name] = [np.asarray(keras.ops.convert_to_numpy(w)) for w in layer.weights]
    return found


def _frozen_unchanged(run_dir, cnn_file, names) -> None:
    before, after = _weights(cnn_file), _weights(run_dir / "model.keras")
    for name in names:
        for a, b in zip(before[name], after[name], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)


#: strategy -> (its flags, the backbone layers it leaves frozen)
CASES = {
    "feature": (
        ["--strategy", "feature", "--head", "8", "--epochs", "3"],
        ["block1_conv", "block1_bn", "block2_conv", "block2_bn", "block3_conv", "block3_bn"],
    ),
    "finetune": (
        ["--strategy", "finetune", "--epochs", "2", "--unfreeze", "blocks:2"],
        ["block1_conv", "block1_bn"],
    ),
    "hybrid": (
        ["--strategy", "hybrid", "--head", "8", "--epochs", "2", "--finetune-epochs", "1"],
        ["block1_conv", "block1_bn"],
    ),
}


@pytest.mark.parametrize("strategy", list(CASES))
def test_distributed_run_equals_the_one_device_run(strategy, odd_splits, cnn_file, tmp_path):
    flags, frozen = CASES[strategy]
    data = [odd_splits["train"], "--val", odd_splits["val"], "-b", cnn_file, *COMMON, *flags]
    runs, said = {}, {}
    for name, batch, extra, env in (
        ("two", 5, ["--distribute", "mirrored"], TWO),
        ("one", 10, [], {}),
    ):
        out = tmp_path / name
        args = ["--batch-size", batch, "--cache-dir", tmp_path / f"cache-{name}", "-o", out]
        done = _cli("train", *data, *args, *extra, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name], said[name] = out, done.stdout + done.stderr
    assert "Distribution: DataParallel over 2 replica(s)" in said["two"]
    for cached in (["cached features"] if strategy != "finetune" else []) + (
        ["cached activations"] if strategy != "feature" else []
    ):  # the caches served the phases they serve on one device
        assert cached in said["two"] and cached in said["one"], (cached, said["two"])
    two = json.loads((runs["two"] / "metrics.json").read_text())
    one = json.loads((runs["one"] / "metrics.json").read_text())
    assert two["distribute"]["strategy"] == "DataParallel", two["distribute"]
    assert two["distribute"]["replicas"] == 2 and two["distribute"]["global_batch"] == 10
    assert "distribute" not in one
    assert two["inputs"] == one["inputs"]  # measured (outside the distribution) alike
    assert two["epochs"] == one["epochs"] and two["train_images"] == 34
    # the final evaluation reads every validation image in both (loss rounded to 1e-4)
    assert two["evaluation"]["images"] == one["evaluation"]["images"] == 7
    assert two["evaluation"]["loss"] == pytest.approx(one["evaluation"]["loss"], abs=2e-4)
    assert two["evaluation"]["accuracy"] == one["evaluation"]["accuracy"]
    a, b = _weights(runs["two"] / "model.keras"), _weights(runs["one"] / "model.keras")
    assert set(a) == set(b)
    diff = max(float(np.max(np.abs(u - v))) for k in a for u, v in zip(a[k], b[k], strict=True))
    print(f"{strategy}: max |weight diff| {diff:.2e}")  # reported with -s
    assert diff < 1e-6, diff
    _frozen_unchanged(runs["two"], cnn_file, frozen)


def test_odd_training_rows_train_under_two_devices(odd_splits, cnn_file, tmp_path):
    """35 images, 29 of them trained: each epoch leaves out the last row of its order;
    the LR finder, precise BN (29 images in batches of 10, 10, 9) and the activation
    cache run too. The frozen block keeps its pre-trained weights bit for bit."""
    out = tmp_path / "run"
    done = _cli(
        "train", odd_splits["odd"], "-b", cnn_file, *COMMON, "--val-split", "0.2",
        "--strategy", "finetune", "--unfreeze", "blocks:2", "--train-bn", "--epochs", "2",
        "--lr", "auto", "--batch-size", 5, "--distribute", "mirrored",
        "--cache-dir", tmp_path / "cache", "-o", out, env=TWO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert "LR finder: suggested lr" in said and "Precise BN: re-estimated" in said, said
    assert "on cached activations" in said
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distribute"]["replicas"] == 2
    assert metrics["train_images"] == 29 and metrics["epochs"] == 2
    assert metrics["evaluation"]["images"] == metrics["val_images"] == 6
    assert np.isfinite(metrics["evaluation"]["loss"])
    _frozen_unchanged(out, cnn_file, ["block1_conv", "block1_bn"])


def test_a_measured_cut_and_adabn_run_under_two_devices(odd_splits, cnn_file, tmp_path):
    """``--cut auto`` (a forward pass per scaling on 29 images in batches of 5) and AdaBN
    (one training-mode pass before the phase) under two devices."""
    out = tmp_path / "run"
    done = _cli(
        "train", odd_splits["odd"], "-b", cnn_file, "--image-size", "32", "--val-split", "0.2",
        "--strategy", "hybrid", "--cut", "auto", "--recalibrate-bn", "--head", "8",
        "--epochs", "2", "--finetune-epochs", "1", "--batch-size", 5,
        "--distribute", "mirrored", "--cache-dir", tmp_path / "cache", "-o", out, env=TWO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert "Cut: " in said and "(AdaBN)" in said, said
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distribute"]["global_batch"] == 10 and "transfer" in metrics
    assert metrics["evaluation"]["images"] == 6 and metrics["epochs"] == 3


def _one_line(done) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("graft: error")]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def test_a_split_smaller_than_the_devices_is_refused_in_one_line(odd_splits, cnn_file, tmp_path):
    """A validation split of one image cannot be split over two devices: Keras's
    validation would read nothing, silently (the run would say it had no hold-out)."""
    one = tmp_path / "one" / "five"
    one.mkdir(parents=True)
    first = sorted((odd_splits["val"] / "five").iterdir())[0]
    (one / first.name).write_bytes(first.read_bytes())
    out = tmp_path / "run"
    done = _cli(
        "train", odd_splits["train"], "--val", one.parent, "-b", cnn_file, *COMMON,
        "--strategy", "feature", "--head", "8", "--epochs", "1", "--preprocess", "unit",
        "--pool", "avg", "--batch-size", 5, "--distribute", "mirrored", "--no-cache",
        "-o", out, env=TWO,
    )  # fmt: skip
    line = _one_line(done)
    assert "1 image(s) cannot be split evenly over 2 devices" in line, line
    assert json.loads((out / "status.json").read_text())["status"] == "failed"


def test_multi_worker_off_tensorflow_is_refused_before_anything_is_written(
    odd_splits, cnn_file, tmp_path
):
    out = tmp_path / "never"
    done = _cli(
        "train", odd_splits["train"], "-b", cnn_file, *COMMON, "--distribute", "multi-worker",
        "-o", out, env=TWO,
    )  # fmt: skip
    assert "multi-worker (TF_CONFIG) needs TensorFlow; the backend here is jax" in _one_line(done)
    assert not out.exists()


#: argv: data folder, model file, work folder. An uninterrupted run and one stopped after
#: epoch 3 (inside fine-tuning) then resumed, both under two devices; prints JSON.
_RESUME = r"""
import json, sys
import numpy as np
import keras
import graft
from graft.training.checkpoints import Checkpointer, Interrupted

data, model, work = sys.argv[1:4]
settings = dict(
    cut="block3_pool", image_size=32, batch_size=5, seed=4, dropout=0.3, lr=0.01,
    val_split=0.2, strategy="hybrid", head=(8,), epochs=2, finetune_epochs=2,
    finetune_lr=0.005, distribute="mirrored", cache_dir=work + "/cache", verbose=0,
    log=lambda _: None,
)
graft.train(data, model, work + "/reference", **settings)
original = Checkpointer.save


def save(self, *args, **kwargs):
    original(self, *args, **kwargs)
    if self.state.epoch == 3:
        self.stop_signal = "SIGINT"


Checkpointer.save = save
try:
    graft.train(data, model, work + "/resumed", **settings)
    stopped = False
except Interrupted:
    stopped = True
Checkpointer.save = original
graft.train(data, resume=work + "/resumed", verbose=0, log=lambda _: None)


def rows(name):
    lines = open(f"{work}/{name}/history.csv").read().splitlines()
    header = lines[0].split(",")
    keep = [i for i, key in enumerate(header) if key != "seconds"]
    return [[line.split(",")[i] for i in keep] for line in lines]


a = keras.saving.load_model(work + "/reference/model.keras").get_weights()
b = keras.saving.load_model(work + "/resumed/model.keras").get_weights()
print(json.dumps({
    "stopped": stopped,
    "epochs": len(rows("resumed")) - 1,
    "same_history": rows("reference") == rows("resumed"),
    "diff": max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True)),
}))
"""


def test_a_distributed_run_resumes_exactly(odd_splits, cnn_file, tmp_path):
    """Stopped after epoch 3 of 4 (inside fine-tuning, on 29 training images: each epoch
    leaves out one row), resumed under two devices: the history (less its timings) and
    the weights of the uninterrupted run, bit for bit."""
    environ = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONWARNINGS": "ignore", **TWO}
    done = subprocess.run(
        [_jax_python(), "-c", _RESUME, str(odd_splits["odd"]), str(cnn_file), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=environ,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["stopped"] and result["epochs"] == 4, result
    assert result["same_history"] and result["diff"] == 0.0, result
