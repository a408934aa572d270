"""A converged linear probe: the head solved, not trained, then written into Keras.

On features (pooled backbone outputs, cached), the head's best linear softmax classifier
is a convex problem: L2-regularised multinomial logistic regression, solved to convergence
by L-BFGS (scikit-learn's ``LogisticRegression``) on standardised features. The L2
strength ``C`` is chosen on a small grid by cross-validation over the folds of
:func:`graft.data.folds.plan_folds`; the probe is then **refit on every labelled image**
with that ``C``. :meth:`Probe.write` folds the standardisation into the kernel and bias
of a plain ``Dense(softmax)`` layer, so the model stays plain Keras and predicts exactly
what scikit-learn predicts (float32 round-off aside).

Which layer: the probe solves the layer whose input is ``features``. For a linear head
(``HeadConfig(hidden=())``, graft's ``head_output`` right after ``head_features``) that is
the whole head. A head with hidden layers (``hidden=(256,)``) is not convex; the pipeline
trains it by gradient (:func:`graft.config.budget.head_budget` steps) and may then re-solve
its output layer with this probe on the hidden activations (``Dense -> relu`` outputs,
dropout off), which can only lower the training loss of that last layer. Multi-label
(sigmoid) heads are out of scope here.

Example:
    >>> probe = fit_probe(features, labels, folds)            # doctest: +SKIP
    >>> probe.write(model.get_layer("head_output"))           # doctest: +SKIP
    >>> probe.line()                                          # doctest: +SKIP
    'linear probe: C=0.1 by 2-fold CV x5: accuracy 0.82 +- 0.09; refit on all 10 images'
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

#: The L2 strengths tried (inverse regularisation on standardised features).
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
#: The L2 strength used when nothing can be cross-validated.
DEFAULT_C = 0.1
MAX_ITER = 2000
#: Problems up to this many feature values (images x features) are solved on one thread.
SMALL_PROBLEM = 4_000_000
#: Bias of a class absent from the training labels (its probability is ~e^-30).
_ABSENT_BIAS = -30.0


@dataclass(frozen=True)
class CVScore:
    """A cross-validated estimate: accuracy and log-loss over the fold scores."""

    mean: float
    std: float
    scores: tuple[float, ...]
    log_loss: float

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def se(self) -> float:
        """Standard error of the mean (0 with a single score)."""
        return self.std / math.sqrt(self.n) if self.n > 1 else 0.0

    def text(self) -> str:
        return f"{self.mean:.3f} +- {self.std:.3f}"

    def as_dict(self) -> dict:
        return {
            "mean": round(self.mean, 4),
            "std": round(self.std, 4),
            "n": self.n,
            "log_loss": round(self.log_loss, 4),
        }


@dataclass(frozen=True, eq=False)
class Probe:
    """A fitted linear softmax classifier over standardised features.

    Attributes:
        C: The L2 strength used for the final fit.
        kernel: ``(features, num_classes)``, acting on *raw* features (standardisation
            folded in).
        bias: ``(num_classes,)``.
        n_train: Labelled images of the final fit (all of them).
        cv: The cross-validated score of the chosen ``C`` (``None``: not validated).
        grid: ``{C: CVScore}`` for every ``C`` tried.
        out_of_fold: Out-of-fold class probabilities at the chosen ``C``, one row per
            labelled image (``None`` without k-fold): for the report's confusion matrix.
        reason: How ``C`` was chosen (one phrase).
    """

    C: float
    kernel: np.ndarray
    bias: np.ndarray
    n_train: int
    cv: CVScore | None = None
    grid: dict = field(default_factory=dict)
    out_of_fold: np.ndarray | None = None
    reason: str = ""

    @property
    def num_classes(self) -> int:
        return self.kernel.shape[1]

    def logits(self, features) -> np.ndarray:
        return np.asarray(features, "float64") @ self.kernel + self.bias

    def predict_proba(self, features) -> np.ndarray:
        z = self.logits(features)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def write(self, layer) -> None:
        """Set a built ``Dense(num_classes, softmax)`` layer's kernel and bias to the probe."""
        kernel, bias = layer.get_weights()[:2] if layer.use_bias else (None, None)
        if kernel is None:
            raise ValueError(f"layer {layer.name!r} has no bias; the probe needs one.")
        if kernel.shape != self.kernel.shape:
            raise ValueError(
                f"layer {layer.name!r} has a kernel of shape {kernel.shape}; the probe's is "
                f"{self.kernel.shape}. Received: a layer that does not fit the features."
            )
        layer.set_weights([self.kernel.astype(kernel.dtype), self.bias.astype(bias.dtype)])

    def line(self) -> str:
        head = f"linear probe: C={self.C:g} {self.reason}"
        if self.cv is not None:
            head += f": accuracy {self.cv.text()}"
        return f"{head}; refit on all {self.n_train} labelled images"

    def as_dict(self) -> dict:
        """For ``metrics.json``: the chosen C, its score and the grid."""
        return {
            "C": self.C,
            "reason": self.reason,
            "n_train": self.n_train,
            "cv": None if self.cv is None else self.cv.as_dict(),
            "grid": {f"{c:g}": s.as_dict() for c, s in self.grid.items()},
        }


def fit_probe(
    features,
    labels,
    folds=None,
    *,
    num_classes: int | None = None,
    C: float | None = None,
    grid: tuple[float, ...] = C_GRID,
    seed: int = 0,
) -> Probe:
    """Solve the linear head on ``features``; choose ``C`` by ``folds``; refit on all.

    Args:
        features: ``(images, features)`` array.
        labels: Integer class per image in ``[0, num_classes)``.
        folds: A :class:`graft.data.folds.Folds` (or ``None``); without splits, ``C`` is
            :data:`DEFAULT_C` (unless given).
        num_classes: Outputs of the head (default: ``max(labels) + 1``); classes without
            images get a zero kernel column and a very low bias.
        C: A fixed L2 strength (no search; the folds still give its score).
        grid: The ``C`` values searched.
        seed: Seed of the solver (L-BFGS is deterministic; kept for completeness).

    Returns:
        A :class:`Probe` fitted on every row of ``features``.
    """
    x = np.asarray(features, "float64").reshape(len(features), -1)
    y = np.asarray(labels).astype("int64")
    num_classes = int(num_classes or y.max() + 1)
    splits = getattr(folds, "splits", ()) or ()
    candidates = (C,) if C is not None else tuple(grid)
    scored: dict[float, CVScore] = {}
    oof: dict[float, np.ndarray | None] = {}
    if splits:
        with small_blas(x):
            designs = fold_designs(x, splits)
            for c in candidates:
                scored[c], oof[c] = cross_validate(x, y, splits, c, num_classes, seed, designs)
    if C is not None:
        chosen, reason = float(C), "given"
    elif scored:
        # Best mean accuracy; ties (common on few images) go to the lower log-loss.
        chosen = max(scored, key=lambda c: (round(scored[c].mean, 9), -scored[c].log_loss))
        reason = f"chosen by {_protocol(folds)} over {len(candidates)} values"
    else:
        chosen, reason = DEFAULT_C, "by default (nothing to cross-validate)"
    with small_blas(x):
        kernel, bias = _solve(x, y, chosen, num_classes, seed)
    cross = getattr(folds, "kind", "") == "kfold"
    return Probe(
        C=float(chosen),
        kernel=kernel,
        bias=bias,
        n_train=len(y),
        cv=scored.get(chosen),
        grid=scored,
        out_of_fold=oof.get(chosen) if cross else None,
        reason=reason,
    )


def cross_validate(
    x, y, splits, C: float, num_classes: int, seed: int = 0, designs: list | None = None
):
    """``(CVScore, out_of_fold_probabilities)`` of the probe at ``C`` over ``splits``.

    Out-of-fold probabilities average the repeats (``None`` if a row was never validated).
    ``designs``: :func:`fold_designs` of ``x`` over ``splits``, when several ``C`` share them.
    """
    accuracies, losses = [], []
    total = np.zeros((len(y), num_classes))
    seen = np.zeros(len(y))
    designs = designs or [None] * len(splits)
    for (train_idx, val_idx), design in zip(splits, designs):
        kernel, bias = _solve(x[train_idx], y[train_idx], C, num_classes, seed, design)
        z = x[val_idx] @ kernel + bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        accuracies.append(float(np.mean(p.argmax(1) == y[val_idx])))
        losses.append(
            float(-np.mean(np.log(np.clip(p[np.arange(len(val_idx)), y[val_idx]], 1e-12, 1))))
        )
        total[val_idx] += p
        seen[val_idx] += 1
    score = CVScore(
        float(np.mean(accuracies)),
        float(np.std(accuracies)),
        tuple(accuracies),
        float(np.mean(losses)),
    )
    oof = total / seen[:, None] if seen.all() else None
    return score, oof


def small_blas(x: np.ndarray):
    """One BLAS thread for a small problem: L-BFGS on a few hundred rows is dominated by
    thread start-up and contention (measured 50x slower with the default threads on a busy
    two-core machine: 14.5 s vs 0.29 s for 48 x 2048 features)."""
    if x.size > SMALL_PROBLEM:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


@dataclass(frozen=True, eq=False)
class Design:
    """Training rows made ready for the solver, once for every ``C``.

    The rows are standardised (``mean``, ``scale``: as ``StandardScaler`` does). With fewer
    rows than features (a linear probe on 50 images of 8,192 features), the solver works in
    the span of the rows instead (``coords = z @ basis``, ``basis``: its orthonormal
    ``(features, rank)`` basis from the SVD of ``z``): the L2 penalty and the logits of the
    training rows are the same there, every gradient of the problem lies in that span, and
    L-BFGS only combines gradients, so its iterates are the original problem's, rotated
    (the representer theorem, as a kernel machine's Gram matrix ``z @ z.T`` would give).
    Only the stopping test (the largest gradient component) reads other coordinates.
    The solve then costs ``rank`` instead of ``features`` per iteration.
    """

    mean: np.ndarray
    scale: np.ndarray
    coords: np.ndarray
    basis: np.ndarray | None = None

    @classmethod
    def of(cls, x: np.ndarray) -> Design:
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-12] = 1.0  # constant features: as StandardScaler does
        z = (x - mean) / scale
        if z.shape[0] >= z.shape[1]:
            return cls(mean, scale, z)
        u, s, vt = np.linalg.svd(z, full_matrices=False)
        keep = s > s[0] * 1e-10
        keep[0] = True  # all-constant rows: one (zero) coordinate
        return cls(mean, scale, u[:, keep] * s[keep], vt[keep].T)

    def kernel(self, w: np.ndarray) -> np.ndarray:
        """A kernel over the solver's coordinates as one over the *raw* features."""
        if self.basis is not None:
            w = self.basis @ w
        return w / self.scale[:, None]


def fold_designs(x: np.ndarray, splits) -> list[Design]:
    """The :class:`Design` of every split's training rows (shared by every ``C``)."""
    return [Design.of(x[train_idx]) for train_idx, _ in splits]


def _solve(
    x: np.ndarray,
    y: np.ndarray,
    C: float,
    num_classes: int,
    seed: int,
    design: Design | None = None,
):
    """Standardise, solve with L-BFGS, fold the standardisation into kernel and bias."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    design = design or Design.of(x)
    classes = np.unique(y)
    kernel = np.zeros((x.shape[1], num_classes))
    bias = np.full(num_classes, _ABSENT_BIAS)
    if len(classes) == 1:  # one class present: it gets every image
        bias[classes[0]] = 0.0
        return kernel, bias
    model = LogisticRegression(C=C, solver="lbfgs", max_iter=MAX_ITER, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(design.coords, y)
    w, b = model.coef_.T, model.intercept_
    if len(classes) == 2:  # binary: one logit; softmax over (-l/2, l/2) gives the sigmoid
        w = np.concatenate([-w / 2, w / 2], axis=1)
        b = np.array([-b[0] / 2, b[0] / 2])
    w_raw = design.kernel(w)
    kernel[:, classes] = w_raw
    bias[classes] = b - design.mean @ w_raw
    return kernel, bias


def _protocol(folds) -> str:
    if getattr(folds, "kind", "") == "kfold":
        return f"{folds.k}-fold CV x{folds.repeats}"
    return "hold-out"
