"""``--distribute mirrored`` on JAX: ``keras.distribution.DataParallel`` over local devices.

Runs in a JAX interpreter (this one under ``KERAS_BACKEND=jax``; from the TensorFlow
venv, ``GRAFT_TEST_PYTHON_JAX``; skipped otherwise) with two host devices, made either by
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` or by graft's ``devices=2``. A
graft-built model fitted on NumPy arrays under the distribution ends with the weights of
the same fit on one device.
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

#: argv: mode ("xla-flags" or "devices"). Prints one JSON line.
_SCRIPT = r"""
import json, sys
import numpy as np
import keras
from graft.core.loaders import from_model
from graft.core.model import HeadConfig, build_model
from graft.training import distribute

mode = sys.argv[1]
dist = distribute.Distribution.from_settings("mirrored", 2 if mode == "devices" else 0)


def fit(scope):
    keras.utils.set_random_seed(5)
    with scope:
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(8, 3, padding="same", name="block1_conv")(inputs)
        x = keras.layers.BatchNormalization(name="block1_bn")(x)
        x = keras.layers.ReLU(name="block1_relu")(x)
        x = keras.layers.MaxPooling2D(name="block1_pool")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        cnn = keras.Model(inputs, keras.layers.Dense(4, name="old_head")(x))
        model = build_model(from_model(cnn, cut="block1_pool"), 3, HeadConfig((8,), 0.0))
        inside = keras.distribution.distribution()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (64, 16, 16, 3)).astype("float32")
        y = np.arange(64) % 3
        batch = 8 * dist.replicas
        model.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0)
    return model, inside


model, inside = fit(dist.scope())
plain = distribute.Distribution(None)
reference, _ = fit(plain.scope())
shipped = dist.finished(model)
diff = max(
    float(np.max(np.abs(a - b))) for a, b in zip(shipped.get_weights(), reference.get_weights())
)
print(json.dumps({
    "kind": type(inside).__name__,
    "devices": [str(d) for d in inside.device_mesh.devices.flatten()] if inside else [],
    "replicas": dist.replicas,
    "multiple": dist.batch_multiple,
    "summary": dist.summary(8),
    "after": keras.distribution.distribution() is None,
    "diff": diff,
    "changed": float(np.max(np.abs(shipped.get_weights()[-1]))),
}))
"""


def _jax_python() -> str:
    if BACKEND == "jax":
        return sys.executable
    if BACKEND != "tensorflow":  # CI's JAX job runs these; the torch job need not again
        pytest.skip("run under KERAS_BACKEND=jax, or from the TensorFlow venv")
    python = os.environ.get("GRAFT_TEST_PYTHON_JAX")
    if not python:
        pytest.skip("no JAX here (run under KERAS_BACKEND=jax, or set GRAFT_TEST_PYTHON_JAX)")
    return python


def _run(mode: str, env: dict | None = None):
    environ = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONWARNINGS": "ignore"}
    environ.pop("XLA_FLAGS", None)
    environ.update(env or {})
    done = subprocess.run(
        [_jax_python(), "-c", _SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=600,
        env=environ,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["xla-flags", "devices"])
def test_data_parallel_on_two_host_devices_trains_like_one_device(mode):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"} if mode == "xla-flags" else {}
    result = _run(mode, env)
    assert result["kind"] == "DataParallel", result
    assert len(result["devices"]) == 2 and result["replicas"] == 2, result
    assert result["multiple"] == 2  # DataParallel needs batches that split evenly
    assert result["summary"]["strategy"] == "DataParallel"
    assert result["summary"]["global_batch"] == 16
    assert result["after"] is True  # the scope leaves no global distribution behind
    assert result["changed"] > 0
    assert result["diff"] < 1e-4, result


def test_one_device_is_a_plain_run():
    script = (
        "from graft.training import distribute\n"
        "print(distribute.Distribution.from_settings('mirrored', 0).strategy)\n"
    )
    environ = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONWARNINGS": "ignore"}
    environ.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [_jax_python(), "-c", script], capture_output=True, text=True, timeout=300, env=environ
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "None"


@pytest.mark.parametrize(
    "backend, name, message",
    [
        ("torch", "mirrored", "distribute=mirrored runs on TensorFlow and JAX, not on torch."),
        ("jax", "multi-worker", "distribute=multi-worker (TF_CONFIG) needs TensorFlow"),
    ],
)
def test_what_a_backend_cannot_distribute_is_refused_in_one_line(
    backend, name, message, monkeypatch
):
    from graft import _backend
    from graft.errors import GraftError
    from graft.training import distribute

    monkeypatch.setattr(_backend, "name", lambda: backend)
    with pytest.raises(GraftError) as caught:
        distribute.strategy(name)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_determinism_off_tensorflow_needs_no_tensorflow(monkeypatch):
    """``--deterministic`` on JAX sets XLA's deterministic GPU ops; datasets that are not
    tf.data pass through ``deterministic`` untouched."""
    from graft import _backend
    from graft.training import distribute

    monkeypatch.setattr(_backend, "name", lambda: "jax")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # must not be needed
    distribute.enable_determinism()
    distribute.enable_determinism()  # once only
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=2",
        "--xla_gpu_deterministic_ops=true",
    ]
    data = [1, 2, 3]
    assert distribute.deterministic(data) is data
    assert distribute.deterministic(None) is None


def test_neutral_reader_leaves_out_what_does_not_split_evenly():
    """``Batches.split_evenly``: each epoch reads its order less the last ``rows % n`` rows,
    so every batch splits over ``n`` devices; a batch size that cannot is refused."""
    import numpy as np

    from graft.data import neutral
    from graft.data.order import epoch_order
    from graft.errors import GraftError
    from graft.training.feed import Inputs, split_evenly

    x = np.arange(35, dtype="float32").reshape(35, 1)
    train = neutral.array_batches(x, np.arange(35), batch_size=16, shuffle=True, seed=3)
    val = neutral.array_batches(x[:7], np.arange(7), batch_size=16)
    split_evenly(Inputs(None, train, val), 2)
    assert (len(train), len(val)) == (3, 1)
    for epoch in (0, 1):
        train.set_epoch(epoch)
        sizes = [len(train[i][1]) for i in range(len(train))]
        assert sizes == [16, 16, 2]
        seen = np.concatenate([train[i][1] for i in range(len(train))])
        np.testing.assert_array_equal(seen, epoch_order(35, 3, epoch)[:34])
    np.testing.assert_array_equal(val[0][1], np.arange(6))
    split_evenly(Inputs(None, train), 1)  # one device: every row again
    assert [len(train[i][1]) for i in range(len(train))] == [16, 16, 3]
    with pytest.raises(GraftError, match="cannot be split evenly over 3 devices"):
        train.split_evenly(3)


#: Fits a graft model on a neutral reader of 35 rows (batch 16: a last batch of 3) under
#: DataParallel on 2 host devices, the reader split as the trainer splits it; prints JSON.
_READER_SCRIPT = r"""
import json
import numpy as np
import keras
from graft.data import neutral
from graft.training import distribute
from graft.training.feed import Inputs, split_evenly

dist = distribute.Distribution.from_settings("mirrored", 0)
rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (35, 6)).astype("float32")
y = np.arange(35) % 3


def fit(scope, split):  # split: "auto" (the distribution's multiple), a number, or 0
    keras.utils.set_random_seed(5)
    with scope:
        inputs = keras.Input((6,))
        model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
        train = neutral.array_batches(x, y, batch_size=16, shuffle=True, seed=1)
        multiple = distribute.Distribution(keras.distribution.distribution()).batch_multiple
        if split:
            split_evenly(Inputs(model, train), multiple if split == "auto" else split)
        try:
            model.fit(train, epochs=2, verbose=0, callbacks=[neutral.EpochOrder(train)])
        except Exception as exc:
            return None, multiple, type(exc).__name__
    return model, multiple, None


model, multiple, _ = fit(dist.scope(), "auto")
reference, one, _ = fit(distribute.Distribution(None).scope(), 2)  # the same 34 rows
_, _, unsplit = fit(dist.scope(), 0)
print(json.dumps({
    "multiple": multiple,
    "one": one,
    "unsplit": unsplit,
    "diff": max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(dist.finished(model).get_weights(), reference.get_weights())
    ),
}))
"""


def test_neutral_reader_splits_evenly_under_data_parallel():
    """Without the split the last batch of 3 fails on 2 devices (jax's IndivisibleError);
    with it the run trains on 34 rows an epoch, as one device does on the same rows."""
    environ = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONWARNINGS": "ignore"}
    environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    done = subprocess.run(
        [_jax_python(), "-c", _READER_SCRIPT],
        capture_output=True,
        text=True,
        timeout=600,
        env=environ,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["multiple"] == 2 and result["one"] == 1, result
    assert result["unsplit"] == "IndivisibleError", result  # what the split avoids
    assert result["diff"] < 1e-5, result
