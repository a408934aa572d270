"""Default values shared by strategies, :class:`~graft.config.TrainConfig` and the CLI."""

from __future__ import annotations

DEFAULT_STRATEGY = "hybrid"
DEFAULT_UNFREEZE = "blocks:2"
DEFAULT_EPOCHS = 10
DEFAULT_LR = 1e-3
DEFAULT_FINETUNE_LR = 1e-5
DEFAULT_OPTIMIZER = "adam"
DEFAULT_HEAD = ()
DEFAULT_DROPOUT = 0.2
DEFAULT_BATCH_SIZE = 32
DEFAULT_VAL_SPLIT = 0.2
#: Only degenerate images (a 1-pixel side: tracking pixels) are skipped by default.
DEFAULT_MIN_SIZE = 2
#: The head learning rate a plan shows before ``lr="auto"`` has run the LR finder.
AUTO_LR_PLACEHOLDER = 1e-3

#: A multi-label model predicts every label whose probability is at least this.
MULTI_LABEL_THRESHOLD = 0.5
