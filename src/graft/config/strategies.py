"""Strategies: policy that turns a name and a few numbers into a plan of phases.

A :class:`Phase` is plain data. A plan is a list of phases. The trainer runs plans and
knows nothing of strategy names, so a custom plan is just another list.

The three classic recipes, done right:

``feature`` (feature extraction)
    One phase: backbone frozen (BN included), only the new head trains at ``lr``.
``finetune`` (fine-tuning)
    One phase: the top of the backbone (``unfreeze``, default ``blocks:2``) trains with
    the head. The backbone gets the low ``finetune_lr`` (default 1e-5); the new,
    randomly initialised head gets ``lr`` (default 1e-3), because at 1e-5 a fresh head
    barely learns while its large early gradients still reach the backbone.
``hybrid``
    Two phases: the head alone at ``lr`` until it has converged, then ``unfreeze``
    trains together with the head at ``finetune_lr``.

BatchNormalization stays frozen (inference mode) in every phase unless ``train_bn``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from graft.core.freezing import TrainableSpec
from graft.errors import GraftError, UnknownNameError, did_you_mean

DEFAULT_UNFREEZE = "blocks:2"
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "nadam")


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
        optimizer: One of :data:`OPTIMIZERS`.
        train_bn: Let BatchNormalization in unfrozen layers train (default: frozen).
        lr_mult: Discriminative learning rates (fastai-style): the top trainable
            backbone block trains at ``backbone_lr``, the block ``d`` below it at
            ``backbone_lr * lr_mult**d``. ``None``: one rate for the whole backbone.
        layer_decay: Layer-wise decay (timm-style): the head trains at ``lr`` and the
            backbone block ``i`` from the top (``i = 1`` for the top block) at
            ``lr * layer_decay**i`` (``backbone_lr`` is then not used).
        schedule: Learning-rate schedule over the phase's epochs, one of
            :data:`SCHEDULES` (see :mod:`graft.schedules`).
        warmup_epochs: Epochs of linear warm-up before a ``cosine`` decay.
        early_stop: Patience in epochs (0: off). Stops the phase when the validation
            loss (training loss without validation data) stops improving, and restores
            the weights of the phase's best epoch before the next phase starts.
        weight_decay: Decoupled weight decay of kernels (never BN, never biases).
        l2sp: L2-SP strength ``alpha``: backbone weights are pulled toward their
            pre-trained values (see :mod:`graft.regularizers`).
        recalibrate_bn: Re-estimate the backbone's BN statistics on the training data
            before the phase starts (AdaBN; see :func:`graft.regularizers.recalibrate_bn`).
        head: Hidden units of the head this plan needs (``[]``: a linear probe);
            ``None``: the run's ``--head``. Read from the first phase only, because the
            head is built once before training.
    """

    name: str
    trainable: str = "none"
    epochs: int = 10
    lr: float = 1e-3
    backbone_lr: float | None = None
    optimizer: str = "adam"
    train_bn: bool = False
    lr_mult: float | None = None
    layer_decay: float | None = None
    schedule: str = "constant"
    warmup_epochs: int = 0
    early_stop: int = 0
    weight_decay: float = 0.0
    l2sp: float = 0.0
    recalibrate_bn: bool = False
    head: tuple[int, ...] | None = None

    def __post_init__(self):
        TrainableSpec.parse(self.trainable)
        if int(self.epochs) < 1:
            raise GraftError(f"Phase {self.name!r}: epochs must be at least 1, got {self.epochs}.")
        for label, value in (("lr", self.lr), ("backbone_lr", self.backbone_lr)):
            if value is not None and not value > 0:
                raise GraftError(f"Phase {self.name!r}: {label} must be positive, got {value}.")
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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UnknownNameError(
                f"Unknown phase field(s): {', '.join(unknown)}. "
                f"Expected {', '.join(sorted(known))}."
            )
        return cls(**data)


SCHEDULES = ("constant", "cosine", "onecycle", "plateau")


def _check_extras(phase: Phase) -> None:
    """Validate the per-block, schedule and regulariser fields of a phase."""
    name = phase.name
    for label, value in (("lr_mult", phase.lr_mult), ("layer_decay", phase.layer_decay)):
        if value is not None and not 0 < value <= 1:
            raise GraftError(f"Phase {name!r}: {label} must be in (0, 1], got {value}.")
    if phase.lr_mult is not None and phase.layer_decay is not None:
        raise GraftError(f"Phase {name!r}: use lr_mult or layer_decay, not both.")
    if phase.schedule not in SCHEDULES:
        raise UnknownNameError(
            f"Phase {name!r}: unknown schedule {phase.schedule!r}. "
            f"Expected one of {', '.join(SCHEDULES)}." + did_you_mean(phase.schedule, SCHEDULES)
        )
    for label in ("warmup_epochs", "early_stop"):
        if int(getattr(phase, label)) < 0:
            raise GraftError(f"Phase {name!r}: {label} must be 0 or more.")
    if phase.warmup_epochs and phase.warmup_epochs >= phase.epochs:
        raise GraftError(
            f"Phase {name!r}: warmup_epochs ({phase.warmup_epochs}) must be fewer than "
            f"epochs ({phase.epochs})."
        )
    for label in ("weight_decay", "l2sp"):
        if float(getattr(phase, label)) < 0:
            raise GraftError(f"Phase {name!r}: {label} must be 0 or more.")
    if phase.head is not None:
        object.__setattr__(phase, "head", tuple(int(u) for u in phase.head))
        if any(u < 1 for u in phase.head):
            raise GraftError(f"Phase {name!r}: head units must be positive, got {phase.head}.")


def feature(epochs: int = 10, lr: float = 1e-3, optimizer: str = "adam", **_) -> list[Phase]:
    """Feature extraction: frozen backbone, new head."""
    return [Phase("head", "none", epochs, lr, optimizer=optimizer)]


def finetune(
    epochs: int = 10,
    lr: float = 1e-3,
    finetune_lr: float = 1e-5,
    unfreeze: str = DEFAULT_UNFREEZE,
    train_bn: bool = False,
    optimizer: str = "adam",
    **_,
) -> list[Phase]:
    """Fine-tuning: the top of the backbone and the head train together."""
    return [Phase("finetune", unfreeze, epochs, lr, finetune_lr, optimizer, train_bn)]


def hybrid(
    epochs: int = 10,
    finetune_epochs: int = 10,
    lr: float = 1e-3,
    finetune_lr: float = 1e-5,
    unfreeze: str = DEFAULT_UNFREEZE,
    train_bn: bool = False,
    optimizer: str = "adam",
    **_,
) -> list[Phase]:
    """Hybrid: head first on a frozen backbone, then fine-tune the top at a low rate."""
    return [
        Phase("head", "none", epochs, lr, optimizer=optimizer),
        Phase("finetune", unfreeze, finetune_epochs, finetune_lr, finetune_lr, optimizer, train_bn),
    ]


def gradual(
    epochs: int = 10,
    finetune_epochs: int = 10,
    lr: float = 1e-3,
    finetune_lr: float = 1e-5,
    unfreeze: str = DEFAULT_UNFREEZE,
    train_bn: bool = False,
    optimizer: str = "adam",
    gradual_blocks: int | None = None,
    gradual_step: int = 1,
    gradual_epochs: int | None = None,
    **_,
) -> list[Phase]:
    """Gradual unfreezing (ULMFiT): the head first, then one more block per phase.

    Args:
        epochs: Epochs of the head phase.
        finetune_epochs: Epochs shared by the unfreezing phases when
            ``gradual_epochs`` is not given (at least one each).
        lr: Learning rate of the head phase.
        finetune_lr: Learning rate of the unfreezing phases (head and backbone).
        unfreeze: ``blocks:N`` gives the default ``gradual_blocks`` (N).
        train_bn: Let BN train in the unfrozen blocks.
        optimizer: Optimizer name.
        gradual_blocks: Blocks unfrozen in the last phase (counted from the top).
        gradual_step: Blocks added per phase.
        gradual_epochs: Epochs of each unfreezing phase.

    Returns:
        ``head`` then ``unfreeze_1`` (``blocks:step``), ``unfreeze_2``
        (``blocks:2*step``) ... up to ``blocks:gradual_blocks``.
    """
    if gradual_blocks is None:
        spec = TrainableSpec.parse(unfreeze)
        if spec.kind != "blocks":
            raise GraftError(
                f"gradual needs a number of blocks; --unfreeze is {unfreeze!r}.",
                hint="pass --gradual-blocks N (or --unfreeze blocks:N).",
            )
        gradual_blocks = int(spec.value)
    if gradual_blocks < 1 or gradual_step < 1:
        raise GraftError(
            f"gradual: blocks ({gradual_blocks}) and step ({gradual_step}) must be at least 1."
        )
    depths = list(range(gradual_step, gradual_blocks, gradual_step)) + [gradual_blocks]
    per_phase = gradual_epochs or max(1, int(finetune_epochs) // len(depths))
    phases = [Phase("head", "none", epochs, lr, optimizer=optimizer)]
    for i, depth in enumerate(depths, start=1):
        phases.append(
            Phase(
                f"unfreeze_{i}",
                f"blocks:{depth}",
                per_phase,
                finetune_lr,
                finetune_lr,
                optimizer,
                train_bn,
            )
        )
    return phases


def lp_ft(
    epochs: int = 10,
    finetune_epochs: int = 10,
    lr: float = 1e-3,
    finetune_lr: float = 1e-5,
    train_bn: bool = False,
    optimizer: str = "adam",
    probe_patience: int = 3,
    **_,
) -> list[Phase]:
    """LP-FT (Kumar et al. 2022): a linear probe to convergence, then fine-tune everything.

    The probe is a head without hidden layers (``head=()``), trained on the frozen
    backbone for up to ``epochs`` with early stopping (``probe_patience``; its best
    epoch is restored), then the whole backbone (``all``) trains with the probe at the
    low ``finetune_lr``. ``--unfreeze`` is not used: LP-FT fine-tunes all layers.
    """
    return [
        Phase("probe", "none", epochs, lr, optimizer=optimizer, early_stop=probe_patience, head=()),
        Phase("finetune", "all", finetune_epochs, finetune_lr, finetune_lr, optimizer, train_bn),
    ]


STRATEGIES = {
    "feature": feature,
    "finetune": finetune,
    "hybrid": hybrid,
    "gradual": gradual,
    "lp-ft": lp_ft,
}


def plan_head(phases: list[Phase]) -> tuple[int, ...] | None:
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


def plan(strategy: str, **options) -> list[Phase]:
    """The plan of phases for a strategy name and its options.

    Example:
        >>> [p.name for p in plan("hybrid", epochs=5, finetune_epochs=3)]
        ['head', 'finetune']
    """
    if strategy not in STRATEGIES:
        raise UnknownNameError(
            f"Unknown strategy: {strategy!r}. Expected one of {', '.join(STRATEGIES)}."
            + did_you_mean(strategy, STRATEGIES)
        )
    options = {k: v for k, v in options.items() if v is not None}
    return STRATEGIES[strategy](**options)
