"""``MODEL_CARD.md``: what a run's model is, takes, outputs and scored, in Markdown."""

from __future__ import annotations

import html
import os
from pathlib import Path

from graft.reporting import scores
from graft.reporting.text import fmt
from graft.runs import files, layout
from graft.runs import metrics as run_metrics


def render_model_card(run_dir: str | os.PathLike) -> str:
    """``MODEL_CARD.md`` of a run folder as Markdown text."""
    run_dir = Path(run_dir)
    config = files.read_yaml(run_dir / layout.CONFIG_FILE, {})
    metrics = run_metrics.read(run_dir)
    classes = files.read_json(run_dir / layout.LABELS_FILE, [])
    exports = files.read_json(run_dir / layout.EXPORTS_FILE, [])
    ev = metrics.get("evaluation") or {}
    bb = config.get("resolved_backbone") or {}
    size = bb.get("image_size") or ["?", "?"]
    lines = [
        f"# Model card: {md(run_dir.resolve().name)}",
        "",
        "## Model",
        f"- Backbone: `{bb.get('source', config.get('backbone', '?'))}` with "
        f"**{bb.get('weights', config.get('weights', '?'))}** weights "
        f"({fmt(bb.get('params', '?'))} parameters, {bb.get('blocks', '?')} blocks).",
        *(
            [f"- Loading `model.keras` needs: {', '.join(bb['requires'])} (besides Keras)."]
            if bb.get("requires")
            else []
        ),
        f"- Strategy: {config.get('strategy', '?')}; head {config.get('head', '?')}, "
        f"dropout {config.get('dropout', '?')}.",
        f"- Classes ({len(classes)}), in output order: {', '.join(md(c) for c in classes)}.",
        "",
        "## Intended input",
        f"- RGB images resized to {size[0]}x{size[1]} pixels (bilinear), raw pixel values 0-255 "
        f"(uint8 or float32), shape `(batch, {size[0]}, {size[1]}, {bb.get('channels', 3)})`.",
        f"- Preprocessing (`{bb.get('preprocess', '?')}`) is built into the model; do not scale "
        "the pixels yourself.",
        _output_line(config),
        "",
        "## Training",
    ]
    for i, p in enumerate(metrics.get("phases", []), start=1):
        lines.append(
            f"{i}. {code(p.get('name'))}: backbone {code(p.get('spec'))}, "
            f"{p.get('epochs')} epochs, "
            f"lr {p.get('lr')}"
            + (f", backbone lr {p['backbone_lr']}" if p.get("backbone_lr") is not None else "")
            + f"; {fmt(p.get('trainable_params'))} trainable / "
            f"{fmt(p.get('frozen_params'))} frozen parameters."
        )
    lines += [
        f"- Data: {metrics.get('train_images', '?')} training images, "
        f"{metrics.get('val_images', '?')} validation images; seed {config.get('seed', '?')}.",
        f"- Training time: {metrics.get('seconds', '?')} s.",
        "",
        "## Metrics",
        "",
        *_metric_lines(metrics),
    ]
    if ev.get("images") and ev.get("task") != "multi_label":
        lines += [
            f"On the {md(ev.get('split', 'validation'))} split ({ev['images']} images):",
            "",
            "| metric | value |",
            "|---|---:|",
            f"| accuracy | {ev['accuracy']:.4f} |",
            *(f"| top-{k} accuracy | {v:.4f} |" for k, v in ev.get("top_k_accuracy", {}).items()),
            f"| macro F1 | {ev['macro_avg']['f1']:.4f} |",
            f"| weighted F1 | {ev['weighted_avg']['f1']:.4f} |",
            f"| expected calibration error | {ev['ece']:.4f} |",
            "",
            "| class | precision | recall | F1 | support |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {md(n)} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | "
                f"{v['support']} |"
                for n, v in ev["per_class"].items()
            ),
        ]
    elif ev.get("images"):
        lines.append(
            f"Micro F1 {ev['micro_f1']:.4f}, macro F1 {ev['macro_f1']:.4f} at threshold "
            f"{ev['threshold']} ({ev['images']} images)."
        )
    else:
        lines.append("Not evaluated (no validation data).")
    lines += [
        "",
        "Small validation sets give noisy numbers; evaluate on your own held-out data "
        "(`graft evaluate`) before relying on them.",
        "",
        "## Export formats",
        "- Keras: `model.keras` in this folder (`keras.saving.load_model`, no custom objects).",
        "- `graft export RUN_DIR --format savedmodel --out DIR`: TF Serving signatures "
        "`serving_default` (float32 image tensors) and `serving_bytes` (encoded image bytes).",
        "- `graft export RUN_DIR --format tflite [--quantize none|dynamic|int8 "
        "--calibration DATA] --out FILE.tflite`.",
    ]
    if exports:
        lines += ["", "Exports made from this run:", ""]
        lines += [f"- {_export_line(e)}" for e in exports]
    versions = config.get("versions") or {}
    if versions:
        lines += ["", "## Versions", ", ".join(f"{k} {v}" for k, v in versions.items())]
    return "\n".join(lines) + "\n"


def _metric_lines(metrics: dict) -> list[str]:
    """The validation and test scores (test next to validation), and the kept epoch."""
    lines = []
    rows = [
        (name, metrics.get(f"{prefix}accuracy"), metrics.get(f"{prefix}loss"), images)
        for name, prefix, images in (
            ("validation (kept epoch)", "val_", metrics.get("val_images")),
            ("test", "test_", metrics.get("test_images")),
        )
    ]
    rows = [r for r in rows if r[1] is not None]
    if rows:
        lines += ["| split | accuracy | loss | images |", "|---|---:|---:|---:|"]
        lines += [f"| {n} | {a:.4f} | {lo:.4f} | {i} |" for n, a, lo, i in rows]
        lines.append("")
    if scores.kept_line(metrics):
        lines += [scores.kept_line(metrics), ""]
    return lines


def _export_line(entry: dict) -> str:
    check = entry.get("check", {})
    text = f"`{entry.get('path')}` ({entry.get('format')}, quantize {entry.get('quantize')})"
    if "max_abs_diff" in check:
        text += f": max abs diff {check['max_abs_diff']:.2e}"
    if "top1_agreement" in check:
        text += f", top-1 agreement {check['top1_agreement']:.3f}"
    return text


def md(value) -> str:
    """User text (class names, run and phase names) as inert Markdown: HTML escaped, no
    table pipes, no line breaks, no code spans, no emphasis or links."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    for char in "\\`*_[]|":
        text = text.replace(char, "\\" + char)
    return text


def code(value) -> str:
    """User text as a Markdown code span (shown literally; no backtick can end it)."""
    return "`" + " ".join(str(value).split()).replace("`", "'") + "`"


def write_model_card(run_dir: str | os.PathLike) -> Path:
    """Write ``RUN_DIR/MODEL_CARD.md`` and return its path."""
    run_dir = Path(run_dir)
    return files.atomic_write(run_dir / layout.MODEL_CARD_FILE, render_model_card(run_dir))


def _output_line(config: dict) -> str:
    if config.get("multi_label"):
        return (
            "- Output: one independent probability per label (sigmoid; an image may have "
            "several labels), in the order above (`labels.json`)."
        )
    return "- Output: one probability per class (softmax), in the order above (`labels.json`)."
