"""Progress in one style: plain lines without escape codes in a pipe (and with NO_COLOR on
a terminal), the same closing lines for a resumed run, portable run configs and the data
check's class table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMALL_CLI
from graft import progress

SRC = str(Path(__file__).resolve().parents[1] / "src")
ESCAPES = ("\x1b[", "\x08")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "CI", "TERM")}
    env.update(PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


def _graft(*args, cwd=None, **env):
    return subprocess.run(
        [sys.executable, "-m", "graft.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(**env),
        cwd=cwd,
    )


def _no_escapes(text: str):
    for code in ESCAPES:
        assert code not in text, repr(text[max(0, text.find(code) - 200) :][:400])


def test_piped_train_shows_plain_progress_without_escape_codes(tmp_path, digits_folder):
    done = _graft(
        "train",
        digits_folder,
        *SMALL_CLI,
        "--strategy",
        "feature",
        "--epochs",
        "2",
        "--val-split",  # a hold-out: Keras's epoch line shows val_accuracy
        "0.2",
        "--cache-dir",
        tmp_path / "cache",
        "--out",
        tmp_path / "run",
    )  # fmt: skip  (an empty cache: the feature pass runs Keras's predict)
    assert done.returncode == 0, done.stderr[-3000:]
    _no_escapes(done.stdout + done.stderr)
    out = done.stdout
    assert "Data check: 36/36 files (100%)" in out  # the check's progress lines
    assert "Feature cache (train): computed" in out
    assert "Epoch 2/2" in out and "val_accuracy:" in out  # Keras, one plain line per epoch
    assert "Evaluating and writing the report: done in" in out
    last = out.strip().splitlines()[-2:]
    assert "val_accuracy" in last[0] and last[1].startswith("Report: ")


def test_piped_lr_find_and_data_check_show_progress(tmp_path, digits_folder):
    done = _graft("lr-find", digits_folder, *SMALL_CLI, "--steps", "8", "--out", tmp_path / "lr")
    assert done.returncode == 0, done.stderr[-3000:]
    _no_escapes(done.stdout + done.stderr)
    assert "LR finder: 8/8 steps (100%)" in done.stdout
    assert "LR finder: 2/8 steps (25%)" in done.stdout


def _pty_run(args, **env):
    """Run the CLI with stdout and stderr on a pseudo-terminal; all it wrote."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "graft.cli", *map(str, args)],
        stdout=follower,
        stderr=follower,
        env=_env(**env),
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=120)
    os.close(leader)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}, {"CI": "true"}])
def test_no_color_dumb_terminal_and_ci_get_plain_lines_on_a_terminal(digits_folder, env):
    rc, text = _pty_run(["data", "check", digits_folder], **env)
    assert rc == 0, text
    _no_escapes(text)
    assert "Data check: 36/36 files (100%)" in text


def test_live_and_keras_verbosity(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    for name in ("NO_COLOR", "CI", "TERM"):
        monkeypatch.delenv(name, raising=False)
    assert progress.live(Tty())
    monkeypatch.setattr(sys, "stdout", Tty())
    assert progress.keras_verbosity("auto") == 1 and progress.keras_verbosity(0) == 0
    monkeypatch.setenv("NO_COLOR", "1")
    assert not progress.live(Tty())
    assert progress.keras_verbosity("auto") == 2 and progress.keras_verbosity(1) == 2
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("CI", "false")
    assert progress.live(Tty())


def test_plain_tracker_lines_and_silenced(capsys):
    with progress.track("Work", 8, "items") as bar:
        for _ in range(8):
            bar.advance()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "Work: 2/8 items (25%)",
        "Work: 4/8 items (50%)",
        "Work: 6/8 items (75%)",
        "Work: 8/8 items (100%)",
    ]
    with progress.silenced(), progress.track("Work", 8) as bar, progress.status("Report"):
        bar.advance(8)
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------ portable runs


def test_config_reproduces_a_run_from_another_directory(tmp_path, digits_folder, cnn_file):
    import yaml

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shutil.copytree(digits_folder, a / "digits")
    shutil.copy(cnn_file, a / "cnn.keras")
    args = ["--cut", "block3_pool", "--strategy", "feature", "--epochs", "1", "--batch-size", "8"]
    args += ["--val-split", "0.2"]  # compared below by the hold-out's val_accuracy
    first = _graft("train", "digits", "-b", "cnn.keras", *args, "--out", "run", cwd=a)
    assert first.returncode == 0, first.stderr[-3000:]
    config = yaml.safe_load((a / "run" / "config.yaml").read_text())
    assert config["backbone"] == str((a / "cnn.keras").resolve())
    assert config["data"]["train"] == str((a / "digits").resolve())
    assert config["as_typed"] == {"backbone": "cnn.keras", "data.train": "digits"}
    # From another directory, with no DATA: the data and backbone of the config.
    again = _graft("train", "--config", "../a/run/config.yaml", "--out", "again", cwd=b)
    assert again.returncode == 0, again.stderr[-3000:]
    second = yaml.safe_load((b / "again" / "config.yaml").read_text())
    assert second["backbone"] == config["backbone"]
    assert second["data"]["train"] == config["data"]["train"]
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (a / "run", b / "again")]
    assert metrics[0]["val_accuracy"] == metrics[1]["val_accuracy"]


# ------------------------------------------------------------------ data check per class


@pytest.fixture
def imbalanced(tmp_path, digits_folder):
    root = tmp_path / "imbalanced"
    shutil.copytree(digits_folder, root)
    for path in sorted((root / "seven").iterdir())[4:]:
        path.unlink()  # five 12, six 12, seven 4
    return root


def test_data_check_prints_class_counts_and_an_imbalance_note(imbalanced, capsys):
    from graft.cli import main

    assert main(["data", "check", str(imbalanced)]) == 0
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 2}
    assert "12" in rows["five"] and "42.9%" in rows["five"]
    assert "4" in rows["seven"] and "14.3%" in rows["seven"]
    assert "Imbalance: 'five' has 12 training images, 'seven' 4 (3.0x)" in out
    assert "--class-weight auto" in out
    assert main(["data", "check", str(imbalanced), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)  # nothing but the JSON object on stdout
    assert {r["class"]: r["train"] for r in found["classes"]} == {"five": 12, "seven": 4, "six": 12}
    assert found["imbalance"]["ratio"] == 3.0 and found["imbalance"]["smallest"] == "seven"
    assert found["usable"] == {"train": 28} and found["problems"] == {}


def test_balanced_data_has_no_imbalance_note(digits_folder, capsys):
    from graft.cli import main

    assert main(["data", "check", str(digits_folder)]) == 0
    out = capsys.readouterr().out
    assert "Imbalance" not in out and "Balanced: largest/smallest training class 1.0x" in out


def test_make_portable_keeps_names_and_urls(tmp_path, monkeypatch):
    from graft.config.paths import make_portable

    monkeypatch.chdir(tmp_path)
    (tmp_path / "none").write_text("a file named like a weights keyword")
    (tmp_path / "w.weights.h5").write_text("")
    config = {"backbone": "mobilenet_v2", "weights": "none", "cache_dir": "cache", "data": {}}
    assert make_portable(dict(config)) == {
        **config,
        "cache_dir": str(tmp_path / "cache"),
        "as_typed": {"cache_dir": "cache"},
    }
    config = {"backbone": "hf://org/model", "weights": "w.weights.h5"}
    typed = {"train": "pets", "val": None}
    found = make_portable({**config, "data": {"train": str(tmp_path / "pets")}}, typed)
    assert found["backbone"] == "hf://org/model"
    assert found["weights"] == str(tmp_path / "w.weights.h5")
    assert found["as_typed"] == {"weights": "w.weights.h5", "data.train": "pets"}
