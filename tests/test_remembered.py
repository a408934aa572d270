"""Issue 24 point 12: the input decision (scaling and pooling measured by the
cross-validated probe) is remembered across runs on the same images, labels, folds and
backbone, so a second run with other head settings does not measure it again; anything
the measurement depends on measures again."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_cnn
from graft.api import pipeline
from graft.training import remembered

CLASSES = ["five", "six", "seven"]


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = pipeline.choose_inputs

    def choose(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "choose_inputs", choose)
    return calls


def _train(data, cache_dir, seed=0, **settings):
    import graft

    settings.setdefault("cut", "block3_pool")  # a 4x4 map: the pooling is measured
    settings.setdefault("strategy", "feature")
    settings.setdefault("head", ())
    return graft.train(
        data, make_cnn(seed=seed), verbose=0, classes=CLASSES, cache_dir=str(cache_dir), **settings
    )


def test_a_second_run_with_other_head_settings_reuses_the_measurement(
    small_arrays, tmp_path, counted
):
    x, y = small_arrays
    first = _train((x, y), tmp_path)
    assert len(counted) == 1 and first.metrics["inputs"]["how"]["pool"] == "measured"
    files = list((tmp_path / remembered.KIND).glob("*.json"))
    assert len(files) == 1
    other = _train((x, y), tmp_path, head=(8,), dropout=0.3, epochs=2)
    assert len(counted) == 1  # not measured again
    assert other.metrics["inputs"] == first.metrics["inputs"]
    assert other.config.pool == first.config.pool
    # what the measurement depends on measures again: a label, the backbone's weights,
    # the images, no cache
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 3
    _train((x, y2), tmp_path)
    assert len(counted) == 2
    _train((x, y), tmp_path, seed=1)
    assert len(counted) == 3
    _train((np.ascontiguousarray(x[::-1]), y[::-1]), tmp_path)
    assert len(counted) == 4
    _train((x, y), tmp_path, cache=False)
    assert len(counted) == 5


def test_a_damaged_record_is_measured_again(small_arrays, tmp_path, counted):
    x, y = small_arrays
    first = _train((x, y), tmp_path)
    (record,) = (tmp_path / remembered.KIND).glob("*.json")
    record.write_text("{not json")
    again = _train((x, y), tmp_path)
    assert len(counted) == 2 and again.metrics["inputs"] == first.metrics["inputs"]
    assert json.loads(record.read_text())["choice"]["pool"] == first.metrics["inputs"]["pool"]


def test_the_log_says_the_decision_was_remembered(tmp_path, digits_folder, cnn_file, capsys):
    from graft import cli

    args = ["train", str(digits_folder), "-b", str(cnn_file), "--cut", "block3_pool"]
    args += ["--strategy", "feature", "--head", "", "--cache-dir", str(tmp_path / "c")]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    first = capsys.readouterr().out
    assert cli.main([*args, "--dropout", "0.3", "--out", str(tmp_path / "b")]) == 0
    second = capsys.readouterr().out
    line = next(t for t in first.splitlines() if t.startswith("Inputs:"))
    assert "remembered" not in line
    again = next(t for t in second.splitlines() if t.startswith("Inputs:"))
    assert again.startswith(line) and "remembered: measured in" in again
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert a["inputs"] == b["inputs"]
