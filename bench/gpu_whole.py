"""Whole-process fine-tuning on one GPU with JAX: graft vs plain Keras vs the floor.

    KERAS_BACKEND=jax python bench/gpu_whole.py                # the H200 run (~minutes)
    KERAS_BACKEND=jax python bench/gpu_whole.py --tiny         # a CPU check (< 2 minutes)

Made for a machine with one GPU, JAX and no TensorFlow (Keras, KerasTuner and graft come
as wheels). It generates a folder of JPEGs (500x375, quality 90; 10,000 in 10 classes, or
64 with ``--tiny``) and times, each as a whole process (imports included):

(a) **plain Keras, decoding every epoch**: a ``keras.utils.PyDataset`` decoding the JPEGs
    with Pillow in ``--workers`` threads, ResNet50 (``weights=None``) with its top 20
    layers trainable (graft's ``blocks:2``: conv5_block2 and conv5_block3; BN frozen, as
    graft does), a new softmax head, Adam, ``--epochs`` epochs; bf16 mixed precision on
    a GPU;
(b) **the floor**: imports + one decode pass (Pillow, ``--workers`` processes) + compiling
    the training step of the layers that train + ``--epochs`` epochs of that step on one
    device-resident batch of their input (the activation at ``conv5_block1_out``);
(c) **graft**: ``python -m graft.cli train FOLDER --backbone resnet50 --weights none
    --strategy finetune --unfreeze blocks:2 ...`` (decode once, cache the frozen bottom's
    activations, train the top on them); a failure is reported as a row, not a crash;
(d) the decode rate alone (Pillow, ``--workers`` processes, JPEG -> ``--size`` px), and
    graft's first-epoch rate from its ``history.csv``.

It prints the ratios the issue's targets name (graft vs (a) >= 4x, graft <= 1.5x the
floor, graft's first epoch >= 0.8x the decode rate) and writes a results file with the
machine, the versions and the date.

On the device (JAX there, no network): ``bench/gpu_wheels.sh`` here makes ``wheels/``
(graft's wheel and its dependencies less what a JAX machine has, ~53 MB; cp311 wheels, so
Python 3.11 there), carried to the device, then ``pip install --no-index --find-links wheels
keras-graft && KERAS_BACKEND=jax python bench/gpu_whole.py --out bench/results-gpu-whole-h200.md``
(graft's row runs once graft trains on JAX; before, it is reported as failed in one line).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
CLASSES = 10
WIDTH, HEIGHT = 500, 375
#: ResNet50's top 20 layers (include_top=False) are conv5_block2 and conv5_block3: their
#: input is this layer's output.
CUT = "conv5_block1_out"


# ---------------------------------------------------------------------------------------
# Images: generation and the one decode recipe every part uses
# ---------------------------------------------------------------------------------------


def _write_jpeg(args) -> None:
    """One 500x375 JPEG (q90) of smooth random content (a realistic compressed size)."""
    path, seed = args
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((WIDTH, HEIGHT), Image.BICUBIC)
    noise = rng.normal(0, 12, (HEIGHT, WIDTH, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def generate(folder: Path, count: int, workers: int) -> list[str]:
    """``count`` JPEGs in ``CLASSES`` class folders (kept when already there)."""
    from multiprocessing import Pool

    jobs = []
    for i in range(count):
        sub = folder / f"class_{i % CLASSES:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img_{i:05d}.jpg"
        if not path.is_file():
            jobs.append((str(path), i))
    if jobs:
        with Pool(workers) as pool:
            pool.map(_write_jpeg, jobs, chunksize=16)
    return files_of(folder)


def files_of(folder: Path) -> list[str]:
    return sorted(str(p) for p in Path(folder).glob("class_*/*.jpg"))


def decode(path: str, size: int):
    """Pillow: decode, RGB, bilinear resize to ``size`` x ``size``, uint8 HWC."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))


def _decode_star(args):
    return decode(*args)


def decode_all(files: list[str], size: int, workers: int):
    """Every file decoded once in ``workers`` processes: ``(uint8 array, seconds)``."""
    from multiprocessing import get_context

    import numpy as np

    start = time.perf_counter()
    with get_context("spawn" if "jax" in sys.modules else "fork").Pool(workers) as pool:
        arrays = pool.map(_decode_star, [(f, size) for f in files], chunksize=8)
    return np.stack(arrays), time.perf_counter() - start


def labels_of(files: list[str]):
    import numpy as np

    return np.array([int(Path(f).parent.name.split("_")[1]) for f in files])


# ---------------------------------------------------------------------------------------
# Parts: each runs as its own process (``--part NAME``) and prints one JSON line last
# ---------------------------------------------------------------------------------------


def _gpu() -> bool:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    return False


def _resnet_top(size: int, classes: int):
    """ResNet50 (no weights) with its top 20 layers trainable (BN frozen) and a new head."""
    import keras

    base = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(size,) * 2 + (3,)
    )
    for layer in base.layers:
        layer.trainable = False
    for layer in base.layers[-20:]:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return base


def part_decode(opt) -> dict:
    files = files_of(opt.data)
    _, seconds = decode_all(files, opt.size, opt.workers)
    return {"images": len(files), "seconds": seconds, "rate": len(files) / seconds}


def part_keras(opt) -> dict:
    import keras
    import numpy as np

    if _gpu():
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    files = files_of(opt.data)
    labels = labels_of(files)

    class Folder(keras.utils.PyDataset):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.order = np.random.default_rng(0).permutation(len(files))

        def __len__(self):
            return math.ceil(len(files) / opt.batch)

        def __getitem__(self, i):
            index = self.order[i * opt.batch : (i + 1) * opt.batch]
            x = np.stack([decode(files[j], opt.size) for j in index]).astype("float32")
            return keras.applications.resnet50.preprocess_input(x), labels[index]

        def on_epoch_end(self):
            np.random.default_rng(len(self.order)).shuffle(self.order)

    base = _resnet_top(opt.size, CLASSES)
    inputs = keras.Input((opt.size, opt.size, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    outputs = keras.layers.Dense(CLASSES, activation="softmax", dtype="float32")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    data = Folder(workers=opt.workers, use_multiprocessing=False, max_queue_size=16)
    model.fit(data, epochs=opt.epochs, verbose=0, callbacks=[Clock()])
    rates = [len(files) / t for t in times]
    return {
        "images": len(files),
        "epoch_rates": rates,
        "median_rate": sorted(rates)[len(rates) // 2],
    }


def part_floor(opt) -> dict:
    files = files_of(opt.data)
    _, decode_s = decode_all(files, opt.size, opt.workers)  # before JAX starts (fork-safe)
    import keras
    import numpy as np

    if _gpu():
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    base = _resnet_top(opt.size, CLASSES)
    top = keras.Model(base.get_layer(CUT).output, base.output)
    inputs = keras.Input(top.input_shape[1:])
    x = keras.layers.GlobalAveragePooling2D()(top(inputs))
    outputs = keras.layers.Dense(CLASSES, activation="softmax", dtype="float32")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(opt.batch, *top.input_shape[1:])).astype("float32")
    y = rng.integers(0, CLASSES, opt.batch)
    if keras.backend.backend() == "jax":
        import jax

        x, y = jax.device_put(x), jax.device_put(y)
    start = time.perf_counter()
    model.train_on_batch(x, y)  # compile
    compile_s = time.perf_counter() - start
    steps = opt.epochs * math.ceil(len(files) / opt.batch)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss))  # wait for the device
    step_s = time.perf_counter() - start
    return {
        "decode_s": decode_s,
        "compile_s": compile_s,
        "steps": steps,
        "steps_s": step_s,
        "step_rate": steps * opt.batch / step_s,
    }


def part_versions(opt) -> dict:
    import importlib.metadata as md

    import keras

    out = {"backend": keras.backend.backend(), "python": platform.python_version()}
    for name in ("keras", "jax", "jaxlib", "keras-graft", "numpy", "pillow", "keras-tuner"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "-"
    try:
        import tensorflow  # noqa: F401

        out["tensorflow"] = "installed"
    except ImportError:
        out["tensorflow"] = "not installed"
    if keras.backend.backend() == "jax":
        import jax

        out["devices"] = [f"{d.platform}:{getattr(d, 'device_kind', '')}" for d in jax.devices()]
    return out


PARTS = {"decode": part_decode, "keras": part_keras, "floor": part_floor, "versions": part_versions}


# ---------------------------------------------------------------------------------------
# The parent: runs every part as a process and reports
# ---------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def run_part(opt, name: str, timeout: float) -> tuple[dict | None, float, str]:
    """``(result, wall seconds, error line)`` of ``--part name`` in its own process."""
    cmd = [sys.executable, str(HERE), "--part", name, *opt.forward]
    return _timed(cmd, timeout)


def _timed(cmd: list[str], timeout: float, parse: bool = True):
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return None, wall, _one_line(done.stderr or done.stdout)
    if not parse:
        return {}, wall, ""
    try:
        return json.loads(done.stdout.strip().splitlines()[-1]), wall, ""
    except (ValueError, IndexError):
        return None, wall, "no result line: " + _one_line(done.stdout + done.stderr)


def run_graft(opt, gpu: bool, timeout: float) -> tuple[dict | None, float, str]:
    run_dir = Path(opt.work) / "graft-run"
    cmd = [
        sys.executable,
        "-m",
        "graft.cli",
        "train",
        str(opt.data),
        "--backbone",
        "resnet50",
        "--weights",
        "none",
        "--strategy",
        "finetune",
        "--unfreeze",
        "blocks:2",
        "--epochs",
        str(opt.epochs),
        "--image-size",
        str(opt.size),
        "--batch-size",
        str(opt.batch),
        "--val-split",
        "0",
        "--keep",
        "last",
        "--out",
        str(run_dir),
        "--overwrite",
    ]
    if gpu:
        cmd += ["--precision", "mixed"]
    result, wall, error = _timed(cmd, timeout, parse=False)
    if result is None:
        return None, wall, error
    try:
        with open(run_dir / "history.csv") as f:
            rows = list(csv.DictReader(f))
        images = json.loads((run_dir / "metrics.json").read_text())["train_images"]
        first = images / float(rows[0]["seconds"])
        rest = [images / float(r["seconds"]) for r in rows[1:]]
        return {"images": images, "first_rate": first, "rest_rates": rest}, wall, ""
    except (OSError, KeyError, ValueError, IndexError) as exc:
        return {}, wall, f"ran, but no per-epoch times: {exc}"


def _fmt(value, unit="", digits=1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a CPU check in < 2 minutes")
    parser.add_argument("--images", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--work", default=None, help="folder for the images and the run")
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="results markdown file")
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=None, help="per part (s)")
    opt = parser.parse_args(argv)
    tiny = {"images": 64, "epochs": 2, "size": 64, "batch": 16, "workers": 2}
    full = {"images": 10_000, "epochs": 10, "size": 224, "batch": 256, "workers": 16}
    for key, value in (tiny if opt.tiny else full).items():
        if getattr(opt, key) is None:
            setattr(opt, key, value)
    opt.work = Path(opt.work or ("/tmp/gpu-whole-tiny" if opt.tiny else "/tmp/gpu-whole"))
    opt.data = Path(opt.data or opt.work / "images")
    if opt.part:
        print(json.dumps(PARTS[opt.part](opt)))
        return 0
    opt.forward = [
        "--data",
        str(opt.data),
        "--work",
        str(opt.work),
        "--epochs",
        str(opt.epochs),
        "--size",
        str(opt.size),
        "--batch",
        str(opt.batch),
        "--workers",
        str(opt.workers),
    ]
    timeout = opt.timeout or (300 if opt.tiny else 900)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    started = dt.datetime.now(dt.timezone.utc)

    start = time.perf_counter()
    files = generate(opt.data, opt.images, opt.workers)
    made = time.perf_counter() - start
    print(f"{len(files)} JPEGs {WIDTH}x{HEIGHT} q90 in {opt.data} ({made:.1f} s)")
    versions, _, error = run_part(opt, "versions", timeout)
    versions = versions or {"error": error}
    print("versions:", json.dumps(versions))
    gpu = any(d.startswith("gpu") for d in versions.get("devices", []))

    rows = {}
    for name in ("decode", "floor", "keras"):
        result, wall, error = run_part(opt, name, timeout)
        rows[name] = (result, wall, error)
        print(f"{name}: {wall:.1f} s", json.dumps(result) if result else f"failed: {error}")
    result, wall, error = run_graft(opt, gpu, timeout)
    rows["graft"] = (result, wall, error)
    print(f"graft: {wall:.1f} s", json.dumps(result) if result else f"failed: {error}")

    report = _report(opt, versions, rows, started, gpu)
    print(report)
    out = Path(opt.out) if opt.out else opt.work / "results-gpu-whole.md"
    out.write_text(report)
    print(f"written: {out}")
    return 0


def _report(opt, versions: dict, rows: dict, started, gpu: bool) -> str:
    decode, floor, plain, graft = (rows[k] for k in ("decode", "floor", "keras", "graft"))
    total = opt.images * opt.epochs
    ok = {k: v[0] is not None and not v[2] for k, v in rows.items()}
    precision = "bf16 mixed (a, b); graft --precision mixed" if gpu else "float32"

    def wall(row):
        return row[1] if row[0] is not None and not row[2] else None

    def status(row):
        return "ok" if row[0] is not None and not row[2] else f"failed: {row[2]}"

    lines = [
        f"# Whole-process fine-tuning, ResNet50 blocks:2, {opt.size} px, {opt.epochs} epochs"
        + (" (tiny CPU check)" if opt.tiny else ""),
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; machine: {platform.node()} "
        f"({os.cpu_count()} CPUs; devices {', '.join(versions.get('devices', ['?']))})",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "devices"),
        f"- data: {opt.images:,} JPEGs {WIDTH}x{HEIGHT} q90, {CLASSES} classes; batch {opt.batch}; "
        f"{opt.workers} Pillow workers; precision {precision}",
        "",
        "| row | wall s | images/s (whole process) | detail | status |",
        "|---|---:|---:|---|---|",
    ]
    d = decode[0] or {}
    lines.append(
        f"| (d) decode alone, Pillow {opt.workers} processes | {_fmt(wall(decode))} | "
        f"{_fmt(d.get('rate'))} (decode only) | {d.get('images', '-')} images | {status(decode)} |"
    )
    p = plain[0] or {}
    lines.append(
        f"| (a) plain Keras, PyDataset {opt.workers} threads, decode every epoch | "
        f"{_fmt(wall(plain))} | {_fmt(total / wall(plain) if wall(plain) else None)} | "
        f"median epoch {_fmt(p.get('median_rate'))} img/s | {status(plain)} |"
    )
    f = floor[0] or {}
    lines.append(
        f"| (b) floor: imports + decode once + compile + resident steps | {_fmt(wall(floor))} | "
        f"{_fmt(total / wall(floor) if wall(floor) else None)} | "
        f"decode {_fmt(f.get('decode_s'))} s, compile {_fmt(f.get('compile_s'))} s, "
        f"{f.get('steps', '-')} steps {_fmt(f.get('steps_s'))} s "
        f"({_fmt(f.get('step_rate'))} img/s) | {status(floor)} |"
    )
    g = graft[0] or {}
    lines.append(
        f"| (c) graft train --strategy finetune --unfreeze blocks:2 | {_fmt(wall(graft))} | "
        f"{_fmt(total / wall(graft) if wall(graft) else None)} | first epoch "
        f"{_fmt(g.get('first_rate'))} img/s | {status(graft)} |"
    )
    lines += ["", "| ratio | value | target |", "|---|---:|---|"]

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    lines.append(
        f"| graft vs (a): (a) wall / graft wall | {ratio(wall(plain), wall(graft))} | >= 4x |"
    )
    lines.append(
        f"| graft vs floor: graft wall / floor wall | {ratio(wall(graft), wall(floor))} | <= 1.5x |"
    )
    lines.append(
        f"| graft first epoch / decode rate | {ratio(g.get('first_rate'), d.get('rate'))} "
        "| >= 0.8x |"
    )
    if not all(ok.values()):
        lines += [
            "",
            "Rows that failed are reported as such (a failure of one does not stop the others).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
