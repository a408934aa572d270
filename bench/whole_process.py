"""Whole-process speed: what a user waits for, from the shell prompt to the prompt.

    python bench/whole_process.py            # medians of 3 after a warm-up (~5 minutes, 2 cores)
    python bench/whole_process.py --quick    # one timed run of each (after the warm-up)
    python bench/whole_process.py --profile  # also: where graft's time goes (timestamped log)

Every measurement is a separate Python process, timed from spawn to exit, on the same
901 PNG files (scikit-learn digits 0-4, 32 px, one folder per class), MobileNetV2
(alpha 1.0) at 96 px whose random weights the bench writes once (no network):

(a) classic: the classic Keras recipe as a script (``image_dataset_from_directory`` with
    a 0.2 validation split, a frozen ``keras.applications.MobileNetV2``, GAP + Dense 128
    + Dropout + Dense, ``fit`` 10 epochs).
(b) graft: ``graft train DATA --strategy feature --epochs 10`` exactly as a user runs it,
    with a cold feature cache (``GRAFT_CACHE`` points to a fresh folder every run).
(c) floor: import Keras/TensorFlow, decode every image once, one forward pass of the
    backbone (+ pooling), save the features. No training at all.
(d) graft, warm: the second feature-extraction run on the same data and backbone with
    other head settings (``--head 64 --dropout 0.3 --lr 0.003``), the feature cache
    filled by an earlier run: what iterating on a head costs.
(e) warm floor: what (d) cannot avoid: import Keras/TensorFlow, read the cached features
    (``np.load``), train the same head 10 epochs on them (Keras ``fit``, the same split
    sizes), assemble backbone + head and save the model (``.keras``).

``--warm`` adds (d) and (e) (targets: (d) <= 1.3x (e), classic/(d) >= 3.7x); ``--only-warm``
times just (a), (d) and (e); with ``--baseline-src OLD/src`` also (d0): (d) run by the graft
in that folder, interleaved with the others (before/after under the same load).

Also timed: ``graft --help``, ``graft train --help`` and ``graft train --print-plan``.
Prints a markdown table with the ratios classic/graft (target >= 3.5x) and graft/floor
(target <= 1.4x) and the machine, versions and date; ``--save FILE`` writes it too.
"""

from __future__ import annotations

import argparse
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

SIZE = 96
EPOCHS = 10
CLASSES = (0, 1, 2, 3, 4)  # 901 images

SETUP = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from pathlib import Path
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
import keras
CLASSES = (CLASSES_HERE)
root, weights, size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
digits = load_digits()
small = (digits.images * (255.0 / 16.0)).clip(0, 255).astype("uint8")
for i, (im, label) in enumerate(zip(small, digits.target)):
    if label in CLASSES:
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        big = Image.fromarray(im).resize((32, 32), Image.BILINEAR).convert("RGB")
        big.save(folder / f"{i:05d}.png")
keras.utils.set_random_seed(0)
base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(size, size, 3))
base.save_weights(weights)
""".replace("CLASSES_HERE", ", ".join(str(c) for c in CLASSES) + ",")

CLASSIC = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
data, weights, size, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
keras.utils.set_random_seed(0)
train, val = keras.utils.image_dataset_from_directory(
    data, validation_split=0.2, subset="both", seed=0, image_size=(size, size), batch_size=32
)
base = keras.applications.MobileNetV2(weights=weights, include_top=False,
                                      input_shape=(size, size, 3))
base.trainable = False
inputs = keras.Input((size, size, 3))
x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
x = base(x, training=False)
x = keras.layers.GlobalAveragePooling2D()(x)
x = keras.layers.Dense(128, activation="relu")(x)
x = keras.layers.Dropout(0.2)(x)
outputs = keras.layers.Dense(len(train.class_names), activation="softmax")(x)
model = keras.Model(inputs, outputs)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
history = model.fit(train, validation_data=val, epochs=epochs, verbose=0)
print("val_accuracy", history.history["val_accuracy"][-1])
"""

FLOOR = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from pathlib import Path
import numpy as np
import keras
import tensorflow as tf
data, weights, size, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
paths = sorted(str(p) for p in Path(data).rglob("*.png"))
def load(path):
    image = tf.io.decode_png(tf.io.read_file(path), channels=3)
    return tf.image.resize(image, (size, size))
ds = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
ds = ds.batch(128).prefetch(tf.data.AUTOTUNE)
base = keras.applications.MobileNetV2(weights=weights, include_top=False,
                                      input_shape=(size, size, 3), pooling="avg")
inputs = keras.Input((size, size, 3))
model = keras.Model(inputs, base(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)))
features = model.predict(ds, verbose=0)
np.save(out, features)
print("features", features.shape)
"""

WARM_FLOOR = """
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
features_file, weights, size, epochs, out = sys.argv[1:6]
size, epochs = int(size), int(epochs)
saved = np.load(features_file)
x, y = saved["x"], saved["y"]
n_val = len(x) // 5
keras.utils.set_random_seed(0)
order = np.random.default_rng(0).permutation(len(x))
x, y = x[order], y[order]
classes = int(y.max()) + 1
features = keras.Input(x.shape[1:])
h = keras.layers.Dense(64, activation="relu")(features)
h = keras.layers.Dropout(0.3)(h)
head = keras.Model(features, keras.layers.Dense(classes, activation="softmax")(h))
head.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy",
             metrics=["accuracy"])
head.fit(x[n_val:], y[n_val:], validation_data=(x[:n_val], y[:n_val]), epochs=epochs,
         batch_size=32, verbose=0)
base = keras.applications.MobileNetV2(weights=weights, include_top=False,
                                      input_shape=(size, size, 3), pooling="avg")
inputs = keras.Input((size, size, 3))
model = keras.Model(inputs, head(base(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs))))
model.save(out)
print("saved", out)
"""

FEATURES = """
import sys
from pathlib import Path
import numpy as np
data, floor_features, out = sys.argv[1:4]
paths = sorted(str(p) for p in Path(data).rglob("*.png"))
names = sorted({Path(p).parent.name for p in paths})
y = np.array([names.index(Path(p).parent.name) for p in paths], "int32")
np.savez(out, x=np.load(floor_features), y=y)
"""


def timed(cmd: list[str], env: dict | None = None, log: Path | None = None) -> float:
    """Seconds from spawn to exit of ``cmd``; a failure stops the bench with its output."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    return seconds


def profiled(cmd: list[str], env: dict) -> tuple[float, list[tuple[float, str]]]:
    """Run ``cmd`` with unbuffered output; every line with the seconds since spawn."""
    env = {**env, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = [(time.perf_counter() - start, line.rstrip()) for line in proc.stdout]
    proc.wait()
    return time.perf_counter() - start, lines


def versions() -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import tensorflow as tf, keras, numpy, PIL; "
         "print(f'TensorFlow {tf.__version__}, Keras {keras.__version__}, "
         "NumPy {numpy.__version__}, Pillow {PIL.__version__}')"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    return out.stdout.strip()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPU cores, {cpu}; load average {load:.2f} at start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each (median)")
    parser.add_argument("--quick", action="store_true", help="one timed run of each")
    parser.add_argument("--profile", action="store_true", help="where graft's time goes")
    parser.add_argument("--save", type=Path, help="also write the markdown here")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also time `graft train` from this src/ folder (e.g. an older checkout), "
        "interleaved with the others: before/after under the same load",
    )
    parser.add_argument(
        "--warm", action="store_true", help="also (d) graft's warm second run and (e) its floor"
    )
    parser.add_argument("--only-warm", action="store_true", help="time only (a), (d) and (e)")
    args = parser.parse_args()
    args.warm = args.warm or args.only_warm
    runs = 1 if args.quick else args.runs
    py = sys.executable
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    root = Path(tempfile.mkdtemp(prefix="graft-whole-"))
    try:
        data, weights = root / "digits", root / "mobilenet_v2_random.weights.h5"
        scripts = {}
        sources = (("setup", SETUP), ("classic", CLASSIC), ("floor", FLOOR))
        sources += (("warm_floor", WARM_FLOOR), ("features", FEATURES))
        for name, text in sources:
            scripts[name] = root / f"{name}.py"
            scripts[name].write_text(text)
        timed([py, str(scripts["setup"]), str(data), str(weights), str(SIZE)], env)
        n_images = sum(1 for _ in data.rglob("*.png"))

        def graft_cmd(*extra: str) -> list[str]:
            return [py, "-m", "graft.cli", *extra]

        run_count = [0]

        def graft_train(src: Path | None = None) -> tuple[list[str], dict]:
            run_count[0] += 1
            cache = root / f"cache{run_count[0]}"  # cold: a fresh feature cache every run
            out = root / f"run{run_count[0]}"
            cmd = graft_cmd(
                "train", str(data), "--backbone", "mobilenet_v2", "--weights", str(weights),
                "--image-size", str(SIZE), "--strategy", "feature", "--epochs", str(EPOCHS),
                "--out", str(out),
            )  # fmt: skip
            run_env = {**env, "GRAFT_CACHE": str(cache)}
            if src is not None:
                run_env["PYTHONPATH"] = str(src.resolve())
            return cmd, run_env

        commands = {
            "classic": lambda: ([py, str(scripts["classic"]), str(data), str(weights),
                                 str(SIZE), str(EPOCHS)], env),  # fmt: skip
            "graft": graft_train,
            "floor": lambda: ([py, str(scripts["floor"]), str(data), str(weights), str(SIZE),
                               str(root / "features.npy")], env),  # fmt: skip
            "help": lambda: (graft_cmd("--help"), env),
            "train_help": lambda: (graft_cmd("train", "--help"), env),
            "print_plan": lambda: (graft_cmd("train", "--backbone", "mobilenet_v2",
                                             "--strategy", "feature", "--print-plan"), env),
        }  # fmt: skip
        if args.baseline_src is not None:
            commands["graft_baseline"] = lambda: graft_train(args.baseline_src)
        if args.warm:
            warm_cache = root / "warm-cache"

            def graft_warm(src: Path | None = None) -> tuple[list[str], dict]:
                cmd, run_env = graft_train(src)
                cmd += ["--head", "64", "--dropout", "0.3", "--lr", "0.003"]
                return cmd, {**run_env, "GRAFT_CACHE": str(warm_cache)}

            # fill the warm cache (the first run on this data and backbone) and the
            # features the warm floor reads (the floor's forward pass, with labels)
            timed(*graft_train()[:1], {**env, "GRAFT_CACHE": str(warm_cache)})
            timed(*commands["floor"]())
            labelled = root / "features_labelled.npz"
            timed([py, str(scripts["features"]), str(data), str(root / "features.npy"),
                   str(labelled)], env)  # fmt: skip
            commands["graft_warm"] = graft_warm
            commands["warm_floor"] = lambda: ([py, str(scripts["warm_floor"]), str(labelled),
                                               str(weights), str(SIZE), str(EPOCHS),
                                               str(root / "warm_floor.keras")], env)  # fmt: skip
            warm_names = ["classic", "graft_warm", "warm_floor"]
            if args.baseline_src is not None:  # before/after under the same load
                commands["graft_warm_baseline"] = lambda: graft_warm(args.baseline_src)
                warm_names.append("graft_warm_baseline")
            if args.only_warm:
                commands = {k: commands[k] for k in warm_names}
        for make in commands.values():  # warm-up: file caches, .pyc files
            timed(*make())
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):  # interleaved, so that a busy spell hits every command
            for name, make in commands.items():
                times[name].append(timed(*make()))
        med = {name: statistics.median(values) for name, values in times.items()}
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        what = f"{n_images} PNGs (32 px), MobileNetV2 {SIZE} px, feature extraction"
        what += f", {EPOCHS} epochs"
        rows = []
        if "graft" in med:
            rows += [
                f"| (a) classic recipe script | {med['classic']:.1f} s | classic/graft "
                f"{med['classic'] / med['graft']:.2f}x | >= 3.5x |",
                f"| (b) `graft train DATA --strategy feature` (cold cache) | {med['graft']:.1f} s"
                f" | graft/floor {med['graft'] / med['floor']:.2f}x | <= 1.4x |",
                f"| (c) floor: imports + one decode + one forward pass | {med['floor']:.1f} s "
                "| | |",
                f"| `graft --help` | {med['help']:.2f} s | | <= 1 s |",
                f"| `graft train --help` | {med['train_help']:.2f} s | | <= 1 s |",
                f"| `graft train --print-plan` | {med['print_plan']:.2f} s | | |",
            ]
        else:
            rows.append(f"| (a) classic recipe script | {med['classic']:.1f} s | | |")
        if args.warm and args.baseline_src is not None:
            rows.append(
                f"| (d0) graft warm second run from {args.baseline_src} | "
                f"{med['graft_warm_baseline']:.1f} s | classic/warm "
                f"{med['classic'] / med['graft_warm_baseline']:.2f}x, warm/floor "
                f"{med['graft_warm_baseline'] / med['warm_floor']:.2f}x | |"
            )
        if args.warm:
            rows += [
                f"| (d) graft, warm second run (other head settings) | {med['graft_warm']:.1f} s "
                f"| classic/warm {med['classic'] / med['graft_warm']:.2f}x | >= 3.7x |",
                f"| (e) warm floor: imports + cached features + head fit + save | "
                f"{med['warm_floor']:.1f} s | warm/floor "
                f"{med['graft_warm'] / med['warm_floor']:.2f}x | <= 1.3x |",
            ]
        text = [
            f"# bench/whole_process.py, {stamp}",
            "",
            f"Machine: {machine()}. {versions()}, Python {platform.python_version()}.",
            f"Whole processes (spawn to exit), {what}; median of {runs} after a warm-up.",
            "",
            "| command | wall | ratio | target |",
            "|---|---:|---:|---|",
            *rows,
            "",
            *(
                [
                    f"\nBaseline `graft train` from {args.baseline_src}: "
                    f"{med['graft_baseline']:.1f} s (classic/baseline "
                    f"{med['classic'] / med['graft_baseline']:.2f}x, baseline/floor "
                    f"{med['graft_baseline'] / med['floor']:.2f}x)\n"
                ]
                if args.baseline_src is not None and "graft_baseline" in med
                else []
            ),
            "All timed runs (s): "
            + "; ".join(f"{k} " + ", ".join(f"{v:.1f}" for v in vs) for k, vs in times.items()),
        ]
        if args.profile:
            seconds, lines = profiled(*(graft_warm() if args.warm else graft_train()))
            head = f"Where graft's time goes (one run, {seconds:.1f} s; seconds since spawn):"
            text += ["", head]
            text += ["", "```"] + [f"{t:6.2f}  {line}" for t, line in lines] + ["```"]
        print("\n".join(text))
        if args.save:
            args.save.write_text("\n".join(text) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
