"""Settings as plain data: metadata, unknown keys, Keras-style messages, and the CLI
options generated from them."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from graft.config import TrainConfig, fields, plans
from graft.config.phase import Phase
from graft.config.settings import read_settings
from graft.errors import GraftError, UnknownNameError


def test_every_setting_declares_its_metadata():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"], f.name
        assert f.metadata["group"] in fields.GROUPS, f.name
        if f.metadata["choices"]:
            assert f.default is None or f.default in f.metadata["choices"], f.name
    flags = fields.flags(TrainConfig)
    assert flags["finetune_lr"] == "--finetune-lr" and "phases" not in flags


def test_unknown_setting_is_one_error_with_a_did_you_mean():
    with pytest.raises(UnknownNameError) as info:
        TrainConfig(backbone="x.keras", finetune_lrr=1e-5)
    text = str(info.value)
    assert text.startswith(
        "Unknown setting 'finetune_lrr'. Did you mean 'finetune_lr'? Valid settings are"
    )
    assert "batch_size" in text and not isinstance(info.value, TypeError)


def test_train_rejects_an_unknown_setting_before_any_work(tmp_path):
    import graft

    with pytest.raises(UnknownNameError, match="Did you mean 'finetune_lr'"):
        graft.train(tmp_path, "mobilenet_v2", finetune_lrr=1e-5)


def test_messages_name_the_python_argument():
    with pytest.raises(
        GraftError, match=r"finetune_lr must be positive\. Received: finetune_lr=-1"
    ):
        TrainConfig(backbone="x.keras", finetune_lr=-1)
    with pytest.raises(GraftError, match=r"Received: batch_size=0"):
        TrainConfig(backbone="x.keras", batch_size=0)
    with pytest.raises(UnknownNameError, match="Unknown optimizer: 'adamx'. Did you mean"):
        TrainConfig(backbone="x.keras", optimizer="adamx")
    with pytest.raises(GraftError) as info:
        TrainConfig(backbone="x.keras", val_split=1.5)
    assert "--" not in str(info.value)


def test_config_file_unknown_keys_are_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("backbone: mobilenet_v2\nepoch: 3\n")
    with pytest.raises(UnknownNameError, match="Unknown setting 'epoch'. Did you mean 'epochs'"):
        read_settings(path)
    path.write_text("backbone: mobilenet_v2\nbatch_sise: 8\n")
    with pytest.raises(UnknownNameError, match="Did you mean 'batch_size'"):
        read_settings(path)
    # A run's config.yaml also records the run: those keys are not settings, not errors.
    path.write_text("backbone: mobilenet_v2\nepochs: 3\nversions: {keras: '3'}\ndata: {}\n")
    assert read_settings(path) == {"backbone": "mobilenet_v2", "epochs": 3}


def test_plan_file_unknown_field_has_a_did_you_mean(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("- name: a\n  epoch: 2\n")
    with pytest.raises(
        UnknownNameError, match="Unknown phase field 'epoch'. Did you mean 'epochs'"
    ):
        plans.load(path)
    with pytest.raises(UnknownNameError, match="Did you mean 'warmup_epochs'"):
        Phase.from_dict({"name": "a", "warmup_epoch": 1})


def _cli(*args, **env):
    return subprocess.run(
        [sys.executable, "-m", "graft.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_help_imports_no_tensorflow():
    code = (
        "import sys\n"
        "from graft.cli import main\n"
        "for args in (['--help'], ['train', '--help'], ['lr-find', '--help']):\n"
        "    assert main(args) == 0\n"
        "bad = sorted(m for m in ('keras', 'tensorflow') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Optimisation options" in done.stdout and "Speed options" in done.stdout


def test_cli_choice_typo_fails_at_parse_time(tmp_path):
    done = _cli("train", tmp_path, "-b", "x.keras", "-o", tmp_path / "r", "--optimizer", "adamm")
    assert done.returncode == 2 and "--optimizer" in done.stderr and "adamw" in done.stderr


def test_cli_prints_flags_not_argument_names(tmp_path, capsys):
    from graft.cli import main

    code = main(["train", str(tmp_path), "-b", "x.keras", "-o", str(tmp_path / "r"),
                 "--finetune-lr", "-1"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--finetune-lr must be positive. Received: --finetune-lr -1" in err, err


def test_cli_config_file_with_an_unknown_key_is_one_line(tmp_path, capsys):
    from graft.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("backbone: mobilenet_v2\nbatch_sise: 8\n")
    code = main(["train", str(tmp_path), "--config", str(path), "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "batch_sise" in err and "Did you mean 'batch_size'" in err


def test_to_flags_maps_known_settings_only():
    from graft.cli.options import to_flags

    assert (
        to_flags("lr must be positive. Received: lr=0") == "--lr must be positive. Received: --lr 0"
    )
    assert to_flags("pass gradual_blocks=N") == "pass --gradual-blocks N"
    assert to_flags("Received: backbone_lr=1") == "Received: backbone_lr=1"  # a phase field
    assert to_flags("plan.yaml: phase 1: Received: lr=0") == "plan.yaml: phase 1: Received: lr=0"


def test_cli_flags_are_derived_from_every_command():
    """Library messages name Python arguments; the CLI names the flags of its commands."""
    from graft.cli.main import app
    from graft.cli.options import command_flags, to_flags

    flags = command_flags(app)
    assert flags["out"] == "--out" and flags["top_k"] == "--top-k"
    assert flags["fmt"] == "--format" and flags["overwrite=True"] == "--overwrite"
    message = "out=runs/x is not empty. HINT: pass overwrite=True, or safe_mode=False."
    assert (
        to_flags(message, flags)
        == "--out runs/x is not empty. HINT: pass --overwrite, or --unsafe."
    )
    assert to_flags("top_k must be at least 1. Received: top_k=0", flags) == (
        "--top-k must be at least 1. Received: --top-k 0"
    )


def test_library_errors_name_python_arguments(tmp_path):
    """A Python user reads argument names, not flags (Keras's 'Received: x=...' style)."""
    import graft
    from graft.errors import GraftError

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(GraftError) as info:
        graft.train(tmp_path, "mobilenet_v2", out=tmp_path / "x", batch_size=0)
    assert "batch_size" in str(info.value) and "--" not in str(info.value)
