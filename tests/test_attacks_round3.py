"""Attacks of issue 21 ("nothing lost, round 3"), driven through the CLI.

Each test asserts the exit code, one clear error line (no traceback) and that nothing
was lost. Resume tests start runs with *relative* paths, as the README's example does,
and resume from the same and from another working directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import one_error_line, stop_after
from graft import cli
from graft.runs import layout

#: A two-epoch feature run, interrupted (Ctrl-C) after epoch 1 by ``stop_after``.
TRAIN = [
    "train", "data/train", "-b", "models/m.keras", "--cut", "block3_pool", "--strategy",
    "feature", "--epochs", "2", "--batch-size", "8", "--seed", "1", "--out", "runs/x",
]  # fmt: skip


def _status(run: Path) -> str:
    return json.loads((run / layout.STATUS_FILE).read_text())["status"]


def _workspace(root: Path, digits_folder: Path, cnn_file: Path) -> Path:
    """``root`` with ``data/train`` (the digits as BMP: fixed-size files) and
    ``models/m.keras``, as a user's project folder."""
    for png in sorted(digits_folder.rglob("*.png")):
        target = root / "data" / "train" / png.parent.name / (png.stem + ".bmp")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").save(target)
    (root / "models").mkdir(parents=True)
    shutil.copy(cnn_file, root / "models" / "m.keras")
    return root


def _interrupt(root: Path, monkeypatch) -> str:
    """Start the relative-path run in ``root``, stopped after epoch 1; its hint."""
    monkeypatch.chdir(root)
    err = io.StringIO()
    with monkeypatch.context() as patch, contextlib.redirect_stderr(err):
        stop_after(patch, 1)
        assert cli.main(TRAIN) == 130
    assert "Traceback" not in err.getvalue(), err.getvalue()
    assert _status(root / "runs" / "x") == "interrupted"
    match = re.search(r"continue with: (graft train --resume \S+)", err.getvalue())
    assert match, err.getvalue()
    return match.group(1)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, digits_folder, cnn_file):
    """A project folder whose run ``runs/x`` was started with relative paths and
    interrupted after epoch 1, and the interrupt's own hint."""
    root = _workspace(tmp_path_factory.mktemp("round3") / "project", digits_folder, cnn_file)
    with pytest.MonkeyPatch.context() as patch:
        return root, _interrupt(root, patch)


def _copy(interrupted, tmp_path) -> Path:
    """A private copy of the project folder (its config.yaml still names the original's
    data and model by absolute path, which exist)."""
    root, _ = interrupted
    copy = tmp_path / "project"
    shutil.copytree(root, copy)
    return copy


# ------------------------------------------------------------- 1: relative paths


def test_1_the_interrupt_hint_resumes_a_run_started_with_relative_paths(
    interrupted, tmp_path, monkeypatch, capsys
):
    _, hint = interrupted
    assert hint == "graft train --resume runs/x"
    copy = _copy(interrupted, tmp_path)
    monkeypatch.chdir(copy)
    capsys.readouterr()
    assert cli.main(hint.split()[1:]) == 0, capsys.readouterr().err
    assert _status(copy / "runs" / "x") == "completed"
    assert (copy / "runs" / "x" / layout.MODEL_FILE).is_file()


def test_1_resume_works_from_another_working_directory(interrupted, tmp_path, monkeypatch, capsys):
    copy = _copy(interrupted, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert cli.main(["train", "--resume", "../project/runs/x"]) == 0, capsys.readouterr().err
    assert _status(copy / "runs" / "x") == "completed"
    assert (copy / "runs" / "x" / layout.MODEL_FILE).is_file()


def test_1_a_hard_death_of_a_relative_run_resumes_from_its_status_hint(
    interrupted, tmp_path, monkeypatch, capsys
):
    """kill -9: status.json still says running, by a process now gone; its own
    ``resume`` line works from the project folder."""
    import subprocess
    import sys

    copy = _copy(interrupted, tmp_path)
    run = copy / "runs" / "x"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status = json.loads((run / layout.STATUS_FILE).read_text())
    (run / layout.STATUS_FILE).write_text(
        json.dumps({**status, "status": "running", "pid": dead.pid})
    )
    assert status["resume"] == "graft train --resume runs/x"
    monkeypatch.chdir(copy)
    capsys.readouterr()
    assert cli.main(status["resume"].split()[1:]) == 0, capsys.readouterr().err
    assert _status(run) == "completed"


def test_1_and_3_a_moved_project_resumes_and_changed_pixels_are_refused(
    tmp_path, monkeypatch, capsys, digits_folder, cnn_file
):
    """The run folder moved together with its data resumes (run-relative paths); the
    same files with other pixels (same names, same sizes) are refused."""
    first = _workspace(tmp_path / "first", digits_folder, cnn_file)
    _interrupt(first, monkeypatch)
    moved = tmp_path / "moved"
    monkeypatch.chdir(tmp_path)
    first.rename(moved)
    image = sorted((moved / "data" / "train" / "five").glob("*.bmp"))[0]
    original = image.read_bytes()
    stamp = image.stat()
    pixels = np.asarray(Image.open(image)).copy()
    pixels[:4] = 255 - pixels[:4]
    Image.fromarray(pixels).save(image)
    assert image.stat().st_size == stamp.st_size
    os.utime(image, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # even the mtime put back
    capsys.readouterr()
    assert cli.main(["train", "--resume", "moved/runs/x"]) == 2
    line = one_error_line(capsys)
    assert "Cannot resume" in line and "data ('five')" in line, line
    assert "backbone" not in line and "settings" not in line, line
    image.write_bytes(original)
    monkeypatch.chdir(moved / "runs")
    assert cli.main(["train", "--resume", "x"]) == 0, capsys.readouterr().err
    assert _status(moved / "runs" / "x") == "completed"
    config = (moved / "runs" / "x" / layout.CONFIG_FILE).read_text()
    assert str(moved / "data" / "train") in config


def test_1_a_checkpoint_of_the_old_fingerprint_format_is_refused_naming_it(
    interrupted, tmp_path, capsys
):
    copy = _copy(interrupted, tmp_path)
    state_path = copy / "runs" / "x" / layout.CHECKPOINT_DIR / layout.STATE_FILE
    state = json.loads(state_path.read_text())
    del state["fingerprints"]["format"]
    state_path.write_text(json.dumps(state))
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(copy / "runs" / "x")]) == 2
    line = one_error_line(capsys)
    assert "format 1" in line and "format 2" in line
    assert state_path.is_file()  # nothing lost: a graft that reads it can resume


# ------------------------------------------------------------- 2: links in a run folder


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_2_a_lock_file_link_is_refused_and_its_target_untouched(
    interrupted, tmp_path, monkeypatch, capsys, dangling
):
    copy = _copy(interrupted, tmp_path)
    run = copy / "runs" / "x"
    victim = tmp_path / "victim.txt"
    if not dangling:
        victim.write_text("years of work\n")
    (run / layout.LOCK_FILE).unlink(missing_ok=True)
    (run / layout.LOCK_FILE).symlink_to(victim)
    monkeypatch.chdir(copy)
    capsys.readouterr()
    assert cli.main(["train", "--resume", "runs/x"]) == 2
    line = one_error_line(capsys)
    assert layout.LOCK_FILE in line and "symbolic link" in line, line
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_text() == "years of work\n"
    assert (run / layout.LOCK_FILE).is_symlink()  # not removed either
    assert _status(run) == "interrupted"


def test_2_a_lock_file_with_foreign_content_or_hard_links_is_never_truncated(
    interrupted, tmp_path, monkeypatch, capsys
):
    copy = _copy(interrupted, tmp_path)
    run = copy / "runs" / "x"
    victim = tmp_path / "victim.txt"
    victim.write_text("123")
    os.link(victim, run / layout.LOCK_FILE)  # a pid-looking file with a second name
    monkeypatch.chdir(copy)
    capsys.readouterr()
    assert cli.main(["train", "--resume", "runs/x"]) == 2
    assert "hard links" in one_error_line(capsys)
    assert victim.read_text() == "123"
    (run / layout.LOCK_FILE).unlink()
    (run / layout.LOCK_FILE).write_text("my notes")
    assert cli.main(["train", "--resume", "runs/x"]) == 2
    assert "does not hold a pid" in one_error_line(capsys)
    assert (run / layout.LOCK_FILE).read_text() == "my notes"


def test_2_a_status_json_link_is_never_written_through(interrupted, tmp_path, monkeypatch, capsys):
    copy = _copy(interrupted, tmp_path)
    run = copy / "runs" / "x"
    victim = tmp_path / "victim.json"
    victim.write_text((run / layout.STATUS_FILE).read_text())
    before = victim.read_text()
    (run / layout.STATUS_FILE).unlink()
    (run / layout.STATUS_FILE).symlink_to(victim)
    monkeypatch.chdir(copy)
    capsys.readouterr()
    assert cli.main(["train", "--resume", "runs/x"]) == 2
    line = one_error_line(capsys)
    assert layout.STATUS_FILE in line and "symbolic link" in line, line
    assert victim.read_text() == before
    assert (run / layout.STATUS_FILE).is_symlink()


# ------------------------------------------------------------- 5: a zip bomb of a model


@pytest.fixture(scope="module")
def bomb(tmp_path_factory, cnn_file):
    """A real model whose ``config.json`` inflates from ~100 KB to 100 MB (deflate)."""
    import zipfile

    path = tmp_path_factory.mktemp("bomb") / "bomb.keras"
    with zipfile.ZipFile(cnn_file) as good, zipfile.ZipFile(path, "w") as out:
        for member in good.infolist():
            if member.filename != "config.json":
                out.writestr(member, good.read(member))
        info = zipfile.ZipInfo("config.json")
        info.compress_type = zipfile.ZIP_DEFLATED
        with out.open(info, "w", force_zip64=True) as handle:
            for _ in range(100):
                handle.write(b" " * (1 << 20))
    return path


def test_5_a_zip_bomb_model_is_refused_before_it_is_read(
    bomb, tmp_path, capsys, digits_folder, monkeypatch
):
    import zipfile

    with zipfile.ZipFile(bomb) as archive:
        info = archive.getinfo("config.json")
    assert info.file_size == 100 << 20 and info.compress_size < 1 << 20

    def never(*args, **kwargs):  # neither graft nor Keras may read it
        raise AssertionError("the archive was read")

    monkeypatch.setattr(zipfile.ZipFile, "read", never)
    monkeypatch.setattr(zipfile.ZipFile, "open", never)
    image = next(digits_folder.rglob("*.png"))
    commands = [
        ["predict", str(bomb), str(image)],
        ["inspect", str(bomb)],
        ["train", str(digits_folder), "-b", str(bomb), "--out", str(tmp_path / "run")],
    ]
    for args in commands:
        capsys.readouterr()
        assert cli.main(args) == 2, args
        line = one_error_line(capsys)
        assert "zip bomb" in line and "config.json" in line, line
    assert not (tmp_path / "run" / layout.MODEL_FILE).exists()


# ------------------------------------------------------------- 8 and also seen: numbers


@pytest.mark.parametrize(
    "flags, config, expected",
    [
        (["--batch-size", "1" + "0" * 29], None, "batch-size must be at most 2,147,483,647"),
        ([], "batch_size: 100000000000000000000000000000\n", "must be at most 2,147,483,647"),
        ([], "lr: .inf\n", "lr must be a finite number"),
        (["--finetune-lr", "inf"], None, "finetune-lr must be a finite number"),
    ],
    ids=["flag", "config", "lr-inf", "finetune-lr-inf"],
)
def test_8_out_of_range_numbers_are_refused_before_anything_runs(
    tmp_path, capsys, digits_folder, cnn_file, flags, config, expected
):
    args = ["train", str(digits_folder), "-b", str(cnn_file), "--cut", "block3_pool"]
    if config is not None:
        (tmp_path / "c.yaml").write_text(config)
        args += ["--config", str(tmp_path / "c.yaml")]
    capsys.readouterr()
    assert cli.main([*args, *flags, "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    assert expected in line, line
    assert not (tmp_path / "run").exists()  # no failed run folder with a useless hint


@pytest.fixture(scope="module")
def finished(interrupted, tmp_path_factory):
    """The interrupted run, resumed to its end (a completed run to read from)."""
    root, _ = interrupted
    copy = tmp_path_factory.mktemp("round3-finished") / "project"
    shutil.copytree(root, copy)
    assert cli.main(["train", "--resume", str(copy / "runs" / "x")]) == 0
    return copy / "runs" / "x"


def _env() -> dict:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


# ------------------------------------------------------------- 9: an ASCII-only stdout


def test_9_non_ascii_names_on_an_ascii_stdout_are_written_not_a_crash(
    finished, tmp_path, digits_folder
):
    import subprocess
    import sys

    data = tmp_path / "data"
    for name, source in (("café", "five"), ("naïve", "six")):
        shutil.copytree(digits_folder / source, data / name)
    env = {**_env(), "PYTHONIOENCODING": "ascii"}
    graft = [sys.executable, "-m", "graft.cli"]
    check = subprocess.run([*graft, "data", "check", str(data)], env=env, capture_output=True)
    assert check.returncode == 0, check.stderr
    assert b"Traceback" not in check.stderr and b"UnicodeEncodeError" not in check.stderr
    assert b"caf\\xe9" in check.stdout and b"na\\xefve" in check.stdout
    predict = subprocess.run(
        [*graft, "predict", str(finished), str(data / "café")], env=env, capture_output=True
    )
    assert predict.returncode == 0, predict.stderr
    assert b"UnicodeEncodeError" not in predict.stderr
    rows = predict.stdout.decode("utf-8").splitlines()
    assert len(rows) == 1 + 12, rows  # the header and every image
    assert all("café" in row for row in rows[1:])  # the names as they are, in UTF-8


# ------------------------------------------------------------- 13: the model card


def test_13_model_card_escapes_every_value_of_a_tampered_metrics_json(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    path = run / layout.METRICS_FILE
    metrics = json.loads(path.read_text())
    hostile = "<img src=x onerror=alert(1)>"
    metrics["phases"][0].update(epochs=hostile, lr="[click](javascript:alert(1))")
    metrics.update(train_images="<script>alert(1)</script>", seconds="1\n# Forged heading")
    path.write_text(json.dumps(metrics))
    capsys.readouterr()
    assert cli.main(["report", str(run)]) == 0, capsys.readouterr().err
    card = (run / layout.MODEL_CARD_FILE).read_text()
    assert "<img" not in card and "<script" not in card, card
    assert "[click](javascript" not in card and "\n# Forged" not in card, card
    assert "&lt;img src=x onerror=alert(1)&gt;" in card  # shown, inert


# ------------------------------------------------------------- 11, 12: labels


def test_11_a_csv_listing_one_file_under_two_labels_drops_it_and_says_so(
    tmp_path, capsys, digits_folder
):
    five = sorted((digits_folder / "five").glob("*.png"))
    six = sorted((digits_folder / "six").glob("*.png"))
    rows = ["path,label", *(f"{p},five" for p in five), *(f"{p},six" for p in six)]
    rows.append(f"{five[0]},six")  # the same file under another label
    rows.append(f"{six[1].parent}/./{six[1].name},six")  # the same label again: a duplicate
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    capsys.readouterr()
    assert cli.main(["data", "check", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "2 CSV lines listing one file under different labels" in out, out
    assert f"also listed as 'six' at line {len(rows) - 1}" in out, out
    counts = {
        cells[1]: int(cells[2])
        for line in out.splitlines()
        if len(cells := [c.strip() for c in re.split(r"[|│┃]", line)]) > 3 and cells[2].isdigit()
    }
    assert counts == {"five": len(five) - 1, "six": len(six) + 1}, out


def test_12_class_folders_differing_only_in_unicode_normalisation_are_refused(
    tmp_path, capsys, digits_folder
):
    data = tmp_path / "data"
    shutil.copytree(digits_folder / "five", data / "caf\u00e9")  # NFC
    shutil.copytree(digits_folder / "six", data / "cafe\u0301")  # NFD
    if len(list(data.iterdir())) != 2:
        pytest.skip("this file system normalises names itself")
    capsys.readouterr()
    assert cli.main(["data", "check", str(data)]) == 2
    line = one_error_line(capsys)
    assert "Unicode normalisation" in line and "'caf\\xe9'" in line and "'cafe\\u0301'" in line


# ------------------------------------------------------------- 7: SIGTERM while tracing

_SIGTERM_WHILE_TRACING = """
import os, signal, sys, time
from graft.training import cache
real = cache.forward_function
def forward_function(extractor, spec):
    import tensorflow as tf
    fn = real(extractor, spec)
    def body(x):  # runs while tf.function traces it
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        return fn(x)
    return tf.function(body, input_signature=[tf.TensorSpec((None, *spec.shape[1:]), spec.dtype)])
cache.forward_function = forward_function
from graft import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_7_sigterm_while_the_cache_function_is_traced_is_an_interrupt(interrupted, tmp_path):
    import subprocess
    import sys

    copy = _copy(interrupted, tmp_path)
    args = [*TRAIN[:-1], "runs/t", "--cache-dir", str(tmp_path / "cache")]  # traced afresh
    script = tmp_path / "sigterm_while_tracing.py"  # a file: autograph converts its code
    script.write_text(_SIGTERM_WHILE_TRACING)
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=copy, env=_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr and "StagingError" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("graft: error: Interrupted by SIGTERM"), proc.stderr
    status = json.loads((copy / "runs" / "t" / layout.STATUS_FILE).read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"


# ------------------------------------------------------------- 10: distributed fine-tuning

_EVERY_STRATEGY_MIRRORED = """
import json, sys
import keras
from graft import cli
from graft.training.checkpoints import Checkpointer

data, backbone, out, *names = sys.argv[1:]
common = ["-b", backbone, "--cut", "block3_pool", "--batch-size", "8", "--seed", "1",
          "--distribute", "mirrored", "--devices", "2", "--epochs", "1", "--finetune-epochs", "1"]
plans = {
    "finetune": ["--unfreeze", "all"],
    "hybrid": ["--unfreeze", "blocks:1"],
    "gradual": ["--gradual-blocks", "2", "--gradual-epochs", "1"],
}
for name, flags in ((n, plans[n]) for n in names):
    run = f"{out}/{name}"
    original = Checkpointer.save
    if name == "finetune":  # Ctrl-C after its first epoch, then resume it
        def save(self, *args, **kwargs):
            original(self, *args, **kwargs)
            if self.state.epoch == 1:
                self.stop_signal = "SIGINT"
        Checkpointer.save = save
        assert cli.main(["train", data, *common, "--strategy", name, *flags,
                         "--epochs", "2", "--out", run]) == 130, name
        Checkpointer.save = original
        assert cli.main(["train", "--resume", run]) == 0, name
    else:
        assert cli.main(["train", data, *common, "--strategy", name, *flags, "--out", run]) == 0
    status = json.load(open(f"{run}/status.json"))["status"]
    assert status == "completed", (name, status)
    keras.saving.load_model(f"{run}/model.keras")  # reloads in plain Keras
    assert cli.main(["evaluate", run, data]) == 0, name
print("ALL DONE")
"""


def _every_strategy(tmp_path, digits_folder, cnn_file, *names) -> None:
    import subprocess
    import sys

    script = tmp_path / "every_strategy.py"
    script.write_text(_EVERY_STRATEGY_MIRRORED)
    args = [str(digits_folder), str(cnn_file), str(tmp_path), *names]
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        env=_env(), capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert proc.returncode == 0 and "ALL DONE" in proc.stdout, proc.stderr[-3000:]
    assert "could not be deserialized" not in proc.stderr


def test_10_distributed_fine_tuning_completes_resumes_and_reloads(
    tmp_path, digits_folder, cnn_file
):
    _every_strategy(tmp_path, digits_folder, cnn_file, "finetune")
    history = (tmp_path / "finetune" / layout.HISTORY_FILE).read_text().splitlines()
    assert len(history) == 1 + 2  # both fine-tuning epochs, across the resume


def test_10_hybrid_and_gradual_complete_under_mirrored_and_reload(
    tmp_path, digits_folder, cnn_file
):
    _every_strategy(tmp_path, digits_folder, cnn_file, "hybrid", "gradual")


# ------------------------------------------------------------- also seen


def test_also_a_damaged_checkpoint_array_file_is_named_not_badzipfile(
    interrupted, tmp_path, capsys
):
    copy = _copy(interrupted, tmp_path)
    weights = next((copy / "runs" / "x" / layout.CHECKPOINT_DIR).glob("weights-*.npz"))
    weights.write_bytes(weights.read_bytes()[:300])
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(copy / "runs" / "x")]) == 2
    line = one_error_line(capsys)
    assert "BadZipFile" not in line and f"checkpoint file {weights}" in line, line
    assert "is damaged" in line


def _refuse_writes_under(monkeypatch, folder: Path, code: int) -> None:
    """Make every write-open under ``folder`` fail as on a read-only disk or a full one."""
    real = os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def open_(path, flags, *args, **kwargs):
        if flags & writing and str(path).startswith(str(folder)):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


def test_also_a_read_only_run_folder_is_one_line(interrupted, tmp_path, capsys, monkeypatch):
    import errno

    copy = _copy(interrupted, tmp_path)
    run = copy / "runs" / "x"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    _refuse_writes_under(monkeypatch, run, errno.EROFS)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 2
    line = one_error_line(capsys)
    assert "Errno" not in line and "OSError" not in line, line
    assert "Cannot write" in line and "Read-only file system" in line, line
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_also_the_disk_full_hint_names_the_cache_option_with_its_value(
    interrupted, tmp_path, capsys, monkeypatch
):
    import errno

    copy = _copy(interrupted, tmp_path)
    run = copy / "runs" / "x"
    (run / layout.LOCK_FILE).unlink(missing_ok=True)
    (run / layout.LOCK_FILE).write_text("")  # the lock opens; the artifacts cannot be written
    real = os.open

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(str(path)).name.startswith(".status."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 2
    line = one_error_line(capsys)
    assert "No space left" in line and "--cache-dir DIR for the cache" in line, line


def test_also_resume_after_an_edited_phase_names_the_field_once(interrupted, tmp_path, capsys):
    import yaml

    copy = _copy(interrupted, tmp_path)
    config = copy / "runs" / "x" / layout.CONFIG_FILE
    body = yaml.safe_load(config.read_text())
    body["phases"][0]["epochs"] = 3
    config.write_text(yaml.safe_dump(body, sort_keys=False))
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(copy / "runs" / "x")]) == 2
    line = one_error_line(capsys)
    assert "settings (phases[1].epochs 2 -> 3) changed" in line, line
    assert line.count("'name': 'head'") == 0


def test_2_a_checkpoint_folder_link_is_refused_before_training(interrupted, tmp_path, capsys):
    copy = _copy(interrupted, tmp_path)
    run = copy / "runs" / "x"
    elsewhere = tmp_path / "elsewhere"
    (run / layout.CHECKPOINT_DIR).rename(elsewhere)
    (run / layout.CHECKPOINT_DIR).symlink_to(elsewhere)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 2
    captured = capsys.readouterr()
    assert "Epoch 2/2" not in captured.out  # refused before training
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "symbolic link" in lines[0], lines
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before
