"""The demo on real data (scikit-learn digits): transfer must beat training from scratch."""

from __future__ import annotations

import csv

from graft.api import demo


def test_transfer_beats_scratch_with_two_labels_per_class(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_CACHE", str(tmp_path / "cache"))
    lines = []
    rows = demo.run(
        tmp_path / "out",
        budgets=(2,),
        strategies=("scratch", "feature", "hybrid"),
        log=lines.append,
    )
    accuracy = {r["strategy"]: r["test_accuracy"] for r in rows}
    assert accuracy["feature"] > accuracy["scratch"] + 0.15, accuracy
    assert accuracy["hybrid"] > accuracy["scratch"] + 0.15, accuracy
    assert accuracy["hybrid"] > 0.5, accuracy  # 5 classes: chance is 0.2
    assert any("Pre-training" in line for line in lines)
    # The pre-trained backbone is cached, and the results table is written.
    assert list((tmp_path / "cache").glob("demo-digits-*.keras"))
    saved = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert [r["strategy"] for r in saved] == ["scratch", "feature", "hybrid"]
    # Test = every image of digits 5-9 not drawn for training (896 - 5 x 2).
    data = tmp_path / "out" / "data"
    assert len(list((data / "train_2").rglob("*.png"))) == 10
    assert len(list((data / "test").rglob("*.png"))) == 886
