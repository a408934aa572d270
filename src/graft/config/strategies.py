"""Strategies: policy that turns a name and a few numbers into a plan of phases.

A :class:`~graft.config.phase.Phase` is plain data; a plan is a list of phases.

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

from graft.config.defaults import (
    DEFAULT_EPOCHS,
    DEFAULT_FINETUNE_LR,
    DEFAULT_LR,
    DEFAULT_OPTIMIZER,
    DEFAULT_UNFREEZE,
)
from graft.config.names import OPTIMIZERS, SCHEDULES  # noqa: F401 (re-exported)
from graft.config.phase import Phase, Plan, plan_head  # noqa: F401 (re-exported)
from graft.config.spec import TrainableSpec
from graft.errors import GraftError, UnknownNameError, did_you_mean


def feature(
    epochs: int = DEFAULT_EPOCHS, lr: float = DEFAULT_LR, optimizer: str = DEFAULT_OPTIMIZER, **_
) -> list[Phase]:
    """Feature extraction: frozen backbone, new head."""
    return [Phase("head", "none", epochs, lr, optimizer=optimizer)]


def finetune(
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    finetune_lr: float = DEFAULT_FINETUNE_LR,
    unfreeze: str = DEFAULT_UNFREEZE,
    train_bn: bool = False,
    optimizer: str = DEFAULT_OPTIMIZER,
    **_,
) -> list[Phase]:
    """Fine-tuning: the top of the backbone and the head train together."""
    return [Phase("finetune", unfreeze, epochs, lr, finetune_lr, optimizer, train_bn)]


def hybrid(
    epochs: int = DEFAULT_EPOCHS,
    finetune_epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    finetune_lr: float = DEFAULT_FINETUNE_LR,
    unfreeze: str = DEFAULT_UNFREEZE,
    train_bn: bool = False,
    optimizer: str = DEFAULT_OPTIMIZER,
    **_,
) -> list[Phase]:
    """Hybrid: head first on a frozen backbone, then fine-tune the top at a low rate."""
    return [
        Phase("head", "none", epochs, lr, optimizer=optimizer),
        Phase("finetune", unfreeze, finetune_epochs, finetune_lr, finetune_lr, optimizer, train_bn),
    ]


def gradual(
    epochs: int = DEFAULT_EPOCHS,
    finetune_epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    finetune_lr: float = DEFAULT_FINETUNE_LR,
    unfreeze: str = DEFAULT_UNFREEZE,
    train_bn: bool = False,
    optimizer: str = DEFAULT_OPTIMIZER,
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
                f"gradual needs a number of blocks. Received: unfreeze={unfreeze!r}",
                hint="pass gradual_blocks=N (or unfreeze=blocks:N).",
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
    epochs: int = DEFAULT_EPOCHS,
    finetune_epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    finetune_lr: float = DEFAULT_FINETUNE_LR,
    train_bn: bool = False,
    optimizer: str = DEFAULT_OPTIMIZER,
    probe_patience: int = 3,
    **_,
) -> list[Phase]:
    """LP-FT (Kumar et al. 2022): a linear probe to convergence, then fine-tune everything.

    The probe is a head without hidden layers (``head=()``), trained on the frozen
    backbone for up to ``epochs`` with early stopping (``probe_patience``; its best
    epoch is restored), then the whole backbone (``all``) trains with the probe at the
    low ``finetune_lr``. ``unfreeze`` is not used: LP-FT fine-tunes all layers.
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
