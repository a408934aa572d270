"""How fast the cheap commands answer: whole-process wall time of ``graft --help``,
``graft train --help`` and ``graft backbones`` against ``python -c pass``.

    python bench/cli_latency.py            # medians of 5 runs each
    python bench/cli_latency.py --runs 9

Prints a markdown table: the median seconds, the ratio to an empty Python process, and
whether it is within the 1 s target (none of these commands may import TensorFlow).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TARGET_S = 1.0
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "graft --help": [sys.executable, "-m", "graft.cli", "--help"],
    "graft train --help": [sys.executable, "-m", "graft.cli", "train", "--help"],
    "graft backbones": [sys.executable, "-m", "graft.cli", "backbones"],
}


def wall_time(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    medians = {}
    for name, argv in COMMANDS.items():
        wall_time(argv)  # warm the file cache and .pyc files
        medians[name] = statistics.median(wall_time(argv) for _ in range(args.runs))
    base = medians["python -c pass"]
    print(f"| command | median s ({args.runs} runs) | x python -c pass | <= {TARGET_S:.0f} s |")
    print("|---|---:|---:|---|")
    slow = 0
    for name, seconds in medians.items():
        ok = seconds <= TARGET_S
        slow += not ok
        print(f"| `{name}` | {seconds:.3f} | {seconds / base:.1f} | {'yes' if ok else 'NO'} |")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
