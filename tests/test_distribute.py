"""tf.distribute: mirrored on 2 logical CPU devices, multi-worker with 2 local processes.

Each run is a ``graft train`` subprocess, since logical devices must be configured
before TensorFlow starts and each worker is its own process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from graft import cli

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env(**extra):
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env.update(extra)
    return env


def _args(data, backbone, out, *extra):
    # One batch per epoch (36 images): the order inside a batch does not change its
    # mean gradient, so one device and 2 replicas see the same steps.
    return [
        sys.executable, "-m", "graft.cli", "train", str(data), "-b", str(backbone),
        "--cut", "block3_pool", "--strategy", "feature", "--epochs", "3", "--dropout", "0",
        "--val-split", "0", "--lr", "0.001", "--seed", "1", "--out", str(out), *extra,
    ]  # fmt: skip


def _weights(run_dir: Path) -> list[np.ndarray]:
    return [np.asarray(w) for w in keras.saving.load_model(run_dir / "model.keras").weights]


def _losses(run_dir: Path) -> list[float]:
    rows = (run_dir / "history.csv").read_text().splitlines()
    column = rows[0].split(",").index("loss")
    return [float(r.split(",")[column]) for r in rows[1:]]


def test_mirrored_on_two_cpu_devices_matches_one_device(tmp_path, digits_folder, cnn_file):
    one = subprocess.run(
        _args(digits_folder, cnn_file, tmp_path / "one", "--batch-size", "36"),
        env=_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        _args(digits_folder, cnn_file, tmp_path / "two", "--batch-size", "18",
              "--distribute", "mirrored", "--devices", "2"),
        env=_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    assert "global batch 36 = 18 per replica x 2" in two.stdout
    info = json.loads((tmp_path / "two" / "metrics.json").read_text())["distribute"]
    assert info["replicas"] == 2 and info["global_batch"] == 36 and len(info["devices"]) == 2
    losses = _losses(tmp_path / "one")
    assert len(set(losses)) == 3  # it trains: every step changes the loss
    np.testing.assert_allclose(_losses(tmp_path / "two"), losses, rtol=1e-5)
    for a, b in zip(_weights(tmp_path / "two"), _weights(tmp_path / "one"), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_two_processes_train_and_agree(tmp_path, digits_folder, cnn_file):
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(
            subprocess.Popen(
                _args(digits_folder, cnn_file, tmp_path / f"w{index}", "--batch-size", "18",
                      "--distribute", "multi-worker", "--no-cache"),
                env=_env(TF_CONFIG=json.dumps(config)),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
        )  # fmt: skip
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    assert "global batch 36 = 18 per replica x 2" in results[0][0]
    before = _weights(tmp_path / "w0")
    assert len(set(_losses(tmp_path / "w0"))) == 3
    assert _losses(tmp_path / "w0") == pytest.approx(_losses(tmp_path / "w1"), abs=1e-6)
    for a, b in zip(before, _weights(tmp_path / "w1"), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_multi_worker_without_tf_config_is_one_line(tmp_path, capsys, monkeypatch, digits_folder):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    args = ["train", str(digits_folder), "-b", "mobilenet_v2", "--out", str(tmp_path / "r")]
    assert cli.main([*args, "--distribute", "multi-worker"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TF_CONFIG" in err[0]
