"""Evaluation, plots, TensorBoard logs, report.html (rendered in Chromium) and MODEL_CARD.md
of a short real training run."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import graft
from graft.reporting import evaluation, plots, report
from graft.runs import files as runs
from graft.training import tensorboard as tb

PLOT_FILES = (plots.CURVES, plots.CONFUSION, plots.F1, plots.ERRORS, plots.RELIABILITY)
# The report embeds all but the error grid (the gallery shows those errors, once).
EMBEDDED = (plots.CURVES, plots.CONFUSION, plots.F1, plots.RELIABILITY)


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits_folder):
    """A two-phase run (so phase boundaries and two learning rates exist) with TensorBoard."""
    out = tmp_path_factory.mktemp("report") / "run"
    lines: list[str] = []
    result = graft.train(
        digits_folder,
        "mobilenet_v2",
        out,
        weights="none",
        alpha=0.35,
        image_size=32,
        strategy="hybrid",
        epochs=1,
        finetune_epochs=1,
        lr=1e-2,
        finetune_lr=1e-4,
        batch_size=8,
        val_split=0.2,  # the report evaluates a hold-out
        verbose=0,
        tensorboard=True,
        log=lines.append,
    )
    return result, out, lines


# ------------------------------------------------------------------ metrics by definition


def test_classification_metrics_match_hand_computed_values():
    y = [0, 0, 1, 2]
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4]])
    m = evaluation.classification_metrics(y, probs, ["a", "b", "c"], top_k=(2, 5))
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert m["accuracy"] == 0.5
    assert m["top_k_accuracy"] == {"2": 1.0}  # k=5 >= 3 classes is skipped
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["b"]["precision"] == 0.5 and m["per_class"]["b"]["recall"] == 1.0
    assert m["per_class"]["c"]["f1"] == 0.0
    expected_loss = -np.mean(np.log([0.8, 0.3, 0.7, 0.4]))
    assert m["loss"] == pytest.approx(expected_loss, abs=1e-4)


def test_expected_calibration_error_by_definition():
    # Four images at confidence 0.9 of which two are right: |0.5 - 0.9| = 0.4.
    probs = np.array([[0.9, 0.1]] * 4)
    ece, bins = evaluation.expected_calibration_error([0, 0, 1, 1], probs)
    assert ece == pytest.approx(0.4)
    assert bins == [
        {"lower": 0.8667, "upper": 0.9333, "count": 4, "accuracy": 0.5, "confidence": 0.9}
    ]
    perfect, _ = evaluation.expected_calibration_error([0, 1], np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert perfect == 0.0


def test_multilabel_metrics_at_threshold():
    y = [[1, 0], [1, 1], [0, 1]]
    probs = np.array([[0.9, 0.2], [0.7, 0.4], [0.1, 0.6]])  # label y misses one positive
    m = evaluation.multilabel_metrics(y, probs, ["x", "y"], threshold=0.5)
    assert m["per_label"]["x"]["f1"] == 1.0
    assert m["per_label"]["y"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-4)
    assert m["micro_f1"] == pytest.approx(2 * 0.75 / 1.75, abs=1e-4)  # tp=3 fp=0 fn=1
    assert m["subset_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["hamming_loss"] == pytest.approx(1 / 6, abs=1e-4)
    lower = evaluation.multilabel_metrics(y, probs, ["x", "y"], threshold=0.3)
    assert lower["per_label"]["y"]["recall"] == 1.0


# ------------------------------------------------------------------ the run's artifacts


def test_train_evaluates_the_validation_split_into_metrics_json(run):
    result, out, lines = run
    metrics = json.loads((out / runs.METRICS_FILE).read_text())
    ev = metrics["evaluation"]
    assert "val_accuracy" in metrics and "phases" in metrics  # existing keys stay
    assert ev["split"] == "validation" and ev["images"] == metrics["val_images"] == 6
    cm = np.array(ev["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == ev["images"]
    assert [v["support"] for v in ev["per_class"].values()] == cm.sum(axis=1).tolist()
    # Same weights, same images: the streamed evaluation agrees with Keras's last val epoch.
    assert ev["accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-4)
    assert ev["accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-4)
    assert ev["loss"] == pytest.approx(metrics["val_loss"], abs=1e-3)
    assert set(ev["top_k_accuracy"]) == {"2"} and 0 <= ev["ece"] <= 1
    wrong = int(cm.sum() - np.trace(cm))
    assert len(ev["worst_errors"]) == min(wrong, 16)
    confidences = [w["confidence"] for w in ev["worst_errors"]]
    assert confidences == sorted(confidences, reverse=True)
    assert all(w["true"] != w["predicted"] for w in ev["worst_errors"])
    assert result.metrics["evaluation"]["confusion_matrix"] == ev["confusion_matrix"]
    assert any(line.startswith("Evaluation on the validation split: accuracy") for line in lines)
    assert metrics["data"]["per_class"] == {"five": 10, "seven": 10, "six": 10}


def test_plots_are_real_pngs(run):
    _, out, _ = run
    for name in PLOT_FILES:
        with Image.open(out / plots.PLOTS_DIR / name) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 150, name
            # Not a blank canvas: a drawn figure has many distinct colours.
            assert len(image.convert("RGB").getcolors(maxcolors=100000) or []) > 20, name


def test_report_embeds_every_plot_and_the_numbers(run):
    _, out, _ = run
    text = (out / report.REPORT_FILE).read_text()
    metrics = json.loads((out / runs.METRICS_FILE).read_text())
    embedded = dict(
        re.findall(r'src="data:image/png;base64,([^"]+)"[^>]*data-plot="([^"]+)"', text)
    )
    by_name = {name: data for data, name in embedded.items()}
    assert set(by_name) == set(EMBEDDED) and plots.ERRORS not in by_name
    for name, data in by_name.items():
        assert base64.b64decode(data) == (out / plots.PLOTS_DIR / name).read_bytes(), name
    assert not re.search(r'(src|href)="(https?:|//|file:)', text)  # self-contained
    for phase in metrics["phases"]:
        assert f"{phase['trainable_params']:,}" in text and f"{phase['frozen_params']:,}" in text
    ev = metrics["evaluation"]
    assert f"{ev['accuracy']:.4f}" in text
    for name in json.loads((out / runs.LABELS_FILE).read_text()):
        assert f"<td>{name}</td>" in text
    for section in (
        "Data",
        "Settings graft chose",
        "Plan of phases",
        "Training curves",
        "Metrics",
        "Worst errors",
        "Calibration",
        "Feature drift",
        "Timing",
        "Reproduce",
        "Configuration",
    ):
        assert f">{section}</h2>" in text, section


def test_model_card(run):
    result, out, _ = run
    card = (out / report.MODEL_CARD_FILE).read_text()
    assert "`mobilenet_v2`" in card and "**none** weights" in card
    assert "five, seven, six" in card  # output order
    assert "raw pixel values 0-255" in card and "32x32" in card
    ev = result.metrics["evaluation"]
    assert f"| accuracy | {ev['accuracy']:.4f} |" in card
    assert "--format savedmodel" in card and "--format tflite" in card
    assert "1. `head`: backbone `none`" in card and "2. `finetune`" in card


def test_tensorboard_logs_every_epoch_and_the_phase_learning_rates(run):
    result, out, _ = run
    train = tb.read_scalars(tb.log_dir(out) / "train")
    val = tb.read_scalars(tb.log_dir(out) / "validation")
    phases = tb.read_scalars(tb.log_dir(out) / "phases")
    assert [s for s, _ in train["epoch_loss"]] == [0, 1]  # one step per epoch, across phases
    assert [v for _, v in train["epoch_loss"]] == pytest.approx(
        [row["loss"] for row in result.history], rel=1e-5
    )
    assert [s for s, _ in val["epoch_accuracy"]] == [0, 1]
    assert phases["phase/index"] == [(0, 1.0), (1, 2.0)]
    assert phases["phase/learning_rate"] == [(0, pytest.approx(1e-2)), (1, pytest.approx(1e-4))]
    assert phases["phase/backbone_learning_rate"] == [(1, pytest.approx(1e-4))]


# ------------------------------------------------------------------ Chromium

_CHECKER = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(e.message || "resource"), true);
console.error = (...a) => { window.__errors.push(a.join(" ")); };
window.addEventListener("load", () => {
  const imgs = [...document.images];
  document.documentElement.dataset.images = imgs.length;
  document.documentElement.dataset.loaded =
      imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.documentElement.dataset.errors = window.__errors.length;
});
</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _render(page: Path, tmp_path: Path) -> tuple[dict, str]:
    """Load ``page`` (with the checker injected) in headless Chromium.

    Returns the checker's findings and Chromium's log (console messages are logged as
    ``CONSOLE``).
    """
    checked = tmp_path / f"checked_{page.name}"
    text = page.read_text()
    checked.write_text(text.replace("<head>", "<head>" + _CHECKER, 1))
    profile = tmp_path / f"profile_{page.stem}"
    profile.mkdir()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    done = subprocess.run(
        [_chromium(), *flags, "--dump-dom", checked.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = dict(re.findall(r'data-(images|loaded|errors)="(\d+)"', done.stdout))
    return {k: int(v) for k, v in found.items()}, done.stderr


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (installed by .ci/run)")
def test_report_renders_in_headless_chromium_without_errors(run, tmp_path):
    _, out, _ = run
    found, log = _render(out / report.REPORT_FILE, tmp_path)
    # the plots, plus the worst-error thumbnails of the gallery: every one must load
    assert found["images"] >= len(EMBEDDED), found
    assert found["loaded"] == found["images"] and found["errors"] == 0, found
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (installed by .ci/run)")
def test_chromium_check_catches_a_broken_page(tmp_path):
    """The harness itself must fail on a missing image and a console error."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head></head><body><img src="missing.png">'
        '<script>console.error("boom")</script></body></html>'
    )
    found, _ = _render(page, tmp_path)
    assert found["images"] == 1 and found["loaded"] == 0 and found["errors"] >= 2


# ------------------------------------------------------------------ graft report


def test_graft_report_regenerates_and_reevaluates(run, digits_folder):
    _, out, _ = run
    (out / report.REPORT_FILE).unlink()
    (out / report.MODEL_CARD_FILE).unlink()
    (out / plots.PLOTS_DIR / plots.CONFUSION).unlink()
    done = subprocess.run(
        [sys.executable, "-m", "graft.cli", "report", str(out), "--data", str(digits_folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "report.html" in done.stdout
    metrics = json.loads((out / runs.METRICS_FILE).read_text())
    ev = metrics["evaluation"]
    assert ev["split"] == str(digits_folder) and ev["images"] == 36
    assert np.array(ev["confusion_matrix"]).sum() == 36
    assert (out / plots.PLOTS_DIR / plots.CONFUSION).is_file()
    assert (out / report.MODEL_CARD_FILE).is_file()
    assert "36 images" in (out / report.REPORT_FILE).read_text()
    history = list(csv.DictReader((out / runs.HISTORY_FILE).open()))
    assert len(history) == 2  # regenerating never touches the run's history


def test_graft_report_on_a_folder_that_is_not_a_run(tmp_path):
    from graft.cli import main

    assert main(["report", str(tmp_path)]) == 2


def test_cli_evaluate_prints_the_new_metrics(run, digits_folder, capsys):
    from graft.cli import main

    _, out, _ = run
    assert main(["evaluate", str(out), str(digits_folder)]) == 0
    printed = capsys.readouterr().out
    assert "top-2" in printed and "macro F1" in printed and "ECE" in printed
    assert "(36 images)" in printed and all(n in printed for n in ("five", "six", "seven"))


def test_cli_train_passes_tensorboard_through(monkeypatch, tmp_path, capsys):
    from graft import api
    from graft.cli import main
    from graft.errors import GraftError

    seen = {}

    def fake_train(*args, **kwargs):
        seen.update(kwargs)
        raise GraftError("stop here")

    monkeypatch.setattr(api, "train", fake_train)
    assert (
        main(
            [
                "train",
                str(tmp_path),
                "-b",
                "mobilenet_v2",
                "--out",
                str(tmp_path / "r"),
                "--tensorboard",
            ]
        )
        == 2
    )
    assert seen["tensorboard"] is True


def test_metrics_record_merges_sections_and_fresh_starts_over(tmp_path):
    from graft.runs import metrics

    metrics.record(tmp_path, {"data": {"train": 3}, "val_accuracy": 0.5}, fresh=True)
    metrics.record(tmp_path, {"auto_search": {"trials": 2}})
    assert metrics.read(tmp_path) == {
        "data": {"train": 3},
        "val_accuracy": 0.5,
        "auto_search": {"trials": 2},
    }
    metrics.record(tmp_path, {"val_accuracy": 0.9}, fresh=True)
    assert metrics.read(tmp_path) == {"val_accuracy": 0.9}
