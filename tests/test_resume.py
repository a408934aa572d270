"""Never lose work: checkpoints, kill -9 / Ctrl-C and resume, determinism, run status.

The runs are real ``graft train`` subprocesses (a kill must hit a real process) on
36 digits images with MobileNetV2 (alpha 0.35, random weights, 32 px): 2 head epochs
on cached features, then 3 fine-tuning epochs with a MultiOptimizer (two learning rates).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import stop_after

SRC = str(Path(__file__).resolve().parents[1] / "src")
EPOCHS = 5


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def _args(data, out, cache):
    return [
        str(data), "-b", "mobilenet_v2", "--alpha", "0.35", "--weights", "none",
        "--image-size", "32", "--epochs", "2", "--finetune-epochs", "3", "--batch-size", "8",
        "--lr", "0.01", "--finetune-lr", "0.002", "--seed", "3", "--deterministic",
        "--dropout", "0.3", "--cache-dir", str(cache), "--out", str(out),
        "--val-split", "0.2",  # keep-best and val_loss on a hold-out, as before
    ]  # fmt: skip


def _graft(*args, timeout=240):
    cmd = [sys.executable, "-m", "graft.cli", *map(str, args)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _start(*args):
    cmd = [sys.executable, "-m", "graft.cli", *map(str, args)]
    return subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_epoch(run_dir: Path, proc, epoch: int, timeout=180) -> int:
    """Poll the checkpoint until it has ``epoch`` epochs; return the epoch seen."""
    state = run_dir / "checkpoint" / "state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state.is_file():
            seen = json.loads(state.read_text())["epoch"]
            if seen >= epoch:
                return seen
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no checkpoint appeared in time")


def _weights(run_dir: Path) -> list[np.ndarray]:
    model = keras.saving.load_model(run_dir / "model.keras")
    return [np.asarray(w) for w in model.weights]


def _history(run_dir: Path) -> list[str]:
    return (run_dir / "history.csv").read_text().splitlines()


def _untimed(value):
    """metrics.json without its wall-clock timings (the only values allowed to differ)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _metric_values(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "seconds" in metrics and "val_loss" in metrics
    return _untimed(metrics)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_folder):
    """One uninterrupted deterministic run."""
    root = tmp_path_factory.mktemp("resume")
    out = root / "reference"
    done = _graft("train", *_args(digits_folder, out, root / "cache"))
    assert done.returncode == 0, done.stderr
    return root, out


def _assert_same_run(run: Path, ref: Path):
    for a, b in zip(_weights(run), _weights(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    epochs = [int(line.split(",")[2]) for line in _history(run)[1:]]
    assert epochs == list(range(1, EPOCHS + 1))  # every epoch exactly once, in order
    header, *rows = _history(run)
    ref_header, *ref_rows = _history(ref)
    assert header == ref_header
    drop = header.split(",").index("seconds")
    strip = [lambda r: [c for i, c in enumerate(r.split(",")) if i != drop]][0]
    assert [strip(r) for r in rows] == [strip(r) for r in ref_rows]  # same losses, bit for bit


def test_same_seed_deterministic_twice_gives_identical_weights_and_metrics(
    reference, digits_folder
):
    root, ref = reference
    out = root / "again"
    done = _graft("train", *_args(digits_folder, out, root / "cache"))
    assert done.returncode == 0, done.stderr
    for a, b in zip(_weights(out), _weights(ref), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _metric_values(out) == _metric_values(ref)


def test_kill_9_after_a_checkpoint_then_resume_matches_uninterrupted_run(reference, digits_folder):
    root, ref = reference
    out = root / "killed"
    proc = _start("train", *_args(digits_folder, out, root / "cache"))
    seen = _wait_for_epoch(out, proc, 3)  # inside the fine-tuning phase (MultiOptimizer)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert seen < EPOCHS and not (out / "model.keras").exists()
    assert json.loads((out / "status.json").read_text())["status"] == "running"
    # A run folder is never silently reused ...
    refused = _graft("train", *_args(digits_folder, out, root / "cache"))
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    # ... but it resumes.
    resumed = _graft("train", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {seen}" in resumed.stdout
    _assert_same_run(out, ref)
    assert json.loads((out / "status.json").read_text())["status"] == "completed"


def test_ctrl_c_leaves_a_resumable_run_and_exits_130(reference, digits_folder):
    root, ref = reference
    out = root / "interrupted"
    proc = _start("train", *_args(digits_folder, out, root / "cache"))
    _wait_for_epoch(out, proc, 1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Interrupted by SIGINT" in lines[0], stderr
    assert f"graft train --resume {out}" in lines[0]
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and status["last_checkpoint"]["epoch"] >= 1
    resumed = _graft("train", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(out, ref)


def test_sigterm_exits_143_resumes_and_a_finished_run_is_not_resumed(
    tmp_path, capsys, monkeypatch, cnn_file, digits_folder
):
    from graft import cli
    from graft.training.checkpoints import Checkpointer

    class Terminate(keras.callbacks.Callback):
        """SIGTERM arrives while the first epoch is being saved."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                os.kill(os.getpid(), signal.SIGTERM)

    original = Checkpointer.callbacks
    monkeypatch.setattr(
        Checkpointer, "callbacks", lambda self, *a: [*original(self, *a), Terminate()]
    )
    out = tmp_path / "run"
    args = ["train", str(digits_folder), "-b", str(cnn_file), "--cut", "block3_pool"]
    args += ["--epochs", "2", "--finetune-epochs", "1", "--batch-size", "8", "--out", str(out)]
    args += ["--val-split", "0.2"]  # the summary line shows the hold-out's val_accuracy
    assert cli.main(args) == 143
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "--resume" in lines[0]
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"
    assert status["last_checkpoint"]["epoch"] == 1
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(out)]) == 0
    assert [int(line.split(",")[2]) for line in _history(out)[1:]] == [1, 2, 3]
    last = capsys.readouterr().out.strip().splitlines()[-2:]  # as a run that was not resumed
    assert "val_accuracy" in last[0] and last[1] == f"Report: {out / 'report.html'}"
    assert cli.main(["train", "--resume", str(out)]) == 2
    assert "nothing to resume" in capsys.readouterr().err


# ------------------------------------------------- stateful per-phase policies survive a resume


def _lr_columns(run_dir: Path) -> list[list[float]]:
    import csv

    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [[float(r["lr"]), float(r["backbone_lr"] or "nan")] for r in rows]


def _interrupted_then_resumed(tmp_path, monkeypatch, data, backbone, stop_at, **settings):
    import graft
    from graft.training.checkpoints import Interrupted

    quiet = dict(log=lambda _: None, verbose=0)
    ref = tmp_path / "reference"
    graft.train(data, backbone=str(backbone), out=ref, **quiet, **settings)
    if callable(stop_at):  # chosen from what the reference run did
        stop_at = stop_at(len(_history(ref)) - 1)
    run = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        stop_after(patch, stop_at)
        with pytest.raises(Interrupted):
            graft.train(data, backbone=str(backbone), out=run, **quiet, **settings)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["epoch"] == stop_at
    graft.train(data, resume=run, **quiet)
    return run, ref


def _assert_same_history_and_weights(run: Path, ref: Path):
    import csv

    def rows(path):
        with open(path / "history.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]

    got, want = rows(run), rows(ref)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            try:
                x, y = float(a[key] or "nan"), float(b[key] or "nan")
            except ValueError:
                assert a[key] == b[key], key
                continue
            np.testing.assert_array_equal(x, y, err_msg=f"{key} of epoch {a['epoch']}")
    for a, b in zip(_weights(run), _weights(ref), strict=True):
        np.testing.assert_array_equal(a, b)


# The policies (plateau, early stop, keep-best) watch a hold-out's val_loss, and their
# scenarios were tuned with average pooling: both given, not left to the data.
POLICY_RUN = dict(
    cut="block3_pool", batch_size=8, seed=5, deterministic=True, optimizer="sgd",
    val_split=0.2, pool="avg",
)  # fmt: skip


def test_resumed_cosine_with_layer_decay_matches_uninterrupted_run(
    tmp_path, monkeypatch, digits_folder, cnn_file
):
    settings = dict(
        POLICY_RUN, strategy="finetune", epochs=6, lr=0.05, unfreeze="blocks:2",
        schedule="cosine", layer_decay=0.5,
    )  # fmt: skip
    run, ref = _interrupted_then_resumed(
        tmp_path, monkeypatch, digits_folder, cnn_file, 3, **settings
    )
    lrs = _lr_columns(ref)
    assert lrs[3][0] < lrs[0][0] and lrs[3][1] == lrs[3][0] * 0.5  # the schedule is in effect
    _assert_same_history_and_weights(run, ref)


def test_resumed_plateau_schedule_matches_uninterrupted_run(
    tmp_path, monkeypatch, digits_folder, cnn_file
):
    settings = dict(
        POLICY_RUN, strategy="finetune", epochs=8, lr=0.05, finetune_lr=0.05, schedule="plateau"
    )
    settings["optimizer"] = "adam"
    # The scenario (a plateau within 8 epochs) is tuned on the uncached path; float16
    # cached activations shift it (resuming on the activation cache: the cosine test).
    settings["cache"] = False
    # Stopped while the plateau is one epoch into its patience.
    run, ref = _interrupted_then_resumed(
        tmp_path, monkeypatch, digits_folder, cnn_file, 5, **settings
    )
    lrs = [lr for lr, _ in _lr_columns(ref)]
    assert lrs[-1] < lrs[0]  # the plateau reduced the rate during the run
    _assert_same_history_and_weights(run, ref)


def test_resumed_early_stopping_matches_uninterrupted_run(
    tmp_path, monkeypatch, digits_folder, cnn_file
):
    settings = dict(
        POLICY_RUN, strategy="finetune", epochs=10, lr=0.05, finetune_lr=0.05, early_stop=2
    )
    settings["optimizer"] = "adam"
    # Stopped after the best epoch, one epoch into the patience (patience 2: the reference
    # stopped 2 epochs after its best), whatever epoch that is.
    run, ref = _interrupted_then_resumed(
        tmp_path, monkeypatch, digits_folder, cnn_file, lambda epochs: epochs - 1, **settings
    )
    assert 3 <= len(_history(ref)) - 1 < 10  # it stopped early, after a best epoch
    _assert_same_history_and_weights(run, ref)


@pytest.mark.parametrize("stop_at", [3, 4])
def test_resumed_precise_bn_phase_matches_uninterrupted_run(
    tmp_path, monkeypatch, digits_folder, cnn_file, stop_at
):
    """Precise BN runs after the phase, before its final checkpoint: stopped in the phase
    (3) or right after its last epoch (4), the resumed run still re-estimates BN."""
    settings = dict(
        POLICY_RUN, strategy="hybrid", epochs=2, finetune_epochs=2, lr=0.05, finetune_lr=0.05,
        unfreeze="blocks:1", train_bn=True,
    )  # fmt: skip
    run, ref = _interrupted_then_resumed(
        tmp_path, monkeypatch, digits_folder, cnn_file, stop_at, **settings
    )
    _assert_same_history_and_weights(run, ref)
