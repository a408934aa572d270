"""The names every layer shares: one owner for each list of accepted values.

Other modules import these (``core.preprocessing``, ``data``, ``training.distribute``,
the CLI's ``click.Choice``) instead of writing their own copy.
"""

from __future__ import annotations

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "nadam")
SCHEDULES = ("constant", "cosine", "onecycle", "plateau")
DISTRIBUTE_MODES = ("none", "mirrored", "multi-worker")
AUGMENT_LEVELS = ("none", "light", "standard")
JIT_MODES = ("auto", "on", "off")
PRECISIONS = ("float32", "mixed")
CLASS_WEIGHTS = ("none", "auto")
#: ``weights`` values that are names, not files (a file by that name is never read).
WEIGHT_NAMES = ("imagenet", "none")
#: Which epoch becomes ``model.keras`` (``best``: lowest ``val_loss``; ``last``: the last one).
KEEP_MODES = ("best", "last")
#: ``graft export --format`` and TFLite's ``--quantize`` (``graft.reporting.export``).
EXPORT_FORMATS = ("keras", "savedmodel", "tflite", "onnx")
QUANTIZE_MODES = ("none", "dynamic", "int8")
PREPROCESS_MODES = ("none", "unit", "symmetric", "caffe", "torch")
#: The searched strategy (``graft.api.auto``); not a plan of its own.
AUTO_STRATEGY = "auto"
#: ``cut`` of a run that chooses where to cut the backbone by measurement (issue 23).
AUTO_CUT = "auto"
#: How the backbone's output becomes the head's input (``graft.core.model.pooling_layers``):
#: per output rank, the accepted choices, the default first.
POOLS_4D = ("avg", "max", "avgmax", "flatten")
POOLS_3D = ("mean", "cls", "flatten")
POOLS_2D = ("identity",)  # internal: a 2-D output is the head's input as it is
POOLS = ("auto", *POOLS_4D, *(p for p in POOLS_3D if p not in POOLS_4D))
