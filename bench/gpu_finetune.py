"""Fine-tuning throughput on a GPU, graft's core vs the classic recipe, on any Keras backend.

    KERAS_BACKEND=jax python bench/gpu_finetune.py --size 224 --batch 64

graft's core (backbones, model assembly, freezing, optimizers) imports only ``keras``, so
this runs where TensorFlow is not installed (e.g. JAX on a GPU machine). Data are random
raw images held in memory, so the numbers are the model's training speed, not the input
pipeline's: one batch stays on the device and ``train_on_batch`` runs ``--steps`` times
after three warm-up steps (compilation excluded). For each backbone:

* graft ``finetune`` with ``blocks:2`` (BN frozen, head at 1e-3 / backbone at 1e-5 via
  ``MultiOptimizer``), mixed precision and float32;
* the classic recipe with the same trainable layers (``layers[-N:]``, BN trainable, one
  Adam), mixed precision;
* graft with the whole backbone trainable (``all``), mixed precision.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from graft import freezing  # noqa: E402
from graft.config.strategies import Phase  # noqa: E402
from graft.core.backbones import resolve  # noqa: E402
from graft.core.model import build_model  # noqa: E402
from graft.training.trainer import Trainer  # noqa: E402


def _policy(mixed: bool) -> str:
    if not mixed:
        return "float32"
    return "mixed_float16" if _has_gpu() else "mixed_bfloat16"


def _has_gpu() -> bool:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _throughput(model, batch: int, size: int, steps: int) -> float:
    """Images/s of ``train_on_batch`` on one batch already on the device (no transfers)."""
    x, y = _data(batch, size)
    x, y = _on_device(x), _on_device(y)
    for _ in range(3):  # compile and warm up
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss[0] if isinstance(loss, list) else loss))  # wait for the device
    return steps * batch / (time.perf_counter() - start)


def _on_device(array):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.device_put(array)
    if backend == "torch":
        import torch

        return torch.as_tensor(array, device="cuda" if torch.cuda.is_available() else "cpu")
    import tensorflow as tf

    return tf.constant(array)


def graft_run(name, size, batch, steps, spec, mixed, alpha=None, head_lr=1e-3, preprocess=None):
    keras.mixed_precision.set_global_policy(_policy(mixed))
    try:
        keras.utils.set_random_seed(0)
        bb = resolve(name, weights="none", image_size=size, alpha=alpha, preprocess=preprocess)
        model = build_model(bb, 10)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    trainer = Trainer(model, bb.blocks, verbose=0, log=lambda _: None)
    report = trainer.prepare(Phase("finetune", spec, 1, lr=head_lr, backbone_lr=1e-5))
    return _throughput(model, batch, size, steps), report.trainable_params


def classic_run(name, size, batch, steps, n_layers, mixed, alpha=None):
    keras.mixed_precision.set_global_policy(_policy(mixed))
    try:
        keras.utils.set_random_seed(0)
        ctor = {
            "mobilenet_v2": keras.applications.MobileNetV2,
            "resnet50": keras.applications.ResNet50,
        }[name]
        kw = {"alpha": alpha} if alpha else {}
        base = ctor(weights=None, include_top=False, input_shape=(size, size, 3), **kw)
        inputs = keras.Input((size, size, 3))
        h = base(inputs)
        h = keras.layers.GlobalAveragePooling2D()(h)
        h = keras.layers.Dense(128, activation="relu")(h)
        h = keras.layers.Dropout(0.2)(h)
        outputs = keras.layers.Dense(10, activation="softmax", dtype="float32")(h)
        model = keras.Model(inputs, outputs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    base.trainable = True
    for layer in base.layers[:-n_layers]:
        layer.trainable = False
    model.compile(
        optimizer=keras.optimizers.Adam(1e-5),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return _throughput(model, batch, size, steps), trainable


def _data(n, size):
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, (n, size, size, 3)).astype("float32"),
        rng.integers(0, 10, n).astype("int32"),
    )


def layers_in_top_blocks(name, size, blocks, alpha=None):
    bb = resolve(name, weights="none", image_size=size, alpha=alpha)
    selected = freezing.select(bb.model, bb.blocks, f"blocks:{blocks}")
    return len(selected)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--models", default="mobilenet_v2,resnet50")
    parser.add_argument("--out", default=None, help="also write the table here (markdown)")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="only: classic vs graft with/without its preprocessing layer "
        "and with/without MultiOptimizer",
    )
    args = parser.parse_args()
    device = "GPU" if _has_gpu() else "CPU"
    lines = [
        f"# fine-tuning throughput, {keras.backend.backend()} backend on {device}, "
        f"{args.size}px, batch {args.batch}, {args.steps} timed steps",
        "",
        "| backbone | run | trainable params | images/s |",
        "|---|---|---:|---:|",
    ]
    results = {}
    for name in args.models.split(","):
        n_layers = layers_in_top_blocks(name, args.size, 2)
        common = dict(name=name, size=args.size, batch=args.batch, steps=args.steps)
        graft = partial(graft_run, **common)
        classic = partial(classic_run, n_layers=n_layers, mixed=True, **common)
        runs = [
            ("graft finetune blocks:2, mixed", partial(graft, spec="blocks:2", mixed=True)),
            (f"classic layers[-{n_layers}:], mixed", classic),
            (
                "graft finetune blocks:2, one lr (no MultiOptimizer), mixed",
                partial(graft, spec="blocks:2", mixed=True, head_lr=1e-5),
            ),
            ("graft finetune blocks:2, float32", partial(graft, spec="blocks:2", mixed=False)),
            ("graft finetune all, mixed", partial(graft, spec="all", mixed=True)),
        ]
        if args.ablation:
            runs = [
                (f"classic layers[-{n_layers}:], mixed", classic),
                (
                    "graft blocks:2 one lr, own preprocessing",
                    partial(graft, spec="blocks:2", mixed=True, head_lr=1e-5),
                ),
                (
                    "graft blocks:2 one lr, preprocess none",
                    partial(graft, spec="blocks:2", mixed=True, head_lr=1e-5, preprocess="none"),
                ),
                (
                    "graft blocks:2 two lrs, preprocess none",
                    partial(graft, spec="blocks:2", mixed=True, preprocess="none"),
                ),
                (f"classic layers[-{n_layers}:], mixed (again)", classic),
            ]
        for label, fn in runs:
            try:
                ips, trainable = fn()
                results[f"{name} | {label}"] = ips
                lines.append(f"| {name} | {label} | {trainable:,} | {ips:,.0f} |")
            except Exception as exc:  # keep measuring the rest
                traceback.print_exc()
                lines.append(f"| {name} | {label} | - | failed: {type(exc).__name__} |")
            print(lines[-1], flush=True)
            keras.backend.clear_session()
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    main()
