"""The commands that use a model or a run rather than train one: evaluate, report,
predict, export, backbones, data check, inspect, demo."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click
from rich.table import Table

from graft import progress
from graft.cli import options
from graft.cli.base import GraftCommand, GraftGroup, console, import_backend, log
from graft.config import catalog, names
from graft.errors import GraftError


@click.command(cls=GraftCommand)
@click.argument("model")
@click.argument("data")
@options.settings(
    ["batch_size", "min_size"],
    min_size={
        "default": None,
        "show_default": False,
        "help": "Skip images whose width or "
        "height is below N pixels (default: the run's own --min-size).",
    },
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--unsafe", is_flag=True, help="Allow a model file with Lambda layers (runs code).")
def evaluate(model, data, batch_size, min_size, as_json, unsafe):
    """Accuracy, loss, top-k, per-class P/R/F1, confusion and calibration of MODEL on DATA."""
    from graft import api

    with progress.silenced() if as_json else contextlib.nullcontext():  # stdout is data
        result = api.evaluate(
            model, data, batch_size=batch_size, min_size=min_size, safe_mode=not unsafe
        )
    if as_json:
        print(json.dumps(result))
        return
    skipped = result.get("skipped")
    log(api.summary_line(result) + (f" ({skipped} skipped by the data check)" if skipped else ""))
    if result.get("run_decode"):
        trained, used = result["run_decode"]["library"], result["decode"]["library"]
        log(
            f"Note: the run decoded its images with {trained}; here {used} decodes them "
            "(a few levels apart on some pixels of real JPEGs)."
        )
    per_class = result.get("per_class") or result.get("per_label") or {}
    table = Table("class", "precision", "recall", "F1", "support")
    for name, v in per_class.items():
        table.add_row(
            name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"])
        )
    console.print(table)


@click.command(cls=GraftCommand)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--data", default=None, help="Re-evaluate on this labelled folder first.")
@options.settings(["batch_size"])
def report(run_dir, data, batch_size):
    """(Re)generate RUN_DIR/report.html, its plots and MODEL_CARD.md."""
    from graft.api import outputs

    files = outputs.report(run_dir, data=data, batch_size=batch_size)
    if files.status_note:
        log(files.status_note)
    log(f"Report: {files.report}")
    log(f"Model card: {files.model_card}")


@click.command(cls=GraftCommand)
@click.argument("model")
@click.argument("images", nargs=-1, required=True)
@click.option("--top-k", type=int, default=1, show_default=True, help="Classes per image.")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option("--out", "-o", default=None, help="Output file (default: stdout).")
@options.settings(["batch_size"])
@click.option(
    "--min-size", type=int, default=None, help="Skip smaller images (default: the run's own)."
)
@click.option("--unsafe", is_flag=True, help="Allow a model file with Lambda layers (runs code).")
def predict(model, images, top_k, fmt, out, batch_size, min_size, unsafe):
    """Predict the classes of IMAGES (files or folders) with MODEL (a run folder or .keras)."""
    from graft.api import outputs

    def skipped(item):
        print(f"graft: skipped {item.path}: {options.to_flags(item.reason)}", file=sys.stderr)

    summary = outputs.predict(
        model,
        images,
        out,
        fmt=fmt,
        top_k=top_k,
        batch_size=batch_size,
        on_skip=skipped,
        safe_mode=not unsafe,
        min_size=min_size,
    )
    where = f" to {out}" if out not in (None, "-") else ""
    n, bad = summary.predicted, len(summary.skipped)
    print(
        f"graft: predicted {n} image{'' if n == 1 else 's'}{where}; "
        f"skipped {bad} unreadable file{'' if bad == 1 else 's'}",
        file=sys.stderr,
    )
    if n == 0 and bad:
        raise GraftError(
            f"no image could be read: every one of the {bad} input files was skipped.",
            hint="see the reasons above.",
        )


@click.command(cls=GraftCommand)
@click.argument("model")
@click.option("--format", "fmt", type=click.Choice(names.EXPORT_FORMATS), required=True)
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Output path.")
@click.option(
    "--quantize",
    type=click.Choice(names.QUANTIZE_MODES),
    default="none",
    show_default=True,
    help="TFLite quantization.",
)
@click.option("--calibration", default=None, help="Representative images (int8; the check).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def export(model, fmt, out, quantize, calibration, overwrite):
    """Export MODEL (a run folder or .keras) and check it against the Keras model.

    onnx needs the extra: pip install "keras-graft[onnx]"; its check runs in ONNX Runtime.
    """
    from graft.api import outputs

    result = outputs.export(
        model, fmt, out, quantize=quantize, calibration=calibration, overwrite=overwrite
    )
    log(f"Exported {fmt} to {result.path}")
    log(result.summary_line())


@click.command(cls=GraftCommand, needs_backend=False)
@click.option(
    "--family", type=click.Choice(catalog.FAMILIES), default=None, help="Only this family."
)
@click.option(
    "--max-params",
    default=None,
    metavar="N",
    help="Only backbones with at most N million parameters (10, 10M or 500k).",
)
@click.option(
    "--sort",
    type=click.Choice(catalog.SORT_KEYS),
    default=None,
    help="Order by name, params or size (smallest first) or top1 (best first); default: by family.",
)
@click.option(
    "--measure",
    is_flag=True,
    help="Also measure forward speed on this machine (images/s, batch 32, random "
    "weights); builds every listed backbone, so filter first.",
)
@click.option(
    "--image-size", type=int, default=None, help="Input side for --measure (default: each one's)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list on stdout.")
def backbones(family, max_params, sort, measure, image_size, as_json):
    """List the architectures graft knows by name: size, ImageNet accuracy, speed.

    Parameters, weight file size and ImageNet top-1/top-5 are Keras's published
    figures (with the 1000-class top); --measure times the forward pass here.
    """
    limit = None if max_params is None else catalog.parse_count(max_params)
    rows = [r.as_dict() for r in catalog.select(family, limit, sort)]
    counts = catalog.block_counts()
    for row in rows:
        row["blocks"] = counts.get(row["name"])
    if measure:
        import_backend()  # only now: listing answers from the catalog without Keras
        from graft.api.inspection import MEASURE_BATCH, forward_speed

        for row in rows:
            if not as_json:
                log(f"measuring {row['name']} ...")
            row.update(forward_speed(row["name"], image_size=image_size))
    if as_json:
        print(json.dumps(rows))
        return
    columns = {  # header: cell; text columns are left-aligned
        "name": lambda r: r["name"],
        "params": lambda r: _num(r["params_m"]),
        "MB": lambda r: _num(r["size_mb"], ".0f"),
        "top-1": lambda r: _num(r["top1"]),
        "top-5": lambda r: _num(r["top5"]),
        "input": lambda r: str(r.get("image_size", r["default_size"])),  # as measured
        "min": lambda r: str(r["min_size"]),
        "preproc": lambda r: r["preprocess"],
        "blocks": lambda r: _num(r["blocks"], "d"),
        "img/s": lambda r: _num(r.get("images_per_s")),
    }
    if measure:  # room for the speed in 80 columns
        del columns["min"], columns["blocks"]
    else:
        del columns["img/s"]
    table = Table(*columns, box=None, pad_edge=False)
    for column in table.columns:
        column.no_wrap = True
        column.justify = "left" if column.header in ("name", "preproc") else "right"
    for r in rows:
        table.add_row(*(cell(r) for cell in columns.values()))
    console.print(table)
    log(
        "params: millions; MB: weight file; top-1/top-5: ImageNet accuracy %; all with the "
        "1000-class top, from Keras's published table. input/min: image side (px)."
    )
    if measure:
        size = f"{image_size} px" if image_size else "each one's input size"
        log(f"img/s: forward pass (no top), batch {MEASURE_BATCH}, at {size}, on this machine.")


def _num(value, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


@click.group(cls=GraftGroup)
def data():
    """Inspect datasets."""


@data.command("check")
@click.argument("data_path", metavar="DATA")
@click.option("--val", default=None, help="Validation folder or .csv to check with DATA.")
@click.option("--test", default=None, help="Test folder or .csv to check with DATA.")
@options.settings(["min_size"])
@click.option("--strict", is_flag=True, help="Exit 2 on any problem (converted images aside).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def data_check(data_path, val, test, min_size, strict, as_json):
    """Check every file of DATA once: unreadable, tiny, duplicate, leaked, ... images;
    images per class and an imbalance note."""
    from graft import api

    with progress.silenced() if as_json else contextlib.nullcontext():  # stdout is data
        report = api.check_data(data_path, val=val, test=test, min_size=min_size)
    if as_json:
        print(json.dumps(report.as_dict()))
        report.raise_if_strict(strict)
        return
    for line in report.lines():
        log(line)
    rows = report.class_rows()
    splits = [k for k in rows[0] if k not in ("class", "share")] if rows else []
    table = Table("class", *splits, "share of train")
    for row in rows:
        table.add_row(row["class"], *(str(row[k]) for k in splits), f"{row['share']:.1%}")
    console.print(table)
    summary = report.imbalance()
    if summary["note"]:
        log(summary["note"])
    elif summary["ratio"] is not None:
        log(f"Balanced: largest/smallest training class {summary['ratio']:.1f}x")
    report.raise_if_strict(strict)


@click.command(cls=GraftCommand)
@click.argument("backbone")
@options.settings(["image_size", "alpha", "cut"])
@click.option("--layers", is_flag=True, help="List every layer of every block.")
def inspect(backbone, image_size, alpha, cut, layers):
    """Show a backbone's blocks, layers, parameters, preprocessing and input size."""
    from graft.api.inspection import inspect_backbone

    seen = inspect_backbone(backbone, image_size=image_size, alpha=alpha, cut=cut)
    (h, w), info = seen.image_size, seen.info
    log(
        f"{info['source']}: input {h}x{w}x{seen.channels}, "
        f"preprocess {seen.preprocess}, {info['params']:,} params, {len(seen.blocks)} blocks"
        + (f"; loading it needs {', '.join(seen.requires)}" if seen.requires else "")
    )
    log(_head_input_line(seen))
    table = Table("#", "block", "layers", "params", "first layer", "last layer")
    for i, block in enumerate(seen.blocks, start=1):
        table.add_row(
            str(i),
            block.name,
            str(len(block.layers)),
            f"{block.params:,}",
            block.layers[0],
            block.layers[-1],
        )
    console.print(table)
    if layers:
        for block in seen.blocks:
            log(f"{block.name}: " + ", ".join(block.layers))


@click.command(cls=GraftCommand)
@click.argument("data")
@options.settings(
    ["backbone", "weights", "image_size", "alpha", "cut", "preprocess", "seed", "batch_size"],
    backbone={"required": True},
)
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Folder for the results."
)
def probe(data, backbone, weights, image_size, alpha, cut, preprocess, seed, batch_size, out):
    """Which layer transfers best: probe accuracy of every cut x pooling, and the curve."""
    from graft.api import preflight

    preflight.check_source(data, "DATA")
    preflight.check_backbone(backbone)
    import_backend()
    from graft.api.transfer import probe as run_probe

    report = run_probe(
        data,
        backbone,
        out,
        weights=weights,
        image_size=image_size,
        alpha=alpha,
        cut=cut,
        preprocess=preprocess,
        seed=seed,
        batch_size=batch_size,
        log=log,
    )
    result = report.result
    table = Table("cut", "depth", "map", "pooling", "features", "CV accuracy ± std", "")
    for row in result.scores:
        score = row.score.text().replace("+-", "±") if row.score else "-"
        mark = "← chosen" if row is result.chosen else ("skipped" if row.skipped else "")
        table.add_row(
            row.cut.path,
            str(row.cut.depth),
            "x".join(map(str, row.cut.shape)),
            row.pool,
            f"{row.features:,}",
            score,
            mark,
        )
    console.print(table)
    for note in result.notes:
        log(note)
    log(result.line())
    log(f"Wrote {report.metrics} and {report.curve} in {report.seconds:.1f} s")


def _head_input_line(seen) -> str:
    """The backbone's output shape, its default pooling and the --pool choices."""
    shape, choices = seen.output_shape, seen.pool_choices
    line = f"Output {tuple(shape[1:])}; head input by default: {seen.default_pooling}"
    if len(shape) == 2:
        return line + " (--pool does not apply)"
    return line + (f" (--pool {'|'.join(choices)})" if choices else "")


@click.command(cls=GraftCommand)
@click.option(
    "--quick", is_flag=True, help="Only 2 labels per class, fewer epochs (about a minute)."
)
@click.option(
    "--full",
    is_flag=True,
    help="The whole comparison: 2 and 10 labels per class, 3 seeds each (many minutes).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("graft-demo"),
    show_default=True,
    help="Folder for data, runs and results.",
)
@click.option(
    "--seeds",
    type=int,
    default=None,
    help="Train every row with N seeds; report mean ± std (default: 1, --full: 3).",
)
@options.settings(["seed"])
def demo(quick, full, out, seeds, seed):
    """Transfer learning on scikit-learn's digits: 0-4 pre-train, 5-9 with few labels.

    Without a flag: 10 labels per class, every strategy against scratch, one seed (a few
    minutes); --quick: 2 labels per class; --full: the whole comparison."""
    from graft.api import demo as demo_mod

    if quick and full:
        raise GraftError("--quick and --full choose opposite demos; pass one of them.")
    mode = dict(demo_mod.MODES["quick" if quick else "full" if full else "default"])
    if seeds is not None:
        mode["seeds"] = seeds
    log("graft demo: pre-trained on digits 0-4, grafted onto digits 5-9 with few labels each")
    rows = demo_mod.run(out, seed=seed, log=log, **mode)
    table = Table("labels/class", "strategy", "trainable params", "test accuracy", "seconds")
    for r in rows:
        table.add_row(
            str(r["labels_per_class"]),
            r["strategy"],
            f"{r['trainable_params']:,}",
            demo_mod.accuracy_text(r),
            f"{r['seconds']:.1f}",
        )
    console.print(table)
    for line in demo_mod.closing_lines(out, rows, seed):
        log(line)


@click.command(cls=GraftCommand, needs_backend=False)
@click.option(
    "--clear", "clear_", is_flag=True, help="Remove cache entries (all, or --older-than)."
)
@click.option("--older-than", help="With --clear: only entries older than this (30m, 12h, 7d, 2w).")
@click.option("--kind", help="With --clear: only this kind (features, activations, ...).")
@click.option(
    "--dir",
    "root",
    type=click.Path(path_type=Path),
    help="Cache root (default: $GRAFT_CACHE or ~/.cache/keras-graft).",
)
def cache(clear_, older_than, kind, root):
    """Show graft's caches on disk (size and age by kind), or clear them."""
    from graft.api import caches

    root = root or caches.cache_root()
    if (older_than or kind) and not clear_:
        raise GraftError("--older-than and --kind choose what --clear removes; add --clear.")
    if clear_:
        removed, freed = caches.clear(root, older_than=older_than, kind=kind)
        entry = "entry" if removed == 1 else "entries"
        log(f"Removed {removed} cache {entry} ({freed / 1e6:.1f} MB) from {root}")
        return
    kinds = caches.usage(root)
    if not kinds:
        log(f"No cache in {root}.")
        return
    table = Table("kind", "entries", "MB", "newest", "oldest", title=f"Cache: {root}")
    for k in kinds:
        ages = _age(k.newest_seconds), _age(k.oldest_seconds)
        table.add_row(k.kind, str(k.entries), f"{k.bytes / 1e6:.1f}", *ages)
    console.print(table)
    total = sum(k.bytes for k in kinds)
    log(f"Total {total / 1e6:.1f} MB; clear with: graft cache --clear [--older-than 7d]")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"
