"""Issue 24, what the terminal shows (point 6's remnants): the Python API as quiet as the
CLI, and no Keras bar left behind by the feature cache on a live terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys

TF_NOISE = re.compile(r"absl|oneDNN|cuda|cuInit|I0000|E0000|W0000|cpu_feature_guard")


def test_python_api_prints_no_tensorflow_start_up_lines(tmp_path, digits_folder, cnn_file):
    script = (
        "import graft\n"
        f"graft.train({str(digits_folder)!r}, backbone={str(cnn_file)!r}, "
        f"out={str(tmp_path / 'run')!r}, cut='block3_pool', strategy='feature', epochs=1, "
        "batch_size=16, log=lambda _: None, verbose=0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not TF_NOISE.search(done.stderr + done.stdout), done.stderr[-3000:]
    assert done.stderr.strip() == "", done.stderr[-3000:]


def test_cache_pass_leaves_no_keras_bar_on_a_live_terminal(monkeypatch, capfd):
    import keras
    import numpy as np
    import tensorflow as tf

    from graft import progress
    from graft.training import cache

    monkeypatch.setattr(progress, "live", lambda stream=None: True)
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    images = np.zeros((10, 4, 4, 3), "float32")
    for given in (images, tf.data.Dataset.from_tensor_slices(images).batch(4)):
        assert cache.compute(model, given, verbose=1).shape == (10, 3)
    printed = capfd.readouterr()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", printed.out + printed.err)  # colours off
    assert not re.search(r"\d+/\d+ ━+.*step", plain), plain
