"""A :class:`Phase` of training and a plan (a list of phases), as plain data.

The trainer runs plans and knows nothing of strategy names, so a custom plan is just
another list. Validation errors name the phase field, like Keras names arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from graft.config.defaults import DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_OPTIMIZER
from graft.config.names import OPTIMIZERS, SCHEDULES
from graft.config.spec import TrainableSpec
from graft.errors import GraftError, UnknownNameError, did_you_mean, unknown_keys


@dataclass(frozen=True)
class Phase:
    """One phase of training: what trains, how fast, for how long.

    Attributes:
        name: Shown in progress output and in ``history.csv``.
        trainable: Backbone trainability spec (``none``, ``all``, ``blocks:N``,
            ``layers:N``, ``from:LAYER``). The head always trains.
        epochs: Epochs in this phase.
        lr: Learning rate of the head.
        backbone_lr: Learning rate of the unfrozen backbone layers; ``None`` = ``lr``.
        optimizer: One of :data:`~graft.config.names.OPTIMIZERS`.
        train_bn: Let BatchNormalization in unfrozen layers train (default: frozen).
        lr_mult: Discriminative learning rates (fastai-style): the top trainable
            backbone block trains at ``backbone_lr``, the block ``d`` below it at
            ``backbone_lr * lr_mult**d``. ``None``: one rate for the whole backbone.
        layer_decay: Layer-wise decay (timm-style): the head trains at ``lr`` and the
            backbone block ``i`` from the top (``i = 1`` for the top block) at
            ``lr * layer_decay**i`` (``backbone_lr`` is then not used).
        schedule: Learning-rate schedule over the phase's epochs, one of
            :data:`~graft.config.names.SCHEDULES` (see :mod:`graft.core.schedules`).
        warmup_epochs: Epochs of linear warm-up before a ``cosine`` decay.
        early_stop: Patience in epochs (0: off). Stops the phase when the validation
            loss (training loss without validation data) stops improving, and restores
            the weights of the phase's best epoch before the next phase starts.
        weight_decay: Decoupled weight decay of kernels (never BN, never biases).
        l2sp: L2-SP strength ``alpha``: backbone weights are pulled toward their
            pre-trained values (see :mod:`graft.core.regularizers`).
        recalibrate_bn: Re-estimate the backbone's BN statistics on the training data
            before the phase starts (AdaBN).
        precise_bn: Re-estimate the BN statistics of the BN layers that trained on a
            non-shuffled, non-augmented pass over the training images *after* the phase
            ("precise BN", Wu & Johnson 2021), so the moving statistics match the final
            weights. ``None`` (default): on exactly when BN trains in this phase
            (``train_bn`` and a trainable backbone); ``True``/``False`` force it.
        head: Hidden units of the head this plan needs (``[]``: a linear probe);
            ``None``: the run's ``head``. Read from the first phase only, because the
            head is built once before training.
    """

    name: str
    trainable: str = "none"
    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR
    backbone_lr: float | None = None
    optimizer: str = DEFAULT_OPTIMIZER
    train_bn: bool = False
    lr_mult: float | None = None
    layer_decay: float | None = None
    schedule: str = "constant"
    warmup_epochs: int = 0
    early_stop: int = 0
    weight_decay: float = 0.0
    l2sp: float = 0.0
    recalibrate_bn: bool = False
    precise_bn: bool | None = None
    head: tuple[int, ...] | None = None

    def __post_init__(self):
        TrainableSpec.parse(self.trainable)
        name = self.name
        if int(self.epochs) < 1:
            raise GraftError(
                f"Phase {name!r}: epochs must be at least 1. Received: epochs={self.epochs}"
            )
        for label, value in (("lr", self.lr), ("backbone_lr", self.backbone_lr)):
            if value is not None and not value > 0:
                raise GraftError(
                    f"Phase {name!r}: {label} must be positive. Received: {label}={value}"
                )
        if self.optimizer not in OPTIMIZERS:
            raise UnknownNameError(
                f"Unknown optimizer: {self.optimizer!r}. Expected one of {', '.join(OPTIMIZERS)}."
                + did_you_mean(self.optimizer, OPTIMIZERS)
            )
        _check_extras(self)

    @property
    def backbone_frozen(self) -> bool:
        """True when no backbone weight trains (the phase could run on cached features)."""
        return TrainableSpec.parse(self.trainable).kind == "none"

    @property
    def uses_precise_bn(self) -> bool:
        """Whether BN statistics are re-estimated after this phase (see ``precise_bn``)."""
        if self.precise_bn is not None:
            return bool(self.precise_bn)
        return bool(self.train_bn) and not self.backbone_frozen

    @property
    def effective_backbone_lr(self) -> float | None:
        """The learning rate of the top trainable backbone block (``None``: frozen backbone).

        ``lr * layer_decay`` with layer-wise decay, else ``backbone_lr`` (default ``lr``).
        """
        if self.backbone_frozen:
            return None
        if self.layer_decay is not None:
            return self.lr * self.layer_decay
        return self.backbone_lr if self.backbone_lr is not None else self.lr

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if self.head is not None:
            data["head"] = list(self.head)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Phase:
        """A phase from a mapping; an unknown key is an error with a did-you-mean."""
        unknown_keys(data, [f.name for f in dataclasses.fields(cls)], what="phase field")
        try:
            return cls(**data)
        except TypeError as exc:  # a missing name, or a value of the wrong type
            raise GraftError(f"Bad phase {data.get('name', '')!r}: {exc}") from None


def _check_extras(phase: Phase) -> None:
    """Validate the per-block, schedule and regulariser fields of a phase."""
    name = phase.name
    for label, value in (("lr_mult", phase.lr_mult), ("layer_decay", phase.layer_decay)):
        if value is not None and not 0 < value <= 1:
            raise GraftError(
                f"Phase {name!r}: {label} must be in (0, 1]. Received: {label}={value}"
            )
    if phase.lr_mult is not None and phase.layer_decay is not None:
        raise GraftError(f"Phase {name!r}: use lr_mult or layer_decay, not both.")
    if phase.schedule not in SCHEDULES:
        raise UnknownNameError(
            f"Phase {name!r}: unknown schedule {phase.schedule!r}. "
            f"Expected one of {', '.join(SCHEDULES)}." + did_you_mean(phase.schedule, SCHEDULES)
        )
    for label in ("warmup_epochs", "early_stop"):
        if int(getattr(phase, label)) < 0:
            raise GraftError(
                f"Phase {name!r}: {label} must be 0 or more. "
                f"Received: {label}={getattr(phase, label)}"
            )
    if phase.warmup_epochs and phase.warmup_epochs >= phase.epochs:
        raise GraftError(
            f"Phase {name!r}: warmup_epochs ({phase.warmup_epochs}) must be fewer than "
            f"epochs ({phase.epochs})."
        )
    for label in ("weight_decay", "l2sp"):
        if float(getattr(phase, label)) < 0:
            raise GraftError(
                f"Phase {name!r}: {label} must be 0 or more. "
                f"Received: {label}={getattr(phase, label)}"
            )
    if phase.head is not None:
        object.__setattr__(phase, "head", tuple(int(u) for u in phase.head))
        if any(u < 1 for u in phase.head):
            raise GraftError(
                f"Phase {name!r}: head units must be positive. Received: head={list(phase.head)}"
            )


@dataclass(frozen=True)
class Plan:
    """What a run trains: its phases, run in order, and the one head they share."""

    phases: tuple[Phase, ...]
    #: The head's hidden units (a plan may fix its own, e.g. lp-ft's linear probe).
    head: tuple[int, ...]

    @classmethod
    def of(cls, phases: Sequence[Phase], default_head) -> Plan:
        """``phases`` with their head: the plan's own (:func:`plan_head`) or ``default_head``."""
        head = plan_head(phases)
        return cls(tuple(phases), default_head if head is None else head)


def plan_head(phases: Sequence[Phase]) -> tuple[int, ...] | None:
    """The head layout a plan asks for (its first phase's ``head``), or ``None``."""
    if not phases:
        return None
    for phase in phases[1:]:
        if phase.head is not None and phase.head != phases[0].head:
            raise GraftError(
                f"Phase {phase.name!r} asks for head {list(phase.head)}, but the head is built "
                "once: set 'head' on the first phase only."
            )
    return phases[0].head
