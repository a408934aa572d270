"""Attacks on run folders, caches and exports (issue 12, items 1-8 and 17).

Each test drives ``graft`` the way an attacker (or an unlucky user) would: a tampered
run folder, a damaged cache, a hostile --out, a concurrent run, a signal, a hard death.
Each asserts the exit code, one clear error line, no traceback, and that nothing was lost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest
import yaml

from conftest import IMAGE, conv_block, one_error_line
from graft import cli
from graft.runs import layout
from graft.runs import status as run_status

SRC = str(Path(__file__).resolve().parents[1] / "src")
_CACHED: list[Path] = []  # the cache entries the finished run wrote


def _train_args(data, cnn_file, out, cache):
    return [
        "train", str(data), "-b", str(cnn_file), "--cut", "block3_pool", "--epochs", "1",
        "--finetune-epochs", "1", "--batch-size", "8", "--seed", "1", "--val-split", "0.2",
        "--cache-dir", str(cache), "--out", str(out),
    ]  # fmt: skip


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


@pytest.fixture(scope="module")
def data(tmp_path_factory, digits_folder):
    """A private copy of the digits folders (tests may change it)."""
    root = tmp_path_factory.mktemp("attack-data") / "train"
    shutil.copytree(digits_folder, root)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("attack-cache")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data, cnn_file, cache_dir):
    """One completed tiny hybrid run (head on cached features, then fine-tuning)."""
    out = tmp_path_factory.mktemp("attack-runs") / "run"
    assert cli.main(_train_args(data, cnn_file, out, cache_dir)) == 0
    _CACHED[:] = sorted(cache_dir.glob("*.npy"))
    return out


def _interrupted_copy(finished, tmp_path) -> Path:
    """A copy of the finished run whose status says it was interrupted (resumable)."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    run_status.write_status(run, "interrupted")
    return run


def _edit_yaml(path, **changes):
    body = yaml.safe_load(path.read_text())
    body.update(changes)
    path.write_text(yaml.safe_dump(body))


@pytest.fixture(scope="module")
def lambda_file(tmp_path_factory):
    """A small CNN whose first layer is a Lambda (arbitrary Python code on load)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = keras.layers.Lambda(lambda t: t * 1.0, name="scale")(inputs)
    for i in (1, 2):
        x = conv_block(x, i, 8)
    outputs = keras.layers.Dense(3, activation="softmax", name="old_head")(
        keras.layers.GlobalAveragePooling2D(name="gap")(x)
    )
    path = tmp_path_factory.mktemp("attack-lambda") / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    return path


# ------------------------------------------------------------- 1: code execution


def test_1_config_yaml_cannot_enable_unsafe_loading_on_resume(
    finished, tmp_path, capsys, lambda_file
):
    run = _interrupted_copy(finished, tmp_path)
    shutil.rmtree(run / layout.CHECKPOINT_DIR)
    _edit_yaml(run / layout.CONFIG_FILE, backbone=str(lambda_file), cut="block2_pool",
               safe_mode=False)  # fmt: skip
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 2
    line = one_error_line(capsys)
    assert "Lambda" in line and "--unsafe" in line


# ------------------------------------------------------------- 2, 3: exports


def test_2_export_never_replaces_another_folders_labels(finished, tmp_path, capsys):
    other = tmp_path / "other_run"
    other.mkdir()
    (other / layout.LABELS_FILE).write_text('["cat", "dog"]')
    capsys.readouterr()
    code = cli.main(["export", str(finished), "--format", "keras", "--out", str(other / "x.keras")])
    assert code == 2
    assert "labels.json" in one_error_line(capsys)
    assert json.loads((other / layout.LABELS_FILE).read_text()) == ["cat", "dog"]
    assert not (other / "x.keras").exists()
    # Two exports of the same run into one folder agree on the labels: both are fine.
    shared = tmp_path / "shared"
    for name in ("a.keras", "b.keras"):
        assert (
            cli.main(["export", str(finished), "--format", "keras", "--out", str(shared / name)])
            == 0
        )
    labels = json.loads((shared / layout.LABELS_FILE).read_text())
    assert labels == json.loads((finished / layout.LABELS_FILE).read_text())


def test_3_savedmodel_overwrite_never_deletes_a_foreign_folder(
    finished, tmp_path, capsys, monkeypatch
):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "precious.txt").write_text("years of work")
    capsys.readouterr()
    args = ["export", str(finished), "--format", "savedmodel", "--overwrite", "--out"]
    assert cli.main([*args, str(target)]) == 2
    assert "refusing" in one_error_line(capsys)
    assert (target / "precious.txt").read_text() == "years of work"
    monkeypatch.chdir(target)  # --out . must be just as safe
    assert cli.main([*args, "."]) == 2
    assert "refusing" in one_error_line(capsys)
    assert sorted(p.name for p in target.iterdir()) == ["precious.txt"]


# ------------------------------------------------------------- 4: --overwrite


def test_4_overwrite_clears_the_old_runs_checkpoint_and_keeps_foreign_files(
    finished, tmp_path, capsys, monkeypatch, data, cnn_file, cache_dir
):
    from graft.training.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "notes.txt").write_text("mine")

    def stopped(*args, **kwargs):  # stopped before the first epoch ends
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", stopped)
    assert cli.main([*_train_args(data, cnn_file, run, cache_dir), "--overwrite"]) == 130
    assert not (run / layout.CHECKPOINT_DIR).exists()  # a resume cannot pick up the old run
    assert not (run / layout.MODEL_FILE).exists() and not (run / layout.METRICS_FILE).exists()
    assert (run / "notes.txt").read_text() == "mine"
    assert json.loads((run / layout.STATUS_FILE).read_text())["status"] == "interrupted"


# ------------------------------------------------------------- 5: feature cache


def test_5_damaged_cache_entries_are_detected_and_recomputed(
    finished, tmp_path, capsys, data, cnn_file, cache_dir
):
    import numpy as np

    entries = list(_CACHED)
    assert len(entries) == 2  # train and val
    for n, path in enumerate(entries):
        raw = bytearray(path.read_bytes())
        header = len(raw) - np.load(path).nbytes
        if n == 0:  # the second half zero-filled, header intact
            half = header + (len(raw) - header) // 2
            raw[half:] = bytes(len(raw) - half)
        else:  # a few flipped bytes
            for i in range(header + 3, len(raw), 97):
                raw[i] ^= 0xFF
        path.write_bytes(bytes(raw))
    capsys.readouterr()
    assert cli.main(_train_args(data, cnn_file, tmp_path / "again", cache_dir)) == 0
    out = capsys.readouterr().out
    assert out.count("checksum does not match") == 2, out
    feature_lines = [line for line in out.splitlines() if line.startswith("Feature cache")]
    assert feature_lines and not any("reused" in line for line in feature_lines), out
    before = json.loads((finished / layout.METRICS_FILE).read_text())
    after = json.loads((tmp_path / "again" / layout.METRICS_FILE).read_text())
    assert after["val_accuracy"] == pytest.approx(before["val_accuracy"])


# ------------------------------------------------------------- 6, 7, 8: resume


def test_6_resume_after_the_data_changed_is_refused_saying_what_changed(
    tmp_path, capsys, data, cnn_file, cache_dir
):
    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    run = tmp_path / "run"
    assert cli.main(_train_args(mine, cnn_file, run, cache_dir)) == 0
    run_status.write_status(run, "interrupted")
    (mine / "five").rename(mine / "tmp")
    (mine / "six").rename(mine / "five")
    (mine / "tmp").rename(mine / "six")
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 2
    line = one_error_line(capsys)
    assert "data" in line and "'five'" in line and "'six'" in line and "'seven'" not in line


def test_7_feature_drift_after_resume_is_measured_from_the_pretrained_weights(
    finished, tmp_path, capsys
):
    run = _interrupted_copy(finished, tmp_path)
    assert cli.main(["train", "--resume", str(run)]) == 0
    before = json.loads((finished / layout.METRICS_FILE).read_text())["feature_drift"]
    after = json.loads((run / layout.METRICS_FILE).read_text())["feature_drift"]
    assert not after.get("unchanged") and after["cka"] < 1.0
    assert after["cka"] == pytest.approx(before["cka"], abs=1e-6)


def test_8_tampered_state_is_refused_not_a_completed_run(finished, tmp_path, capsys):
    run = _interrupted_copy(finished, tmp_path)
    state_path = run / layout.CHECKPOINT_DIR / layout.STATE_FILE
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, "phase_index": 99, "phase_done": False}))
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 2
    line = one_error_line(capsys)
    assert "phase_index 99" in line and "2 phase(s)" in line
    assert json.loads((run / layout.STATUS_FILE).read_text())["status"] != "completed"


def test_8_flags_given_with_resume_are_never_silently_ignored(finished, tmp_path, capsys):
    run = _interrupted_copy(finished, tmp_path)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--epochs", "7"]) == 2
    line = one_error_line(capsys)
    assert "--epochs 7" in line and "the run has 1" in line
    assert cli.main(["train", "--resume", str(run), "--overwrite"]) == 2
    assert "--overwrite" in one_error_line(capsys)


def test_8_a_second_run_on_a_locked_folder_gets_a_clear_error(
    finished, tmp_path, capsys, data, cnn_file, cache_dir
):
    run = tmp_path / "run"
    shutil.copytree(finished, run)

    def files():
        return {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != layout.LOCK_FILE}

    before = files()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, sys, time
            f = open({str(run / layout.LOCK_FILE)!r}, "a+")
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(str(os.getpid())); f.flush()
            print("locked", flush=True)
            time.sleep(120)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert cli.main([*_train_args(data, cnn_file, run, cache_dir), "--overwrite"]) == 2
        line = one_error_line(capsys)
        assert "in use by another graft process" in line and f"pid {holder.pid}" in line
        assert files() == before  # nothing touched
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------- 17: signals and deaths

_SIGTERM_IN_CACHE = """
import os, signal, sys, time
from graft.training import cache
real = cache.compute
def compute(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)
    return real(*args, **kwargs)
cache.compute = compute
from graft import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_17_sigterm_during_the_feature_cache_build_leaves_interrupted(tmp_path, data, cnn_file):
    run = tmp_path / "run"
    args = _train_args(data, cnn_file, run, tmp_path / "cache")
    proc = subprocess.run(
        [sys.executable, "-c", _SIGTERM_IN_CACHE, *args],
        env=_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr and "SIGTERM" in proc.stderr
    status = json.loads((run / layout.STATUS_FILE).read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"


def test_17_a_hard_death_reads_as_interrupted_and_resume_says_so(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status = json.loads((run / layout.STATUS_FILE).read_text())
    (run / layout.STATUS_FILE).write_text(
        json.dumps({**status, "status": "running", "pid": dead.pid})
    )
    read = run_status.read_status(run)
    assert read["status"] == "interrupted" and read["died"] and str(dead.pid) in read["error"]
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 0
    assert f"pid {dead.pid}) died" in capsys.readouterr().out


def test_17_a_run_that_failed_before_training_does_not_block_the_same_command(
    tmp_path, capsys, data, cnn_file, cache_dir
):
    run = tmp_path / "run"
    args = _train_args(data, cnn_file, run, cache_dir)
    args[args.index("block3_pool")] = "no_such_layer"
    capsys.readouterr()
    assert cli.main(args) == 2
    first = one_error_line(capsys)
    assert "no_such_layer" in first
    assert cli.main(args) == 2  # the same error again, not "already exists"
    assert one_error_line(capsys) == first


def test_signals_are_restored_after_a_run(finished):
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _dead_running_copy(finished, tmp_path) -> tuple[Path, int]:
    """A copy of the finished run whose status.json says running, by a process now gone."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / layout.STATUS_FILE).write_text(json.dumps({"status": "running", "pid": dead.pid}))
    return run, dead.pid


def test_17_report_tells_a_dead_running_run_is_interrupted(finished, tmp_path, capsys):
    run, pid = _dead_running_copy(finished, tmp_path)
    capsys.readouterr()
    assert cli.main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"Status: interrupted (the process that ran it (pid {pid})" in out
    assert f"graft train --resume {run}" in out
    assert "Status: interrupted" in (run / layout.REPORT_FILE).read_text()
    (run / layout.METRICS_FILE).unlink()  # died before its end: no report to regenerate
    assert cli.main(["report", str(run)]) == 2
    assert "has no report yet. Status: interrupted" in one_error_line(capsys)


def test_16_resume_with_an_unparsable_status_json_is_one_line(finished, tmp_path, capsys):
    run = _interrupted_copy(finished, tmp_path)
    (run / layout.STATUS_FILE).write_text('{"status": "runn')
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 2
    line = one_error_line(capsys)
    assert "status.json is unreadable" in line and "delete" in line
