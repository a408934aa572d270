"""The report a user reads: the test result next to validation, and the worst errors as
thumbnails named by file, in report.html, MODEL_CARD.md, metrics.json and evaluate --json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

RUN = dict(
    cut="block3_pool", batch_size=8, seed=1, strategy="feature", epochs=1, lr=0.01,
    log=lambda _: None, verbose=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def run_with_test(tmp_path_factory, digits, digits_folder, cnn_file):
    import numpy as np

    import graft
    from graft.api.demo import write_folder

    x, y = digits
    root = tmp_path_factory.mktemp("gallery")
    names = {5: "five", 6: "six", 7: "seven"}
    held = {}
    for split, lo in (("val", 12), ("test", 20)):
        idx = np.concatenate([np.flatnonzero(y == c)[lo : lo + 8] for c in names])
        held[split] = write_folder(root / split, x[idx], y[idx], names)
    out = root / "run"
    graft.train(digits_folder, **held, backbone=str(cnn_file), out=out, **RUN)
    return out


def test_report_and_card_show_the_test_result(run_with_test):
    metrics = json.loads((run_with_test / "metrics.json").read_text())
    html = (run_with_test / "report.html").read_text()
    card = (run_with_test / "MODEL_CARD.md").read_text()
    assert "test accuracy" in html and "test loss" in html
    from graft.reporting.text import fmt

    assert f"<b>{fmt(metrics['test_accuracy'])}</b>test accuracy" in html
    assert re.search(r"\| test \| [0-9.]+ \| [0-9.]+ \| 24 \|", card), card
    assert "kept epoch" in html and "model.keras holds" in card


def test_worst_errors_are_named_by_file_with_thumbnails(run_with_test):
    worst = json.loads((run_with_test / "metrics.json").read_text())["evaluation"]["worst_errors"]
    assert worst, "a one-epoch model on digits makes mistakes"
    for w in worst:
        assert Path(w["path"]).is_file() and Path(w["path"]).parts[-3] == "val"
        assert Path(w["path"]).parent.name == w["true"]  # the class folder is the true label
        assert (run_with_test / w["thumbnail"]).is_file()
    html = (run_with_test / "report.html").read_text()
    gallery = html[html.index('<div class="gallery">') :]
    assert gallery.count("data:image/png;base64,") >= len(worst)
    assert Path(worst[0]["path"]).name in gallery and worst[0]["predicted"] in gallery


def test_evaluate_json_names_the_worst_errors_by_file(run_with_test, digits_folder, capsys):
    from graft import cli

    assert cli.main(["evaluate", str(run_with_test), str(digits_folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["worst_errors"]
    for w in result["worst_errors"]:
        assert Path(w["path"]).is_file() and Path(w["path"]).parent.name == w["true"]


def test_report_shows_the_test_splits_worst_errors_too(run_with_test):
    metrics = json.loads((run_with_test / "metrics.json").read_text())
    test = metrics["test_evaluation"]
    assert test["split"] == "test" and test["images"] == 24
    assert test["worst_errors"], "a one-epoch model on digits makes mistakes"
    for w in test["worst_errors"]:
        assert Path(w["path"]).parts[-3] == "test" and Path(w["path"]).parent.name == w["true"]
        assert Path(w["thumbnail"]).name.startswith("test_error_")
        assert (run_with_test / w["thumbnail"]).is_file()
    val = metrics["evaluation"]["worst_errors"]
    assert all((run_with_test / w["thumbnail"]).is_file() for w in val)  # both kept
    html = (run_with_test / "report.html").read_text()
    errors = html[html.index('<h2 id="errors">') : html.index('<h2 id="calibration">')]
    on_test, on_val = errors.index("On the test split (24 images)"), errors.index("split (24")
    assert on_test < errors.index(Path(test["worst_errors"][0]["path"]).name)
    assert errors.count("On the ") == 2 and on_val >= 0
    shown = len(test["worst_errors"]) + len(val)
    assert errors.count("data:image/png;base64,") >= shown


def test_both_galleries_load_in_headless_chromium(run_with_test, tmp_path):
    from test_report import _chromium, _render

    if _chromium() is None:
        pytest.skip("no chromium binary (installed by .ci/run)")
    metrics = json.loads((run_with_test / "metrics.json").read_text())
    thumbnails = len(metrics["evaluation"]["worst_errors"])
    thumbnails += len(metrics["test_evaluation"]["worst_errors"])
    found, _ = _render(run_with_test / "report.html", tmp_path)
    assert found["images"] >= thumbnails and found["loaded"] == found["images"], found
    assert found["errors"] == 0, found
