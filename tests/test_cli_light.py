"""Commands that answer from their flags alone must not import TensorFlow or Keras
(importing them takes seconds): help texts and --print-plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: Runs the CLI in-process, then prints which heavy modules it imported (last line).
_WRAPPER = (
    "import json, sys\n"
    "from graft.cli.main import main\n"
    "code = main(sys.argv[1:])\n"
    "heavy = sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules)\n"
    "print(json.dumps({'code': code, 'heavy': heavy}))\n"
)


def _light(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    last = done.stdout.strip().splitlines()[-1]
    return done, json.loads(last)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["train", "--help"],
        ["train", "--backbone", "mobilenet_v2", "--strategy", "feature", "--print-plan"],
        ["train", "--backbone", "resnet50", "--strategy", "gradual", "--print-plan"],
    ],
    ids=["help", "train-help", "print-plan-feature", "print-plan-gradual"],
)
def test_answers_without_importing_tensorflow(args):
    done, result = _light(*args)
    assert result["code"] == 0, done.stderr
    assert result["heavy"] == [], f"{' '.join(args)} imported {result['heavy']}"
    if "--print-plan" in args:
        assert "Plan:" in done.stdout and "Head:" in done.stdout


def test_print_plan_from_a_plan_file_without_tensorflow(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("- {trainable: none, epochs: 2}\n- {trainable: 'blocks:1', epochs: 1}\n")
    done, result = _light("train", "--backbone", "mobilenet_v2", "--plan", plan, "--print-plan")
    assert result["code"] == 0, done.stderr
    assert result["heavy"] == []
    assert "Plan: custom" in done.stdout
