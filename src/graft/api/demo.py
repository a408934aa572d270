"""``graft demo``: transfer learning on real data that ships offline.

scikit-learn's bundled handwritten digits (``load_digits``, no download) are split by
class: a small CNN is pre-trained on digits 0-4 (cached after the first run), then
grafted with graft's own file-based pipeline onto digits 5-9 with only a few labelled
images per class. Every strategy is compared with training the same architecture from
scratch, on the same held-out test images.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from graft import progress

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
IMAGE_SIZE = 32
BACKBONE_VERSION = 2
CUT_LAYER = "block3_relu"
STRATEGIES = ("scratch", "feature", "finetune", "hybrid")


def cache_dir() -> Path:
    """Where the demo's pre-trained backbone is kept (``$GRAFT_CACHE`` or ~/.cache)."""
    root = os.environ.get("GRAFT_CACHE") or Path.home() / ".cache" / "keras-graft"
    return Path(root)


def digits_rgb() -> tuple[np.ndarray, np.ndarray]:
    """The digits as 32x32 RGB uint8 images (0-255) and their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = (digits.images * (255.0 / 16.0)).clip(0, 255).astype("uint8")
    big = np.stack(
        [
            np.asarray(Image.fromarray(im).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
            for im in small
        ]
    )
    return np.repeat(big[..., None], 3, axis=-1), digits.target.astype("int32")


def build_source_model(num_classes: int):
    """The small CNN pre-trained on the source digits (inputs scaled to [0, 1])."""
    import keras

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="pixels")
    x = inputs
    for i, filters in enumerate((64, 128, 256), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv")(
            x
        )
        # momentum 0.9: the default 0.99 leaves the moving variance far from the data's
        # after the few hundred steps this pre-training takes.
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        if i < 3:
            x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="source_pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="source_head")(x)
    return keras.Model(inputs, outputs, name="digits_source_cnn")


def pretrained_backbone(log: Callable[[str], None] = print, seed: int = 0) -> Path:
    """Path of the source model, training and caching it on first use (49 s measured on a
    loaded 2-core CPU)."""
    import keras

    path = cache_dir() / f"demo-digits-0to4-v{BACKBONE_VERSION}.keras"
    if path.is_file():
        return path
    from graft.runs.files import save_model

    log(f"Pre-training the demo backbone on digits 0-4 (once; cached at {path}) ...")
    x, y = digits_rgb()
    mask = np.isin(y, SOURCE_CLASSES)
    xs, ys = x[mask].astype("float32") / 255.0, y[mask]
    keras.utils.set_random_seed(seed)
    model = build_source_model(len(SOURCE_CLASSES))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    epochs = 10
    with progress.track("Pre-training", epochs, "epochs") as bar:
        advance = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: bar.advance())
        model.fit(xs, ys, batch_size=32, epochs=epochs, verbose=0, callbacks=[advance])
    acc = model.evaluate(xs, ys, verbose=0, return_dict=True)["accuracy"]
    log(f"  source accuracy (inference mode, training digits): {acc:.3f}")
    save_model(model, path)
    return path


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, names: dict) -> Path:
    """Write images as PNG files in one subfolder per class."""
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root


# Per strategy: graft's defaults (the head solved as a converged linear probe, budgets in
# optimizer steps, every labelled image trained, input scaling inferred from the model's
# BatchNormalization statistics), only the unfreeze depth of this 3-block CNN given.
# Scratch: graft compare's recipe (compare.scratch_phase) with auto's budget in steps
# (:func:`graft.config.budget.scratch_epochs`, at least 40 epochs).
_SETTINGS = {
    "scratch": dict(weights="none"),
    "feature": dict(strategy="feature"),
    "finetune": dict(strategy="finetune", unfreeze="blocks:1"),
    "hybrid": dict(strategy="hybrid", unfreeze="blocks:1"),
}
SCRATCH_EPOCHS = 40
BATCH_SIZE = 16


def run(
    out: str | os.PathLike,
    budgets=(2, 10),
    strategies=STRATEGIES,
    seed: int = 0,
    log: Callable[[str], None] = print,
    epochs_scale: float = 1.0,
    seeds: int = 1,
) -> list[dict]:
    """Run the demo; returns one row per (budget, strategy) and writes results.csv/.md.

    With ``seeds`` above 1, every row is trained with the seeds ``seed``, ``seed + 1``,
    ... on the same images (as ``graft compare --seeds``) and reports the mean test
    accuracy and its standard deviation (``test_accuracy_std``).

    Args:
        out: Folder for the data, one run folder per experiment and the results.
        budgets: Labelled training images per target class.
        strategies: Subset of :data:`STRATEGIES`.
        seed: Seed for sampling and training.
        log: Receives progress lines.
        epochs_scale: Multiplies scratch's epochs (``--quick`` uses less; the other
            strategies train on graft's own budgets in optimizer steps).
    """
    from graft import api
    from graft.api.compare import scratch_phase
    from graft.config.budget import scratch_epochs
    from graft.runs import files as runs

    if int(seeds) < 1:
        from graft.errors import GraftError

        raise GraftError(f"seeds must be at least 1. Received: seeds={seeds}")
    out = Path(out)
    backbone = pretrained_backbone(log)
    x, y = digits_rgb()
    names = {c: f"digit_{c}" for c in TARGET_CLASSES}
    rng = np.random.default_rng(seed)
    target = np.flatnonzero(np.isin(y, TARGET_CLASSES))
    pools = {c: rng.permutation(target[y[target] == c]) for c in TARGET_CLASSES}
    most = max(budgets)
    test_idx = np.concatenate([pools[c][most:] for c in TARGET_CLASSES])
    test_dir = write_folder(out / "data" / "test", x[test_idx], y[test_idx], names)
    rows = []
    for budget in budgets:
        train_idx = np.concatenate([pools[c][:budget] for c in TARGET_CLASSES])
        train_dir = write_folder(
            out / "data" / f"train_{budget}", x[train_idx], y[train_idx], names
        )
        for strategy in strategies:
            settings = dict(_SETTINGS[strategy])
            if strategy == "scratch":
                epochs = scratch_epochs(len(train_idx), BATCH_SIZE, SCRATCH_EPOCHS)
                settings["phases"] = [scratch_phase(max(1, int(epochs * epochs_scale)))]
            log(f"[{budget}/class] {strategy} ...")
            accuracies, times = [], []
            for k in range(seeds):
                start = time.perf_counter()
                suffix = "" if seeds == 1 else f"_seed{seed + k}"
                result = api.train(
                    train_dir,
                    str(backbone),
                    out / f"{strategy}_{budget}{suffix}",
                    overwrite=True,
                    cut=CUT_LAYER,
                    batch_size=BATCH_SIZE,
                    seed=seed + k,
                    log=lambda _line: None,
                    verbose=0,
                    **settings,
                )
                times.append(time.perf_counter() - start)
                with progress.silenced():
                    accuracies.append(api.evaluate(result.run_dir, test_dir)["accuracy"])
            head = result.model.get_layer("head_output").count_params()  # a solved head
            trainable = max((p["trainable_params"] for p in result.metrics["phases"]), default=head)
            rows.append(
                {
                    "labels_per_class": budget,
                    "strategy": strategy,
                    "trainable_params": trainable,
                    "test_accuracy": round(float(np.mean(accuracies)), 4),
                    "test_accuracy_std": round(float(np.std(accuracies)), 4),
                    "seeds": seeds,
                    "seconds": round(float(np.mean(times)), 1),
                }
            )
            log(seed_line(rows[-1]))
    runs.write_csv(out / "results.csv", rows)
    runs.atomic_write(out / "results.md", markdown_table(rows))
    return rows


#: What ``graft demo`` runs without a flag: one budget, one seed, every strategy (a few
#: minutes); ``--quick`` and ``--full`` the smaller and the whole comparison.
MODES = {
    "quick": dict(budgets=(2,), seeds=1, epochs_scale=0.5),
    "default": dict(budgets=(10,), seeds=1, epochs_scale=1.0),
    "full": dict(budgets=(2, 10), seeds=3, epochs_scale=1.0),
}
#: The next command to try, on one's own images.
NEXT_COMMAND = "graft train PATH/TO/IMAGES --backbone mobilenet_v2 --strategy auto --out runs/mine"


def run_folder(out: str | os.PathLike, row: dict, seed: int = 0) -> Path:
    """The run folder of a row (its first seed's, where there are several)."""
    suffix = "" if (row.get("seeds") or 1) == 1 else f"_seed{seed}"
    return Path(out) / f"{row['strategy']}_{row['labels_per_class']}{suffix}"


def report_to_open(out: str | os.PathLike, rows: list[dict], seed: int = 0) -> Path | None:
    """The report of the best transfer row (most labels, then the highest test accuracy):
    what a newcomer opens first."""
    transfer = [r for r in rows if r["strategy"] != "scratch"] or rows
    if not transfer:
        return None
    best = max(transfer, key=lambda r: (r["labels_per_class"], r["test_accuracy"]))
    return run_folder(out, best, seed) / "report.html"


def closing_lines(out: str | os.PathLike, rows: list[dict], seed: int = 0) -> list[str]:
    """What the demo says last: the results, the report to open, the next command."""
    lines = [f"Results: {Path(out) / 'results.md'}; one run folder per row under {out}/"]
    report = report_to_open(out, rows, seed)
    if report is not None:
        lines.append(f"Open this report in a browser: {report}")
    lines.append(f"Next, on your own images (one subfolder per class): {NEXT_COMMAND}")
    return lines


def seed_line(row: dict) -> str:
    """The progress line of one row: the very numbers its table row shows."""
    seeds = row.get("seeds") or 1
    over = f" over {seeds} seeds" if seeds > 1 else ""
    return f"    test accuracy {accuracy_text(row)}{over} ({row['seconds']:.1f} s)"


def accuracy_text(row: dict) -> str:
    """``0.912`` or, over several seeds, ``0.912 ± 0.010``."""
    text = f"{row['test_accuracy']:.3f}"
    if (row.get("seeds") or 1) > 1:
        text += f" ± {row['test_accuracy_std']:.3f}"
    return text


def markdown_table(rows: list[dict]) -> str:
    seeds = max((r.get("seeds") or 1 for r in rows), default=1)
    head = "| labels/class | strategy | trainable params | test accuracy | seconds |\n"
    head += "|---:|---|---:|---:|---:|\n"
    table = head + "".join(
        f"| {r['labels_per_class']} | {r['strategy']} | {r['trainable_params']:,} | "
        f"{accuracy_text(r)} | {r['seconds']} |\n"
        for r in rows
    )
    return table + (f"\nMean ± standard deviation over {seeds} seeds.\n" if seeds > 1 else "")
