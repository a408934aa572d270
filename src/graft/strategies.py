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

from graft.errors import GraftError, UnknownNameError, did_you_mean
from graft.freezing import TrainableSpec

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
    """

    name: str
    trainable: str = "none"
    epochs: int = 10
    lr: float = 1e-3
    backbone_lr: float | None = None
    optimizer: str = "adam"
    train_bn: bool = False

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

    @property
    def backbone_frozen(self) -> bool:
        """True when no backbone weight trains (the phase could run on cached features)."""
        return TrainableSpec.parse(self.trainable).kind == "none"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

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


STRATEGIES = {"feature": feature, "finetune": finetune, "hybrid": hybrid}


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
