"""Issue 24, what the terminal shows (point 6's remnants): the Python API as quiet as the
CLI, and no Keras bar left behind by the feature cache on a live terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys

TF_NOISE = re.compile(r"absl|oneDNN|cuda|cuInit|I0000|E0000|W0000|cpu_feature_guard")


def test_python_api_prints_no_tensorflow_start_up_lines(tmp_path, digits_folder, cnn_file):
    script = (
        "import graft\n"
        f"graft.train({str(digits_folder)!r}, backbone={str(cnn_file)!r}, "
        f"out={str(tmp_path / 'run')!r}, cut='block3_pool', strategy='feature', epochs=1, "
        "batch_size=16, log=lambda _: None, verbose=0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not TF_NOISE.search(done.stderr + done.stdout), done.stderr[-3000:]
    assert done.stderr.strip() == "", done.stderr[-3000:]


def test_cache_pass_leaves_no_keras_bar_on_a_live_terminal(monkeypatch, capfd):
    import keras
    import numpy as np
    import tensorflow as tf

    from graft import progress
    from graft.training import cache

    monkeypatch.setattr(progress, "live", lambda stream=None: True)
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    images = np.zeros((10, 4, 4, 3), "float32")
    for given in (images, tf.data.Dataset.from_tensor_slices(images).batch(4)):
        assert cache.compute(model, given, verbose=1).shape == (10, 3)
    printed = capfd.readouterr()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", printed.out + printed.err)  # colours off
    assert not re.search(r"\d+/\d+ ━+.*step", plain), plain


# ------------------------------------------------------------------ point 7: the demo


def _fake_demo(monkeypatch):
    from graft.api import demo

    calls = []

    def run(out, budgets=(2, 10), strategies=demo.STRATEGIES, seed=0, log=print,
            epochs_scale=1.0, seeds=1):  # fmt: skip
        calls.append(dict(budgets=tuple(budgets), seeds=seeds, epochs_scale=epochs_scale))
        return [
            {"labels_per_class": b, "strategy": s, "trainable_params": 10,
             "test_accuracy": {"scratch": 0.9, "feature": 0.7, "finetune": 0.8,
                               "hybrid": 0.75}[s], "test_accuracy_std": 0.0, "seeds": seeds,
             "seconds": 1.0}
            for b in budgets for s in strategies
        ]  # fmt: skip

    monkeypatch.setattr(demo, "run", run)
    return calls


def test_demo_runs_the_newcomers_demo_and_keeps_the_full_one_behind_a_flag(
    tmp_path, monkeypatch, capsys
):
    from graft import cli

    calls = _fake_demo(monkeypatch)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out)]) == 0
    assert calls[-1] == dict(budgets=(10,), seeds=1, epochs_scale=1.0)  # minutes, not 12
    printed = capsys.readouterr().out
    # the report to open: the best transfer row's (finetune here), and the next command
    assert f"Open this report in a browser: {out / 'finetune_10' / 'report.html'}" in printed
    assert "Next, on your own images" in printed and "graft train PATH/TO/IMAGES" in printed
    assert cli.main(["demo", "--out", str(out), "--full"]) == 0
    assert calls[-1] == dict(budgets=(2, 10), seeds=3, epochs_scale=1.0)
    printed = capsys.readouterr().out
    assert str(out / "finetune_10_seed0" / "report.html") in printed
    assert cli.main(["demo", "--out", str(out), "--quick"]) == 0
    assert calls[-1] == dict(budgets=(2,), seeds=1, epochs_scale=0.5)
    assert cli.main(["demo", "--out", str(out), "--full", "--seeds", "2"]) == 0
    assert calls[-1]["seeds"] == 2


def test_demo_refuses_quick_and_full_together(tmp_path, monkeypatch, capsys):
    from conftest import one_error_line
    from graft import cli

    calls = _fake_demo(monkeypatch)
    capsys.readouterr()
    assert cli.main(["demo", "--out", str(tmp_path), "--quick", "--full"]) == 2
    assert "--quick and --full" in one_error_line(capsys) and not calls


def test_the_demos_report_to_open_is_a_real_run_folder(tmp_path, monkeypatch):
    """The path printed is where the demo's run writes its report."""
    from graft.api import demo

    monkeypatch.setenv("GRAFT_CACHE", str(tmp_path / "cache"))
    rows = demo.run(tmp_path / "out", budgets=(2,), strategies=("feature",), epochs_scale=0.1,
                    log=lambda _: None)  # fmt: skip
    report = demo.report_to_open(tmp_path / "out", rows)
    assert report is not None and report.is_file()
    assert any(str(report) in line for line in demo.closing_lines(tmp_path / "out", rows))
