"""The command line contract: commands, artifacts, one-line errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMALL_CLI
from graft.cli import main

GRAFT = [sys.executable, "-m", "graft.cli"]


def _graft(*args, timeout=300):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI must stay quiet on its own
    return subprocess.run(
        [*GRAFT, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, digits_folder):
    out = tmp_path_factory.mktemp("cli") / "run"
    done = _graft(
        "train",
        digits_folder,
        *SMALL_CLI,
        "--strategy",
        "finetune",
        "--epochs",
        "2",
        "--unfreeze",
        "layers:12",
        "--out",
        out,
    )
    return out, done


def test_train_writes_every_artifact_and_stays_quiet(cli_run):
    out, done = cli_run
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("model.keras", "labels.json", "config.yaml", "history.csv", "metrics.json"):
        assert (out / name).is_file(), name
    assert "Phase 1/1 'finetune'" in done.stdout
    assert "trainable" in done.stdout and "frozen" in done.stdout
    # No TensorFlow start-up noise on the user's terminal.
    for noise in ("oneDNN", "absl::InitializeLog", "cuda", "I0000", "E0000"):
        assert noise not in done.stderr, done.stderr[:500]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["phases"][0]["spec"] == "layers:12"
    assert len(list(out.glob(".*.tmp"))) == 0  # no half-written files left behind


def test_evaluate_json(cli_run, digits_folder):
    out, _ = cli_run
    done = _graft("evaluate", out, digits_folder, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["accuracy"] <= 1.0 and result["images"] == 36


def test_verbose_shows_tensorflow_logs():
    done = _graft("--verbose", "backbones")
    assert done.returncode == 0
    assert "resnet50" in done.stdout


def _one_line_error(done, *needles):
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_data_folder(tmp_path):
    done = _graft("train", tmp_path / "nope", *SMALL_CLI, "--out", tmp_path / "r")
    _one_line_error(done, "not found", "nope")


def test_unknown_backbone(tmp_path, digits_folder):
    done = _graft("train", digits_folder, "--backbone", "resnet5O", "--out", tmp_path / "r")
    _one_line_error(done, "Unknown backbone", "resnet50")


def test_bad_unfreeze_spec(tmp_path, digits_folder):
    done = _graft(
        "train", digits_folder, *SMALL_CLI, "--unfreeze", "top:3", "--out", tmp_path / "r"
    )
    _one_line_error(done, "top:3")


def test_offline_imagenet_fails_fast_with_one_line(tmp_path, digits_folder):
    cache = tmp_path / "keras_home"  # an empty Keras cache: the weights must be downloaded
    env = {**os.environ, "KERAS_HOME": str(cache)}
    start = time.perf_counter()
    done = subprocess.run(
        [
            *GRAFT,
            "train",
            str(digits_folder),
            "--backbone",
            "mobilenet_v2",
            "--alpha",
            "0.35",
            "--image-size",
            "96",
            "--weights",
            "imagenet",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    elapsed = time.perf_counter() - start
    _one_line_error(done, "ImageNet weights", "--weights")
    assert elapsed < 60
    assert not (tmp_path / "r" / "model.keras").exists()


def test_in_process_main_returns_exit_codes(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                str(tmp_path / "missing"),
                "--backbone",
                "vgg16",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2


def test_backbones_lists_the_registry():
    done = _graft("backbones")
    assert done.returncode == 0
    for name in ("mobilenet_v2", "efficientnet_b0", "convnext_tiny", "inception_v3"):
        assert name in done.stdout
    assert "19" in done.stdout  # mobilenet_v2's block count


def test_inspect_shows_blocks(cnn_file):
    done = _graft("inspect", cnn_file, "--cut", "block3_pool", "--layers")
    assert done.returncode == 0, done.stderr[-2000:]
    for text in ("block1", "block3", "block2_conv", "32x32x3"):
        assert text in done.stdout


def test_train_on_a_user_model_file(tmp_path, digits_folder, cnn_file):
    out = tmp_path / "user"
    done = _graft(
        "train",
        digits_folder,
        "--backbone",
        cnn_file,
        "--cut",
        "block3_pool",
        "--preprocess",
        "unit",
        "--strategy",
        "hybrid",
        "--epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--unfreeze",
        "blocks:1",
        "--batch-size",
        "8",
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = (out / "config.yaml").read_text()
    assert "cut: block3_pool" in config and "preprocess: unit" in config
    assert Path(out / "model.keras").is_file()


def test_config_file_reproduces_a_run_and_flags_override(cli_run, digits_folder, tmp_path):
    import yaml

    out, _ = cli_run
    again = tmp_path / "again"
    assert (
        main(
            ["train", str(digits_folder), "--config", str(out / "config.yaml"), "--out", str(again)]
        )
        == 0
    )
    first = yaml.safe_load((out / "config.yaml").read_text())
    second = yaml.safe_load((again / "config.yaml").read_text())
    for key in ("backbone", "alpha", "image_size", "strategy", "unfreeze", "phases", "head"):
        assert second[key] == first[key], key
    # An explicit flag wins over the file, and plan flags rebuild the plan from the flags.
    third = tmp_path / "third"
    assert (
        main(
            [
                "train",
                str(digits_folder),
                "--config",
                str(out / "config.yaml"),
                "--epochs",
                "1",
                "--out",
                str(third),
            ]
        )
        == 0
    )
    config = yaml.safe_load((third / "config.yaml").read_text())
    assert config["epochs"] == 1 and config["phases"][0]["epochs"] == 1
    assert config["unfreeze"] == "layers:12" and config["backbone"] == "mobilenet_v2"


def test_missing_backbone_without_config(tmp_path, digits_folder, capsys):
    assert main(["train", str(digits_folder), "--out", str(tmp_path / "r")]) == 2
    assert "--backbone" in capsys.readouterr().err


def test_inspect_shows_the_output_shape_and_its_pooling(cnn_file):
    done = _graft("inspect", cnn_file, "--cut", "block3_pool")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        "Output (4, 4, 16); head input by default: global average pooling of (4, 4, 16) "
        "-> 16 features (--pool avg|max|avgmax|flatten)"
    ) in done.stdout
