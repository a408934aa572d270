"""How long the head trains: a budget in optimizer steps, not epochs.

Ten epochs of ten images at batch 16 are ten optimizer steps: a freshly initialised head
ends far from converged (issue 22 measured training accuracy 0.2-0.4). Ten epochs of
50,000 images are 31,000 steps, more than a head needs. An epoch is the wrong unit at
both ends; the unit that matters to the optimizer is the step.

The rule of :func:`head_budget` for ``epochs="auto"``: **at least** :data:`MIN_HEAD_STEPS`
(300) optimizer steps, and at least :data:`DEFAULT_EPOCHS` passes over the data (what graft
did before, so nothing gets less training on large data); one pass over the data an
epoch, and the whole budget runs. An earlier version stopped early on the training loss
and, on tiny data, let an epoch span several passes; neither resumed exactly (a killed
run replays whole epochs from its checkpoint, and the stopping point depended on where
it was killed: ``tests/test_few_shot_runs.py`` caught a loss that differed by 0.024), so
both went. A budget is then a pure function of the image count and the batch size.

Why 300: the head is a linear or one-hidden-layer map over fixed features, trained with
Adam at 1e-3 from a random start. Adam's effective step is about the learning rate per
weight, so moving weights by O(0.1-1) (the scale of a converged logistic-regression head on
standardised features) takes a few hundred steps; on the digits benchmark of issue 22 the
hand-written recipe's head (40 epochs of one step each) was still improving, while the
converged probe was 0.04-0.07 better. 300 steps of a small head on cached features cost a
second or two on a CPU, so the floor is cheap where it matters (few images) and invisible
where the data is large (10 epochs already exceed it).

An explicit ``epochs=N`` is obeyed as it is (no floor).

Example:
    >>> b = head_budget(10, 16)
    >>> (b.epochs, b.steps_per_epoch, b.total_steps)
    (300, 1, 300)
    >>> head_budget(50_000, 32).epochs
    10
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_HEAD_STEPS = 300
DEFAULT_EPOCHS = 10
#: An explicit epoch count that gives a head trained by gradient fewer steps than this is
#: warned about (the classic recipe's 10 epochs of 10-50 images are 10-40 steps).
FEW_HEAD_STEPS = 100


@dataclass(frozen=True)
class HeadBudget:
    """A head's training budget.

    Attributes:
        epochs: Epochs (``fit(epochs=...)``), one pass over the data each.
        steps_per_epoch: Optimizer steps per epoch.
        total_steps: ``epochs * steps_per_epoch``.
        reason: One line: the budget and why.
    """

    epochs: int
    steps_per_epoch: int
    total_steps: int
    reason: str

    def as_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "reason": self.reason,
        }


def head_budget(
    num_images: int,
    batch_size: int,
    epochs: int | str = "auto",
    *,
    min_steps: int = MIN_HEAD_STEPS,
    default_epochs: int = DEFAULT_EPOCHS,
) -> HeadBudget:
    """The head's budget for ``num_images`` at ``batch_size`` (see the module docstring).

    Args:
        num_images: Training images per pass.
        batch_size: Images per optimizer step.
        epochs: ``"auto"`` or a number of epochs the user asked for.
        min_steps: The floor of optimizer steps for ``"auto"``.
        default_epochs: The floor of passes over the data for ``"auto"``.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1. Received: num_images={num_images}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    per_pass = math.ceil(num_images / batch_size)
    if epochs != "auto":
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"Invalid epochs: {epochs!r}. Expected 'auto' or an integer >= 1.")
        steps = epochs * per_pass
        return HeadBudget(
            epochs, per_pass, steps, f"head: {epochs} epochs as given ({steps} optimizer steps)"
        )
    passes = max(default_epochs, math.ceil(min_steps / per_pass))
    total = passes * per_pass
    why = (
        f"at least {min_steps} optimizer steps"
        if passes > default_epochs
        else f"{default_epochs} passes over {num_images} images exceed {min_steps} steps"
    )
    return HeadBudget(
        passes,
        per_pass,
        total,
        f"head: {passes} epochs = {total} optimizer steps ({why}); the whole budget runs",
    )


#: A network trained from scratch gets at least this many optimizer steps (``epochs="auto"``).
MIN_SCRATCH_STEPS = 1000
#: ... and at most this many epochs (tiny data: one step an epoch).
MAX_SCRATCH_EPOCHS = 200


def scratch_epochs(num_images: int, batch_size: int, floor_epochs: int) -> int:
    """Epochs for a network trained from scratch on ``num_images``: at least
    ``floor_epochs`` (the most any grafting strategy gets) and at least
    :data:`MIN_SCRATCH_STEPS` optimizer steps, at most :data:`MAX_SCRATCH_EPOCHS` epochs.

    A comparison with scratch counted in epochs starves it on few images (ten images
    at batch 32 make one step an epoch); plain Keras recipes give it 60 epochs or more.
    On the digits benchmark of issue 22 (250 labelled images, 200 after the hold-out)
    graft's scratch finalist had 20 epochs = 140 steps and auto kept a transfer model
    0.036 below the plain-Keras scratch recipe (60 epochs at batch 16 = 960 steps).

    Example:
        >>> scratch_epochs(200, 32, 20), scratch_epochs(40, 32, 20), scratch_epochs(10**5, 32, 20)
        (143, 200, 20)
    """
    per_pass = math.ceil(max(1, num_images) / max(1, batch_size))
    return max(floor_epochs, min(MAX_SCRATCH_EPOCHS, math.ceil(MIN_SCRATCH_STEPS / per_pass)))


#: A phase that trains backbone layers gets at least this many optimizer steps
#: (``epochs``/``finetune_epochs="auto"``) ...
MIN_FINETUNE_STEPS = 300
#: ... and at most this many epochs (tiny data: one step an epoch).
MAX_FINETUNE_EPOCHS = 300


def finetune_epochs(num_images: int, batch_size: int, floor_epochs: int = DEFAULT_EPOCHS) -> int:
    """Epochs of a phase that trains backbone layers, for ``num_images``: at least
    ``floor_epochs`` passes (what graft did before, so large data gets no less) and at
    least :data:`MIN_FINETUNE_STEPS` optimizer steps, at most :data:`MAX_FINETUNE_EPOCHS`.

    Ten fine-tuning epochs of ten images are ten steps: at ``finetune_lr=1e-5`` the
    backbone barely moves. On the digits benchmark of issue 22 (hybrid, LP-FT, one
    seed each of two) 300 steps gave 0.616 / 0.734 test accuracy at 2 labels per class
    against 0.545 / 0.692 for ten epochs, and 0.834 / 0.885 against 0.833 / 0.858 at 10.

    Example:
        >>> finetune_epochs(10, 32), finetune_epochs(50, 32), finetune_epochs(50_000, 32)
        (300, 150, 10)
    """
    per_pass = math.ceil(max(1, num_images) / max(1, batch_size))
    steps = math.ceil(MIN_FINETUNE_STEPS / per_pass)
    return max(floor_epochs, min(MAX_FINETUNE_EPOCHS, steps))
