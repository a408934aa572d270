"""The backbone registry: a declarative table, one row per architecture.

Every image classification architecture in ``keras.applications`` is listed by a
snake_case name with its constructor, default and minimum input size, the input
preprocessing its pre-trained weights expect (all from the pure-Python catalog,
:mod:`graft.config.catalog`), and the rule that groups its layers into blocks.
:mod:`graft.core.loaders` builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graft.config.catalog import CATALOG, BackboneFacts, block_counts
from graft.core.blocks import BlockRule
from graft.errors import UnknownNameError, did_you_mean


@dataclass(frozen=True)
class BackboneSpec:
    """One architecture: how to build it and how to use it.

    Attributes:
        name: snake_case registry name (``mobilenet_v2``).
        constructor: attribute of ``keras.applications`` (``MobileNetV2``).
        default_size: input side its ImageNet weights were trained at.
        min_size: smallest input side the architecture accepts.
        preprocess: preprocessing mode its weights expect (see ``graft.core.preprocessing``);
            ``none`` where the model rescales its own input.
        blocks: how its layers group into blocks.
        takes_alpha: whether the constructor has a width multiplier ``alpha``.
    """

    name: str
    constructor: str
    default_size: int
    min_size: int
    preprocess: str
    blocks: BlockRule = field(repr=False)
    takes_alpha: bool = False


_VGG = BlockRule(((r"^(block\d+)_", "{0}"),))
_RESNET = BlockRule(
    ((r"^(conv\d+_block\d+)_", "{0}"), (r"^(conv1|pool1)_", "stem"), (r"^post_", "top"))
)
_MOBILENET = BlockRule(((r"^conv_(?:dw|pw|pad)_(\d+)", "block_{0}"), (r"^conv1", "stem")))
_MOBILENET_V2 = BlockRule(
    (
        (r"^(block_\d+)_", "{0}"),
        (r"^expanded_conv_", "block_0"),
        (r"^(Conv1|bn_Conv1)", "stem"),
        (r"^(Conv_1|out_relu)", "top"),
    )
)
_MOBILENET_V3 = BlockRule(
    (
        (r"^(expanded_conv(?:_\d+)?)_", "{0}"),
        (r"^conv(_bn)?$", "stem"),
        (r"^conv_1(_bn)?$", "top"),
    )
)
_INCEPTION_V3 = BlockRule(((r"^(mixed\d+)$", "{0}"),))
_INCEPTION_RESNET_V2 = BlockRule(
    (
        (r"^(block\d+_\d+)_(?:mixed|conv|ac)$", "{0}"),
        (r"^(mixed_\w+)$", "{0}"),
        (r"^conv_7b", "top"),
    )
)
_XCEPTION = BlockRule(((r"^(block\d+)_", "{0}"),))
_DENSENET = BlockRule(
    (
        (r"^(conv\d+_block\d+)_", "{0}"),
        (r"^(pool\d+)_", "transition_{0}"),
        (r"^(conv1|pool1)", "stem"),
        (r"^(bn|relu)$", "top"),
    )
)
_NASNET = BlockRule(
    (
        (r"^(normal_concat_\d+|reduction_concat_(?:stem|reduce)_\d+)$", "{0}"),
        (r"^stem_", "stem"),
    )
)
_EFFICIENTNET = BlockRule(((r"^(block\d+[a-z])_", "{0}"), (r"^stem_", "stem"), (r"^top_", "top")))
_CONVNEXT = BlockRule(
    (
        (r"_(stage_\d+_block_\d+)_", "{0}"),
        (r"_(downsampling_block_\d+)$", "{0}"),
        (r"_stem$", "stem"),
        (r"^layer_normalization", "top"),
    )
)


#: Block rule by constructor name prefix; the first match wins.
_RULES = (
    ("VGG", _VGG),
    ("ResNet", _RESNET),
    ("MobileNetV3", _MOBILENET_V3),
    ("MobileNetV2", _MOBILENET_V2),
    ("MobileNet", _MOBILENET),
    ("InceptionResNet", _INCEPTION_RESNET_V2),
    ("Inception", _INCEPTION_V3),
    ("Xception", _XCEPTION),
    ("DenseNet", _DENSENET),
    ("NASNet", _NASNET),
    ("EfficientNet", _EFFICIENTNET),
    ("ConvNeXt", _CONVNEXT),
)


def _spec(facts: BackboneFacts) -> BackboneSpec:
    rule = next(r for prefix, r in _RULES if facts.constructor.startswith(prefix))
    return BackboneSpec(
        facts.name,
        facts.constructor,
        facts.default_size,
        facts.min_size,
        facts.preprocess,
        rule,
        facts.takes_alpha,
    )


REGISTRY: dict[str, BackboneSpec] = {name: _spec(facts) for name, facts in CATALOG.items()}


def block_count(name: str) -> int | None:
    """Number of blocks of a registry backbone at its default size, from a shipped table.

    Building all forty architectures to count blocks takes minutes, so the counts are
    generated once by ``python -m graft.core.loaders`` (tests check them against a build).
    """
    return block_counts().get(get_spec(name).name)


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name`` (case-insensitive), or a clear error."""
    key = name.lower().replace("-", "_")
    if key not in REGISTRY:
        raise UnknownNameError(
            f"Unknown backbone: {name!r}." + did_you_mean(key, REGISTRY),
            hint="run 'graft backbones' for the list, or pass the path of a .keras/.h5 model.",
        )
    return REGISTRY[key]


# KerasHub backbones (``pip install keras-graft[hub]``), by class name. Transformer
# backbones (ViTBackbone, DINOV2Backbone) need no rule: the fallback makes each layer of
# their encoder stack one block (see graft.core.blocks).
HUB_BLOCK_RULES: dict[str, BlockRule] = {
    "ResNetBackbone": BlockRule(
        ((r"^(stack\d+_block\d+)_", "{0}"), (r"^(conv1|pool1)_", "stem"), (r"^post_", "top"))
    ),
    "EfficientNetBackbone": _EFFICIENTNET,
    "MobileNetBackbone": BlockRule(
        ((r"^(block_\d+(?:_\d+)?)$", "{0}"), (r"^input_", "stem"), (r"^output_", "top")),
        attach="previous",
    ),
}


def block_rule_for(model) -> BlockRule | None:
    """The block rule of a known model family outside the registry (``None``: fallback)."""
    return HUB_BLOCK_RULES.get(type(model).__name__)
