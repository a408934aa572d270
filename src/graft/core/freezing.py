"""Freezing mechanism: which backbone layers train, and what that costs.

Policy (which blocks train in which phase) lives in :mod:`graft.strategies`; this
module only does what it is told, and refuses to do nothing:

* A trainability *spec* says which of the backbone's top-level layers train:
  ``none`` (all frozen), ``all``, ``blocks:N`` (the top N blocks), ``layers:N``
  (exactly the last N layers, like ``base_model.layers[-N:]``) or ``from:LAYER``
  (that layer and every layer after it).
* :func:`apply` rebuilds the whole model's trainability from scratch for a spec:
  everything trainable, then the unselected backbone layers frozen, then every
  BatchNormalization layer frozen unless ``train_bn``. Keras's ``trainable`` setter
  cascades into nested models, so building from the outside in is what makes nested
  models (a model inside a model inside a model) come out right.
* A frozen BatchNormalization layer runs in inference mode in Keras 3, so its moving
  statistics survive fine-tuning on small batches.
* A spec that would train no backbone weight (layers without weights, only BN layers
  with BN frozen) is a :class:`~graft.errors.SpecError`, never a silent no-op, and so is
  :func:`make_trainable` on layers that are already trainable.

Any change of trainability needs a recompile; the trainer compiles every phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras

from graft.config.spec import SPEC_HELP, TrainableSpec  # noqa: F401 (re-exported)
from graft.core import keras_compat
from graft.core.blocks import SEP, Block, count_params, units, walk
from graft.core.model import backbone_of, preprocess_layers
from graft.errors import SpecError, UnknownNameError, did_you_mean


def select(backbone: keras.Model, blocks: list[Block], spec) -> list:
    """The backbone's units that ``spec`` makes trainable, in model order.

    ``all`` and ``layers:N`` count top-level layers (``layers:N`` is
    ``backbone.layers[-N:]``); ``blocks:N`` and ``from:NAME`` reach inside nested models
    (a unit's name, its path such as ``middle/inner/inner_conv``, a nested model's name
    or path, or a block's name).
    """
    spec = TrainableSpec.parse(spec)
    layers = units(backbone)
    if spec.kind == "none":
        return []
    if spec.kind == "all":
        return layers
    if spec.kind == "blocks":
        if spec.value > len(blocks):
            raise SpecError(
                f"blocks:{spec.value} asks for more blocks than the backbone has ({len(blocks)}).",
                hint="use 'all' to train the whole backbone; 'graft inspect' lists blocks.",
            )
        return [layer for block in blocks[-spec.value :] for layer in block.layers]
    if spec.kind == "layers":
        if spec.value > len(layers):
            raise SpecError(
                f"layers:{spec.value} asks for more layers than the backbone has ({len(layers)}).",
                hint="use 'all' to train the whole backbone.",
            )
        return layers[-spec.value :]
    leaves, starts = start_names(backbone, blocks)
    if spec.value not in starts:
        raise UnknownNameError(
            f"from:{spec.value}: no layer or block of that name in the backbone."
            + did_you_mean(spec.value, list(starts)),
            hint="'graft inspect BACKBONE' lists its blocks and layers.",
        )
    return leaves[starts[spec.value] :]


def start_names(backbone: keras.Model, blocks: list[Block]) -> tuple[list, dict[str, int]]:
    """The backbone's units, and every name ``from:`` accepts -> the index it starts at.

    Each name is listed once: a unit's path, its bare name where that is unique, a nested
    model's path (and bare name), and each block's name.
    """
    walked = walk(backbone)
    leaves = [layer for _, layer in walked]
    index = {id(layer): i for i, layer in enumerate(leaves)}
    starts: dict[str, int] = {}
    bare: dict[str, set[str]] = {}
    for i, (path, _) in enumerate(walked):
        parts = path.split(SEP)
        for depth in range(1, len(parts) + 1):
            prefix = SEP.join(parts[:depth])
            starts.setdefault(prefix, i)
            bare.setdefault(parts[depth - 1], set()).add(prefix)
    for name, paths in bare.items():
        if len(paths) == 1:  # an ambiguous bare name needs its path
            starts.setdefault(name, starts[next(iter(paths))])
    for block in blocks:
        if block.layers and id(block.layers[0]) in index:
            starts.setdefault(block.name, index[id(block.layers[0])])
    return leaves, starts


def check_plan(model: keras.Model, blocks: list[Block], phases) -> None:
    """Check every phase's trainability spec against the built model before training.

    A spec the backbone cannot satisfy (``blocks:999``, ``from:nonexistent``) is refused
    before the first epoch, not when its phase comes; the message names the phase.

    Raises:
        SpecError, UnknownNameError: A phase's spec does not fit the backbone.
    """
    backbone = backbone_of(model)
    for index, phase in enumerate(phases, start=1):
        try:
            select(backbone, blocks, phase.trainable)
        except (SpecError, UnknownNameError) as exc:
            name = getattr(phase, "name", "")
            where = f"phase {index}" + (f" {name!r}" if name else "")
            raise type(exc)(f"{where}: {exc.message}", hint=exc.hint) from None


def _walk(layer) -> list:
    return keras_compat.sublayers(layer, include_self=True)


def _batch_norms(layer) -> list:
    return [x for x in _walk(layer) if isinstance(x, keras.layers.BatchNormalization)]


def freeze(layers) -> None:
    """Freeze layers (and everything nested in them)."""
    for layer in layers:
        layer.trainable = False


def make_trainable(layers, train_bn: bool = False) -> int:
    """Unfreeze layers, keeping their BatchNormalization frozen unless ``train_bn``.

    Returns:
        The number of parameters that became trainable.

    Raises:
        SpecError: if nothing became trainable: the layers have no weights, or only
            BN weights with ``train_bn=False``, or they were all trainable already.
    """
    layers = list(layers)
    before = {id(v) for layer in layers for v in layer.trainable_weights}
    for layer in layers:
        layer.trainable = True
        if not train_bn:
            freeze(_batch_norms(layer))
    gained = [v for layer in layers for v in layer.trainable_weights if id(v) not in before]
    if not gained:
        names = ", ".join(layer.name for layer in layers[:5]) + (" ..." if len(layers) > 5 else "")
        why = (
            "they are trainable already"
            if before
            else "they have no weights that can train"
            + ("" if train_bn else " (BatchNormalization stays frozen without --train-bn)")
        )
        raise SpecError(
            f"Unfreezing {names} would change nothing: {why}.",
            hint="select layers with weights (e.g. blocks:N); 'graft inspect' shows them.",
        )
    return count_params(gained)


@dataclass
class TrainabilityReport:
    """What a spec made trainable: the numbers every phase reports."""

    spec: str
    train_bn: bool
    trainable_params: int
    frozen_params: int
    backbone_trainable_params: int
    trainable_blocks: list[str] = field(default_factory=list)
    trainable_layers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "spec": self.spec,
            "train_bn": self.train_bn,
            "trainable_params": self.trainable_params,
            "frozen_params": self.frozen_params,
            "backbone_trainable_params": self.backbone_trainable_params,
            "trainable_blocks": self.trainable_blocks,
        }


def apply(
    model: keras.Model, blocks: list[Block], spec, train_bn: bool = False
) -> TrainabilityReport:
    """Set the trainability of a grafted model for one phase.

    The head always trains; the preprocessing never does; the backbone trains exactly
    the layers ``spec`` selects.

    Args:
        model: A model from :func:`graft.model.build_model`.
        blocks: The backbone's blocks (``Backbone.blocks``).
        spec: A trainability spec string or :class:`TrainableSpec`.
        train_bn: Let BatchNormalization layers in the selected layers train (batch
            statistics, updated moving averages). Default: frozen, inference mode.

    Returns:
        A :class:`TrainabilityReport`. Recompile the model before training.

    Example:
        >>> report = apply(model, backbone.blocks, "blocks:2")   # doctest: +SKIP
        >>> report.trainable_blocks                              # doctest: +SKIP
        ['block_16', 'top']
    """
    spec = TrainableSpec.parse(spec)
    backbone = backbone_of(model)
    selected = select(backbone, blocks, spec)
    model.trainable = True
    freeze(preprocess_layers(model))
    freeze(units(backbone))
    gained = make_trainable(selected, train_bn) if selected else 0
    if not selected:
        backbone.trainable = False
    expected = {id(v) for layer in selected for v in layer.trainable_weights}
    in_backbone = {id(v) for v in backbone.weights}
    actual = {id(v) for v in model.trainable_weights} & in_backbone
    if actual != expected:  # a Keras trainability rule we do not expect: fail loudly
        raise RuntimeError(
            "Internal error: the model's trainable backbone weights differ from the "
            f"selection for {spec} ({len(actual)} vs {len(expected)} variables)."
        )
    selected_ids = {id(layer) for layer in selected}
    trainable = count_params(model.trainable_weights)
    return TrainabilityReport(
        spec=str(spec),
        train_bn=train_bn,
        trainable_params=trainable,
        frozen_params=count_params(model.weights) - trainable,
        backbone_trainable_params=gained,
        trainable_blocks=[
            b.name
            for b in blocks
            if any(id(layer) in selected_ids and layer.trainable_weights for layer in b.layers)
        ],
        trainable_layers=[layer.name for layer in selected if layer.trainable_weights],
    )
