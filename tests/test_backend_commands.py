"""graft probe, lr-find, compare and demo on any backend (slice 2c of the any-backend plan).

Marked ``backend``: the default (TensorFlow) suite runs them, and CI runs them again with
``KERAS_BACKEND=jax`` in a TensorFlow-free venv, where they read images with the Pillow
recipe (:mod:`graft.data.decode`) and :mod:`graft.data.neutral`'s batches. Every command
runs through the CLI in a subprocess on the venv's backend, on the 36 digits images and
the tiny CNN of ``conftest`` at 32 px, and the test checks what it wrote.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.backend

BACKEND = keras.backend.backend()
LIBRARY = "tf.io" if BACKEND == "tensorflow" else "pillow"


def _cli(*args, env=None, code=None):
    """Run ``graft ARGS`` (or ``python -c CODE ARGS``) in a subprocess on this backend."""
    environ = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    head = ["-c", code] if code else ["-m", "graft.cli"]
    cmd = [sys.executable, *head, *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=environ)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_probe_images_are_the_recipe_s_arrays(digits_folder):
    """What the probe scores: every image decoded by this backend's recipe (the 32 px PNGs
    need no resize, so tf.io and Pillow give the same arrays)."""
    from graft.api.transfer import labelled_images
    from graft.data import decode
    from graft.data.sources import load_source

    images, labels, classes = labelled_images(digits_folder, (32, 32), 3)
    found = load_source(digits_folder)
    assert images.shape == (36, 32, 32, 3) and images.dtype == np.float32
    assert classes == ["five", "seven", "six"] and np.bincount(labels).tolist() == [12] * 3
    for got, path in zip(images, found.paths, strict=True):
        np.testing.assert_array_equal(got, decode.load(path, (32, 32), 3), err_msg=str(path))


def test_cli_probe_runs_on_this_backend(digits_folder, cnn_file, tmp_path):
    out = tmp_path / "probe"
    done = _cli("probe", digits_folder, "--backbone", cnn_file, "--preprocess", "unit",
                "--out", out)  # fmt: skip
    record = json.loads((out / "metrics" / "probe.json").read_text())
    assert record["images"] == 36 and record["classes"] == ["five", "seven", "six"]
    assert record["scaling"] == "unit" and record["scaling_how"] == "given"
    cuts = {c["cut"] for c in record["candidates"]}
    assert {"block1_pool", "block2_pool"} <= cuts, cuts
    assert record["cut"] in cuts and record["pool"]
    scores = [c["mean"] for c in record["candidates"] if c.get("mean") is not None]
    assert len(scores) >= 8 and all(0.0 <= s <= 1.0 for s in scores), record["candidates"]
    # Digits are easy for the shallow cuts of even an untrained CNN: well above chance (1/3).
    assert max(scores) > 0.6, scores
    with Image.open(out / "plots" / "transferability.png") as png:
        assert png.format == "PNG"
    assert "← chosen" in done.stdout and f"Wrote {out / 'metrics' / 'probe.json'}" in done.stdout


def test_repeated_reader_cycles_the_epoch_s_batches():
    """The LR finder's endless reader: pass after pass of the current epoch's order."""
    from graft.data import neutral

    x = np.arange(10, dtype="float32").reshape(10, 1)
    batches = neutral.array_batches(x, np.arange(10), batch_size=4, shuffle=True, seed=7)
    batches.set_epoch(3)
    endless = batches.repeat()
    assert endless.num_batches is None
    seen = np.concatenate([endless[i][1] for i in range(9)])
    one_pass = np.concatenate([batches[i][1] for i in range(3)])
    np.testing.assert_array_equal(seen, np.tile(one_pass, 3))


def test_cli_lr_find_runs_on_this_backend(digits_folder, cnn_file, tmp_path):
    """The finder reads the training batches endlessly (``neutral.Repeated`` off TF)."""
    out = tmp_path / "lr"
    done = _cli("lr-find", digits_folder, "--backbone", cnn_file, "--cut", "block3_pool",
                "--batch-size", "8", "-o", out)  # fmt: skip
    with open(out / "lr_find.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert 10 <= len(rows) <= 100, len(rows)  # 100 steps, or fewer once the loss blew up
    steps = [int(r["step"]) for r in rows]
    lrs = [float(r["lr"]) for r in rows]
    assert steps == list(range(1, len(rows) + 1))
    assert lrs[0] == pytest.approx(1e-7) and all(b > a for a, b in zip(lrs, lrs[1:]))
    assert all(math.isfinite(float(r["loss"])) for r in rows[:10])
    # The first loss is about ln(3): a fresh head on three classes.
    assert 0.5 < float(rows[0]["loss"]) < 2.0, rows[0]
    with Image.open(out / "lr_find.png") as png:
        assert png.format == "PNG"
    line = next(x for x in done.stdout.splitlines() if x.startswith("Suggested lr"))
    suggested = float(line.rsplit(" ", 1)[1])
    assert lrs[0] <= suggested <= lrs[-1], (suggested, lrs[-1])


def test_cli_compare_runs_on_this_backend(digits_folder, cnn_file, tmp_path):
    out = tmp_path / "cmp"
    done = _cli("compare", digits_folder, "-b", cnn_file, "--cut", "block3_pool",
                "--strategies", "feature,finetune", "--unfreeze", "all",
                "--finetune-lr", "0.01", "--epochs", "1", "--head", "", "--batch-size", "16",
                "--val-split", "0.2", "-o", out)  # fmt: skip
    with open(out / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["strategy"] for r in rows] == ["feature", "finetune"]
    splits = set()
    for row in rows:
        run = out / row["strategy"]
        metrics = json.loads((run / "metrics.json").read_text())
        assert float(row["val_accuracy"]) == metrics["val_accuracy"]
        assert float(row["feature_drift_cka"]) == metrics["feature_drift"]["cka"]
        splits.add((metrics["train_images"], metrics["val_images"]))
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["decode"]["library"] == LIBRARY
        assert f"backend: {BACKEND}" in (run / "config.yaml").read_text()
        assert row["strategy"] in done.stdout
    assert splits == {(30, 6)}  # the same split for every row
    by_name = {r["strategy"]: r for r in rows}
    assert float(by_name["feature"]["feature_drift_cka"]) == 1.0
    assert float(by_name["finetune"]["feature_drift_cka"]) < 1.0
    assert (out / "compare.md").read_text().startswith("| strategy | val_accuracy |")
    with Image.open(out / "compare.png") as png:
        assert png.format == "PNG"


#: ``graft demo --quick`` with one strategy, on a stand-in for the demo's backbone put in
#: its cache (pre-training it is a minute of plain ``model.fit`` on arrays).
_DEMO = (
    "import sys\n"
    "from graft.api import demo\n"
    "demo.MODES['quick'] = dict(demo.MODES['quick'], strategies=('feature',))\n"
    "path = demo.cache_dir() / f'demo-digits-0to4-v{demo.BACKBONE_VERSION}.keras'\n"
    "path.parent.mkdir(parents=True, exist_ok=True)\n"
    "demo.build_source_model(5).save(path)\n"
    "from graft.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_cli_demo_runs_on_this_backend(tmp_path):
    out = tmp_path / "demo"
    env = {"GRAFT_CACHE": str(tmp_path / "cache")}
    done = _cli("demo", "--quick", "--out", out, env=env, code=_DEMO)
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["labels_per_class"], r["strategy"]) for r in rows] == [("2", "feature")]
    assert 0.0 <= float(rows[0]["test_accuracy"]) <= 1.0
    assert len(list((out / "data" / "test").rglob("*.png"))) == 886
    config = yaml.safe_load((out / "feature_2" / "config.yaml").read_text())
    assert config["decode"]["library"] == LIBRARY
    assert (out / "feature_2" / "report.html").is_file()
    assert "| 2 | feature |" in (out / "results.md").read_text()
    assert "feature" in done.stdout and "results.md" in done.stdout


def test_cli_train_lr_auto_runs_on_this_backend(digits_folder, cnn_file, tmp_path):
    """``--lr auto``: the finder runs on the first phase (the head of lp-ft) on this
    backend's reader, and that phase trains at its suggestion."""
    out = tmp_path / "auto"
    _cli("train", digits_folder, "--backbone", cnn_file, "--cut", "block3_pool",
         "--strategy", "lp-ft", "--lr", "auto", "--epochs", "1", "--batch-size", "8",
         "-o", out)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    config = yaml.safe_load((out / "config.yaml").read_text())
    suggested = metrics["lr_find"]["suggestion"]
    assert 1e-7 <= suggested <= 10 and config["lr"] == suggested
    with open(out / "lr_find.csv", newline="") as handle:
        lrs = [float(r["lr"]) for r in csv.DictReader(handle)]
    assert lrs[0] <= suggested <= lrs[-1]
    assert (out / "lr_find.png").is_file()
