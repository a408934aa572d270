"""bench/transfer_experiment.py: strategies resolved at run time, mean ± std table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from graft.config.strategies import STRATEGIES

PATH = Path(__file__).resolve().parents[1] / "bench" / "transfer_experiment.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("transfer_experiment", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_strategies_missing_at_run_time_are_skipped(bench):
    run, skipped, _ = bench.available(["scratch", "feature", "no-such-strategy"])
    assert run == ["scratch", "feature"] and skipped == ["no-such-strategy"]
    run, skipped, _ = bench.available(bench.WANTED)
    extra = {*bench.BASELINES, "auto"}  # not graft strategies, always run
    assert set(run) == (extra | set(STRATEGIES)) & set(bench.WANTED)


def test_table_is_mean_and_sample_std_over_seeds(bench):
    rows = [
        dict(labels_per_class=5, strategy="feature", l2sp=0.0, seed=s, test_accuracy=a, cka=1.0,
             cosine=1.0, source_accuracy_after=0.9, seconds=2.0)
        for s, a in enumerate((0.5, 0.7, 0.9))
    ]  # fmt: skip
    line = bench.table(rows).splitlines()[2]
    assert line.startswith("| 5 | feature | - | 0.700 ± 0.200 | 1.000 ± 0.000 |")


def test_defaults_rows_pass_only_the_strategy(bench):
    run, skipped, _ = bench.available(["feature@defaults", "auto@defaults", "nope@defaults"])
    assert run == ["feature@defaults", "auto@defaults"] and skipped == ["nope@defaults"]
    assert bench.settings_for("hybrid@defaults", 0.5) == {"strategy": "hybrid"}
    assert bench.settings_for("hybrid", 0.5)["epochs"] == 10  # the equal budget stays
