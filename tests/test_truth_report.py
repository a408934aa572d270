"""Issue 24, the report (point 8) and the work behind it (point 10): the worst errors shown
once with captions that never break mid-word, the settings graft chose with where they came
from, a reliability diagram, the command that reproduces the run, a contents bar, drift
read in words; and each split predicted once."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RUN = dict(
    cut="block3_pool", batch_size=8, seed=1, strategy="feature", epochs=1, lr=0.01,
    log=lambda _: None, verbose=0,
)  # fmt: skip
LONG_NAME = "holiday_photo_of_the_neighbours_cat_taken_from_the_balcony_2024_0001.png"


def _held_out(root: Path, digits) -> dict:
    from graft.api.demo import write_folder

    x, y = digits
    names = {5: "five", 6: "six", 7: "seven"}
    held = {}
    for split, lo in (("val", 12), ("test", 20)):
        idx = np.concatenate([np.flatnonzero(y == c)[lo : lo + 8] for c in names])
        held[split] = write_folder(root / split, x[idx], y[idx], names)
    return held


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, digits, digits_folder, cnn_file):
    """A feature run with validation and test folders (its worst errors in both)."""
    import graft

    root = tmp_path_factory.mktemp("truth_report")
    out = root / "run"
    graft.train(digits_folder, **_held_out(root, digits), backbone=str(cnn_file), out=out, **RUN)
    return out


def _section(html: str, anchor: str) -> str:
    start = html.index(f'<h2 id="{anchor}">')
    end = html.find("<h2 ", start + 1)
    return html[start : end if end > 0 else len(html)]


def _fake_run(tmp_path: Path, **metrics_extra) -> Path:
    """A run folder written by hand (no training): a model file backbone whose input
    scaling was measured, two worst errors, one with a long file name, and drift."""
    from graft.reporting import gallery, plots, report
    from graft.runs import files as runs

    run = tmp_path / "fake"
    (run / plots.PLOTS_DIR).mkdir(parents=True)
    for k in range(2):
        Image.new("RGB", (32, 32), (40 * k, 90, 200)).save(
            run / plots.PLOTS_DIR / gallery.THUMBNAIL.format(k)
        )
    worst = [
        {"index": 3, "path": f"/data/val/cat/{LONG_NAME}", "true": "cat", "predicted": "dog",
         "confidence": 0.97, "thumbnail": f"{plots.PLOTS_DIR}/error_00.png"},
        {"index": 7, "path": "/data/val/dog/d7.png", "true": "dog", "predicted": "cat",
         "confidence": 0.81, "thumbnail": f"{plots.PLOTS_DIR}/error_01.png"},
    ]  # fmt: skip
    bins = [
        {"lower": 0.6, "upper": 0.6667, "count": 4, "accuracy": 0.5, "confidence": 0.63},
        {"lower": 0.9333, "upper": 1.0, "count": 6, "accuracy": 0.8333, "confidence": 0.96},
    ]
    evaluation = {
        "split": "validation", "task": "single_label", "images": 10, "accuracy": 0.7,
        "loss": 0.6, "top_k_accuracy": {}, "ece": 0.1213, "calibration": bins,
        "per_class": {n: {"precision": 0.7, "recall": 0.7, "f1": 0.7, "support": 5}
                      for n in ("cat", "dog")},
        "macro_avg": {"precision": 0.7, "recall": 0.7, "f1": 0.7},
        "weighted_avg": {"precision": 0.7, "recall": 0.7, "f1": 0.7},
        "confusion_matrix": [[4, 1], [2, 3]], "worst_errors": worst,
    }  # fmt: skip
    metrics = {
        "val_accuracy": 0.7, "epochs": 2, "seconds": 3.0, "train_images": 20, "val_images": 10,
        "phases": [], "evaluation": evaluation,
        "feature_drift": {"cka": 0.77, "cosine": 0.9, "images": 10, "split": "val"},
        "head_input": "global average pooling of (4, 4, 16) -> 16 features",
        **metrics_extra,
    }  # fmt: skip
    evidence = {"choice": "symmetric", "source": "the first BatchNormalization 'bn'",
                "scores": {"symmetric": 0.9, "unit": 3.1}}  # fmt: skip
    config = {
        "backbone": "models/cnn.keras", "weights": None, "preprocess": None,
        "image_size": None, "pool": "auto", "strategy": "finetune", "lr": 0.001, "seed": 3,
        "resolved_backbone": {
            "preprocess_evidence": evidence, "source": "models/cnn.keras",
            "weights": "models/cnn.keras", "preprocess": "symmetric", "image_size": [32, 32],
            "channels": 3, "blocks": 3, "params": 3832,
        },
        "classes": ["cat", "dog"],
    }  # fmt: skip
    runs.write_yaml(run / runs.CONFIG_FILE, config)
    runs.write_json(run / runs.METRICS_FILE, metrics)
    runs.write_json(run / runs.LABELS_FILE, ["cat", "dog"])
    plots.write_all(run, [], evaluation, ["cat", "dog"], None)
    report.write_report(run)
    return run


# ------------------------------------------------------------------ the worst errors, once


def test_each_worst_error_is_shown_once(real_run):
    from graft.reporting import plots

    metrics = json.loads((real_run / "metrics.json").read_text())
    html = (real_run / "report.html").read_text()
    errors = _section(html, "errors")
    for part in (metrics["evaluation"], metrics["test_evaluation"]):
        assert part["worst_errors"], "a one-epoch model on digits makes mistakes"
        for w in part["worst_errors"]:
            # one card per error, and its file named nowhere else in the report (no table)
            assert errors.count(f'<figure class="error" title="{w["path"]}">') == 1
            assert html.count(f"<td>{w['path']}</td>") == 0
    assert "<table" not in errors
    assert f'data-plot="{plots.ERRORS}"' not in html  # the grid picture: a third copy


_WORDS_CHECK = """<script>
window.addEventListener("load", () => {
  let broken = 0, words = 0;
  for (const cap of document.querySelectorAll("figcaption")) {
    const walker = document.createTreeWalker(cap, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.data.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
        words += 1;
        if (lines.size > 1) broken += 1;
      }
    }
  }
  document.documentElement.dataset.words = words;
  document.documentElement.dataset.broken = broken;
});
</script>"""


def _chromium_dom(page: Path, tmp_path: Path, script: str) -> str:
    from test_report import _chromium

    checked = tmp_path / f"words_{page.name}"
    checked.write_text(page.read_text().replace("<head>", "<head>" + script, 1))
    profile = tmp_path / "profile_words"
    profile.mkdir(exist_ok=True)
    done = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--window-size=1200,900", f"--user-data-dir={profile}", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_captions_never_break_a_word_in_chromium(tmp_path):
    from test_report import _chromium

    if _chromium() is None:
        pytest.skip("no chromium binary (installed by .ci/run)")
    run = _fake_run(tmp_path)
    dom = _chromium_dom(run / "report.html", tmp_path, _WORDS_CHECK)
    found = {k: int(v) for k, v in re.findall(r'data-(words|broken)="(\d+)"', dom)}
    assert found["words"] >= 8, found  # the file names and labels were measured
    assert found["broken"] == 0, found
    assert LONG_NAME in dom  # in full, in the tooltip at least


def test_report_renders_in_headless_chromium_without_errors(real_run, tmp_path):
    from test_report import _chromium, _render

    if _chromium() is None:
        pytest.skip("no chromium binary (installed by .ci/run)")
    found, _ = _render(real_run / "report.html", tmp_path)
    assert found["images"] >= 5 and found["loaded"] == found["images"], found
    assert found["errors"] == 0, found


# ------------------------------------------------------------------ settings and where from


def test_inferred_settings_are_shown_with_where_they_came_from(tmp_path):
    html = (_fake_run(tmp_path) / "report.html").read_text()
    settings = _section(html, "settings")
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", settings)]
    rows = {c[0]: c[1:] for c in cells if c}
    assert rows["preprocess"][:2] == ["symmetric", "measured"], rows
    assert "BatchNormalization" in rows["preprocess"][2]
    assert rows["image size"][:2] == ["32x32", "model evidence"], rows
    assert rows["pool"][0].startswith("global average pooling"), rows
    # the configuration table has no blank values for what was not given
    config = _section(html, "config")
    for name in ("preprocess", "image_size", "weights"):
        cell = re.search(rf"<td>{name}</td><td>(.*?)</td>", config)
        assert cell and cell.group(1).strip(), name


def test_a_registry_backbones_settings_say_registry_default():
    from graft.reporting.provenance import DEFAULT, GIVEN, inferred_settings

    config = {
        "backbone": "mobilenet_v2", "weights": None, "image_size": 96, "preprocess": None,
        "lr": 0.003, "resolved_backbone": {"source": "mobilenet_v2", "weights": "imagenet",
                              "preprocess": "symmetric", "image_size": [96, 96], "channels": 3},
    }  # fmt: skip
    rows = {r[0]: r[1:] for r in inferred_settings(config, {"lr_find": {"steps": 40}})}
    assert rows["weights"][:2] == ("imagenet", DEFAULT)
    assert rows["image size"][:2] == ("96x96", GIVEN)
    assert rows["preprocess"][:2] == ("symmetric", DEFAULT)
    assert rows["learning rate"][1] == "measured" and "40 steps" in rows["learning rate"][2]


def test_real_run_records_what_pool_auto_became(real_run):
    metrics = json.loads((real_run / "metrics.json").read_text())
    pooled = {"avg": "average", "max": "max"}[metrics["inputs"]["pool"]]  # measured
    assert metrics["head_input"] == f"global {pooled} pooling of (4, 4, 16) -> 16 features"
    settings = _section((real_run / "report.html").read_text(), "settings")
    assert metrics["head_input"].replace(">", "&gt;") in settings


# ------------------------------------------------------------------ reliability diagram


def test_reliability_diagram_is_drawn_from_the_evaluation_and_embedded(real_run):
    from graft.reporting import plots

    path = real_run / plots.PLOTS_DIR / plots.RELIABILITY
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 300
        assert len(image.convert("RGB").getcolors(maxcolors=100000) or []) > 20
    calibration = _section((real_run / "report.html").read_text(), "calibration")
    assert f'data-plot="{plots.RELIABILITY}"' in calibration
    assert "<details>" in calibration  # the numbers stay, folded


# ------------------------------------------------------------------ reproduce, contents, drift


def test_report_gives_the_command_that_reproduces_the_run(real_run):
    html = (real_run / "report.html").read_text()
    found = re.search(r'<pre class="command">(.*?)</pre>', _section(html, "reproduce"))
    assert found, "no command in the report"
    import html as html_lib

    command = shlex.split(html_lib.unescape(found.group(1)))
    assert command[:3] == ["graft", "train", "--config"]
    assert command[3] == str((real_run / "config.yaml").resolve())
    done = subprocess.run(
        [sys.executable, "-m", "graft.cli", *command[1:]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    again = Path(command[command.index("--out") + 1])
    first = json.loads((real_run / "metrics.json").read_text())
    second = json.loads((again / "metrics.json").read_text())
    assert second["val_loss"] == pytest.approx(first["val_loss"], rel=1e-5)
    assert second["test_accuracy"] == first["test_accuracy"]


def test_contents_bar_links_every_section(tmp_path):
    html = (_fake_run(tmp_path) / "report.html").read_text()
    nav = re.search(r'<nav class="contents">(.*?)</nav>', html)
    assert nav, "no contents bar"
    targets = re.findall(r'href="#([^"]+)"', nav.group(1))
    sections = re.findall(r'<h2 id="([^"]+)">', html)
    assert targets == sections and len(sections) >= 10
    assert html.index("<nav") < html.index("<h2")


def test_drift_is_read_in_words_with_its_thresholds(tmp_path):
    from graft.reporting.report import drift_reading

    text = drift_reading(0.77)
    assert "0.77" in text and "moderately" in text and "0.9" in text and "0.7" in text
    assert "unchanged" in drift_reading(0.995) and "a lot" in drift_reading(0.4)
    drift = _section((_fake_run(tmp_path) / "report.html").read_text(), "drift")
    assert "A linear CKA of 0.77" in drift


# ------------------------------------------------------------------ point 10: predicted once


def test_the_test_split_goes_through_the_model_once(tmp_path, digits, digits_folder, cnn_file,
                                                    monkeypatch):  # fmt: skip
    """Every test image is read into the model once: for the "Test:" scores and for the
    report's test gallery alike (they were predicted twice)."""
    import tensorflow as tf

    import graft
    from graft.data import pipelines

    monkeypatch.setenv("GRAFT_CACHE", str(tmp_path / "cache"))  # nothing cached yet
    held = _held_out(tmp_path, digits)
    test_root = str(held["test"])
    seen = {"test": 0}
    real = pipelines.pipeline

    def counted(source, *args, **kwargs):
        ds = real(source, *args, **kwargs)
        if not all(str(p).startswith(test_root) for p in source.paths):
            return ds

        def tick(images):
            seen["test"] += int(images.shape[0])
            return images

        def through(images, labels):
            out = tf.py_function(tick, [images], images.dtype)
            out.set_shape(images.shape)
            return out, labels

        return ds.map(through)

    monkeypatch.setattr(pipelines, "pipeline", counted)
    lines: list[str] = []
    run = graft.train(
        digits_folder, **held, backbone=str(cnn_file), out=tmp_path / "run",
        **{**RUN, "log": lines.append},
    )  # fmt: skip
    assert seen["test"] == 24, seen  # 24 test images, each once
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    tested = metrics["test_evaluation"]
    assert tested["images"] == 24 and tested["accuracy"] == pytest.approx(
        run.metrics["test_accuracy"], abs=1e-4
    )
    assert tested["loss"] == pytest.approx(run.metrics["test_loss"], abs=1e-4)
    assert any(line.startswith("Test: accuracy") for line in lines)
    again = graft.evaluate(tmp_path / "run", str(held["test"]))  # the same numbers afresh
    assert run.metrics["test_accuracy"] == pytest.approx(again["accuracy"], abs=5e-5)  # 4 decimals
    assert run.metrics["test_loss"] == pytest.approx(again["loss"], rel=1e-4)
    # a second run on the same images and backbone (other head settings) reads the test
    # split's features from the cache: no test image goes through the backbone again
    assert any(line.startswith("Feature cache (test): computed 24") for line in lines)
    lines.clear()
    seen["test"] = 0  # (graft.evaluate above read them)
    second = graft.train(
        digits_folder, **held, backbone=str(cnn_file), out=tmp_path / "run2",
        **{**RUN, "lr": 0.02, "log": lines.append},
    )  # fmt: skip
    assert any(line.startswith("Feature cache (test): reused 24") for line in lines), lines
    assert seen["test"] == 0, seen
    again = graft.evaluate(tmp_path / "run2", str(held["test"]))
    assert second.metrics["test_accuracy"] == pytest.approx(
        again["accuracy"], abs=5e-5
    )  # 4 decimals
    assert second.metrics["test_loss"] == pytest.approx(again["loss"], rel=1e-4)
    shown = json.loads((tmp_path / "run2" / "metrics.json").read_text())["test_evaluation"]
    for w in shown["worst_errors"]:  # thumbnails read from the files, by index
        assert Path(w["path"]).parent.name == w["true"]
        assert (tmp_path / "run2" / w["thumbnail"]).is_file()


# ------------------------------------------------------------------ point 12: end-of-run work


def test_last_keras_is_a_copy_when_the_kept_epoch_is_the_last(
    tmp_path, digits_folder, cnn_file, monkeypatch
):
    """One model serialized, not two, when model.keras and last.keras hold the same weights
    (no validation data: the last epoch is kept)."""
    import graft
    from graft.runs import files

    saved = []
    real = files.save_model
    monkeypatch.setattr(files, "save_model", lambda m, p: saved.append(Path(p).name) or real(m, p))
    out = tmp_path / "run"
    graft.train(digits_folder, backbone=str(cnn_file), out=out, **{**RUN, "val_split": 0.0})
    assert saved == ["model.keras"], saved
    assert (out / "last.keras").read_bytes() == (out / "model.keras").read_bytes()
