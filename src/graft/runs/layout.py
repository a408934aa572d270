"""The run folder's layout: the one place that names every artifact of a run.

::

    RUN_DIR/model.keras        the trained model (raw images in, probabilities out)
    RUN_DIR/last.keras         the last epoch's model (when model.keras is the best epoch)
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
    RUN_DIR/.graft.lock        held (with the writer's pid) while a process writes the run
"""

MODEL_FILE = "model.keras"
LAST_MODEL_FILE = "last.keras"
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
LOCK_FILE = ".graft.lock"

#: Everything graft writes into a run folder: ``--overwrite`` clears these (and only these).
ARTIFACTS = (
    MODEL_FILE,
    LAST_MODEL_FILE,
    LABELS_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    REPORT_FILE,
    MODEL_CARD_FILE,
    EXPORTS_FILE,
    PLOTS_DIR,
    CHECKPOINT_DIR,
    STATUS_FILE,
    TENSORBOARD_DIR,
    LR_FIND_CSV,
    LR_FIND_PLOT,
    AUTO_SEARCH_FILE,
)
#: What a run that stopped before its first checkpoint leaves: nothing worth keeping.
DISPOSABLE = (CONFIG_FILE, STATUS_FILE, LOCK_FILE)
