"""The pre-flight data check: every kind of bad file is found, reported, skipped, or refused."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import QUICK_CLI
from graft.cli import main
from graft.data import check as datacheck
from graft.data import pipelines
from graft.data import sources as data

NON_UTF8 = b"caf\xe9 photo.png"  # Latin-1 bytes: not valid UTF-8, and a space


def noise(seed: int, size: int = 32, tint: int | None = None) -> Image.Image:
    """A distinct RGB image (no two seeds give the same bytes)."""
    a = np.random.default_rng(seed).integers(0, 256, (size, size, 3)).astype("uint8")
    if tint is not None:
        a[..., tint] = 255
    return Image.fromarray(a)


def write_bad_folder(root: Path) -> dict[str, Path]:
    """train/{cat,dog,empty} + val/{cat,dog} with every kind of problem in train/cat."""
    train, val = root / "train", root / "val"
    for cls, tint in (("cat", 0), ("dog", 2)):
        (train / cls).mkdir(parents=True)
        (val / cls).mkdir(parents=True)
        for i in range(8):
            noise(100 * tint + i, tint=tint).save(train / cls / f"{i}.png")
        for i in range(2):
            noise(1000 + 100 * tint + i, tint=tint).save(val / cls / f"v{i}.png")
    cat = train / "cat"
    buf = io.BytesIO()
    noise(50).save(buf, "JPEG")
    (cat / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (cat / "notes.jpg").write_text("this is not an image")
    (cat / "zero.png").write_bytes(b"")
    noise(51).convert("CMYK").save(cat / "cmyk.jpg", quality=95)
    noise(52).convert("RGBA").save(cat / "rgba.png")
    gray16 = (np.arange(32 * 32).reshape(32, 32) * 60).astype("uint16")
    Image.fromarray(gray16).save(cat / "gray16.png")
    palette = noise(53).convert("P", palette=Image.ADAPTIVE, colors=8)
    palette.save(cat / "palette.gif", transparency=0)
    frames = [noise(60 + i) for i in range(3)]
    frames[0].save(cat / "anim.gif", save_all=True, append_images=frames[1:])
    noise(54, size=1).save(cat / "tiny.png")
    noise(55).save(os.fsencode(cat) + b"/" + NON_UTF8)
    (cat / "sub" / "deeper").mkdir(parents=True)
    noise(56).save(cat / "sub" / "deeper" / "NESTED.PNG")
    (cat / ".DS_Store").write_bytes(b"\x00junk")
    (cat / "Thumbs.db").write_bytes(b"\x00junk")
    (cat / ".hidden.png").write_bytes(b"")
    (train / "empty").mkdir()
    noise(57).save(train / "stray.jpg")
    shutil.copy(cat / "1.png", cat / "dup1.png")  # duplicate inside train
    shutil.copy(cat / "0.png", val / "cat" / "leak.png")  # leakage train -> val
    return {"train": train, "val": val}


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return write_bad_folder(tmp_path_factory.mktemp("bad"))


def test_scan_counts_nested_and_ignores_junk(bad):
    files = data.load_source(bad["train"])
    names = {os.path.basename(p) for p in files.paths}
    assert files.classes == ["cat", "dog"]  # the empty folder is no class
    assert "NESTED.PNG" in names  # nested subfolder, upper-case extension
    assert os.fsdecode(NON_UTF8) in names
    assert not {".DS_Store", "Thumbs.db", ".hidden.png", "stray.jpg"} & names
    assert files.counts() == {"cat": 20, "dog": 8}
    kinds = {p.kind: p.where for p in files.problems}
    assert kinds["empty_class"].endswith("empty") and kinds["outside_class"].endswith("stray.jpg")


def test_check_finds_every_kind(bad):
    report = datacheck.check(
        data.load_source(bad["train"]), data.load_source(bad["val"], ["cat", "dog"])
    )
    found = {
        kind: [os.path.basename(w) for w, _ in items] for kind, items in report.problems.items()
    }
    assert found["unreadable"] == ["truncated.jpg"]
    assert found["not_image"] == ["notes.jpg"]
    assert found["empty_file"] == ["zero.png"]
    assert found["too_small"] == ["tiny.png"]
    assert found["outside_class"] == ["stray.jpg"]
    assert found["empty_class"] == ["empty"]
    assert found["duplicate"] == ["dup1.png"]
    assert found["leakage"] == ["leak.png"]
    assert found["animated"] == ["anim.gif"]
    assert sorted(found["converted"]) == [
        "anim.gif",
        "cmyk.jpg",
        "gray16.png",
        "palette.gif",
        "rgba.png",
    ]
    details = dict((os.path.basename(w), d) for w, d in report.problems["converted"])
    assert "CMYK" in details["cmyk.jpg"] and "16-bit" in details["gray16.png"]
    assert "transparency" in details["palette.gif"] and "RGBA" in details["rgba.png"]
    # Usable data: bad files and the leaked validation copy are gone, the rest stays.
    assert report.splits["train"].counts() == {"cat": 16, "dog": 8}
    assert report.splits["val"].counts() == {"cat": 2, "dog": 2}
    assert report.skipped == 5 and report.count("converted") == 5


def test_data_check_command_reports_each_problem(bad, capsys):
    assert main(["data", "check", str(bad["train"]), "--val", str(bad["val"])]) == 0
    out = capsys.readouterr().out
    for needle in (
        "1 unreadable",
        "truncated.jpg",
        "1 zero-byte files",
        "zero.png",
        "not images",
        "notes.jpg",
        "smaller than 2x2 px (min_size=2)",  # the default skips only degenerate images
        "tiny.png (1x1)",
        "outside class folders",
        "1 exact duplicate images within a split",
        "dup1.png",
        "1 exact duplicates across train/validation/test (leakage)",
        "leak.png",
        "5 images converted to the backbone's channels",
        "animated GIFs",
        "without usable images",
    ):
        assert needle in out, (needle, out)


def test_strict_check_is_one_line_exit_2(bad, capsys):
    assert main(["data", "check", str(bad["train"]), "--strict"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--strict" in err[0] and "unreadable" in err[0], err


def test_strict_passes_clean_data_with_converted_images(tmp_path, capsys):
    for cls, tint in (("a", 0), ("b", 1)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            noise(10 * tint + i, tint=tint).save(tmp_path / cls / f"{i}.png")
    noise(99).convert("L").save(tmp_path / "a" / "gray.png")  # converted: not a problem
    assert main(["data", "check", str(tmp_path), "--strict"]) == 0
    assert "1 images converted" in capsys.readouterr().out


def test_min_size_option(bad, capsys):
    main(["data", "check", str(bad["train"]), "--min-size", "40"])
    assert "smaller than 40x40" in capsys.readouterr().out  # every 32-px image is too small


def test_decompression_bomb_limit(tmp_path):
    noise(1, size=40).save(tmp_path / "big.png")
    result = datacheck.check_file(str(tmp_path / "big.png"), max_pixels=1000)
    assert result.kind == "too_large" and result.detail == "40x40"
    assert datacheck.check_file(str(tmp_path / "big.png")).kind is None


def test_train_skips_bad_files_and_finishes(bad, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["train", str(bad["train"]), "--val", str(bad["val"]), *QUICK_CLI, "--out", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Data check:" in captured.out and "skipped" in captured.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_images"] == 24 and metrics["val_images"] == 4
    assert metrics["data_check"]["unreadable"] == 1 and metrics["data_check"]["leakage"] == 1
    assert json.loads((out / "labels.json").read_text()) == ["cat", "dog"]


def test_train_strict_fails_before_writing_anything(bad, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(bad["train"]), *QUICK_CLI, "--strict", "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "--strict" in err[0]
    assert not (out / "model.keras").exists()


def _solid(color, size=(12, 10)):
    return Image.new("RGB", size, color)


CONVERSIONS = {
    # name: (writer, tolerance against Pillow's own RGB conversion)
    "cmyk.jpg": (lambda p: _solid((200, 30, 60)).convert("CMYK").save(p, quality=100), 3),
    "rgba.png": (lambda p: Image.new("RGBA", (12, 10), (10, 200, 30, 80)).save(p), 0),
    "gray.png": (lambda p: _solid((90, 90, 90)).convert("L").save(p), 0),
    "palette_trns.png": (
        lambda p: _solid((0, 120, 250)).convert("P").save(p, transparency=0),
        0,
    ),
    "palette.gif": (lambda p: _solid((250, 120, 0)).convert("P").save(p), 0),
    "palette.bmp": (lambda p: _solid((30, 60, 90)).quantize(4).save(p), 0),
    "bilevel.bmp": (lambda p: _solid((255, 255, 255)).convert("1").save(p), 0),
    "webp.webp": (lambda p: _solid((40, 50, 60)).save(p, lossless=True), 0),
}


def test_converted_images_decode_to_the_right_pixels(tmp_path):
    """Every mode the check converts must reach the pipeline as the right RGB pixels."""
    (tmp_path / "x").mkdir()
    expected = {}
    for name, (write, tol) in CONVERSIONS.items():
        write(tmp_path / "x" / name)
        expected[name] = (np.asarray(Image.open(tmp_path / "x" / name).convert("RGB")), tol)
    ramp = (np.arange(12 * 10).reshape(10, 12) * 500).astype("uint16")
    Image.fromarray(ramp).save(tmp_path / "x" / "gray16.png")
    expected["gray16.png"] = (np.repeat((ramp >> 8).astype("uint8")[..., None], 3, -1), 1)
    frames = [_solid((255, 0, 0)), _solid((0, 0, 255))]
    frames[0].save(tmp_path / "x" / "anim.gif", save_all=True, append_images=frames[1:])
    expected["anim.gif"] = (np.asarray(frames[0]), 0)
    files = data.load_source(tmp_path)
    report = datacheck.check(files, min_size=1)
    assert report.skipped == 0
    usable = report.splits["train"]
    ds = pipelines.pipeline(usable, (10, 12), batch_size=1)
    for path, (image, _) in zip(files.paths, ds):
        want, tol = expected[os.path.basename(path)]
        got = np.round(image.numpy()[0]).astype(int)
        assert np.abs(got - want.astype(int)).max() <= tol, os.path.basename(path)


def test_non_utf8_and_space_names_stream(bad):
    files = data.load_source(bad["train"])
    index = [i for i, p in enumerate(files.paths) if os.fsencode(p).endswith(NON_UTF8)]
    one = files.subset(index)
    (image, label), *_ = pipelines.pipeline(one, (32, 32), batch_size=1)
    want = np.asarray(noise(55), dtype=float)
    assert np.abs(image.numpy()[0] - want).max() < 1e-3 and int(label[0]) == 0
    assert "caf\N{REPLACEMENT CHARACTER} photo.png" in data.display(one.paths[0])
