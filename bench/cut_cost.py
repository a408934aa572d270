"""What ``--cut auto`` costs: whole processes, against a feature-extraction run at the usual cut.

    PYTHONPATH=src python bench/cut_cost.py                # medians of 3 (~2 minutes, 2 cores)
    PYTHONPATH=src python bench/cut_cost.py --repeats 1    # one timed run of each
    PYTHONPATH=src python bench/cut_cost.py --k 2          # 2 labelled images per class
    PYTHONPATH=src python bench/cut_cost.py --model /tmp/fer/emotion_model.hdf5 --usual none

Issue 23's target: ``--cut auto`` costs at most 2x a feature-extraction run at the model's
default cut, both timed as a user runs them (spawn to exit). The model is the few-shot
bench's source CNN (``bench/few_shot.py``: the demo CNN pre-trained on digits 0-4, cached
in ``--cache``; here headless, so its own output, ``source_pool``, is the usual cut); the
data are K labelled images of each digit 5-9 (the first K of the few-shot bench's seed-0
draw) written as 32 px PNG files. Each repeat runs, as separate processes and in
alternating order,

- usual: ``graft train DATA -b MODEL --cut source_pool --strategy feature``
- auto:  ``graft train DATA -b MODEL --cut auto --strategy feature``

each with a fresh ``GRAFT_CACHE`` (a cold first run). ``--model PATH`` times another model
file (``--usual none``: its own output, no ``--cut``), e.g. fer's emotion model, whose input
scaling nothing in it settles, so ``--cut auto`` scores its cuts under several scalings.
Prints both walls per repeat, the medians and their ratio, the machine load before and
after (the machine is shared: both are measured in the same run), and the auto run's
choice line.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
SPLIT = "0-4>5-9"
USUAL = "source_pool"
TARGET = 2.0


def prepare(cache: Path, folder: Path, k: int) -> Path:
    """The headless source model (cached) and K images per target digit under ``folder``."""
    sys.path.insert(0, str(ROOT / "bench"))
    import few_shot
    from PIL import Image

    x, y = few_shot.digits()
    model = few_shot._headless_file(few_shot.source_model(SPLIT, x, y, cache))
    _, target = few_shot.SPLITS[SPLIT]
    train, _, _ = few_shot.draw(y, target, seed=0)
    for i in train(k):
        sub = folder / f"digit_{y[i]}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(sub / f"{i:05d}.png")
    return model


def one(python: str, data: Path, model: Path, cut: str, out: Path) -> tuple[float, str]:
    """Wall seconds of one ``graft train`` process and its log."""
    env = dict(os.environ, GRAFT_CACHE=str(out.parent / f"cache-{out.name}"))
    command = [python, "-m", "graft.cli", "train", str(data), "-b", str(model)]
    command += [] if cut == "none" else ["--cut", cut]
    command += ["--strategy", "feature", "--out", str(out), "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, done.stdout + done.stderr


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache",
        default=os.environ.get("GRAFT_CACHE") or str(Path.home() / ".cache" / "keras-graft"),
        help="where the pre-trained source CNN is kept (built once if missing)",
    )
    parser.add_argument("--k", type=int, default=10, help="labelled images per class")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--model", default=None, help="a model file (default: the source CNN)")
    parser.add_argument("--usual", default=USUAL, help="its usual cut (none: its own output)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="graft-cut-cost-") as tmp:
        tmp = Path(tmp)
        model = prepare(Path(args.cache), tmp / "data", args.k)
        model = Path(args.model) if args.model else model
        load_before = os.getloadavg()
        walls: dict[str, list[float]] = {"usual": [], "auto": []}
        choice = ""
        for i in range(args.repeats):
            order = ("usual", "auto") if i % 2 == 0 else ("auto", "usual")
            for mode in order:
                cut = args.usual if mode == "usual" else "auto"
                seconds, log = one(args.python, tmp / "data", model, cut, tmp / f"{mode}-{i}")
                walls[mode].append(seconds)
                print(f"{mode} {i + 1}: {seconds:.1f} s", flush=True)
                if mode == "auto":
                    choice = next((x for x in log.splitlines() if x.startswith("Cut:")), "")
        load_after = os.getloadavg()
    usual, auto = statistics.median(walls["usual"]), statistics.median(walls["auto"])
    ratio = auto / usual
    verdict = "meets" if ratio <= TARGET else "misses"
    print(f"\n## --cut auto vs --cut {args.usual} (feature), {model.name}, K={args.k} x 5 classes")
    print("| run | walls (s) | median (s) |")
    print("|---|---|---:|")
    for mode, median in (("usual", usual), ("auto", auto)):
        print(f"| {mode} | {', '.join(f'{w:.1f}' for w in walls[mode])} | {median:.1f} |")
    print(f"ratio auto/usual: {ratio:.2f}x ({verdict} the target <= {TARGET:g}x)")
    print(f"auto's choice: {choice}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average (1/5/15 min) "
        f"{'/'.join(f'{v:.2f}' for v in load_before)} before, "
        f"{'/'.join(f'{v:.2f}' for v in load_after)} after; Python {platform.python_version()}; "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
