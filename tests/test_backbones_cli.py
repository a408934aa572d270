"""``graft backbones``: the published figures, filters and sorting, answered without
TensorFlow; ``--measure`` times the forward pass."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from graft.cli import main
from graft.config import catalog
from graft.core.registry import REGISTRY
from graft.errors import GraftError


def _rows(capsys, *args) -> list[dict]:
    assert main(["backbones", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_catalog_has_a_row_for_every_registry_backbone():
    assert list(catalog.CATALOG) == list(REGISTRY)
    for name, facts in catalog.CATALOG.items():
        assert facts.params_m > 0 and facts.top1 is not None, name
        assert REGISTRY[name].constructor == facts.constructor


def test_table_shows_the_published_columns(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:5] == ["name", "params", "MB", "top-1", "top-5"]
    resnet50 = next(line for line in out.splitlines() if line.startswith("resnet50 "))
    assert resnet50.split()[1:5] == ["25.6", "98", "74.9", "92.1"]  # Keras's table
    assert "convnext_xlarge" in out and "Keras's published table" in out


def test_family_max_params_and_sort_filter_the_rows(capsys):
    rows = _rows(capsys, "--family", "mobilenet", "--max-params", "4M", "--sort", "params")
    assert [r["name"] for r in rows] == ["mobilenet_v3_small", "mobilenet_v2"]
    assert {"params_m", "size_mb", "top1", "top5", "blocks"} <= set(rows[0])
    best = _rows(capsys, "--sort", "top1")
    assert best[0]["name"] == "convnext_xlarge"
    assert [r["top1"] for r in best] == sorted((r["top1"] for r in best), reverse=True)
    assert len(_rows(capsys, "--max-params", "500k")) == 0
    small = _rows(capsys, "--family", "efficientnet", "--max-params", "8")
    assert {r["name"] for r in small} == {
        "efficientnet_b0",
        "efficientnet_b1",
        "efficientnet_v2_b0",
    }


def test_bad_max_params_is_one_line(capsys):
    assert main(["backbones", "--max-params", "lots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-params lots" in err
    assert main(["backbones", "--family", "resnt"]) == 2
    with pytest.raises(GraftError, match="max_params=-"):
        catalog.parse_count("-3")


def test_backbones_does_not_import_tensorflow():
    code = (
        "import sys; from graft.cli import main; assert main(['backbones']) == 0; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_measure_times_the_forward_pass(capsys):
    (row,) = _rows(
        capsys, "--family", "mobilenet", "--max-params", "3", "--measure", "--image-size", "32"
    )
    assert row["name"] == "mobilenet_v3_small" and row["image_size"] == 32
    assert row["images_per_s"] > 0 and row["batch_size"] == 32
    assert 0 < row["backbone_params"] < row["params_m"] * 1e6  # no ImageNet top
