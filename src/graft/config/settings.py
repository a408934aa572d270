"""Every setting of a training run, resolved, validated and saved as ``config.yaml``.

A :class:`TrainConfig` is what the CLI builds from its flags and what the Python API
builds from keyword arguments. Each field carries its own metadata (help, group,
choices, flag), from which :mod:`graft.cli` generates its options.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from graft.config import defaults as d
from graft.config.fields import GROUPS, setting
from graft.config.names import (
    AUGMENT_LEVELS,
    AUTO_STRATEGY,
    CLASS_WEIGHTS,
    DISTRIBUTE_MODES,
    JIT_MODES,
    KEEP_MODES,
    OPTIMIZERS,
    POOLS,
    PRECISIONS,
    PREPROCESS_MODES,
    SCHEDULES,
)
from graft.config.phase import Phase
from graft.config.spec import SPEC_HELP
from graft.config.strategies import STRATEGIES, plan
from graft.errors import GraftError, UnknownNameError, did_you_mean, first_line, unknown_keys

AUTO_LR_PLACEHOLDER = d.AUTO_LR_PLACEHOLDER
#: Keys a run's ``config.yaml`` holds besides the settings (a record of the run).
RUN_RECORD_KEYS = (
    "data",
    "safe_mode",
    "resolved_backbone",
    "classes",
    "multi_label",
    "versions",
    "decode",
    "as_typed",
    "run_relative",
)
_M, _S, _O, _D, _P, _R = GROUPS  # model, strategy, optimisation, data, speed, run


@dataclass(init=False)  # the constructor below is written out: see its docstring
class TrainConfig:
    """All settings of one run. ``None`` means "the backbone's/strategy's default"."""

    backbone: str = setting(
        None,
        _M,
        "Registry name (see 'graft backbones'), a .keras/.h5 path or a KerasHub preset dir.",
        short="-b",
        path="existing",
    )
    weights: str | None = setting(
        None,
        _M,
        "imagenet | none | PATH (default: imagenet, or a model file's own weights).",
        path="existing",
    )
    cut: str | None = setting(
        None,
        _M,
        "Cut the backbone at this layer (drop what follows; a/b cuts inside nested model a); "
        "auto: the layer and pooling the cross-validated linear probe scores best.",
    )
    pool: str = setting(
        "auto",
        _M,
        "Backbone output -> head: feature maps avg|max|avgmax|flatten (auto: avg); "
        "tokens mean|cls (auto: mean of the patch tokens).",
        choices=POOLS,
    )
    preprocess: str | None = setting(
        None, _M, "Input preprocessing (default: the backbone's own).", choices=PREPROCESS_MODES
    )
    alpha: float | None = setting(None, _M, "Width multiplier for MobileNets.")
    image_size: int | None = setting(None, _M, "Input side in pixels.")
    head: tuple[int, ...] = setting(
        d.DEFAULT_HEAD, _M, "Hidden units of the head, comma-separated; '' for a linear head."
    )
    dropout: float = setting(d.DEFAULT_DROPOUT, _M, "Dropout before the output layer.")
    strategy: str = setting(
        d.DEFAULT_STRATEGY,
        _S,
        "How to train; auto searches (see --budget-trials).",
        choices=(*STRATEGIES, AUTO_STRATEGY),
    )
    epochs: int | str = setting(
        "auto",
        _S,
        "Epochs of the first phase (the head phase, or finetune's only one); auto: a "
        "linear head of feature/hybrid is solved (converged probe, no epochs), a head "
        "trained by gradient gets at least 300 optimizer steps, a phase training the "
        f"backbone at least {d.DEFAULT_EPOCHS} epochs and 300 steps.",
    )
    finetune_epochs: int | str = setting(
        "auto",
        _S,
        "Epochs of the fine-tuning phase(s); auto: at least "
        f"{d.DEFAULT_EPOCHS} epochs and at least 300 optimizer steps.",
    )
    unfreeze: str = setting(
        d.DEFAULT_UNFREEZE, _S, f"Backbone layers to fine-tune: {SPEC_HELP}.", metavar="SPEC"
    )
    phases: list[Phase] | None = setting(None, _S, "A custom plan (see --plan).", flag=None)
    gradual_blocks: int | None = setting(None, _S, "gradual: blocks unfrozen in all.")
    gradual_step: int = setting(1, _S, "gradual: blocks added per phase.")
    gradual_epochs: int | None = setting(None, _S, "gradual: epochs per unfreezing phase.")
    lr: float = setting(
        d.DEFAULT_LR, _O, "Learning rate of the new head; 'auto' runs the LR finder first."
    )
    finetune_lr: float = setting(
        d.DEFAULT_FINETUNE_LR, _O, "Learning rate of the unfrozen backbone."
    )
    optimizer: str = setting(d.DEFAULT_OPTIMIZER, _O, "Optimizer.", choices=OPTIMIZERS)
    train_bn: bool = setting(False, _O, "Let BatchNormalization train when unfrozen.")
    lr_mult: float | None = setting(
        None, _O, "Discriminative rates: block d below the top trainable one gets x F^d."
    )
    layer_decay: float | None = setting(
        None, _O, "Layer-wise decay: block i from the backbone's top gets lr x D^i."
    )
    schedule: str | None = setting(None, _O, "Per-phase LR schedule.", choices=SCHEDULES)
    warmup_epochs: int | None = setting(None, _O, "Warm-up epochs (cosine).")
    early_stop: int | None = setting(
        None,
        _O,
        "Stop a phase after PATIENCE epochs without improvement; keep its best epoch.",
        metavar="PATIENCE",
    )
    keep: str = setting(
        "best",
        _O,
        "Which epoch model.keras holds: best (lowest val_loss over the whole run; "
        "last.keras has the last) or last.",
        choices=KEEP_MODES,
    )
    weight_decay: float | None = setting(
        None, _O, "Decoupled weight decay (never BN weights or biases)."
    )
    l2sp: float | None = setting(
        None, _O, "L2-SP: pull backbone weights toward their pre-trained values.", metavar="ALPHA"
    )
    recalibrate_bn: bool = setting(
        False, _O, "AdaBN: re-estimate BN statistics on the training images first."
    )
    precise_bn: bool = setting(
        True,
        _O,
        "Precise BN: after a phase where BN trains, re-estimate its statistics on the "
        "training images (non-shuffled).",
    )
    batch_size: int = setting(d.DEFAULT_BATCH_SIZE, _D, "Images per batch.")
    val_split: float | str = setting(
        "auto",
        _D,
        "Fraction of DATA held out for validation (stratified); auto: a hold-out of "
        f"{d.DEFAULT_VAL_SPLIT} only when every class keeps >= 5 validation images, else "
        "k-fold cross-validation and the final model trained on every labelled image.",
    )
    augment: str = setting("none", _D, "Training-batch augmentation.", choices=AUGMENT_LEVELS)
    class_weight: str = setting(
        "none", _D, "auto: balanced weights for imbalanced classes.", choices=CLASS_WEIGHTS
    )
    min_size: int = setting(
        d.DEFAULT_MIN_SIZE,
        _D,
        "Skip images whose width or height is below N pixels (default: only 1-pixel ones).",
    )
    strict: bool = setting(False, _D, "Fail on any data-check problem instead of skipping.")
    cache: bool = setting(
        True,
        _P,
        "Train frozen-backbone phases on cached backbone features, and phases that train "
        "only the backbone's top on cached activations of its frozen bottom.",
    )
    cache_dir: str | None = setting(
        None,
        _P,
        "Feature cache folder (default: ~/.cache/keras-graft/features; activations "
        "in its activations/ subfolder, default ~/.cache/keras-graft/activations).",
        path="always",
    )
    cache_views: int = setting(
        0, _P, "With augment: cache K augmented views per image (0: no cache, run the backbone)."
    )
    jit: str = setting("auto", _P, "XLA compilation (auto: Keras's choice).", choices=JIT_MODES)
    precision: str = setting(
        "float32", _P, "mixed: float16 on GPU, bfloat16 on CPU.", choices=PRECISIONS
    )
    distribute: str = setting(
        "none",
        _P,
        "mirrored: all local GPUs (tf.distribute on TensorFlow, keras.distribution "
        "DataParallel on JAX); multi-worker (TensorFlow) reads TF_CONFIG.",
        choices=DISTRIBUTE_MODES,
    )
    devices: int = setting(
        0,
        _P,
        "Use N devices; without GPUs, split the CPU into N logical devices (for distribute "
        "mirrored).",
    )
    seed: int = setting(0, _R, "Random seed.")
    deterministic: bool = setting(False, _R, "TensorFlow op determinism: same seed, same weights.")

    def __init__(self, **settings):
        """Every setting by keyword (an unset one takes its field's default), then checked.

        Written out instead of generated by ``dataclass`` so that an unknown keyword is one
        :class:`~graft.errors.UnknownNameError` with a did-you-mean and the valid settings
        (as scikit-learn's ``set_params`` answers), never Python's bare ``TypeError``; a bad
        value is a :class:`~graft.errors.GraftError` from :meth:`__post_init__`. Keyword
        only: a config is read by setting names, never by position. Every default is
        immutable (``dataclass`` refuses mutable ones), so sharing it is safe.
        """
        unknown_keys(settings, SETTINGS)
        for field in dataclasses.fields(self):
            setattr(self, field.name, settings.get(field.name, field.default))
        self.__post_init__()

    def __post_init__(self):
        if self.backbone is None:
            raise GraftError("A backbone is required. Received: backbone=None")
        _check(self)

    def resolved_plan(self) -> list[Phase]:
        """The phases this config will run."""
        from graft.config import plans

        if self.phases is not None:
            custom = [p if isinstance(p, Phase) else Phase.from_dict(p) for p in self.phases]
            return plans.with_options(custom, precise_bn=self.precise_bn)
        phases = plan(
            self.strategy,
            epochs=d.DEFAULT_EPOCHS if self.epochs == "auto" else self.epochs,
            finetune_epochs=(
                d.DEFAULT_EPOCHS if self.finetune_epochs == "auto" else self.finetune_epochs
            ),
            lr=AUTO_LR_PLACEHOLDER if self.lr == "auto" else self.lr,
            finetune_lr=self.finetune_lr,
            unfreeze=self.unfreeze,
            train_bn=self.train_bn,
            optimizer=self.optimizer,
            gradual_blocks=self.gradual_blocks,
            gradual_step=self.gradual_step,
            gradual_epochs=self.gradual_epochs,
        )
        return plans.with_options(
            phases,
            recalibrate_bn=self.recalibrate_bn,
            precise_bn=self.precise_bn,
            **{k: getattr(self, k) for k in plans.PHASE_OPTIONS},
        )

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["head"] = list(self.head)
        data["phases"] = [p.as_dict() for p in self.resolved_plan()]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """A config from a run's saved ``config.yaml`` (its run-record keys are skipped)."""
        return cls(**{k: v for k, v in data.items() if k not in RUN_RECORD_KEYS})


SETTINGS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _received(name: str, value) -> str:
    return f"Received: {name}={value!r}"


_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "tuple[int, ...]": "a list of integers",
    "list[Phase]": "a list of phases",
}


def _type_ok(kind: str, value) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):  # True is an int to Python, not to a setting
        return False
    if kind == "int":
        return isinstance(value, numbers.Integral)  # numpy integers too
    if kind == "float":
        return isinstance(value, numbers.Real)
    if kind == "str":
        return isinstance(value, str)
    if kind == "tuple[int, ...]":
        return isinstance(value, (list, tuple)) and all(
            isinstance(u, numbers.Integral) and not isinstance(u, bool) for u in value
        )
    if kind == "list[Phase]":
        return isinstance(value, (list, tuple))
    return True


#: Settings that may also be ``"auto"`` (decided by graft from the data).
AUTO_SETTINGS = ("lr", "val_split", "epochs", "finetune_epochs")


def check_types(settings: dict) -> None:
    """Refuse a setting of the wrong type (``epochs: "ten"``) with one clear error.

    The expected type is the :class:`TrainConfig` field's annotation (``int``, ``float``,
    ``str``, ``bool``, ``... | None``); ``lr`` may also be ``"auto"``.

    Raises:
        GraftError: naming the setting and the value received.
    """
    for f in dataclasses.fields(TrainConfig):
        if f.name not in settings:
            continue
        value = settings[f.name]
        kinds = [k.strip() for k in str(f.type).split("|")]
        if value is None and "None" in kinds:
            continue
        if f.name in AUTO_SETTINGS and value == "auto":
            continue
        kind = next(k for k in kinds if k != "None")
        if not _type_ok(kind, value):
            raise GraftError(
                f"{f.name} must be {_TYPE_NAMES.get(kind, kind)}"
                + (" or None" if "None" in kinds else "")
                + (" or 'auto'" if f.name in AUTO_SETTINGS else "")
                + f". {_received(f.name, value)}"
            )


#: The largest integer setting (a C ``int``; the seed may use all 32 bits).
MAX_INT = 2**31 - 1
_MAX_INTS = {"seed": 2**32 - 1}


def _check_range(name: str, value) -> None:
    """Numbers a run can use: finite floats, integers a C ``int`` holds (a 30-digit
    batch size passes every type check, then fails deep inside TensorFlow)."""
    values = value if name == "head" and isinstance(value, (list, tuple)) else [value]
    for item in values:
        if isinstance(item, bool) or not isinstance(item, numbers.Number):
            continue
        if isinstance(item, numbers.Integral):
            high = _MAX_INTS.get(name, MAX_INT)
            if abs(item) > high:
                raise GraftError(f"{name} must be at most {high:,}. {_received(name, value)}")
        elif not math.isfinite(float(item)):
            raise GraftError(f"{name} must be a finite number. {_received(name, value)}")


def _check(cfg: TrainConfig) -> None:
    """Validate the settings; messages name the Python argument (Keras style)."""
    check_types({f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)})
    for f in dataclasses.fields(TrainConfig):
        _check_range(f.name, getattr(cfg, f.name))
    if isinstance(cfg.lr, str) and cfg.lr != "auto":
        raise GraftError(f"lr must be a positive number or 'auto'. {_received('lr', cfg.lr)}")
    if cfg.strategy not in STRATEGIES and cfg.phases is None:
        plan(cfg.strategy)  # raises the unknown-strategy error
    for name in ("lr", "finetune_lr"):
        value = getattr(cfg, name)
        if value != "auto" and not (isinstance(value, (int, float)) and value > 0):
            raise GraftError(f"{name} must be positive. {_received(name, value)}")
    for f in dataclasses.fields(TrainConfig):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and f.name != "strategy" and value is not None and value not in choices:
            raise UnknownNameError(
                f"Unknown {f.name}: {value!r}.{did_you_mean(str(value), choices)} "
                f"Expected one of {', '.join(choices)}."
            )
    for name, low, high in (("val_split", 0, 1), ("dropout", 0, 1)):
        if getattr(cfg, name) == "auto" and name in AUTO_SETTINGS:
            continue
        if not low <= getattr(cfg, name) < high:
            raise GraftError(
                f"{name} must be in [{low}, {high}). {_received(name, getattr(cfg, name))}"
            )
    for name, low in (
        ("batch_size", 1),
        ("min_size", 1),
        ("cache_views", 0),
        ("devices", 0),
        ("epochs", 1),
        ("finetune_epochs", 1),
    ):
        if getattr(cfg, name) != "auto" and getattr(cfg, name) < low:
            raise GraftError(
                f"{name} must be at least {low}. {_received(name, getattr(cfg, name))}"
            )
    cfg.head = tuple(int(u) for u in cfg.head)
    if any(u < 1 for u in cfg.head):
        raise GraftError(f"head units must be positive. Received: head={list(cfg.head)}")


def read_settings(path) -> dict:
    """The TrainConfig fields stored in a YAML file (a run's ``config.yaml`` or one of
    your own). Run-record keys are skipped; any other unknown key is an error."""
    from pathlib import Path

    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise GraftError(f"Config file not found: {path}.")
    try:
        loaded = yaml.safe_load(file.read_text("utf-8"))
    except yaml.YAMLError as exc:
        raise GraftError(f"{path} is not valid YAML: {first_line(exc)}") from None
    if not isinstance(loaded, dict):
        raise GraftError(f"{path} must hold a mapping of settings, e.g. 'backbone: resnet50'.")
    settings = {k: v for k, v in loaded.items() if k not in RUN_RECORD_KEYS}
    try:
        unknown_keys(settings, SETTINGS)
        check_types(settings)
    except GraftError as exc:
        raise type(exc)(f"{path}: {exc.message}", hint=exc.hint) from None
    return settings


def read_run_config(path) -> dict:
    """A run folder's whole ``config.yaml`` (settings and run record), checked: a file
    that is not YAML, not a mapping, without a backbone or with a setting of the wrong
    type is one clear :class:`GraftError`, never a ``KeyError`` later on."""
    from pathlib import Path

    import yaml

    file = Path(path).expanduser()
    try:
        loaded = yaml.safe_load(file.read_text("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise GraftError(f"{path} is damaged, not valid YAML: {first_line(exc)}") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("backbone"), str):
        raise GraftError(
            f"{path} is damaged: it must be a mapping of settings with a backbone.",
            hint="restore it from the run's copy, or start a new run.",
        )
    try:
        settings = {k: v for k, v in loaded.items() if k not in RUN_RECORD_KEYS}
        unknown_keys(settings, SETTINGS)
        check_types(settings)
    except GraftError as exc:
        raise GraftError(f"{path} is damaged: {exc.message}") from None
    for key in ("data",):
        if loaded.get(key) is not None and not isinstance(loaded[key], dict):
            raise GraftError(f"{path} is damaged: {key} must be a mapping.")
    return loaded
