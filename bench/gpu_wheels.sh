#!/usr/bin/env bash
# The wheelhouse bench/gpu_whole.py needs on a GPU machine that has JAX (and so NumPy,
# SciPy, ml-dtypes) but not Keras, graft or their other dependencies, and no network:
#   bench/gpu_wheels.sh [DIR]          # here: graft's wheel + its dependencies (~50 MB)
#   pip install --no-index --find-links DIR keras-graft      # there, then:
#   KERAS_BACKEND=jax python bench/gpu_whole.py --out bench/results-gpu-whole-h200.md
# What the machine already has (jax, jaxlib, numpy, scipy, ml-dtypes, CUDA wheels) is left
# out, so the folder fits the device tool's 64 MiB carry limit.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-wheels}
rm -rf "$out" && mkdir -p "$out"
python3 -m pip wheel -q --no-deps -w "$out" .
python3 -m pip download -q -d "$out" --only-binary=:all: "$out"/keras_graft-*.whl
rm -f "$out"/{jax,jaxlib,numpy,scipy,ml_dtypes,opt_einsum}-*.whl "$out"/nvidia_*.whl
du -sh "$out"
ls "$out"
