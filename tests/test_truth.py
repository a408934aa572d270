"""Issue 24: what the report and the terminal say is true (status, figures, timings,
early refusals, numbers that read right)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

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
