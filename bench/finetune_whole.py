"""Fine-tuning as WHOLE processes: the classic recipe vs ``graft train``, with and without
the activation cache (issue 14, items 2 and 3).

    python bench/finetune_whole.py            # medians of 3 runs per command
    python bench/finetune_whole.py --quick    # 1 run each, fewer images/epochs for RSS

Every command is a fresh ``python`` subprocess timed from start to exit (imports, data,
training, saving, reports: what a user waits for). Data: the first 901 scikit-learn
digits, upscaled to 32 px PNG files in class folders (10 classes). Cases:

* MobileNetV2 (alpha 1.0) at 96 px and ResNet50 at 64 px, each first trained 3 epochs on
  the other 896 digits (a pre-trained backbone the bench makes: accuracies mean something),
  10 epochs, the layers graft's ``blocks:2`` unfreezes:
  - classic: ``image_dataset_from_directory`` (20 % validation), the same backbone with
    exactly those layers trainable (BN frozen), GAP + Dense(128) + Dropout + softmax,
    ``fit`` 10 epochs (a script written to a temporary folder);
  - ``graft train DATA --strategy finetune --unfreeze blocks:2`` with ``--no-cache``
    and with the cache (a cold cache folder per run).
  Printed: wall medians, classic/graft ratios, final val accuracy (cache vs no cache).
  Targets: classic/graft >= 2.5x; |val acc (cache) - val acc (no cache)| <= 0.01.
  With ``--baseline-src OLD/src`` the two graft commands are also run by the graft in
  OLD/src, interleaved with the new ones (same load): the before/after ratios.
* Peak RSS of ``graft train`` with the activation cache on 5000 vs 500 images (target
  <= 1.3x), from ``getrusage(RUSAGE_CHILDREN)`` of a wrapper process per run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # this process imports TensorFlow too
PY = sys.executable
SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": SRC}
CASES = {"mobilenet_v2": (96, ["--alpha", "1.0"]), "resnet50": (64, [])}

# What the classic recipe and the floor share: data, the backbone with exactly the layers
# graft's blocks:2 unfreezes (BN frozen), the applications' own preprocess_input as layers.
COMMON = r"""
import json, sys
import numpy as np
import keras
import tensorflow as tf
data, size, name, names = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
epochs = int(sys.argv[5])
train, val = keras.utils.image_dataset_from_directory(
    data, validation_split=0.2, subset="both", seed=0, image_size=(size, size), batch_size=BATCH)
apps = keras.applications
app = {"mobilenet_v2": apps.MobileNetV2, "resnet50": apps.ResNet50}[name]
kw = {"alpha": 1.0} if name == "mobilenet_v2" else {}
base = app(input_shape=(size, size, 3), include_top=False, weights=sys.argv[6], **kw)
unfreeze = set(json.load(open(names)))
for layer in base.layers:
    bn = isinstance(layer, keras.layers.BatchNormalization)
    layer.trainable = layer.name in unfreeze and not bn
inputs = keras.Input((size, size, 3))
if name == "mobilenet_v2":
    pre = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
else:  # caffe: RGB -> BGR, minus the ImageNet means
    pre = keras.layers.Lambda(lambda t: t[..., ::-1] - keras.ops.convert_to_tensor(
        [103.939, 116.779, 123.68]))(inputs)
def head(x):
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.layers.Dense(10, activation="softmax")(x)
def compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model
"""

CLASSIC = (
    COMMON.replace("BATCH", "32")
    + r"""
model = compiled(keras.Model(inputs, head(base(pre))))
h = model.fit(train, validation_data=val, epochs=epochs, verbose=0)
print("VAL_ACC", h.history["val_accuracy"][-1])
"""
)

# The same fine-tuning written by hand the fast way: one pass of the frozen bottom over the
# images (compiled, batches of 64), then the unfrozen top + head trained on those
# activations held in memory. Not graft: the floor for a run that caches activations
# (imports, one decode, one bottom pass, the epochs of the top); classic / floor bounds
# what any such tool can reach.
FLOOR = (
    COMMON.replace("BATCH", "64")
    + r"""
first = next(layer for layer in base.layers if layer.name in unfreeze)
bottom = keras.Model(inputs, keras.Model(base.input, first.input)(pre))
forward = tf.function(lambda t: bottom(t, training=False),
                      input_signature=[tf.TensorSpec((None, size, size, 3))])
def activations(ds):
    xs, ys = [], []
    for images, labels in ds:  # one pass: activations and labels in the same order
        xs.append(forward(images).numpy())
        ys.append(labels.numpy())
    return np.concatenate(xs), np.concatenate(ys)
xt, yt = activations(train)
xv, yv = activations(val)
top_in = keras.Input(xt.shape[1:])
top = compiled(keras.Model(top_in, head(keras.Model(first.input, base.output)(top_in))))
h = top.fit(xt, yt, validation_data=(xv, yv), epochs=epochs, batch_size=32, verbose=0)
print("VAL_ACC", h.history["val_accuracy"][-1])
"""
)

# A backbone that has learnt something, so that accuracies mean something (random weights
# leave every run at chance): the whole network trained 3 epochs on the OTHER 896 digits,
# then its weights (include_top=False) saved for every command of the bench.
PRETRAIN = r"""
import sys
import keras
data, size, name, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
keras.utils.set_random_seed(0)
train = keras.utils.image_dataset_from_directory(data, image_size=(size, size), batch_size=32)
apps = keras.applications
app = {"mobilenet_v2": apps.MobileNetV2, "resnet50": apps.ResNet50}[name]
kw = {"alpha": 1.0} if name == "mobilenet_v2" else {}
base = app(input_shape=(size, size, 3), include_top=False, weights=None, **kw)
for layer in base.layers:  # moving statistics that settle in ~80 steps (0.999: never)
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = 0.9
inputs = keras.Input((size, size, 3))
if name == "mobilenet_v2":
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
else:
    x = keras.layers.Lambda(lambda t: t[..., ::-1] - keras.ops.convert_to_tensor(
        [103.939, 116.779, 123.68]))(inputs)
x = keras.layers.GlobalAveragePooling2D()(base(x))
model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
h = model.fit(train, epochs=3, verbose=0)
base.save_weights(out)
print("PRETRAIN_ACC", h.history["accuracy"][-1])
"""

NAMES = r"""
import json, sys
from graft import _quiet
_quiet.import_backend()
from graft.core.backbones import load_backbone
from graft.core.freezing import select
name, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
kw = {"alpha": 1.0} if name == "mobilenet_v2" else {}
bb = load_backbone(name, weights=None, image_size=size, **kw)
json.dump([l.name for l in select(bb.model, bb.blocks, "blocks:2")], open(out, "w"))
"""

RSS = "import resource,subprocess,sys; subprocess.run(sys.argv[1:], check=True); "
RSS += "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"


def write_digits(root: Path, count: int, start: int = 0) -> Path:
    """``count`` digits from the ``start``-th (repeating the 1797 if needed) as 32 px PNGs
    in class folders."""
    sys.path.insert(0, SRC)
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(start, start + count):
        image = digits.images[i % len(digits.images)]
        pixels = (np.kron(image, np.ones((4, 4))) * (255 / 16)).astype("uint8")
        folder = root / str(digits.target[i % len(digits.images)])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).convert("RGB").save(folder / f"{i:05d}.png")
    return root


def run(args: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(args, env=env or ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def graft_cmd(data, out, name, size, extra, epochs, cache: bool, cache_dir, weights="none"):
    return [
        PY, "-m", "graft.cli", "train", str(data), "--backbone", name, "--weights", str(weights),
        "--image-size", str(size), *extra, "--strategy", "finetune", "--unfreeze", "blocks:2",
        "--epochs", str(epochs), "--val-split", "0.2", "--out", str(out),
        "--cache" if cache else "--no-cache", "--cache-dir", str(cache_dir),
    ]  # fmt: skip


def val_acc(run_dir: Path) -> float:
    return float(json.loads((run_dir / "metrics.json").read_text())["val_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run each, smaller RSS case")
    parser.add_argument("-n", type=int, default=3, help="runs per command (median)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--cases", default="mobilenet_v2,resnet50")
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument(
        "--baseline-src",
        help="also time graft from this OLD/src (interleaved, same load): before/after",
    )
    a = parser.parse_args()
    n = 1 if a.quick else a.n
    tmp = Path(tempfile.mkdtemp(prefix="graft-finetune-bench-"))
    try:
        _bench(a, n, tmp)
    finally:  # data, runs and caches: hundreds of MB
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(a, n: int, tmp: Path) -> None:
    data = write_digits(tmp / "digits", 901)
    (tmp / "classic.py").write_text(CLASSIC)
    (tmp / "floor.py").write_text(FLOOR)
    (tmp / "pretrain.py").write_text(PRETRAIN)
    other = write_digits(tmp / "other-digits", 1797 - 901, start=901)
    (tmp / "names.py").write_text(NAMES)
    import keras
    import tensorflow as tf

    print("# Fine-tuning, whole processes (bench/finetune_whole.py)")
    print(f"date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.platform()}; "
          f"{platform.processor() or platform.machine()}; {os.cpu_count()} CPUs; Python "
          f"{platform.python_version()}; TensorFlow {tf.__version__}; Keras {keras.__version__}; "
          f"medians of {n}; {a.epochs} epochs; 901 PNGs (32 px files)\n")  # fmt: skip
    print("| backbone | classic s | graft --no-cache s | graft (activation cache) s "
          "| floor s | classic/graft | classic/floor | graft/floor "
          "| val acc classic / no cache / cache |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in a.cases.split(","):
        size, extra = CASES[name]
        names = tmp / f"{name}.json"
        run([PY, str(tmp / "names.py"), name, str(size), str(names)])
        weights = tmp / f"{name}-pretrained.weights.h5"
        _, out = run([PY, str(tmp / "pretrain.py"), str(other), str(size), name, str(weights)])
        pretrain_acc = float(out.split("PRETRAIN_ACC")[-1].split()[0])
        keys = ["classic", "plain", "cache", "floor"]
        graft_runs = [("plain", False, ENV), ("cache", True, ENV)]
        if a.baseline_src:  # the same commands by the old graft, under the same load
            old = {**ENV, "PYTHONPATH": str(Path(a.baseline_src).resolve())}
            graft_runs += [("plain_before", False, old), ("cache_before", True, old)]
            keys += ["plain_before", "cache_before"]
        walls: dict[str, list[float]] = {k: [] for k in keys}
        accs: dict[str, list[float]] = {k: [] for k in keys}
        summary = None
        for i in range(n):
            for script in ("classic", "floor"):
                seconds, out = run([PY, str(tmp / f"{script}.py"), str(data), str(size), name,
                                    str(names), str(a.epochs), str(weights)])  # fmt: skip
                walls[script].append(seconds)
                accs[script].append(float(out.split("VAL_ACC")[-1].split()[0]))
            for key, cache, env in graft_runs:
                out_dir, cache_dir = tmp / f"{name}-{key}-{i}", tmp / f"cache-{name}-{key}-{i}"
                cmd = graft_cmd(
                    data, out_dir, name, size, extra, a.epochs, cache, cache_dir, weights
                )
                seconds, _ = run(cmd, env)
                walls[key].append(seconds)
                accs[key].append(val_acc(out_dir))
                if key == "cache":
                    metrics = json.loads((out_dir / "metrics.json").read_text())
                    summary = metrics.get("activation_cache")
        med = {k: statistics.median(v) for k, v in walls.items()}
        acc = {k: statistics.median(v) for k, v in accs.items()}
        classic, plain, cache, floor = (med[k] for k in ("classic", "plain", "cache", "floor"))
        print(
            f"| {name} {size} px | {classic:.1f} | {plain:.1f} | {cache:.1f} | {floor:.1f} "
            f"| {classic / cache:.2f}x (no cache {classic / plain:.2f}x) "
            f"| {classic / floor:.2f}x | {cache / floor:.2f}x "
            f"| {acc['classic']:.3f} / {acc['plain']:.3f} / {acc['cache']:.3f} "
            f"(diff {acc['cache'] - acc['plain']:+.3f}) |"
        )
        if a.baseline_src:
            before, after = (med["plain_before"], med["cache_before"]), (plain, cache)
            print(
                f"<!-- {name} graft before ({a.baseline_src}) / after, medians of {n} "
                f"interleaved: --no-cache {before[0]:.1f} / {after[0]:.1f} s "
                f"({after[0] / before[0]:.2f}x), cache {before[1]:.1f} / {after[1]:.1f} s "
                f"({after[1] / before[1]:.2f}x) -->"
            )
        print(
            f"<!-- {name} activation_cache: {json.dumps(summary)}; backbone pre-trained 3 "
            f"epochs on the other 896 digits (train accuracy {pretrain_acc:.3f}) -->"
        )
    if a.no_rss:
        return
    counts = (200, 2000) if a.quick else (500, 5000)
    rss = {}
    for count in counts:
        folder = write_digits(tmp / f"rss-{count}", count)
        size, extra = CASES["mobilenet_v2"]
        cmd = graft_cmd(folder, tmp / f"rss-run-{count}", "mobilenet_v2", size, extra, 1, True,
                        tmp / f"rss-cache-{count}")  # fmt: skip
        _, out = run([PY, "-c", RSS, *cmd])
        rss[count] = int(out.split("PEAK_RSS_KB")[-1].split()[0]) / 1024
    small, big = counts
    print(f"\nPeak RSS, graft train with the activation cache (mobilenet_v2 96 px, 1 epoch): "
          f"{small} images {rss[small]:.0f} MiB, {big} images {rss[big]:.0f} MiB, "
          f"ratio {rss[big] / rss[small]:.2f}x (target <= 1.3x)")  # fmt: skip


if __name__ == "__main__":
    main()
