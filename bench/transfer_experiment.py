"""Transfer experiment on scikit-learn digits: accuracy and forgetting per strategy.

    PYTHONPATH=src python bench/transfer_experiment.py            # full: 3 seeds
    PYTHONPATH=src python bench/transfer_experiment.py --quick    # 1 seed, half the epochs

A small CNN is pre-trained on digits 0-4 (``graft.demo.pretrained_backbone``, cached),
cut at ``block3_relu`` and grafted onto digits 5-9 with 5, 10 and 50 labelled images per
class. For every seed the target images are drawn afresh: the training images, 30 held-out
validation images per class (used only to measure feature drift; nothing is selected on
them) and the remaining images as the test set. Each strategy of
``graft.strategies.STRATEGIES`` present at run time (plus ``scratch``: the same
architecture from random weights) gets the same budget of epochs; strategies that train
the backbone run again with L2-SP when ``TrainConfig`` has an ``l2sp`` setting.

Reported per (labels/class, strategy, L2-SP), mean +- std over seeds: test accuracy,
linear CKA and mean cosine between the pre-trained and the trained backbone's features
on the validation images (``metrics["feature_drift"]``; for scratch: against its random
initialisation), and the source task's accuracy (digits 0-4) with the original head on
the trained backbone (``metrics["source_task"]``).

Writes ``docs/transfer_experiment.md`` (and the raw rows as ``.csv``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WANTED = ("plain-keras", "scratch", "feature", "finetune", "hybrid", "gradual", "lp-ft", "auto")
#: graft with its defaults: ``STRATEGY@defaults`` passes only the strategy (no epochs, no
#: validation images, no preprocess, no batch size): what a user who types
#: ``graft train DATA --strategy STRATEGY`` gets (k-fold and refit on every label at these K).
DEFAULTS = "@defaults"
#: Rows that are not graft strategies: plain Keras ``model.fit`` of the same CNN from
#: scratch, graft's scratch recipe, graft's scratch without precise BN (the old baseline).
BASELINES = ("plain-keras", "scratch", "scratch-no-precise-bn")
BUDGETS = (2, 4, 10, 50)
AUTO_TRIALS = 4
VAL_PER_CLASS = 30
EPOCHS = 40  # every strategy's total; few labels mean one to four steps per epoch
FINETUNE_LR = 1e-4
SOURCE_EVAL_PER_CLASS = 60


def settings_for(strategy: str, scale: float) -> dict:
    """graft settings of one strategy with the shared epoch budget."""
    total = max(2, int(EPOCHS * scale))
    half = total // 2
    from graft.api.compare import scratch_phase

    if strategy in ("scratch", "scratch-no-precise-bn"):
        phase = scratch_phase(total)
        if strategy != "scratch":
            phase = dataclasses.replace(phase, precise_bn=False)
        return {"weights": "none", "phases": [phase]}
    if strategy.endswith(DEFAULTS):
        return {"strategy": strategy.removesuffix(DEFAULTS)}
    if strategy == "auto":
        return {"strategy": "auto", "epochs": total, "finetune_epochs": total - half,
                "finetune_lr": FINETUNE_LR, "budget_trials": AUTO_TRIALS}  # fmt: skip
    common = {"strategy": strategy, "finetune_lr": FINETUNE_LR}
    if strategy == "feature":
        return {**common, "epochs": total}
    if strategy == "finetune":
        return {**common, "epochs": total, "unfreeze": "blocks:1"}
    if strategy == "hybrid":
        return {**common, "epochs": half, "finetune_epochs": total - half, "unfreeze": "blocks:1"}
    return {**common, "epochs": half, "finetune_epochs": total - half}  # gradual, lp-ft, ...


def available(wanted) -> tuple[list[str], list[str], str | None]:
    """(strategies to run, skipped ones, the L2-SP setting's name or None)."""
    from graft.config.settings import TrainConfig
    from graft.config.strategies import STRATEGIES

    run = [
        s
        for s in wanted
        if s in (*BASELINES, "auto") or s.removesuffix(DEFAULTS) in (*STRATEGIES, "auto")
    ]
    skipped = [s for s in wanted if s not in run]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    l2sp = next((name for name in ("l2sp", "l2_sp", "l2sp_alpha") if name in fields), None)
    return run, skipped, l2sp


def draw(y: np.ndarray, target, budget_max: int, seed: int):
    """Per-class pools for one seed: {class: shuffled indices}."""
    rng = np.random.default_rng(seed)
    pools = {c: rng.permutation(np.flatnonzero(y == c)) for c in target}
    return {
        "train": lambda budget: np.concatenate([pools[c][:budget] for c in target]),
        "val": np.concatenate([pools[c][budget_max : budget_max + VAL_PER_CLASS] for c in target]),
        "test": np.concatenate([pools[c][budget_max + VAL_PER_CLASS :] for c in target]),
    }


def skipped_lines(wanted) -> list[str]:
    """What this graft cannot run of ``wanted`` (printed, and noted in the document)."""
    _, skipped, l2sp = available(wanted)
    lines = []
    if skipped:
        lines.append(f"Skipped (not in graft.strategies.STRATEGIES): {', '.join(skipped)}")
    if l2sp is None:
        lines.append("Skipped L2-SP variants (TrainConfig has no l2sp setting)")
    return lines


def plain_keras(train, test, seed: int, epochs: int) -> float:
    """Test accuracy of the demo CNN trained from scratch by plain ``model.fit`` on arrays
    ([0, 1] inputs, batch 16, Adam 1e-3): the reference graft's scratch row should match."""
    import keras

    from graft.api import demo

    keras.utils.set_random_seed(seed)
    model = demo.build_source_model(len(demo.TARGET_CLASSES))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(train[0] / 255.0, train[1], batch_size=16, epochs=epochs, verbose=0)
    return float(model.evaluate(test[0] / 255.0, test[1], verbose=0, return_dict=True)["accuracy"])


def run(args) -> list[dict]:
    from graft import api
    from graft.api import demo

    strategies, _, l2sp = available(args.strategies.split(","))
    for line in skipped_lines(args.strategies.split(",")):
        print(line)
    source = demo.pretrained_backbone(log=print)
    x, y = demo.digits_rgb()
    target = demo.TARGET_CLASSES
    src_idx = np.concatenate(
        [np.flatnonzero(y == c)[:SOURCE_EVAL_PER_CLASS] for c in demo.SOURCE_CLASSES]
    )
    source_eval = (x[src_idx], y[src_idx])
    label = {c: i for i, c in enumerate(target)}
    to_labels = np.vectorize(label.get)
    rows = []
    for seed in range(args.seeds):
        split = draw(y, target, max(args.budgets), seed)
        val = (x[split["val"]], to_labels(y[split["val"]]).astype("int32"))
        test = (x[split["test"]], to_labels(y[split["test"]]).astype("int32"))
        for budget in args.budgets:
            idx = split["train"](budget)
            train = (x[idx], to_labels(y[idx]).astype("int32"))
            for strategy in strategies:
                if strategy == "plain-keras":
                    start = time.perf_counter()
                    total = max(2, int(EPOCHS * args.epochs_scale))
                    accuracy = plain_keras(train, test, seed, total)
                    rows.append(
                        {"labels_per_class": budget, "strategy": strategy, "l2sp": 0.0,
                         "seed": seed, "test_accuracy": round(accuracy, 4), "cka": None,
                         "cosine": None, "source_accuracy_after": None,
                         "source_accuracy_before": None,
                         "seconds": round(time.perf_counter() - start, 1)}
                    )  # fmt: skip
                    print(
                        f"seed {seed} {budget:>2}/class plain-keras test {accuracy:.3f}", flush=True
                    )
                    continue
                variants = [None]
                trains_backbone = strategy not in (*BASELINES, "feature", "auto")
                defaults = strategy.endswith(DEFAULTS)
                if l2sp is not None and trains_backbone and not defaults:
                    variants.append(args.l2sp)
                for alpha in variants:
                    settings = settings_for(strategy, args.epochs_scale)
                    if alpha is not None:
                        settings[l2sp] = alpha
                    if not defaults:
                        settings.update(val=val, preprocess="unit", batch_size=16)
                    start = time.perf_counter()
                    result = api.train(
                        train,
                        str(source),
                        None,
                        test=test,
                        classes=[f"digit_{c}" for c in target],
                        cut=demo.CUT_LAYER,
                        seed=seed,
                        source_eval=source_eval,
                        log=lambda _line: None,
                        verbose=0,
                        **settings,
                    )
                    m = result.metrics
                    chosen = (m.get("auto_search") or {}).get("chosen", {}).get("strategy")
                    row = {
                        "labels_per_class": budget,
                        "strategy": strategy,
                        "l2sp": alpha or 0.0,
                        "seed": seed,
                        "auto_chose": chosen,
                        "test_accuracy": round(m["test_accuracy"], 4),
                        "cka": m["feature_drift"]["cka"],
                        "cosine": m["feature_drift"]["cosine"],
                        "source_accuracy_after": m["source_task"]["accuracy_after"],
                        "source_accuracy_before": m["source_task"]["accuracy_before"],
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                    rows.append(row)
                    print(
                        f"seed {seed} {budget:>2}/class {strategy:<8} l2sp {row['l2sp']:<5} "
                        f"test {row['test_accuracy']:.3f} CKA {row['cka']:.3f} "
                        f"source {row['source_accuracy_after']:.3f} ({row['seconds']} s)"
                        + (f" chose {chosen}" if chosen else ""),
                        flush=True,
                    )
    return rows


def _mean_std(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    values = np.asarray(values, dtype="float64")
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def table(rows: list[dict]) -> str:
    """Markdown: one line per (labels/class, strategy, L2-SP), mean ± std over seeds."""
    keys = list(dict.fromkeys((r["labels_per_class"], r["strategy"], r["l2sp"]) for r in rows))
    head = (
        "| labels/class | strategy | L2-SP | test accuracy | feature CKA | feature cosine "
        "| source acc. after | seconds |\n|---:|---|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for budget, strategy, alpha in keys:
        group = [
            r
            for r in rows
            if (r["labels_per_class"], r["strategy"], r["l2sp"]) == (budget, strategy, alpha)
        ]
        lines.append(
            f"| {budget} | {strategy} | {alpha or '-'} "
            f"| {_mean_std([r['test_accuracy'] for r in group])} "
            f"| {_mean_std([r['cka'] for r in group])} "
            f"| {_mean_std([r['cosine'] for r in group])} "
            f"| {_mean_std([r['source_accuracy_after'] for r in group])} "
            f"| {np.mean([r['seconds'] for r in group]):.1f} |"
        )
    return head + "\n".join(lines) + "\n"


def closing_note(rows: list[dict]) -> str:
    """Before/after of the scratch baseline, and what auto chose, per budget."""
    lines = []
    for budget in sorted({r["labels_per_class"] for r in rows}):
        mean = {}
        for name in (
            "plain-keras",
            "scratch-no-precise-bn",
            "scratch",
            "feature",
            "hybrid",
            "auto",
            *(f"{name}{DEFAULTS}" for name in ("feature", "hybrid", "auto")),
        ):
            group = [
                r["test_accuracy"]
                for r in rows
                if (r["labels_per_class"], r["strategy"], r["l2sp"] or 0) == (budget, name, 0)
            ]
            if group:
                mean[name] = float(np.mean(group))
        chose = [
            f"{name} chose {', '.join(picks)}"
            for name in ("auto", f"auto{DEFAULTS}")
            if (picks := sorted({r.get("auto_chose") for r in rows if r["labels_per_class"]
                                 == budget and r["strategy"] == name and r.get("auto_chose")}))
        ]  # fmt: skip
        text = ", ".join(f"{k} {v:.3f}" for k, v in mean.items())
        lines.append(f"- {budget}/class: {text}" + (f"; {'; '.join(chose)}" if chose else ""))
    head = (
        "Before/after (issue 15): `scratch-no-precise-bn` is graft's scratch row before, "
        "`scratch` after; `auto` before could not choose scratch.\n\n"
    )
    return head + "\n".join(lines) + "\n" if lines else ""


def document(rows: list[dict], args, command: str, seconds: float) -> str:
    seeds = sorted({r["seed"] for r in rows})
    before = next(
        (r["source_accuracy_before"] for r in rows if r["source_accuracy_before"] is not None),
        float("nan"),
    )
    return f"""# Transfer experiment: accuracy and forgetting per strategy

Produced by one command (numbers below are pasted from an actual run, {seconds / 60:.1f} min on
a 2-core CPU):

    {command}

Setup ({"`--quick`: " if args.quick else ""}{len(seeds)} seed(s), {args.epochs_scale:g} x the epoch
budget): a small CNN (3 conv blocks with BatchNormalization) pre-trained on scikit-learn digits 0-4
(`graft.demo.pretrained_backbone`), cut at `{"block3_relu"}` and grafted onto digits 5-9 with
{", ".join(str(b) for b in args.budgets)} labelled images per class. Per seed the target images are
drawn afresh: the training images, {VAL_PER_CLASS} validation images per class (only used to
measure feature drift) and all remaining images as the test set. Every strategy gets
{int(EPOCHS * args.epochs_scale)} epochs in total (split in half between the phases of
two-phase strategies), head learning rate 1e-3, backbone learning rate {FINETUNE_LR:g},
batch 16, BatchNormalization frozen except for scratch.

Baselines: `plain-keras` trains the same CNN from random weights with plain `model.fit` on
arrays (inputs in [0, 1], Adam 1e-3); `scratch` is graft's scratch recipe (`graft compare`'s:
fresh weights, everything trains, BN too, full learning rate, precise BN: the BN statistics
are re-estimated on the training images after training); `scratch-no-precise-bn` is the same
without precise BN, i.e. graft's scratch row before issue 15. `auto` is `--strategy auto`
({AUTO_TRIALS} trials on the validation images, then the best transfer configuration and
scratch as full-budget finalists; its head phase gets the full epoch budget and hybrid's
fine-tuning phase half of it, so its finalists may train longer than the other rows).

Rows `STRATEGY@defaults` are graft with its defaults: only the strategy is given (no epoch
budget, no validation images, no preprocess, no batch size), as a user typing
`graft train DATA --strategy STRATEGY` runs it: at these K the validation is k-fold and the
model is trained on every labelled image, the head is the solved linear probe, budgets are
optimizer steps and the input scaling is measured; their drift columns are measured on
the training images (they get no validation images).

The equal-budget rows give graft an epoch count, so their head (linear, graft's default
head since issue 22) trains by gradient: 10 or 20 epochs of 10-50 images at batch 16 are
10-80 optimizer steps, far from converged, which is why `feature` there trails
`feature@defaults` (the solved probe) by up to 0.33 below 50 labels per class; graft warns
about such a budget.

A note on plain Keras: after `keras.utils.set_random_seed`, `model.fit` on numpy arrays with
`shuffle=True` feeds the same batch order in every epoch (Keras 3.15 / TF 2.21), while graft's
`tf.data` pipeline really reshuffles; that makes plain Keras's BN moving statistics look
steadier than they are. With precise BN both score the same.

Columns: test accuracy on digits 5-9; linear CKA and mean cosine similarity between the
pre-trained and the trained backbone's pooled features on the validation images
(1.0 = unchanged; for scratch: against its own random initialisation); source-task accuracy
on {SOURCE_EVAL_PER_CLASS * 5} images of digits 0-4 (from the pre-training set) with the original
head re-attached to the trained backbone (before training: {before:.3f}). Mean ± sample std
over seeds.

{table(rows)}
{closing_note(rows)}
{" ".join(line + "." for line in skipped_lines(args.strategies.split(",")))}

Raw per-run numbers: `docs/transfer_experiment.csv`.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed and half the epochs.")
    parser.add_argument("--seeds", type=int, default=None, help="Seeds (default 3; quick 1).")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--strategies", default=",".join(WANTED))
    parser.add_argument("--epochs-scale", type=float, default=None)
    parser.add_argument("--l2sp", type=float, default=0.01, help="L2-SP strength.")
    parser.add_argument("--no-write", action="store_true", help="Only print the table.")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.epochs_scale = args.epochs_scale or (0.5 if args.quick else 1.0)
    args.budgets = [int(b) for b in args.budgets.split(",")]
    start = time.perf_counter()
    rows = run(args)
    seconds = time.perf_counter() - start
    print()
    print(table(rows))
    if not args.no_write:
        from graft.runs import files as runs

        command = "PYTHONPATH=src python bench/transfer_experiment.py " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        runs.write_csv(ROOT / "docs" / "transfer_experiment.csv", rows)
        runs.atomic_write(
            ROOT / "docs" / "transfer_experiment.md",
            document(rows, args, command.strip(), seconds),
        )
        print(f"Wrote {ROOT / 'docs' / 'transfer_experiment.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
