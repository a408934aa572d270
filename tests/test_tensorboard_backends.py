"""``--tensorboard`` on every backend: Keras's callback and ``tf.summary`` on TensorFlow,
the ``tensorboard`` package's pure-Python event writer elsewhere (the same scalars), and a
one-line refusal, before anything is written, where the package is missing.

Marked ``backend``: CI runs them again on JAX and PyTorch without TensorFlow. The files are
read back with ``tensorboard``'s own ``EventAccumulator`` (pure Python, on every backend),
which is also what TensorBoard's UI reads.
"""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import graft
from graft.errors import GraftError
from graft.training import tensorboard as tb

pytestmark = pytest.mark.backend

BACKEND = keras.backend.backend()
#: The tiny CNN cut below its old head, two phases (a head, then fine-tuning: two rates).
TINY = dict(
    cut="block3_pool", image_size=32, strategy="hybrid", head=(8,), epochs=2,
    finetune_epochs=1, lr=1e-2, finetune_lr=1e-4, batch_size=8, val_split=0.2, cache=False,
    verbose=0, log=lambda _: None,
)  # fmt: skip


def _accumulated(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar under ``folder`` as TensorBoard reads it: ``{tag: [(step, value)]}``,
    each a tensor-form summary of the scalars plugin (what ``tf.summary.scalar`` writes)."""
    from tensorboard.backend.event_processing.event_accumulator import (
        TENSORS,
        EventAccumulator,
    )
    from tensorboard.util import tensor_util

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={TENSORS: 0}).Reload()
        for tag in events.Tags()[TENSORS]:
            assert events.SummaryMetadata(tag).plugin_data.plugin_name == "scalars", tag
            for event in events.Tensors(tag):
                value = float(tensor_util.make_ndarray(event.tensor_proto))
                found.setdefault(tag, []).append((event.step, value))
    return {tag: sorted(values) for tag, values in found.items()}


def test_tensorboard_writes_the_epoch_and_phase_scalars(digits_folder, cnn_file, tmp_path):
    out = tmp_path / "run"
    run = graft.train(digits_folder, str(cnn_file), out, tensorboard=True, **TINY)
    history = run.history
    assert [r["phase_index"] for r in history] == [1, 1, 2]
    train = _accumulated(tb.log_dir(out) / "train")
    val = _accumulated(tb.log_dir(out) / "validation")
    phases = _accumulated(tb.log_dir(out) / "phases")
    assert set(train) == {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"}
    steps = [0, 1, 2]  # 0-based epochs across the phases
    assert [s for s, _ in train["epoch_loss"]] == steps
    np.testing.assert_allclose([v for _, v in train["epoch_loss"]], [r["loss"] for r in history])
    np.testing.assert_allclose(
        [v for _, v in train["epoch_accuracy"]], [r["accuracy"] for r in history]
    )
    np.testing.assert_allclose(
        [v for _, v in train["epoch_learning_rate"]], [1e-2, 1e-2, 1e-4], rtol=1e-6
    )
    assert {"epoch_loss", "epoch_accuracy"} <= set(val)
    np.testing.assert_allclose([v for _, v in val["epoch_loss"]], [r["val_loss"] for r in history])
    np.testing.assert_allclose(
        [v for _, v in val["epoch_accuracy"]], [r["val_accuracy"] for r in history]
    )
    assert [s for s, _ in val["epoch_accuracy"]] == steps
    # each validation at the optimizer's step too, as Keras's callback writes it
    assert len(val["evaluation_loss_vs_iterations"]) == 3
    assert phases["phase/index"] == [(0, 1.0), (1, 1.0), (2, 2.0)]
    np.testing.assert_allclose([v for _, v in phases["phase/learning_rate"]], [1e-2, 1e-2, 1e-4])
    assert [s for s, _ in phases["phase/backbone_learning_rate"]] == [2]
    # graft's own reader reads the same
    assert tb.read_scalars(tb.log_dir(out) / "phases")["phase/index"] == phases["phase/index"]
    if BACKEND != "tensorflow":
        assert isinstance(tb.callback(tmp_path / "other"), tb.EpochScalars)


def _no_tensorboard(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed


def test_tensorboard_missing_is_refused_before_anything_is_written(
    digits_folder, cnn_file, tmp_path, monkeypatch
):
    _no_tensorboard(monkeypatch)
    fresh = tmp_path / "fresh"
    with pytest.raises(GraftError) as caught:
        graft.train(digits_folder, str(cnn_file), fresh, tensorboard=True, **TINY)
    message = str(caught.value)
    assert message.startswith("tensorboard=True needs the tensorboard package"), message
    assert "\n" not in message
    assert not fresh.exists()  # no run folder left behind
    # an earlier run's folder, overwritten: nothing of it is lost
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    kept = {
        "model.keras": b"model",
        "config.yaml": b"strategy: feature\n",
        "status.json": b'{"status": "completed"}',
    }
    for name, data in kept.items():
        (earlier / name).write_bytes(data)
    with pytest.raises(GraftError, match="needs the tensorboard package"):
        graft.train(digits_folder, str(cnn_file), earlier, tensorboard=True, overwrite=True, **TINY)
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == kept


#: The CLI with ``tensorboard`` made unimportable (as if not installed).
_CLI = (
    "import sys; sys.modules['tensorboard'] = None; sys.argv[0] = 'graft'; "
    "from graft.cli.main import run; run()"
)


def test_cli_refuses_tensorboard_without_the_package_in_one_line(digits_folder, cnn_file, tmp_path):
    out = tmp_path / "run"
    args = ["train", digits_folder, "-b", cnn_file, "--cut", "block3_pool", "--image-size", "32"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", _CLI, *map(str, args), "--tensorboard", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "needs the tensorboard package" in lines[0], lines
    assert not out.exists()
