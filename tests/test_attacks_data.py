"""Hostile data, names and run folders (issue 12, items 9-16, 18, 19), driven like the attacks.

Each test drives the CLI the way the attack did and asserts: the exit code, one clear
line (no traceback), and that nothing is lost or silently altered.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from graft import cli

HOSTILE = ("$\\badcmd$", "<script>alert(1)", "=SUM(1+1)")
TRAIN = ["--cut", "block3_pool", "--strategy", "feature", "--epochs", "1", "--batch-size", "8"]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in _lines(err) if line.startswith("graft: error")]
    assert len(lines) == 1, err
    return lines[0]


def _write_images(folder, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")


def _unblock_later(fifo, seconds: float = 20.0) -> None:
    """If a reader still blocks on ``fifo`` after ``seconds``, open its write end so the
    (unfixed) code under test gets EOF instead of hanging the test session forever."""

    def unblock():
        time.sleep(seconds)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    threading.Thread(target=unblock, daemon=True).start()


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, digits, cnn_file):
    """A run trained (through the CLI) on classes named to break mathtext, HTML and CSV."""
    x, y = digits
    root = tmp_path_factory.mktemp("hostile")
    for name, digit in zip(HOSTILE, (5, 6, 7)):
        _write_images(root / "data" / name, x[np.flatnonzero(y == digit)[:6]])
    out = root / "run"
    # a hold-out (one image a class): the report's evaluation sections show the names
    args = ["train", str(root / "data"), "-b", str(cnn_file), *TRAIN, "--val-split", "0.2"]
    return cli.main([*args, "--out", str(out)]), out, root / "data"


# --- 9: CSV labels are kept exact or refused, never altered -------------------------------


def test_csv_labels_with_quoted_newline_or_line_separator_are_refused_not_altered(
    tmp_path, capsys, digits_folder
):
    from graft.data.sources import load_source

    images = sorted(digits_folder.rglob("*.png"))
    rows = [
        ["path", "label"],
        [str(images[0]), "cat\ndog"],  # a quoted newline inside the label
        [str(images[1]), "bird\u2028fish"],  # U+2028, a line break to str.splitlines()
        [str(images[2]), "a,b"],  # a quoted comma: kept exactly
        [str(images[3]), "plain"],
    ]
    manifest = tmp_path / "labels.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    files = load_source(manifest)
    assert files.classes == ["a,b", "plain"]  # no label cut at the line break
    assert [p.kind for p in files.problems] == ["csv_bad_line", "csv_bad_line"]
    assert [p.where.rsplit(":", 1)[1] for p in files.problems] == ["2", "4"]  # record starts
    assert cli.main(["data", "check", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "2 usable, 2 skipped" in out and "line break" in out


# --- 10: FIFOs, devices and huge images never hang or fill memory ------------------------


def test_fifo_and_dev_zero_link_in_a_class_folder_are_skipped_not_read(
    tmp_path, capsys, digits_folder
):
    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    fifo = data / "five" / "pipe.png"
    os.mkfifo(fifo)
    (data / "six" / "zero.png").symlink_to("/dev/zero")
    _unblock_later(fifo)
    start = time.perf_counter()
    assert cli.main(["data", "check", str(data)]) == 0
    assert time.perf_counter() - start < 15  # never waited on the FIFO
    out = capsys.readouterr().out
    assert "2 skipped" in out
    assert "not a regular file (a FIFO)" in out
    assert "not a regular file (a character device)" in out


def test_predict_skips_a_fifo_and_an_image_over_the_pixel_limit(
    hostile_run, tmp_path, capsys, monkeypatch
):
    _, run, data = hostile_run
    images = tmp_path / "images"
    images.mkdir()
    good = next(data.rglob("*.png"))
    shutil.copy(good, images / "ok.png")
    Image.new("RGB", (64, 64)).save(images / "big.png")  # 4096 px: over the limit set below
    fifo = images / "pipe.png"
    os.mkfifo(fifo)
    _unblock_later(fifo)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 32x32 passes, 64x64 does not
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(run), str(images), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "big.png: image too large" in err
    assert "pipe.png: not a regular file (a FIFO)" in err
    rows = list(csv.reader(out.open(newline="")))
    assert [r[0] for r in rows[1:]] == [str(images / "ok.png")]


# --- 11: an empty validation split -------------------------------------------------------


@pytest.mark.parametrize("cache", ["--cache", "--no-cache"])
def test_one_image_per_class_trains_without_validation(tmp_path, capsys, digits, cnn_file, cache):
    x, y = digits
    for name, digit in (("a", 1), ("b", 2)):
        _write_images(tmp_path / "data" / name, x[np.flatnonzero(y == digit)[:1]])
    out = tmp_path / "run"
    args = ["train", str(tmp_path / "data"), "-b", str(cnn_file), *TRAIN, "--val-split", "0.2"]
    assert cli.main([*args, cache, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "leaves no validation images" in captured.out + captured.err
    assert (out / "model.keras").is_file() and (out / "report.html").is_file()


# --- 12 + 18: hostile class names: mathtext, HTML, Markdown, spreadsheet formulas --------


def test_class_names_with_mathtext_html_and_formulas_finish_the_run(hostile_run, capsys):
    code, run, _ = hostile_run
    assert code == 0
    assert (run / "report.html").is_file() and (run / "plots" / "confusion_matrix.png").is_file()
    assert cli.main(["report", str(run)]) == 0  # and a regenerated report too
    card = (run / "MODEL_CARD.md").read_text("utf-8")
    assert "<script>" not in card and "&lt;script&gt;alert(1)" in card
    assert "<script>" not in (run / "report.html").read_text("utf-8")


def test_report_html_escapes_every_metrics_field_of_a_tampered_run(hostile_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(hostile_run[1], run)
    metrics = json.loads((run / "metrics.json").read_text("utf-8"))
    payload = "<img src=x onerror=alert(1)>"
    metrics.update(train_images=payload, val_images=payload)
    metrics["evaluation"]["images"] = payload
    (run / "metrics.json").write_text(json.dumps(metrics), "utf-8")
    assert cli.main(["report", str(run)]) == 0
    html = (run / "report.html").read_text("utf-8")
    assert "<img src=x" not in html and html.count("&lt;img src=x") == 3


def test_predictions_csv_neutralises_formulas_and_keeps_non_utf8_names(
    hostile_run, tmp_path, capsysbinary
):
    _, run, data = hostile_run
    images = tmp_path / "images"
    images.mkdir()
    source = next((data / "=SUM(1+1)").glob("*.png")).read_bytes()
    odd = os.fsencode(images) + b"/caf\xe9.png"  # Latin-1 name: not valid UTF-8
    with open(odd, "wb") as handle:
        handle.write(source)
    (images / "=1+2.png").write_bytes(source)
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(run), str(images), "--out", str(out), "--top-k", "3"]) == 0
    assert b"Traceback" not in capsysbinary.readouterr().err
    raw = out.read_bytes()
    assert odd in raw  # the exact file name, byte for byte
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8", "surrogateescape"), newline="")))
    assert len(rows) == 3
    cells = [c for row in rows[1:] for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")], cells
    assert "'=SUM(1+1)" in cells and f"'{images}/=1+2.png" not in cells  # path: absolute
    assert cli.main(["predict", str(run), str(images)]) == 0  # stdout: no UnicodeEncodeError
    captured = capsysbinary.readouterr()
    assert b"Traceback" not in captured.err and odd in captured.out


# --- 13: converted BMPs live as long as they are read -------------------------------------


def test_evaluate_and_report_read_grayscale_palette_and_1bit_bmps(hostile_run, tmp_path, capsys):
    _, run, data = hostile_run
    bmps = tmp_path / "bmps"
    for name in HOSTILE:
        (bmps / name).mkdir(parents=True)
        for i, (path, mode) in enumerate(zip(sorted((data / name).glob("*.png")), "LP1")):
            Image.open(path).convert(mode).save(bmps / name / f"{i}.bmp")
    assert cli.main(["evaluate", str(run), str(bmps)]) == 0, capsys.readouterr().err
    assert "9 images" in capsys.readouterr().out
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert cli.main(["report", str(copy), "--data", str(bmps)]) == 0, capsys.readouterr().err


# --- 15: every phase's spec is checked before the first epoch -----------------------------


@pytest.mark.parametrize("spec", ["blocks:999", "from:nonexistent"])
def test_unfreeze_spec_is_refused_before_the_first_epoch(
    tmp_path, capsys, digits_folder, cnn_file, spec
):
    out = tmp_path / "run"
    args = ["train", str(digits_folder), "-b", str(cnn_file), "--cut", "block3_pool"]
    args += ["--strategy", "hybrid", "--epochs", "1", "--finetune-epochs", "1"]
    args += ["--batch-size", "8", "--unfreeze", spec, "--out", str(out)]
    assert cli.main(args) == 2
    line = _one_error_line(capsys)
    assert spec.split(":")[1] in line and "phase 2" in line
    assert not (out / "checkpoint" / "state.json").exists()  # not one epoch trained


# --- 16: damaged inputs are one clear line with exit 2 ------------------------------------


def test_wrong_types_in_a_config_file_are_one_line(tmp_path, capsys, digits_folder):
    config = tmp_path / "config.yaml"
    for body, name in (("epochs: ten\n", "epochs"), ("dropout: [1]\n", "dropout")):
        config.write_text(body, "utf-8")
        args = ["train", str(digits_folder), "-b", "x.keras", "--config", str(config)]
        assert cli.main([*args, "--out", str(tmp_path / "run")]) == 2
        line = _one_error_line(capsys)
        assert f"{name}=" in line or f"--{name}" in line, line
    from graft.config.settings import TrainConfig
    from graft.errors import GraftError

    with pytest.raises(GraftError, match="epochs must be an integer"):
        TrainConfig(backbone="x", epochs="ten")


def test_damaged_run_folders_and_truncated_models_are_named(hostile_run, tmp_path, capsys):
    _, run, data = hostile_run
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "status.json").write_text('{"status": "interrupted"}', "utf-8")
    (broken / "config.yaml").write_text("- just\n- a list\n", "utf-8")
    assert cli.main(["train", "--resume", str(broken)]) == 2
    assert "config.yaml is damaged" in _one_error_line(capsys)
    shutil.copy(run / "config.yaml", broken / "config.yaml")
    (broken / "checkpoint").mkdir(exist_ok=True)
    (broken / "checkpoint" / "state.json").write_text('{"epoch": 1}', "utf-8")
    assert cli.main(["train", "--resume", str(broken)]) == 2
    line = _one_error_line(capsys)  # named, whichever check catches it first
    assert "state.json" in line and ("is damaged" in line or "does not fit this run" in line)
    model = (run / "model.keras").read_bytes()
    (broken / "model.keras").write_bytes(model[: len(model) // 2])
    assert cli.main(["predict", str(broken), str(next(data.rglob("*.png")))]) == 2
    line = _one_error_line(capsys)
    assert "corrupt or truncated" in line and "not found" not in line.lower()


def test_full_disk_during_savedmodel_export_is_one_line(hostile_run, tmp_path, capsys, monkeypatch):
    import keras
    import tensorflow as tf

    def full(*args, **kwargs):
        message = "/x/variables.data-00000-of-00001; No space left on device"
        raise tf.errors.ResourceExhaustedError(None, None, message)

    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", full)
    args = ["export", str(hostile_run[1]), "--format", "savedmodel"]
    assert cli.main([*args, "--out", str(tmp_path / "sm")]) == 2
    assert "No space left" in _one_error_line(capsys)
    assert not list(tmp_path.iterdir())  # no half-written export left behind


# --- 19: artifacts follow the umask --------------------------------------------------------


def test_artifacts_are_created_with_the_umask_not_0600(hostile_run):
    _, run, _ = hostile_run
    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    for name in ("model.keras", "report.html", "metrics.json", "labels.json", "MODEL_CARD.md"):
        assert (run / name).stat().st_mode & 0o777 == expected, name
    assert (run / "plots" / "training_curves.png").stat().st_mode & 0o777 == expected
