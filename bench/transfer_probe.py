"""Which cut transfers best (issue 23): every cut x pooling's CV probe score and test accuracy.

    PYTHONPATH=src python bench/transfer_probe.py 2,10 0,1,2 block3_relu

The demo CNN pre-trained on digits 0-4 (``graft.api.demo.pretrained_backbone``), cut at
ARG3, grafted onto digits 5-9 with K labelled images per class (ARG1) for each seed (ARG2);
the test images are every other 5-9 digit. Prints, per (K, seed), the table of
:func:`graft.training.transfer.measure_transfer` with each candidate's test accuracy (probe
refit on the labelled images, C by CV), and the chosen cut against the model's output + avg.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from graft import _quiet  # noqa: E402

_quiet.import_backend()

import numpy as np  # noqa: E402

from graft.api.demo import digits_rgb, pretrained_backbone  # noqa: E402
from graft.core.cutting import outputs_at  # noqa: E402
from graft.core.loaders import resolve  # noqa: E402
from graft.data.folds import plan_folds  # noqa: E402
from graft.training.candidates import pool_features, scale_images  # noqa: E402
from graft.training.probe import fit_probe  # noqa: E402
from graft.training.transfer import measure_transfer  # noqa: E402

SCALING = "unit"  # the demo CNN's inputs are scaled to [0, 1]


def maps_of(taps, paths, images) -> dict:
    out = taps(scale_images(images.astype("float32"), SCALING, 3), training=False)
    out = out if isinstance(out, (list, tuple)) else [out]
    return dict(zip(paths, [np.asarray(m) for m in out]))


def one(bb, x, y, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tr = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in range(5)])
    te = np.setdiff1d(np.arange(len(y)), tr)
    folds = plan_folds(y[tr], seed=seed)
    started = time.time()
    res = measure_transfer(bb.model, bb.blocks, x[tr], y[tr], folds, scalings=(SCALING,), seed=seed)
    seconds = time.time() - started
    paths = list(dict.fromkeys(s.cut.path for s in res.scores))
    taps = outputs_at(bb.model, paths)
    f_train, f_test = maps_of(taps, paths, x[tr]), maps_of(taps, paths, x[te])
    test = {}
    for s in res.measured:
        probe = fit_probe(pool_features(f_train[s.cut.path], s.pool), y[tr], folds, seed=seed)
        guess = probe.predict_proba(pool_features(f_test[s.cut.path], s.pool)).argmax(1)
        test[s.cut.path, s.pool] = float(np.mean(guess == y[te]))
    print(
        f"\n## K={k} seed={seed} ({len(tr)} labelled, {len(te)} test; measured in {seconds:.1f} s)"
    )
    print("| cut | depth | map | pool | features | CV acc ± std | test acc |")
    print("|---|---:|---|---|---:|---|---:|")
    for s in res.scores:
        cv = s.score.text() if s.score else f"skipped ({s.skipped})"
        mark = " **chosen**" if s is res.chosen else ""
        acc = test.get((s.cut.path, s.pool))
        shape = "x".join(map(str, s.cut.shape))
        row = f"{s.cut.path}{mark} | {s.cut.depth} | {shape} | {s.pool} | {s.features} | {cv}"
        print(f"| {row} | {'-' if acc is None else f'{acc:.3f}'} |")
    chosen = test[res.cut, res.pool]
    pool = "avg" if (res.output, "avg") in test else "identity"  # a vector output: as it is
    default = test[res.output, pool]
    print(
        f"CHOSEN {res.cut}+{res.pool} test {chosen:.3f}; "
        f"DEFAULT (output, {pool}) test {default:.3f}"
    )
    print(res.line())


def main() -> None:
    ks = [int(k) for k in sys.argv[1].split(",")] if len(sys.argv) > 1 else [2, 10]
    seeds = [int(s) for s in sys.argv[2].split(",")] if len(sys.argv) > 2 else [0]
    bb = resolve(str(pretrained_backbone()), cut=sys.argv[3] if len(sys.argv) > 3 else None)
    x, y = digits_rgb()
    mask = np.isin(y, [5, 6, 7, 8, 9])
    x, y = x[mask], y[mask] - 5
    for k in ks:
        for seed in seeds:
            one(bb, x, y, k, seed)


if __name__ == "__main__":
    main()
