"""graft predict: batched, streamed, unreadable files skipped and reported, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import graft
from graft.reporting import predict


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_folder, cnn_file):
    out = tmp_path_factory.mktemp("predict") / "run"
    graft.train(
        digits_folder,
        str(cnn_file),
        out,
        cut="block3_pool",
        preprocess="unit",
        strategy="feature",
        epochs=10,  # cheap on cached features; enough for the head to tell images apart
        lr=1e-2,
        batch_size=8,
        verbose=0,
        log=lambda _: None,
    )
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory, digits_folder):
    """A folder of 13 readable PNGs (one in a subfolder), one corrupt PNG, and a text file."""
    root = tmp_path_factory.mktemp("to_predict")
    sources = sorted(digits_folder.rglob("*.png"))[::2][:13]
    for i, src in enumerate(sources):
        target = root / ("sub" if i == 0 else "") / f"img{i:02d}.png"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(src.read_bytes())
    (root / "broken.png").write_bytes(b"this is not a png")
    (root / "notes.txt").write_text("not an image, not even tried")
    return root


def _keras_predictions(run_dir, paths):
    model, classes = graft.load(run_dir)
    x = np.stack([np.asarray(Image.open(p).convert("RGB"), "float32") for p in paths])
    return model.predict_on_batch(x), classes


def test_csv_has_one_row_per_readable_image_in_batches(trained, images, tmp_path):
    out = tmp_path / "pred.csv"
    skipped = []
    summary = predict.predict_to_file(
        trained, [images], out, top_k=3, batch_size=4, on_skip=skipped.append
    )
    rows = list(csv.DictReader(out.open()))
    readable = sorted(str(p) for p in images.rglob("img*.png"))
    assert sorted(r["path"] for r in rows) == readable and summary.predicted == 13
    assert [s.path for s in skipped] == [str(images / "broken.png")]
    assert "not a readable image" in skipped[0].reason
    assert list(rows[0]) == [
        "path",
        "label",
        "probability",
        "label_2",
        "probability_2",
        "label_3",
        "probability_3",
    ]
    probs, classes = _keras_predictions(trained, [r["path"] for r in rows])
    assert probs.std(axis=0).max() > 1e-3  # the model tells images apart
    for row, p in zip(rows, probs):
        order = np.argsort(-p)
        assert [row["label"], row["label_2"], row["label_3"]] == [classes[i] for i in order]
        assert float(row["probability"]) == pytest.approx(p[order[0]], abs=6e-5)
        assert len(row["probability"].split(".")[1]) == predict.DECIMALS
        total = sum(float(row[k]) for k in ("probability", "probability_2", "probability_3"))
        assert total == pytest.approx(1.0, abs=2e-4)
    assert not list(tmp_path.glob(".*.tmp"))


def test_json_output_lists_predictions_and_skipped_files(trained, images, tmp_path):
    out = tmp_path / "pred.json"
    predict.predict_to_file(
        trained, [images / "broken.png", images / "img01.png"], out, fmt="json", top_k=2
    )
    result = json.loads(out.read_text())
    assert [p["path"] for p in result["predictions"]] == [str(images / "img01.png")]
    first = result["predictions"][0]
    assert len(first["top_k"]) == 2 and first["top_k"][0]["label"] == first["label"]
    assert result["skipped"][0]["path"] == str(images / "broken.png")


def test_predict_files_is_lazy_and_keeps_order(trained, images):
    model, classes = graft.load(trained)
    paths = sorted(str(p) for p in images.rglob("img*.png"))
    consumed = []

    def files():
        for p in paths:
            consumed.append(p)
            yield p

    stream = predict.predict_files(model, classes, files(), batch_size=4)
    first = next(stream)
    # Streamed: at most the batch being predicted plus one batch decoding ahead, not all 13.
    assert first.path == paths[0] and 4 <= len(consumed) <= 9
    rest = list(stream)
    assert [p.path for p in [first, *rest]] == paths


def test_cli_predict_reports_skipped_files_on_stderr(trained, images):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "graft.cli",
            "predict",
            str(trained),
            str(images),
            "--top-k",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == 13
    assert f"skipped {images / 'broken.png'}: not a readable image" in done.stderr
    assert "predicted 13 images; skipped 1 unreadable file" in done.stderr


def test_cli_predict_errors_are_one_line(trained, images, tmp_path, capsys):
    from graft.cli import main

    assert main(["predict", str(trained), str(tmp_path / "nope.jpg")]) == 2
    assert main(["predict", str(trained), str(images), "--top-k", "0"]) == 2
    assert main(["predict", str(trained), str(tmp_path)]) == 2  # an empty folder
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        f"graft: error: No such file or folder: {tmp_path / 'nope.jpg'}.",
        "graft: error: --top-k must be at least 1. Received: --top-k 0",
        "graft: error: No images to predict. HINT: pass image files or folders holding "
        ".jpg, .jpeg, .png, .bmp, .gif, .webp files.",
    ]
