"""Training: the trainer runs a plan of phases through hooks (feature cache, checkpoints,
TensorBoard, distribution).

``graft.training.Trainer`` and ``graft.training.make_optimizer`` are the documented names.
"""

from graft.core.optim import make_optimizer
from graft.training.trainer import Trainer, TrainResult

__all__ = ["TrainResult", "Trainer", "make_optimizer"]
