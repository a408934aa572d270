"""The run folder's layout: the one place that names every artifact of a run.

::

    RUN_DIR/model.keras        the trained model (raw images in, probabilities out)
    RUN_DIR/labels.json        class names in output order
    RUN_DIR/backbone.keras     the backbone a keras.Model object brought (for --resume)
    RUN_DIR/config.yaml        every resolved setting; enough to reproduce the run
    RUN_DIR/history.csv        one row per epoch, with the phase it belongs to
    RUN_DIR/metrics.json       final metrics (written only by :mod:`graft.runs.metrics`)
    RUN_DIR/report.html        the self-contained report
    RUN_DIR/MODEL_CARD.md      the model card
    RUN_DIR/exports.json       exports made from the run
    RUN_DIR/plots/             training curves, confusion matrix, ...
    RUN_DIR/checkpoint/        the last completed epoch (with state.json)
    RUN_DIR/status.json        running / completed / interrupted / failed
    RUN_DIR/tensorboard/       TensorBoard logs
    RUN_DIR/lr_find.csv|.png   the LR finder's sweep
    RUN_DIR/auto_search.json   the ``strategy="auto"`` search record
"""

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
BACKBONE_FILE = "backbone.keras"
CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
MODEL_CARD_FILE = "MODEL_CARD.md"
EXPORTS_FILE = "exports.json"
PLOTS_DIR = "plots"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
STATUS_FILE = "status.json"
TENSORBOARD_DIR = "tensorboard"
LR_FIND_CSV = "lr_find.csv"
LR_FIND_PLOT = "lr_find.png"
AUTO_SEARCH_FILE = "auto_search.json"
