"""Peak memory of ``graft train`` does not grow with the number of images.

Generates two folders of same-size PNGs (500 and 5,000 images, two classes), trains
each once in a fresh subprocess (feature strategy, MobileNetV2 alpha 0.35 with random
weights, one epoch) and reads the child's peak RSS from ``getrusage(RUSAGE_CHILDREN)``.
A streaming pipeline keeps the ratio near 1 (target: <= 1.3); loading every image
into memory would make it grow with the dataset.

Run:  python bench/data_memory.py [--size 48] [--small 500] [--large 5000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, n: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = "a" if i % 2 else "b"
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels[..., 0 if cls == "a" else 2] = 255
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


# The control: the classic recipe, every image decoded into one array, then trained on.
IN_MEMORY = """
import sys
import numpy as np
from pathlib import Path
from PIL import Image
import graft
args = sys.argv[1:]
folder, size = Path(args[1]), int(args[args.index("--image-size") + 1])
paths = sorted(folder.glob("*/*.png"))
x = np.stack([np.asarray(Image.open(p), dtype="float32") for p in paths])
y = np.array([0 if p.parent.name == "a" else 1 for p in paths], "int32")
graft.train((x, y), "mobilenet_v2", None, weights="none", alpha=0.35, image_size=size,
            strategy="feature", epochs=1, batch_size=32, verbose=0, log=lambda s: None)
"""


def peak_rss_of_train(
    folder: Path, out: Path, size: int, in_memory: bool = False
) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one `graft train` subprocess."""
    script = "import sys; from graft.cli.main import main; sys.exit(main(sys.argv[1:]))"
    if in_memory:
        script = IN_MEMORY
    args = [
        sys.executable, "-c", script, "train", str(folder),
        "--backbone", "mobilenet_v2", "--weights", "none", "--alpha", "0.35",
        "--image-size", str(size), "--strategy", "feature", "--epochs", "1",
        "--batch-size", "32", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    # A fresh interpreter per run, so RUSAGE_CHILDREN's maximum is that run's peak:
    # spawn through a wrapper that reports its own child's maximum.
    wrapper = (
        "import resource, subprocess, sys;"
        "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode;"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *args], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"graft train failed:\n{done.stderr[-3000:]}")
    kib, rc = done.stdout.split()
    if rc != "0":
        raise SystemExit(f"graft train exited {rc}:\n{done.stderr[-3000:]}")
    return int(kib) / 1024.0, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=5000)
    parser.add_argument(
        "--no-control", action="store_true", help="skip the in-memory (numpy array) control"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        tmp = Path(tmp)
        results = {}
        for n in (args.small, args.large):
            folder = make_folder(tmp / f"data{n}", n, args.size)
            results[n] = peak_rss_of_train(folder, tmp / f"run{n}", args.size)
            mib, sec = results[n]
            print(f"{n:>6} images ({args.size}x{args.size}): peak RSS {mib:7.1f} MiB, {sec:5.1f} s")
        ratio = results[args.large][0] / results[args.small][0]
        print(f"streaming ratio {args.large}/{args.small}: {ratio:.3f} (target <= 1.3)")
        if not args.no_control:
            control = {}
            for n in (args.small, args.large):
                control[n] = peak_rss_of_train(tmp / f"data{n}", tmp / "unused", args.size, True)
                mib, sec = control[n]
                print(f"{n:>6} images in a numpy array (control): peak RSS {mib:7.1f} MiB")
            c_ratio = control[args.large][0] / control[args.small][0]
            print(f"control ratio {args.large}/{args.small}: {c_ratio:.3f} (grows with the data)")
        sys.exit(0 if ratio <= 1.3 else 1)


if __name__ == "__main__":
    main()
