"""Settings and plans as plain data: no Keras, no TensorFlow.

Owns the trainable-spec grammar, :class:`Phase`, strategies (policy: which phases a
named strategy makes), plan files, and :class:`TrainConfig` with its per-field metadata.
"""

from graft.config.settings import TrainConfig
from graft.config.strategies import DEFAULT_UNFREEZE, STRATEGIES, Phase, plan, plan_head

__all__ = ["DEFAULT_UNFREEZE", "STRATEGIES", "Phase", "TrainConfig", "plan", "plan_head"]
