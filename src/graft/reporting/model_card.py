"""``MODEL_CARD.md``: what a run's model is, takes, outputs and scored, in Markdown."""

from __future__ import annotations

import html
import os
from pathlib import Path

from graft.config.defaults import MULTI_LABEL_THRESHOLD
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
    ev = metrics.get("evaluation") if isinstance(metrics.get("evaluation"), dict) else {}
    bb = config.get("resolved_backbone") or {}
    size = bb.get("image_size") or ["?", "?"]
    lines = [
        f"# Model card: {md(run_dir.resolve().name)}",
        "",
        "## Model",
        f"- Backbone: {code(bb.get('source', config.get('backbone', '?')))} with "
        f"**{md(bb.get('weights', config.get('weights', '?')))}** weights "
        f"({md(fmt(bb.get('params', '?')))} parameters, {md(bb.get('blocks', '?'))} blocks).",
        *(
            [f"- Loading `model.keras` needs: {md(fmt(bb['requires']))} (besides Keras)."]
            if bb.get("requires")
            else []
        ),
        f"- Strategy: {md(config.get('strategy', '?'))}; head {md(config.get('head', '?'))}, "
        f"dropout {md(config.get('dropout', '?'))}.",
        f"- Classes ({len(classes)}), in output order: {', '.join(md(c) for c in classes)}.",
        "",
        "## Intended input",
        f"- RGB images resized to {md(size[0])}x{md(size[1])} pixels (bilinear), raw pixel "
        "values 0-255 (uint8 or float32), shape "
        + code(f"(batch, {size[0]}, {size[1]}, {bb.get('channels', 3)})")
        + ".",
        f"- Preprocessing ({code(bb.get('preprocess', '?'))}) is built into the model; do not "
        "scale the pixels yourself.",
        _output_line(config),
        "",
        "## Training",
    ]
    phases = metrics.get("phases") if isinstance(metrics.get("phases"), list) else []
    for i, p in enumerate([p for p in phases if isinstance(p, dict)], start=1):
        lines.append(
            f"{i}. {code(p.get('name'))}: backbone {code(p.get('spec'))}, "
            f"{md(p.get('epochs'))} epochs, "
            f"lr {md(p.get('lr'))}"
            + (f", backbone lr {md(p['backbone_lr'])}" if p.get("backbone_lr") is not None else "")
            + f"; {md(fmt(p.get('trainable_params')))} trainable / "
            f"{md(fmt(p.get('frozen_params')))} frozen parameters."
        )
    lines += [
        f"- Data: {md(metrics.get('train_images', '?'))} training images, "
        f"{md(metrics.get('val_images', '?'))} validation images; "
        f"seed {md(config.get('seed', '?'))}.",
        f"- Training time: {md(metrics.get('seconds', '?'))} s.",
        "",
        "## Metrics",
        "",
        *_metric_lines(metrics),
    ]
    if ev.get("images") and ev.get("task") != "multi_label":
        lines += [
            f"On the {md(ev.get('split', 'validation'))} split ({md(ev['images'])} images):",
            "",
            "| metric | value |",
            "|---|---:|",
            f"| accuracy | {f4(ev.get('accuracy'))} |",
            *(f"| top-{md(k)} accuracy | {f4(v)} |" for k, v in _items(ev.get("top_k_accuracy"))),
            f"| macro F1 | {f4(_get(ev, 'macro_avg', 'f1'))} |",
            f"| weighted F1 | {f4(_get(ev, 'weighted_avg', 'f1'))} |",
            f"| expected calibration error | {f4(ev.get('ece'))} |",
            "",
            "| class | precision | recall | F1 | support |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {md(n)} | {f4(_get(v, 'precision'))} | {f4(_get(v, 'recall'))} | "
                f"{f4(_get(v, 'f1'))} | {md(_get(v, 'support'))} |"
                for n, v in _items(ev.get("per_class"))
            ),
        ]
    elif ev.get("images"):
        lines.append(
            f"Micro F1 {f4(ev.get('micro_f1'))}, macro F1 {f4(ev.get('macro_f1'))} at "
            f"threshold {md(ev.get('threshold'))} ({md(ev['images'])} images)."
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
        lines += ["", "## Versions", ", ".join(f"{md(k)} {md(v)}" for k, v in _items(versions))]
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
        lines += [f"| {n} | {f4(a)} | {f4(lo)} | {md(i)} |" for n, a, lo, i in rows]
        lines.append("")
    kept = metrics.get("kept")
    if isinstance(kept, dict) and "epoch" in kept and scores.kept_line(metrics):
        lines += [md(scores.kept_line(metrics)), ""]
    return lines


def _export_line(entry: dict) -> str:
    entry = entry if isinstance(entry, dict) else {}
    check = entry.get("check", {})
    check = check if isinstance(check, dict) else {}
    text = (
        f"{code(entry.get('path'))} ({md(entry.get('format'))}, "
        f"quantize {md(entry.get('quantize'))})"
    )
    if "max_abs_diff" in check:
        text += f": max abs diff {f4(check['max_abs_diff'], '.2e')}"
    if "top1_agreement" in check:
        text += f", top-1 agreement {f4(check['top1_agreement'], '.3f')}"
    return text


def md(value) -> str:
    """User text (class names, run and phase names) as inert Markdown: HTML escaped, no
    table pipes, no line breaks, no code spans, no emphasis or links."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    for char in "\\`*_[]|":
        text = text.replace(char, "\\" + char)
    return text


def f4(value, spec: str = ".4f") -> str:
    """A number formatted by ``spec``; anything else (a tampered ``metrics.json``) as
    inert text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return md(value)


def _get(mapping, *keys):
    for key in keys:
        mapping = mapping.get(key) if isinstance(mapping, dict) else None
    return mapping


def _items(mapping) -> list:
    return list(mapping.items()) if isinstance(mapping, dict) else []


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
            "- Task: multi-label classification. Output: one independent probability per "
            "label (sigmoid; an image may have several labels), in the order above "
            f"(`labels.json`); a label is predicted when its probability is at least "
            f"{MULTI_LABEL_THRESHOLD} (the threshold `graft predict` and the evaluation use)."
        )
    return (
        "- Task: single-label classification. Output: one probability per class (softmax), "
        "in the order above (`labels.json`)."
    )
