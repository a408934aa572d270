"""Issue 24: what the report and the terminal say is true (status, figures, timings,
early refusals, numbers that read right)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUN = dict(
    cut="block3_pool", batch_size=16, seed=1, strategy="feature", epochs=1, lr=0.01, verbose=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, digits_folder, cnn_file):
    import graft

    lines: list[str] = []
    out = tmp_path_factory.mktemp("truth") / "run"
    graft.train(digits_folder, backbone=str(cnn_file), out=out, log=lines.append, **RUN)
    return out, lines


def _visible_text(page) -> str:
    """The page's text as a browser shows it: headless Chromium's DOM where there is one,
    else the HTML without its tags."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is not None:
        done = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode == 0 and done.stdout:
            return re.sub(r"<[^>]+>", " ", done.stdout)
    return re.sub(r"<[^>]+>", " ", page.read_text())


def test_report_written_by_train_shows_the_final_status(small_run):
    out, _ = small_run
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    text = _visible_text(out / "report.html")
    assert "graft run report" in text
    assert "Status:" not in text and "running" not in text


def _curves():
    import matplotlib

    from graft.reporting import plots

    history = [
        {"epoch": e, "phase": "head" if e < 3 else "finetune", "loss": 1 / e,
         "val_loss": 1.2 / e, "accuracy": 0.5 + e / 20, "val_accuracy": 0.45 + e / 20,
         "lr": 1e-3 if e < 3 else 1e-5, "backbone_lr": "" if e < 3 else 1e-6}
        for e in range(1, 7)
    ]  # fmt: skip
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        fig = plots.curves_figure(history)
        fig.canvas.draw()
        return fig, fig.canvas.get_renderer()


def test_curves_lr_axis_has_plain_tick_labels_in_its_own_panel():
    fig, _ = _curves()
    by_label = {ax.get_ylabel(): ax for ax in fig.axes}
    lr_ax = by_label["learning rate"]
    labels = [t.get_text() for t in lr_ax.get_yticklabels(which="both") if t.get_text()]
    assert labels and not any("$" in t or "mathdefault" in t for t in labels), labels
    assert "0.001" in labels, labels
    # its own panel: no other panel (loss, accuracy) shares its place in the figure
    others = [ax for ax in fig.axes if ax is not lr_ax]
    assert not any(lr_ax.get_position().overlaps(ax.get_position()) for ax in others)


def test_curves_legends_cover_no_curve():
    import numpy as np

    fig, renderer = _curves()
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is not None
        box = legend.get_window_extent(renderer)
        for line in ax.lines:
            xy = ax.transData.transform(np.column_stack(line.get_data()).astype(float))
            inside = [box.contains(x, y) for x, y in xy if np.isfinite([x, y]).all()]
            assert not any(inside), (ax.get_ylabel(), line.get_label())


#: Runs the CLI in-process, then prints whether TensorFlow was imported (last line).
_WRAPPER = (
    "import json, sys\n"
    "from graft.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "print(json.dumps({'code': code, 'tf': 'tensorflow' in sys.modules}))\n"
)


@pytest.mark.parametrize(
    "case",
    ["batch-size-0", "misspelled-backbone", "missing-data", "missing-val", "non-empty-out"],
)
def test_trivial_mistakes_are_refused_before_tensorflow(case, tmp_path, digits_folder):
    out = tmp_path / "run"
    args = [str(digits_folder), "--backbone", "mobilenet_v2", "--out", str(out)]
    expect = {
        "batch-size-0": "--batch-size must be at least 1",
        "misspelled-backbone": "Unknown backbone: 'mobilenetv2'",
        "missing-data": "not found",
        "missing-val": "not found",
        "non-empty-out": "already exists and is not empty",
    }[case]
    if case == "batch-size-0":
        args += ["--batch-size", "0"]
    elif case == "misspelled-backbone":
        args[2] = "mobilenetv2"
    elif case == "missing-data":
        args[0] = str(tmp_path / "nowhere")
    elif case == "missing-val":
        args += ["--val", str(tmp_path / "nowhere")]
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, "train", *args],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 2, done.stderr
    assert expect in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not result["tf"], "refused only after importing TensorFlow"
    assert seconds < 5, seconds  # ~0.5 s idle; generous for a loaded 2-core machine
    if case == "non-empty-out":
        assert (out / "notes.txt").read_text() == "mine"


def test_macro_f1_is_over_the_classes_present_and_names_the_absent():
    import numpy as np

    from graft.reporting import evaluation

    classes = [str(i) for i in range(10)]
    y = np.array([0, 0, 1, 1, 2, 3])
    probs = np.eye(10)[y] * 0.9 + 0.01  # every image right
    result = evaluation.classification_metrics(y, probs, classes)
    assert result["accuracy"] == 1.0
    assert result["macro_avg"]["f1"] == 1.0  # was 0.4: six absent classes counted as F1 0
    assert result["absent_classes"] == ["4", "5", "6", "7", "8", "9"]
    line = evaluation.summary_line(result)
    assert "macro F1 1.0000" in line and "4 classes present (6 absent: 4, 5, 6, 7, 8" in line


def test_kept_line_is_not_said_when_the_best_epoch_is_the_last(small_run):
    _, lines = small_run
    assert not [line for line in lines if "the last epoch is in" in line and "of 1 " in line]


def test_done_in_is_the_whole_commands_wall_time(tmp_path, digits_folder, cnn_file):
    out = tmp_path / "run"
    args = [str(digits_folder), "--backbone", str(cnn_file), "--out", str(out)]
    args += ["--cut", "block3_pool", "--strategy", "feature", "--epochs", "1", "--batch-size", "32"]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER, "train", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    said, wall, text = None, None, []
    for line in proc.stdout:
        text.append(line)
        if said is None and (said := re.search(r"Done in ([\d.]+) s", line)):
            wall = time.perf_counter() - start  # when it was said
    assert proc.wait(timeout=600) == 0, "".join(text)
    assert said, "".join(text)
    assert wall - 1.0 <= float(said.group(1)) <= wall + 0.2, (said.group(0), wall)


def test_demo_prints_one_spread_per_value():
    import numpy as np

    from graft.api import demo

    for std in np.linspace(0.0101, 0.0199, 99):
        row = {"labels_per_class": 2, "strategy": "feature", "trainable_params": 1,
               "test_accuracy": 0.5, "test_accuracy_std": round(float(std), 4), "seeds": 3,
               "seconds": 1.0}  # fmt: skip
        shown = re.search(r"± ([\d.]+)", demo.seed_line(row)).group(1)
        assert f"± {shown} |" in demo.markdown_table([row])


def test_report_timing_shows_the_whole_run_beside_training(small_run):
    out, _ = small_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["whole_run"]["seconds"] >= metrics["seconds"] > 0
    text = _visible_text(out / "report.html")
    assert "whole run until the report" in text and "training (all phases)" in text
    assert "total training" not in text


def test_activation_cache_line_claims_no_unmeasured_saving():
    from graft.training import activations

    summary = {"boundary": "conv", "moved_from": None, "bottom_layers": 1, "shape": [4, 4, 8],
               "dtype": "float16", "images": 10, "bytes": 1000, "phases": [2], "epochs": 3,
               "seconds": {"one_pass": 4.0, "spent": 0.0, "saved_estimate": 12.0}}  # fmt: skip
    line = activations._line(summary, hit=True)
    assert "saved" not in line and "1 frozen layer cached" in line, line


def test_resumed_runs_final_evaluation_agrees_with_its_kept_val_loss(
    tmp_path, monkeypatch, digits, cnn_file
):
    """Interrupted in the fine-tuning phase, the best epoch in the head phase: the end of
    the resumed run evaluated the head on features cached with the fine-tuned backbone."""
    import numpy as np

    import graft
    from conftest import stop_after
    from graft.training.checkpoints import Interrupted

    x, y = digits
    pick = [np.flatnonzero(y == c) for c in (5, 6, 7)]
    train = np.concatenate([i[:16] for i in pick])
    val = np.concatenate([i[16:24] for i in pick])
    train, val = (x[train], (y[train] - 5).astype("int32")), (x[val], (y[val] - 5).astype("int32"))
    run = tmp_path / "resumed"
    settings = dict(
        cut="block3_pool", batch_size=8, seed=3, deterministic=True, optimizer="sgd",
        strategy="hybrid", epochs=3, finetune_epochs=2, lr=0.1, finetune_lr=3.0,
        unfreeze="blocks:2", precise_bn=False, log=lambda _: None, verbose=0,
    )  # fmt: skip
    with monkeypatch.context() as patch:
        stop_after(patch, 4)
        with pytest.raises(Interrupted):
            graft.train(train, val=val, backbone=str(cnn_file), out=run, **settings)
    graft.train(train, val=val, resume=run, log=lambda _: None, verbose=0)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kept"]["phase_index"] == 1  # the construction: fine-tuning made it worse
    assert metrics["evaluation"]["loss"] == pytest.approx(metrics["val_loss"], rel=1e-3)


def test_cache_pass_prints_no_raw_keras_lines(capsys):
    import keras
    import numpy as np

    from graft.training import cache

    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    features = cache.compute(model, np.zeros((10, 4, 4, 3), "float32"), verbose=1)
    assert features.shape == (10, 3)
    printed = capsys.readouterr()
    assert printed.out == "" and "step" not in printed.err, printed


def test_compare_prints_a_line_per_run_and_an_uncut_table(
    tmp_path, digits_folder, cnn_file, capsys
):
    from graft import cli

    out = tmp_path / "cmp"
    code = cli.main(
        ["compare", str(digits_folder), "-b", str(cnn_file), "--cut", "block3_pool",
         "--strategies", "feature,finetune", "--unfreeze", "all", "--finetune-lr", "0.01",
         "--epochs", "1", "--batch-size", "16", "-o", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    lines = printed.splitlines()
    assert len(lines) < 25, printed  # was every run's whole log
    assert "Phase 1/" not in printed and "Phase 1/" in (out / "feature" / "train.log").read_text()
    header = next(line for line in lines if "strategy" in line and "seconds" in line)
    assert "feature_drift_cka" in header and "trainable_params" in header, header


def test_backbone_line_names_a_model_files_weights_once(small_run, cnn_file):
    _, lines = small_run
    line = next(x for x in lines if x.startswith("Backbone "))
    assert line.count(str(cnn_file)) == 1 and "its own weights" in line, line


def test_offline_imagenet_error_starts_a_line_of_its_own(capsys):
    from graft.core import loaders
    from graft.errors import WeightsUnavailableError

    def constructor(**kwargs):
        sys.stdout.write("Downloading data from https://example.invalid/w.h5")  # as Keras does
        raise Exception("URL fetch failure on https://example.invalid/w.h5: None")

    with pytest.raises(WeightsUnavailableError):
        loaders._build_application(constructor, weights="imagenet")
    assert capsys.readouterr().out.endswith("w.h5\n")


def test_data_check_says_one_file(tmp_path, digits):
    from graft.api.demo import write_folder
    from graft.data import check as datacheck
    from graft.data.sources import load_source

    x, y = digits
    write_folder(tmp_path / "one", x[:1], y[:1], {int(y[0]): "a"})
    head = datacheck.check(load_source(tmp_path / "one"), min_size=1).lines()[0]
    assert "1 file scanned" in head, head


def test_predict_fails_when_every_input_was_skipped(small_run, tmp_path, capsys):
    from graft import cli

    out, _ = small_run
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    code = cli.main(["predict", str(out), str(tmp_path / "broken.png")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "predicted 0 images; skipped 1 unreadable file" in err
    assert "every one of the 1 input files was skipped" in err and "Traceback" not in err


def test_default_run_folder_is_the_next_free_runs_train_n(tmp_path, monkeypatch):
    from graft.api import preflight

    monkeypatch.chdir(tmp_path)
    assert preflight.default_out() == Path("runs/train-1")
    (tmp_path / "runs" / "train-1").mkdir(parents=True)
    (tmp_path / "runs" / "train-7").mkdir()
    (tmp_path / "runs" / "train-x").mkdir()
    assert preflight.default_out() == Path("runs/train-8")


def test_train_without_out_writes_runs_train_n(tmp_path, monkeypatch, digits_folder, cnn_file):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "train-2").mkdir(parents=True)
    args = [str(digits_folder), "--backbone", str(cnn_file), "--cut", "block3_pool"]
    args += ["--strategy", "feature", "--epochs", "1", "--batch-size", "32"]
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, "train", *args],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert json.loads(done.stdout.strip().splitlines()[-1])["code"] == 0, done.stderr
    assert "Run folder: runs/train-3 (no --out given)" in done.stdout
    status = json.loads((tmp_path / "runs" / "train-3" / "status.json").read_text())
    assert status["status"] == "completed"


def _fake_cache(root):
    old = time.time() - 10 * 86400
    for kind, key, age in (
        ("features", "a", old),
        ("features", "b", None),
        ("activations", "c", old),
    ):
        for suffix in (".json", ".npy"):
            path = root / kind / f"{key}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 1000)
            if age is not None:
                os.utime(path, (age, age))
    part = root / "features" / "d.npy.part"  # being written by a live run
    part.write_bytes(b"x")


def test_graft_cache_lists_kinds_without_tensorflow(tmp_path):
    _fake_cache(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, "cache", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "120"},
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "tf": False}, done.stderr
    rows = {line.split()[1]: line for line in done.stdout.splitlines() if "│ " in line}
    assert "3" in rows["features"].split() and "10d ago" in rows["features"]
    assert "1" in rows["activations"].split()


def test_graft_cache_clears_what_is_older_than_an_age(tmp_path, monkeypatch):
    from graft.api import caches
    from graft.training import cache

    monkeypatch.setenv("GRAFT_CACHE", str(tmp_path))
    assert caches.cache_root() / "features" == cache.default_dir()
    _fake_cache(tmp_path)
    assert caches.clear(older_than="7d") == (2, 4000)  # a and c; b is new, d in progress
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == [
        "b.json", "b.npy", "d.npy.part",
    ]  # fmt: skip
    assert caches.clear() == (1, 2000)  # b; never the part file of a live write
    with pytest.raises(Exception, match="older_than must be an age"):
        caches.clear(older_than="soon")


def test_lr_find_plot_is_not_flattened_by_the_final_spike(tmp_path):
    import math

    from graft.training import lrfind

    lrs = [10 ** (-7 + 8 * i / 99) for i in range(100)]
    smoothed = [2.3 - 1.5 * math.exp(-(((i - 60) / 15) ** 2)) for i in range(95)]
    smoothed += [50.0, 500.0, 5e3, 5e4, 5e5]  # the divergence at the end
    low, high = lrfind.y_limits(smoothed)
    assert low < min(smoothed) < high < 10, (low, high)
    found = lrfind.LRFindResult(lrs, smoothed, smoothed, 1e-3, 1e-7, 10.0)
    _, png = found.write(tmp_path)
    assert png.is_file()


LABELS = {"five": "round|tall", "six": "round", "seven": "tall"}


def test_multi_label_predict_gives_every_label_over_the_threshold(
    tmp_path, digits_folder, cnn_file
):
    import csv
    import io

    import numpy as np

    import graft
    from graft.api import outputs
    from graft.data.pipelines import load_image

    images = sorted(digits_folder.rglob("*.png"))[::3][:40]
    rows = ["path,label"]
    for p in images:
        rows.append(f"{p},{LABELS[p.parent.name]}")
    (tmp_path / "ml.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    run = graft.train(
        str(tmp_path / "ml.csv"), str(cnn_file), out, cut="block3_pool", strategy="feature",
        epochs=2, lr=0.01, batch_size=16, val_split=0.25, log=lambda _: None, verbose=0,
    )  # fmt: skip
    buffer = tmp_path / "pred.csv"
    outputs.predict(out, [str(p) for p in images[:10]], str(buffer))
    table = list(csv.reader(io.StringIO(buffer.read_text())))
    assert table[0] == ["path", "labels", "probabilities"]
    _, h, w, ch = run.model.input_shape
    for path, labels, probabilities in table[1:]:
        probs = run.model.predict(np.asarray(load_image(path, (h, w), ch))[None], verbose=0)[0]
        expected = [run.classes[i] for i in np.argsort(-probs) if probs[i] >= 0.5]
        assert (labels.split("|") if labels else []) == expected
        shown = [float(v) for v in probabilities.split("|")] if probabilities else []
        assert all(v >= 0.5 for v in shown) and shown == sorted(shown, reverse=True)
    card = (out / "MODEL_CARD.md").read_text()
    assert "Task: multi-label classification" in card and "at least 0.5" in card
    outputs.export(out, "keras", tmp_path / "export" / "model.keras")
    (entry,) = json.loads((out / "exports.json").read_text())
    assert entry["task"] == "multi_label" and entry["threshold"] == 0.5


def test_head_phase_bar_never_counts_past_the_epoch(tmp_path, digits_folder, cnn_file, capfd):
    import graft
    from graft.training import trainer

    assert [trainer.steps_per_execution(n) for n in (None, 1, 4, 34, 64, 100, 128)] == [
        1, 1, 4, 34, 64, 50, 64,
    ]  # fmt: skip
    graft.train(
        digits_folder, backbone=str(cnn_file), out=tmp_path / "run", cut="block3_pool",
        strategy="feature", epochs=1, batch_size=8, log=lambda _: None, verbose=2,
    )  # fmt: skip
    printed = capfd.readouterr().out
    counts = re.findall(r"(\d+)/(\d+) - ", printed)
    assert counts and all(int(a) <= int(b) for a, b in counts), counts


def test_preflight_lets_the_auto_strategy_through_and_checks_the_rest(digits_folder):
    from graft.api import preflight
    from graft.errors import GraftError

    preflight.check_train(digits_folder, "mobilenet_v2", settings={"strategy": "auto"})
    with pytest.raises(GraftError, match="batch_size must be at least 1"):
        preflight.check_train(
            digits_folder, "mobilenet_v2", settings={"strategy": "auto", "batch_size": 0}
        )
