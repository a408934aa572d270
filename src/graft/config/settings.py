"""Every setting of a training run, resolved, validated and saved as ``config.yaml``.

A :class:`TrainConfig` is what the CLI builds from its flags and what the Python API
builds from keyword arguments; :func:`graft.api.steps` runs one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from graft.config.strategies import DEFAULT_UNFREEZE, STRATEGIES, Phase, plan
from graft.errors import GraftError, UnknownNameError, did_you_mean

#: The head learning rate a plan shows before ``--lr auto`` has run the LR finder.
AUTO_LR_PLACEHOLDER = 1e-3


@dataclass
class TrainConfig:
    """All settings of one run. ``None`` means "the backbone's/strategy's default"."""

    backbone: str
    weights: str | None = None
    cut: str | None = None
    preprocess: str | None = None
    alpha: float | None = None
    image_size: int | None = None
    strategy: str = "hybrid"
    epochs: int = 10
    finetune_epochs: int = 10
    unfreeze: str = DEFAULT_UNFREEZE
    lr: float = 1e-3
    finetune_lr: float = 1e-5
    train_bn: bool = False
    optimizer: str = "adam"
    head: tuple[int, ...] = (128,)
    dropout: float = 0.2
    batch_size: int = 32
    val_split: float = 0.2
    seed: int = 0
    cache: bool = True
    cache_dir: str | None = None
    cache_views: int = 0
    jit: str = "auto"
    precision: str = "float32"
    phases: list[Phase] | None = field(default=None)
    augment: str = "none"
    class_weight: str = "none"
    min_size: int = 16
    strict: bool = False
    lr_mult: float | None = None
    layer_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: int | None = None
    early_stop: int | None = None
    weight_decay: float | None = None
    l2sp: float | None = None
    recalibrate_bn: bool = False
    gradual_blocks: int | None = None
    gradual_step: int = 1
    gradual_epochs: int | None = None
    deterministic: bool = False
    distribute: str = "none"
    devices: int = 0

    def __post_init__(self):
        if isinstance(self.lr, str) and self.lr != "auto":
            raise GraftError(f"--lr must be a positive number or 'auto', got {self.lr!r}.")
        if self.strategy not in STRATEGIES and self.phases is None:
            plan(self.strategy)  # raises the unknown-strategy error
        if self.batch_size < 1:
            raise GraftError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if not 0 <= self.val_split < 1:
            raise GraftError(f"--val-split must be in [0, 1), got {self.val_split}.")
        if not 0 <= self.dropout < 1:
            raise GraftError(f"--dropout must be in [0, 1), got {self.dropout}.")
        if self.cache_views < 0:
            raise GraftError(f"--cache-views must be 0 or more, got {self.cache_views}.")
        if self.jit not in ("auto", "on", "off"):
            raise GraftError(f"--jit must be auto, on or off, got {self.jit!r}.")
        if self.precision not in ("float32", "mixed"):
            raise GraftError(f"--precision must be float32 or mixed, got {self.precision!r}.")
        _check_data_settings(self)
        if self.distribute not in ("none", "mirrored", "multi-worker"):
            raise UnknownNameError(
                f"Unknown --distribute: {self.distribute!r}.",
                hint="expected none, mirrored or multi-worker.",
            )
        if self.devices < 0:
            raise GraftError(f"--devices must be 0 (all) or more, got {self.devices}.")
        self.head = tuple(int(u) for u in self.head)
        if any(u < 1 for u in self.head):
            raise GraftError(f"--head units must be positive, got {list(self.head)}.")

    def resolved_plan(self) -> list[Phase]:
        """The phases this config will run."""
        from graft.config import plans

        if self.phases is not None:
            return [p if isinstance(p, Phase) else Phase.from_dict(p) for p in self.phases]
        phases = plan(
            self.strategy,
            epochs=self.epochs,
            finetune_epochs=self.finetune_epochs,
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
            **{k: getattr(self, k) for k in plans.PHASE_OPTIONS},
        )

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["head"] = list(self.head)
        data["phases"] = [p.as_dict() for p in self.resolved_plan()]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _check_data_settings(cfg: TrainConfig) -> None:
    from graft.data.sources import AUGMENT_LEVELS

    if cfg.augment not in AUGMENT_LEVELS:
        raise UnknownNameError(
            f"Unknown --augment level: {cfg.augment!r}.{did_you_mean(cfg.augment, AUGMENT_LEVELS)}",
            hint=f"expected one of {', '.join(AUGMENT_LEVELS)}.",
        )
    if cfg.class_weight not in ("none", "auto"):
        raise UnknownNameError(
            f"Unknown --class-weight: {cfg.class_weight!r}.", hint="expected none or auto."
        )
    if cfg.min_size < 1:
        raise GraftError(f"--min-size must be at least 1, got {cfg.min_size}.")


def read_settings(path) -> dict:
    """The TrainConfig fields stored in a YAML file (other keys, such as the
    ``resolved_backbone`` or ``versions`` a run's config.yaml also holds, are ignored)."""
    from pathlib import Path

    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise GraftError(f"Config file not found: {path}.")
    try:
        loaded = yaml.safe_load(file.read_text("utf-8"))
    except yaml.YAMLError as exc:
        raise GraftError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise GraftError(f"{path} must hold a mapping of settings, e.g. 'backbone: resnet50'.")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in loaded.items() if k in known}
