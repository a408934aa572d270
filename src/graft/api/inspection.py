"""What graft knows about a backbone before any training: its blocks and the head's
input (``graft inspect``), and its forward speed here (``graft backbones --measure``)."""

from __future__ import annotations

from dataclasses import dataclass

from graft.core.blocks import walk
from graft.core.loaders import is_model_path, resolve
from graft.core.model import pool_choices, pooling_summary, single_output
from graft.core.speed import MEASURE_BATCH, forward_speed

__all__ = ["MEASURE_BATCH", "BlockRow", "Inspection", "forward_speed", "inspect_backbone"]


@dataclass(frozen=True)
class BlockRow:
    """One block: its name, parameter count and its layers' paths (``model/layer`` for a
    layer inside a nested model)."""

    name: str
    params: int
    layers: tuple[str, ...]


@dataclass(frozen=True)
class Inspection:
    """A backbone as graft sees it: ``info`` is :meth:`Backbone.describe`'s dict."""

    info: dict
    image_size: tuple[int, int]
    channels: int
    preprocess: str
    requires: tuple[str, ...]
    output_shape: tuple
    default_pooling: str
    pool_choices: tuple[str, ...]
    blocks: tuple[BlockRow, ...]


def inspect_backbone(
    backbone: str, image_size: int | None = None, alpha: float | None = None, cut=None
) -> Inspection:
    """Load ``backbone`` (a registry name or a model file) and describe it.

    The structure does not depend on the weights, so a registry backbone is built with
    random ones (nothing is downloaded) and a model file keeps its own.
    """
    bb = resolve(
        backbone,
        weights=None if is_model_path(backbone) else "none",
        image_size=image_size,
        alpha=alpha,
        cut=cut,
    )
    path = {id(layer): name for name, layer in walk(bb.model)}  # nested: model/layer
    shape = tuple(single_output(bb.model).shape)
    return Inspection(
        info=bb.describe(),
        image_size=tuple(bb.image_size),
        channels=bb.channels,
        preprocess=bb.preprocess,
        requires=tuple(bb.requires),
        output_shape=shape,
        default_pooling=pooling_summary(shape),
        pool_choices=tuple(pool_choices(shape)),
        blocks=tuple(
            BlockRow(
                block.name,
                block.param_count,
                tuple(path.get(id(layer), layer.name) for layer in block.layers),
            )
            for block in bb.blocks
        ),
    )
