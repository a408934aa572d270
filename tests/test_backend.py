"""graft on any Keras backend: the commands that work without TensorFlow, and one line for
what does not (no backend installed; a command that still needs TensorFlow).

Marked ``backend``: the default (TensorFlow) suite runs them, and CI runs them again with
``KERAS_BACKEND=jax`` in a venv made with ``.[jax,test-neutral]``, where TensorFlow is not
installed. Every command runs in a subprocess on the backend of the environment; the one
line tests make TensorFlow (and the other backends) unimportable there by putting ``None``
in ``sys.modules``, which Python treats as "not installed", so they hold on both venvs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import pytest

pytestmark = pytest.mark.backend

BACKEND = keras.backend.backend()

#: Runs the CLI in-process after making the named packages unimportable; prints the exit
#: code and which heavy modules it imported (last line).
_WRAPPER = (
    "import json, sys\n"
    "for name in sys.argv[1].split(','):\n"
    "    if name:\n"
    "        sys.modules[name] = None\n"
    "from graft.cli.main import main\n"
    "code = main(sys.argv[2:])\n"
    "heavy = sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if sys.modules.get(m))\n"
    "print(json.dumps({'code': code, 'heavy': heavy}))\n"
)


def _graft(*args, block=(), env=None, cwd=None):
    environ = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    environ = {k: v for k, v in environ.items() if v is not None}
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, ",".join(block), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
        cwd=cwd,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    return done, json.loads(lines[-1])


def _no_tensorflow_loaded(result):
    """On a backend other than TensorFlow, the command never imported TensorFlow."""
    if BACKEND != "tensorflow":
        assert "tensorflow" not in result["heavy"], result


def _one_line(done) -> str:
    err = done.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err


def test_help_and_backbones():
    done, result = _graft("--help")
    assert result["code"] == 0, done.stderr
    assert "inspect" in done.stdout and "train" in done.stdout
    done, result = _graft("backbones", "--family", "mobilenet")
    assert result["code"] == 0, done.stderr
    assert "mobilenet_v2" in done.stdout
    assert result["heavy"] == []


def test_cache_listing(tmp_path):
    done, result = _graft("cache", "--dir", tmp_path)
    assert result["code"] == 0, done.stderr
    assert result["heavy"] == []


def test_inspect_a_keras_file(cnn_file):
    done, result = _graft("inspect", cnn_file, "--cut", "block3_pool")
    assert result["code"] == 0, done.stderr
    assert "input 32x32x3" in done.stdout
    for block in ("block1", "block2", "block3"):
        assert block in done.stdout
    assert "keras" in result["heavy"]
    _no_tensorflow_loaded(result)


def test_inspect_a_registry_name_without_weights():
    done, result = _graft("inspect", "mobilenet_v2", "--alpha", "0.35", "--image-size", "32")
    assert result["code"] == 0, done.stderr
    assert "input 32x32x3" in done.stdout and "block_16" in done.stdout
    _no_tensorflow_loaded(result)


def test_print_plan(digits_folder):
    done, result = _graft(
        "train", digits_folder, "--backbone", "mobilenet_v2", "--strategy", "hybrid", "--print-plan"
    )
    assert result["code"] == 0, done.stderr
    assert "Plan: hybrid" in done.stdout and "blocks:2" in done.stdout
    assert result["heavy"] == []


def test_data_check(digits_folder):
    done, result = _graft("data", "check", digits_folder)
    assert result["code"] == 0, done.stderr
    assert "36 usable" in done.stdout
    _no_tensorflow_loaded(result)


def test_export_keras_format(cnn_file, tmp_path):
    out = tmp_path / "copy.keras"
    done, result = _graft("export", cnn_file, "--format", "keras", "-o", out)
    assert result["code"] == 0, done.stderr
    assert out.is_file() and "max abs diff 0.00e+00" in done.stdout
    _no_tensorflow_loaded(result)


#: A backend that is not TensorFlow for the lines below: the environment's own, else NumPy's
#: (Keras's inference-only backend, always installed), with TensorFlow unimportable.
OTHER = BACKEND if BACKEND != "tensorflow" else "numpy"


@pytest.mark.parametrize(
    "args, what",
    [
        (
            ["export", "{model}", "--format", "savedmodel", "-o", "{tmp}/sm"],
            "graft export --format savedmodel",
        ),
        (
            ["export", "{model}", "--format", "tflite", "-o", "{tmp}/m.tflite"],
            "graft export --format tflite",
        ),
    ],
    ids=["export-savedmodel", "export-tflite"],
)
def test_a_command_that_needs_tensorflow_says_so_in_one_line(
    args, what, digits_folder, cnn_file, tmp_path
):
    filled = [a.format(data=digits_folder, model=cnn_file, tmp=tmp_path) for a in args]
    done, result = _graft(*filled, block=("tensorflow",), env={"KERAS_BACKEND": OTHER})
    assert result["code"] == 2
    line = _one_line(done)
    assert line.startswith(f"graft: error: {what} needs TensorFlow for now"), line
    assert f"backend here is {OTHER}" in line and 'pip install "keras-graft[tensorflow]"' in line
    assert list(tmp_path.iterdir()) == [], "nothing written before the refusal"


def test_no_backend_installed_says_which_extra_to_add(cnn_file, tmp_path):
    """A plain ``pip install keras-graft``: Keras's default backend (TensorFlow) is missing
    and so is every other; Keras itself would fail to import with a traceback."""
    env = {"KERAS_BACKEND": None, "KERAS_HOME": str(tmp_path)}  # no keras.json: the default
    block = ("tensorflow", "jax", "torch")
    done, result = _graft("inspect", cnn_file, block=block, env=env)
    assert result["code"] == 2
    line = _one_line(done)
    assert line.startswith("graft: error: No Keras backend"), line
    assert 'pip install "keras-graft[tensorflow]"' in line and "[jax]" in line
    assert result["heavy"] == []
    # What answers without Keras still works.
    done, result = _graft("backbones", "--family", "mobilenet", block=block, env=env)
    assert result["code"] == 0, done.stderr


def test_default_backend_missing_but_another_installed_names_it(cnn_file, tmp_path):
    env = {"KERAS_BACKEND": None, "KERAS_HOME": str(tmp_path)}
    if BACKEND not in ("jax", "torch"):
        pytest.skip("needs a second real backend (the JAX or torch venv)")
    block = ("tensorflow", "torch" if BACKEND == "jax" else "jax")  # only BACKEND is left
    done, result = _graft("inspect", cnn_file, block=block, env=env)
    assert result["code"] == 2
    line = _one_line(done)
    assert f"backend here is tensorflow, which is not installed; {BACKEND} is" in line, line
    assert f"KERAS_BACKEND={BACKEND}" in line


def test_unknown_backend_name(cnn_file):
    done, result = _graft("inspect", cnn_file, env={"KERAS_BACKEND": "tensorflo"})
    assert result["code"] == 2
    assert "KERAS_BACKEND='tensorflo' is not a Keras backend" in _one_line(done)


@pytest.mark.parametrize(
    "env_backend, json_backend, expected",
    [("jax", "torch", "jax"), (None, "torch", "torch"), (None, None, "tensorflow")],
)
def test_backend_name_as_keras_finds_it(tmp_path, env_backend, json_backend, expected):
    """KERAS_BACKEND, else keras.json's, else TensorFlow: read without importing Keras."""
    if json_backend:
        (tmp_path / "keras.json").write_text(json.dumps({"backend": json_backend}))
    code = "import sys; from graft import _backend; print(_backend.name(), 'keras' in sys.modules)"
    env = {**os.environ, "KERAS_HOME": str(tmp_path)}
    env.pop("KERAS_BACKEND", None)
    if env_backend:
        env["KERAS_BACKEND"] = env_backend
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.stdout.split() == [expected, "False"], done.stderr


def _hub_file(path):
    """A ``.keras`` archive whose config names a KerasHub class (all graft reads first)."""
    import zipfile

    config = {"module": "keras_hub.src.models.vit.vit_backbone", "class_name": "ViTBackbone"}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", json.dumps({"keras_version": keras.__version__}))
    return path


def test_kerashub_needs_tensorflow_says_why_and_what_to_do(monkeypatch):
    """On any venv: with TensorFlow and keras-hub "not installed", ``hub.require`` says
    that keras-hub needs tensorflow-text (so TensorFlow) and what to do instead."""
    from graft import _backend
    from graft.core import hub
    from graft.errors import GraftError

    monkeypatch.setattr(_backend, "installed", lambda name: name not in ("tensorflow", "keras_hub"))
    with pytest.raises(GraftError) as caught:
        hub.require()
    assert "tensorflow-text" in str(caught.value) and "keras-graft[tensorflow,hub]" in str(
        caught.value
    )
    monkeypatch.setattr(_backend, "installed", lambda name: name != "keras_hub")
    with pytest.raises(GraftError, match="built from KerasHub layers"):
        hub.require()  # with TensorFlow there, installing keras-hub is the answer


@pytest.mark.skipif(
    BACKEND == "tensorflow", reason="Keras needs a backend other than TensorFlow to load here"
)
def test_a_kerashub_backbone_without_tensorflow_is_refused_in_one_line(tmp_path):
    hub_file = _hub_file(tmp_path / "vit.keras")
    done, result = _graft("inspect", hub_file, block=("tensorflow", "keras_hub"), cwd=tmp_path)
    assert result["code"] != 0
    line = _one_line(done)
    assert "KerasHub backbones need TensorFlow" in line and "tensorflow-text" in line, line
    assert "keras-graft[tensorflow,hub]" in line, line
    _no_tensorflow_loaded(result)
