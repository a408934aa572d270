"""Settings and plans as plain data: no Keras, no TensorFlow, no NumPy.

Owns the names and defaults every layer shares (:mod:`~graft.config.names`,
:mod:`~graft.config.defaults`), the trainable-spec grammar, :class:`Phase` and plans,
strategies (policy: which phases a named strategy makes), plan files, and
:class:`TrainConfig` with its per-field metadata.
"""

from graft.config.defaults import DEFAULT_UNFREEZE
from graft.config.phase import Phase, Plan, plan_head
from graft.config.settings import TrainConfig
from graft.config.spec import TrainableSpec
from graft.config.strategies import STRATEGIES, plan

__all__ = [
    "DEFAULT_UNFREEZE",
    "STRATEGIES",
    "Phase",
    "Plan",
    "TrainConfig",
    "TrainableSpec",
    "plan",
    "plan_head",
]
