"""The backbone registry: a declarative table, one row per architecture.

Every image classification architecture in ``keras.applications`` is listed by a
snake_case name with its constructor, default and minimum input size, the input
preprocessing its pre-trained weights expect, and the rule that groups its layers into
blocks. :mod:`graft.core.loaders` builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
        preprocess: preprocessing mode its weights expect (see ``graft.preprocessing``);
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


def _spec(name, constructor, size, preprocess, rule, min_size=32, **kw) -> BackboneSpec:
    return BackboneSpec(name, constructor, size, min_size, preprocess, rule, **kw)


_TABLE = [
    _spec("vgg16", "VGG16", 224, "caffe", _VGG),
    _spec("vgg19", "VGG19", 224, "caffe", _VGG),
    _spec("resnet50", "ResNet50", 224, "caffe", _RESNET),
    _spec("resnet101", "ResNet101", 224, "caffe", _RESNET),
    _spec("resnet152", "ResNet152", 224, "caffe", _RESNET),
    _spec("resnet50_v2", "ResNet50V2", 224, "symmetric", _RESNET),
    _spec("resnet101_v2", "ResNet101V2", 224, "symmetric", _RESNET),
    _spec("resnet152_v2", "ResNet152V2", 224, "symmetric", _RESNET),
    _spec("mobilenet", "MobileNet", 224, "symmetric", _MOBILENET, takes_alpha=True),
    _spec("mobilenet_v2", "MobileNetV2", 224, "symmetric", _MOBILENET_V2, takes_alpha=True),
    _spec("mobilenet_v3_small", "MobileNetV3Small", 224, "none", _MOBILENET_V3, takes_alpha=True),
    _spec("mobilenet_v3_large", "MobileNetV3Large", 224, "none", _MOBILENET_V3, takes_alpha=True),
    _spec("inception_v3", "InceptionV3", 299, "symmetric", _INCEPTION_V3, min_size=75),
    _spec(
        "inception_resnet_v2",
        "InceptionResNetV2",
        299,
        "symmetric",
        _INCEPTION_RESNET_V2,
        min_size=75,
    ),
    _spec("xception", "Xception", 299, "symmetric", _XCEPTION, min_size=71),
    _spec("densenet121", "DenseNet121", 224, "torch", _DENSENET),
    _spec("densenet169", "DenseNet169", 224, "torch", _DENSENET),
    _spec("densenet201", "DenseNet201", 224, "torch", _DENSENET),
    _spec("nasnet_mobile", "NASNetMobile", 224, "symmetric", _NASNET),
    _spec("nasnet_large", "NASNetLarge", 331, "symmetric", _NASNET),
    *[
        _spec(f"efficientnet_b{i}", f"EfficientNetB{i}", size, "none", _EFFICIENTNET)
        for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))
    ],
    *[
        _spec(f"efficientnet_v2_{v.lower()}", f"EfficientNetV2{v}", size, "none", _EFFICIENTNET)
        for v, size in (
            ("B0", 224),
            ("B1", 240),
            ("B2", 260),
            ("B3", 300),
            ("S", 384),
            ("M", 480),
            ("L", 480),
        )
    ],
    _spec("convnext_tiny", "ConvNeXtTiny", 224, "none", _CONVNEXT),
    _spec("convnext_small", "ConvNeXtSmall", 224, "none", _CONVNEXT),
    _spec("convnext_base", "ConvNeXtBase", 224, "none", _CONVNEXT),
    _spec("convnext_large", "ConvNeXtLarge", 224, "none", _CONVNEXT),
    _spec("convnext_xlarge", "ConvNeXtXLarge", 224, "none", _CONVNEXT),
]
REGISTRY: dict[str, BackboneSpec] = {spec.name: spec for spec in _TABLE}


BLOCK_COUNTS_FILE = Path(__file__).with_name("block_counts.json")


def block_count(name: str) -> int | None:
    """Number of blocks of a registry backbone at its default size, from a shipped table.

    Building all forty architectures to count blocks takes minutes, so the counts are
    generated once by ``python -m graft.core.loaders`` (tests check them against a build).
    """
    import json

    if not BLOCK_COUNTS_FILE.is_file():
        return None
    return json.loads(BLOCK_COUNTS_FILE.read_text("utf-8")).get(get_spec(name).name)


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
