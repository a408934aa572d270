"""Speed of graft against the classic Keras recipe, measured side by side in one process.

    python bench/speed.py            # ~4-5 minutes on 2 CPU cores
    python bench/speed.py --quick    # fewer images and epochs, a smoke run

Prints a markdown table of ratios, each against a baseline measured in the same run on
the same JPEG files (scikit-learn digits 5-9 upscaled, written to a temporary folder):

1. feature extraction, N epochs, total wall time: the classic recipe (a frozen
   ``keras.applications.MobileNetV2``, a new head, ``model.fit`` on
   ``image_dataset_from_directory``) vs ``graft.train(strategy="feature")`` with a cold
   feature cache; and the final validation accuracy of both. Target: >= 5x, accuracy
   within 1 point.
2. per-epoch time of graft's cached epochs vs the classic recipe's epochs (medians, first
   epoch excluded). Target: >= 50x.
3. fine-tuning throughput (images/s, first epoch excluded) with the same trainable
   layers: classic (unfreeze ``layers[-N:]``) vs graft (``layers:N`` with ``train_bn``).
   Target: >= 1.0x.
4. the input pipeline alone (images/s) vs what fine-tuning consumes (must be > 1x).
5. the backbone's forward throughput vs the CPU's physical limit estimated from its
   FLOPs (TensorFlow's profiler) and the cores' peak FP32 rate (printed assumptions).
6. XLA (``jit_compile``) and bfloat16 forward speed-ups on this CPU, per backbone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from graft import _quiet  # noqa: E402

_quiet.import_backend()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import graft  # noqa: E402
from graft.api.demo import TARGET_CLASSES, digits_rgb  # noqa: E402
from graft.data.sources import sources as gdata  # noqa: E402


def write_jpegs(root: Path, per_class: int, size: int) -> Path:
    from PIL import Image

    x, y = digits_rgb()
    for c in TARGET_CLASSES:
        folder = root / f"digit_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(y == c)[:per_class]):
            image = Image.fromarray(x[index]).resize((size, size), Image.BILINEAR)
            image.save(folder / f"{i:04d}.jpg", quality=92)
    return root


class EpochTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def backbone_weights(train_dir: Path, size: int, alpha: float, path: Path) -> Path:
    """Stand-in "pre-trained" weights (no ImageNet offline): a random MobileNetV2 whose
    BatchNormalization statistics are re-estimated on the training images, so that its
    features carry information. Both sides of every comparison load this file."""
    keras.utils.set_random_seed(1)
    base = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(size, size, 3), alpha=alpha
    )
    norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.5
    files = gdata.scan_folder(train_dir)
    for _ in range(2):
        for x, _ in gdata.pipeline(files, (size, size), 3, 64, shuffle=True):
            base(x / 127.5 - 1.0, training=True)
    for layer in norms:
        layer.momentum = 0.99
    base.save_weights(path)
    return path


def classic_model(size: int, num_classes: int, alpha: float, seed: int, weights):
    """The classic recipe, done as its authors would, with the right preprocessing."""
    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(
        weights=str(weights), include_top=False, input_shape=(size, size, 3), alpha=alpha
    )
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs), base


def classic_datasets(train_dir: Path, val_dir: Path, size: int, batch: int, seed: int):
    kw = dict(image_size=(size, size), batch_size=batch, label_mode="int", seed=seed)
    train = keras.utils.image_dataset_from_directory(train_dir, shuffle=True, **kw)
    val = keras.utils.image_dataset_from_directory(val_dir, shuffle=False, **kw)
    return train.prefetch(tf.data.AUTOTUNE), val.prefetch(tf.data.AUTOTUNE)


def bench_feature(train_dir, val_dir, args):
    start = time.perf_counter()
    model, base = classic_model(args.size, 5, args.alpha, args.seed, args.weights)
    base.trainable = False
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train, val = classic_datasets(train_dir, val_dir, args.size, args.batch, args.seed)
    timer = EpochTimes()
    hist = model.fit(train, validation_data=val, epochs=args.epochs, verbose=0, callbacks=[timer])
    classic_total = time.perf_counter() - start
    classic_acc = hist.history["val_accuracy"][-1]

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache_dir:
        run = graft.train(
            train_dir,
            "mobilenet_v2",
            None,
            val=str(val_dir),
            weights=str(args.weights),
            alpha=args.alpha,
            image_size=args.size,
            strategy="feature",
            epochs=args.epochs,
            batch_size=args.batch,
            seed=args.seed,
            cache_dir=cache_dir,
            log=lambda _: None,
            verbose=0,
        )
    graft_total = time.perf_counter() - start
    graft_epochs = [row["seconds"] for row in run.history]
    return {
        "classic_total": classic_total,
        "graft_total": graft_total,
        "classic_acc": classic_acc,
        "graft_acc": run.metrics["val_accuracy"],
        "classic_epoch": statistics.median(timer.times[1:]),
        "graft_epoch": statistics.median(graft_epochs[1:]),
        "model": run.model,
        "classes": run.classes,
    }


def bench_predict(model, classes, train_dir, args):
    """Images/s of predicting files: one file at a time vs graft's batched, prefetched path."""
    from graft.reporting import predict

    paths = sorted(str(p) for p in Path(train_dir).rglob("*.jpg"))
    size = (args.size, args.size)
    start = time.perf_counter()
    for path in paths[:100]:
        model.predict(predict.load_image(path, size, 3)[None], verbose=0)
    naive = 100 / (time.perf_counter() - start)
    list(predict.predict_files(model, classes, paths[:64], batch_size=args.batch))  # warm-up
    start = time.perf_counter()
    done = sum(1 for _ in predict.predict_files(model, classes, paths, batch_size=args.batch))
    return naive, done / (time.perf_counter() - start)


def bench_finetune(train_dir, val_dir, args, n_layers: int):
    model, base = classic_model(args.size, 5, args.alpha, args.seed, args.weights)
    base.trainable = True
    for layer in base.layers[:-n_layers]:
        layer.trainable = False
    model.compile(
        optimizer=keras.optimizers.Adam(1e-5),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    train, _ = classic_datasets(train_dir, val_dir, args.size, args.batch, args.seed)
    timer = EpochTimes()
    model.fit(train, epochs=args.ft_epochs, verbose=0, callbacks=[timer])
    images = sum(1 for _ in Path(train_dir).rglob("*.jpg"))
    classic_ips = images / statistics.median(timer.times[1:])

    run = graft.train(
        train_dir,
        "mobilenet_v2",
        None,
        weights=str(args.weights),
        alpha=args.alpha,
        image_size=args.size,
        strategy="finetune",
        epochs=args.ft_epochs,
        unfreeze=f"layers:{n_layers}",
        train_bn=True,
        batch_size=args.batch,
        val_split=0.0,
        seed=args.seed,
        log=lambda _: None,
        verbose=0,
    )
    graft_ips = images / statistics.median(row["seconds"] for row in run.history[1:])
    classic_trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    graft_trainable = run.metrics["phases"][0]["trainable_params"]
    return classic_ips, graft_ips, classic_trainable, graft_trainable


def bench_pipeline(train_dir, args):
    files = gdata.scan_folder(train_dir)
    ds = gdata.pipeline(files, (args.size, args.size), 3, args.batch, shuffle=True)
    for _ in ds.take(2):
        pass
    start = time.perf_counter()
    seen = 0
    for _ in range(3):
        for x, _ in ds:
            seen += int(x.shape[0])
    return seen / (time.perf_counter() - start)


def model_flops(model, size: int) -> int:
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=frozen.graph, options=opts)
    return int(info.total_float_ops)


def forward_ips(model, size: int, batch: int, jit: bool = False, seconds: float = 6.0) -> float:
    x = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype("float32")
    fn = tf.function(lambda t: model(t, training=False), jit_compile=jit)
    fn(x)
    fn(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(x).numpy()
        n += batch
    return n / (time.perf_counter() - start)


def build(name: str, size: int, alpha: float | None = None, policy: str = "float32"):
    keras.mixed_precision.set_global_policy(policy)
    try:
        kw = {"alpha": alpha} if alpha else {}
        ctor = {
            "mobilenet_v2": keras.applications.MobileNetV2,
            "resnet50": keras.applications.ResNet50,
        }[name]
        return ctor(weights=None, include_top=False, input_shape=(size, size, 3), **kw)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def cpu_peak(flops_per_cycle: int) -> tuple[float, str]:
    cores = os.cpu_count() or 1
    mhz = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":")[1])
                break
    except OSError:
        pass
    peak = cores * mhz * 1e6 * flops_per_cycle
    return peak, f"{cores} cores x {mhz:.0f} MHz x {flops_per_cycle} FP32 FLOP/cycle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--ft-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--flops-per-cycle",
        type=int,
        default=32,
        help="peak FP32 FLOP/cycle/core (32: two 256-bit FMA pipes, e.g. "
        "AMD Zen 4 running AVX-512 as 2x256; 64 for two 512-bit FMA units)",
    )
    args = parser.parse_args()
    if args.quick:
        args.per_class, args.epochs, args.ft_epochs = 30, 3, 2

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_dir = write_jpegs(root / "train", args.per_class, args.size)
        val_dir = write_jpegs(root / "val_src", args.per_class + args.per_class // 4, args.size)
        # validation = the next per_class/4 images of each class (disjoint from train)
        val_only = root / "val"
        for folder in val_dir.iterdir():
            target = val_only / folder.name
            target.mkdir(parents=True)
            for path in sorted(folder.iterdir())[args.per_class :]:
                path.rename(target / path.name)
        args.weights = backbone_weights(
            train_dir, args.size, args.alpha, root / "mobilenet_v2_calibrated.weights.h5"
        )
        n_train = 5 * args.per_class
        print(
            f"# graft speed benchmark: MobileNetV2 alpha={args.alpha} at {args.size}px, "
            f"{n_train} train JPEGs, batch {args.batch}, {os.cpu_count()} CPU cores\n"
        )

        fe = bench_feature(train_dir, val_only, args)
        n_layers = 20
        c_ips, g_ips, c_tr, g_tr = bench_finetune(train_dir, val_only, args, n_layers)
        pipe_ips = bench_pipeline(train_dir, args)
        naive_pred, graft_pred = bench_predict(fe["model"], fe["classes"], train_dir, args)

    backbone = build("mobilenet_v2", args.size, args.alpha)
    flops = model_flops(backbone, args.size)
    fwd = forward_ips(backbone, args.size, args.batch)
    peak, peak_text = cpu_peak(args.flops_per_cycle)
    limit = peak / flops

    rows = [
        (
            "feature extraction, total wall time",
            f"{fe['classic_total']:.1f} s",
            f"{fe['graft_total']:.1f} s",
            fe["classic_total"] / fe["graft_total"],
            ">= 5x",
        ),
        (
            "feature extraction, final val accuracy",
            f"{fe['classic_acc']:.3f}",
            f"{fe['graft_acc']:.3f}",
            None,
            "within 0.01",
        ),
        (
            "feature extraction, median epoch",
            f"{fe['classic_epoch'] * 1000:.0f} ms",
            f"{fe['graft_epoch'] * 1000:.1f} ms",
            fe["classic_epoch"] / fe["graft_epoch"],
            ">= 50x",
        ),
        (
            f"fine-tuning throughput (last {n_layers} layers; trainable {c_tr:,} vs {g_tr:,})",
            f"{c_ips:.0f} img/s",
            f"{g_ips:.0f} img/s",
            g_ips / c_ips,
            ">= 1.0x",
        ),
        (
            "input pipeline alone vs fine-tuning consumption",
            f"{g_ips:.0f} img/s",
            f"{pipe_ips:.0f} img/s",
            pipe_ips / g_ips,
            "> 1x",
        ),
        (
            "predicting JPEG files: one at a time vs graft predict",
            f"{naive_pred:.0f} img/s",
            f"{graft_pred:.0f} img/s",
            graft_pred / naive_pred,
            "> 1x",
        ),
        (
            f"backbone forward vs physical limit ({flops / 1e6:.0f} MFLOP/img; {peak_text})",
            f"{limit:.0f} img/s",
            f"{fwd:.0f} img/s",
            fwd / limit,
            "fraction of peak",
        ),
    ]
    print("| measurement | baseline | graft | ratio | target |")
    print("|---|---:|---:|---:|---|")
    for name, base, ours, ratio, target in rows:
        ratio_text = "" if ratio is None else f"{ratio:.2f}x"
        print(f"| {name} | {base} | {ours} | {ratio_text} | {target} |")

    print(
        "\n| backbone (forward, batch 32) | float32 | XLA jit | XLA speed-up | bfloat16 | "
        "bf16 speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, alpha in (("mobilenet_v2", args.alpha), ("resnet50", None)):
        model = build(name, args.size, alpha)
        plain = forward_ips(model, args.size, args.batch, seconds=4.0)
        jit = forward_ips(model, args.size, args.batch, jit=True, seconds=4.0)
        bf16 = forward_ips(
            build(name, args.size, alpha, "mixed_bfloat16"), args.size, args.batch, seconds=4.0
        )
        print(
            f"| {name} {args.size}px | {plain:.0f} img/s | {jit:.0f} img/s | "
            f"{jit / plain:.2f}x | {bf16:.0f} img/s | {bf16 / plain:.2f}x |"
        )


if __name__ == "__main__":
    main()
