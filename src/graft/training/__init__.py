"""Training: the trainer runs a plan of phases through hooks (feature cache, checkpoints,
TensorBoard, distribution).

``graft.training.Trainer`` and ``graft.training.make_optimizer`` are the documented names.
"""

from graft.training.trainer import Trainer, TrainResult, make_optimizer

__all__ = ["TrainResult", "Trainer", "make_optimizer"]
