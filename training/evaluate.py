"""Evaluation per task, and the one figure the gate and the monitor compare."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm

from driftloop.models.schema import plain_label, same_label


# How precision, recall and f1 average over classes: the unweighted mean of each class's figure,
# so a rare class counts as much as a common one (two classes too: both, not the positive one alone).
AVERAGE = "macro"


def averages(task: str, n_labels: int) -> dict[str, str]:
    """Which average each averaged metric of :func:`classification_metrics` is, for ``n_labels``
    classes: recorded beside a version's metrics (``metadata["evaluation"]["averages"]``) so that
    ``models diff`` names it and never sets a macro figure against a weighted one. ``roc_auc`` is
    ``binary`` (the second label's probability) for two classes, else ``macro_ovr`` (one-vs-rest,
    macro-averaged). Other tasks average nothing."""
    if task != "classification":
        return {}
    return {"precision": AVERAGE, "recall": AVERAGE, "f1": AVERAGE,
            "roc_auc": "binary" if n_labels == 2 else f"{AVERAGE}_ovr"}


def classification_metrics(y_true: Any, y_pred: Any, proba: np.ndarray | None,
                           labels: list[Any]) -> dict[str, float]:
    """The classifier's figures on these rows; the averaged ones as :func:`averages` names them."""
    out = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(skm.precision_score(y_true, y_pred, average=AVERAGE, zero_division=0)),
        "recall": float(skm.recall_score(y_true, y_pred, average=AVERAGE, zero_division=0)),
        "f1": float(skm.f1_score(y_true, y_pred, average=AVERAGE, zero_division=0)),
    }
    if proba is not None and len(set(np.asarray(y_true).tolist())) > 1:
        if len(labels) == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y_true, proba[:, 1]))
        else:
            out["roc_auc"] = float(skm.roc_auc_score(y_true, proba, multi_class="ovr", average=AVERAGE,
                                                         labels=labels))
        out["log_loss"] = float(skm.log_loss(y_true, proba, labels=labels))
    if proba is not None and len(y_true) > 0 and np.shape(proba)[-1] == len(labels):
        figures = calibration(y_true, proba, labels)
        out["ece"], out["brier"] = figures["ece"], figures["brier"]
    return out


def calibration(y_true: Any, proba: np.ndarray, labels: list[Any], bins: int = 10) -> dict[str, Any]:
    """How far the classifier's probabilities can be taken at their word.

    ``proba``'s columns are in the order of ``labels``. Returns

    - ``ece``: expected calibration error of the top-label confidence (the largest probability
      of a row) against accuracy, over ``bins`` equal-width bins of [0, 1]: the row-weighted
      mean of ``|accuracy - mean confidence|`` per bin. 0 is perfectly calibrated.
    - ``brier``: the Brier score. Binary: ``mean((y == labels[1]) - p1)^2``, in [0, 1];
      multi-class: the squared distance between the one-hot label and the probability row,
      summed over classes and averaged over rows, in [0, 2] (scikit-learn's convention).
    - ``bins``: one row per bin, for a reliability diagram: ``lower``, ``upper`` (bin edges;
      each bin holds ``lower <= confidence < upper``, the last one also 1.0), ``confidence``
      (mean), ``accuracy`` and ``count``; confidence and accuracy are None in an empty bin.
    """
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=float)
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if p.ndim != 2 or p.shape != (len(y), len(labels)):
        raise ValueError(f"proba has shape {p.shape}; expected ({len(y)}, {len(labels)}): "
                         "one row per label and one column per class")
    if len(y) == 0:
        raise ValueError("calibration needs at least one row")
    onehot = (y[:, None] == np.asarray(labels, dtype=object)[None, :]).astype(float)
    if len(labels) == 2:
        brier = float(np.mean((onehot[:, 1] - p[:, 1]) ** 2))
    else:
        brier = float(np.mean(np.sum((onehot - p) ** 2, axis=1)))

    top = p.argmax(axis=1)
    confidence = p[np.arange(len(y)), top]
    correct = onehot[np.arange(len(y)), top]
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        in_bin = which == b
        count = int(in_bin.sum())
        row: dict[str, Any] = {"lower": float(edges[b]), "upper": float(edges[b + 1]),
                               "confidence": None, "accuracy": None, "count": count}
        if count:
            row["confidence"] = float(confidence[in_bin].mean())
            row["accuracy"] = float(correct[in_bin].mean())
            ece += count / len(y) * abs(row["accuracy"] - row["confidence"])
        table.append(row)
    return {"ece": float(ece), "brier": brier, "bins": table}


def confidence_calibration(y_true: Any, proba: np.ndarray, labels: list[Any]) -> dict[str, Any]:
    """How a classifier's top-class confidence maps to the chance it is right, learnt on rows it
    did not train on (the validation split): an isotonic regression of "correct" on confidence.

    Returned as its breakpoints (``x`` confidence, ``y`` probability correct, both ascending) so
    it is stored in a version's metadata as JSON and applied with :func:`estimate_accuracy`.
    The mean mapped confidence of a window estimates its accuracy before labels arrive
    (confidence-based performance estimation). It holds under covariate shift, where the model's
    confidence still means what it meant; a change of concept leaves confidence unchanged, so only
    labels show it.
    """
    from sklearn.isotonic import IsotonicRegression

    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape != (len(y_true), len(labels)) or len(labels) < 2:
        raise ValueError(f"proba has shape {p.shape}; expected ({len(y_true)}, {len(labels)}) with 2+ classes")
    top = p.argmax(axis=1)
    confidence = p[np.arange(len(p)), top]
    correct = (np.asarray(plain_labels(y_true), dtype=object) == np.asarray(labels, dtype=object)[top]).astype(float)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(confidence, correct)
    return {"method": "isotonic", "x": [round(float(v), 6) for v in iso.X_thresholds_],
            "y": [round(float(v), 6) for v in iso.y_thresholds_], "rows": int(len(p))}


def estimate_accuracy(calibration: dict[str, Any] | None, confidence: Any) -> float | None:
    """Expected accuracy of rows with these top-class confidences: the mean of their calibrated
    chance of being right (:func:`confidence_calibration`); the plain mean confidence when the
    version has no calibration (older versions). None without rows."""
    c = np.asarray(confidence, dtype=float)
    c = c[np.isfinite(c)]
    if c.size == 0:
        return None
    if not calibration or not calibration.get("x"):
        return float(c.mean())
    return float(np.interp(c, calibration["x"], calibration["y"]).mean())


def confusion_matrix(y_true: Any, y_pred: Any, labels: list[Any]) -> list[list[int]]:
    """Counts, ``matrix[i][j]``: rows whose true label is ``labels[i]``, predicted ``labels[j]``.
    Rows whose true or predicted label is not in ``labels`` are not counted."""
    index = {label: i for i, label in enumerate(plain_labels(labels))}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(plain_labels(y_true), plain_labels(y_pred), strict=True):
        i, j = index.get(t), index.get(p)
        if i is not None and j is not None:
            matrix[i, j] += 1
    return matrix.tolist()


def residual_summary(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Summary of the residuals ``y_true - y_pred`` (positive: the model predicted too low)."""
    residuals = np.asarray(y_true, dtype=float) - np.asarray(y_pred, dtype=float)
    if residuals.size == 0:
        raise ValueError("residual_summary needs at least one row")
    q = np.quantile(residuals, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"count": float(residuals.size), "mean": float(residuals.mean()), "std": float(residuals.std()),
            "min": float(residuals.min()), "p05": float(q[0]), "p25": float(q[1]), "median": float(q[2]),
            "p75": float(q[3]), "p95": float(q[4]), "max": float(residuals.max()),
            "mean_abs": float(np.abs(residuals).mean())}


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    mse = float(skm.mean_squared_error(y_true, y_pred))
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(skm.mean_absolute_error(y_true, y_pred)),
            "r2": float(skm.r2_score(y_true, y_pred))}


def errors(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Regression predictions against their labels, as the monitor measures a window: ``rmse``,
    ``mae``, and the squared errors' mean (``mse``) and standard deviation (``squared_error_std``,
    population) over ``rows``. The decay test compares a window's squared errors with the
    champion's validation rows' (their mean and spread go in a version's metadata at training:
    ``squared_errors``); a mean alone cannot say whether a rise is noise."""
    e = np.asarray(y_pred, dtype=float) - np.asarray(y_true, dtype=float)
    if e.size == 0:
        raise ValueError("errors needs at least one labelled row")
    squared = e ** 2
    mse = float(squared.mean())
    return {"rmse": float(np.sqrt(mse)), "mae": float(np.abs(e).mean()), "mse": mse,
            "squared_error_std": float(squared.std()), "rows": int(e.size)}


def clustering_metrics(distances: np.ndarray) -> dict[str, float]:
    """From each row's distances to every centre (the graph's own output, so comparable between
    versions whatever their scaling): how far rows sit from their centre, and ``separation``,
    the simplified silhouette ``mean((d2 - d1) / d2)`` with d1, d2 the nearest and second
    nearest centres (1: every row right on a centre and far from the next; 0: undecided)."""
    d = np.sort(np.asarray(distances, dtype=float), axis=1)
    nearest = d[:, 0]
    second = d[:, 1] if d.shape[1] > 1 else d[:, 0]
    separation = np.where(second > 0, (second - nearest) / np.where(second > 0, second, 1.0), 0.0)
    return {"separation": float(separation.mean()), "mean_distance": float(nearest.mean()),
            "inertia": float(np.mean(nearest ** 2)), "clusters_used": float(len(np.unique(d.argmin(axis=1))))}


def anomaly_metrics(flags: Any, scores: np.ndarray, expected_rate: float) -> dict[str, float]:
    """How many rows are flagged against how many the model is meant to flag (``rate_error``,
    what the gate compares without labels), and the score distribution."""
    rate = float(np.mean(np.asarray(flags, dtype=float)))
    s = np.asarray(scores, dtype=float).reshape(-1)
    return {"anomaly_rate": rate, "rate_error": abs(rate - expected_rate), "expected_rate": expected_rate,
            "score_mean": float(s.mean()), "score_p95": float(np.quantile(s, 0.95))}


def score(task: str, y_true: Any, y_pred: Any, proba: np.ndarray | None = None,
          labels: list[Any] | None = None, *, scores: np.ndarray | None = None,
          expected_anomaly_rate: float = 0.05) -> dict[str, float]:
    """The metrics of ``task``; unsupervised tasks need no ``y_true`` but the graph's ``scores``."""
    if task == "classification":
        return classification_metrics(y_true, y_pred, proba, labels or sorted(set(np.asarray(y_true).tolist())))
    if task == "clustering":
        return clustering_metrics(scores)
    if task == "anomaly":
        return anomaly_metrics(y_pred, scores, expected_anomaly_rate)
    return regression_metrics(y_true, y_pred)


def primary(task: str) -> tuple[str, bool]:
    """The metric the gate compares, and whether higher is better."""
    return {"classification": ("accuracy", True), "regression": ("rmse", False),
            "clustering": ("separation", True), "anomaly": ("rate_error", False)}[task]


def plain_labels(values: Any) -> list[Any]:
    """Python scalars (``np.int64(1)`` -> ``1``, ``1.0`` -> ``1``), so labels compare and
    serialise as themselves (:func:`driftloop.models.schema.plain_label`)."""
    return [plain_label(v) for v in values]


def logged_score(task: str, predictions: Any, labels: Any) -> float:
    """The primary metric of served predictions against the labels that arrived for them
    (accuracy or RMSE): what the monitor's windows and the shadow judge measure on logged rows.
    Served ``1`` and a label ``1.0`` are the same class."""
    if task == "classification":
        pairs = list(zip(predictions, labels, strict=True))
        return float(sum(same_label(p, y) for p, y in pairs) / len(pairs)) if pairs else float("nan")
    if task == "regression":
        errors = np.asarray(predictions, dtype=float) - np.asarray(labels, dtype=float)
        return float(np.sqrt((errors ** 2).mean())) if len(errors) else float("nan")
    raise ValueError(f"task {task!r} has no labels to score served predictions against")


def gain(task: str, candidate: float, champion: float) -> float:
    """How much better ``candidate`` scores than ``champion`` on the task's primary metric
    (positive: better, whichever way the metric points)."""
    _, higher_is_better = primary(task)
    return (candidate - champion) * (1 if higher_is_better else -1)


def beats(task: str, candidate: float, champion: float, margin: float) -> bool:
    """The promotion rule, for the retrain gate and the shadow judge alike: the candidate's primary
    metric is better than the champion's by at least ``margin`` (``retraining.margin``)."""
    return gain(task, candidate, champion) >= margin


@dataclass(frozen=True)
class Comparison:
    """A candidate against the champion on the same labelled rows: each one's primary metric, and
    a one-sided paired test of "the candidate is better" (``p_value``).

    Classification: McNemar's exact test on the rows exactly one of the two got right (under "no
    difference", the candidate is the one right on each such row with probability 1/2).
    Regression: a paired t-test on the per-row difference of squared errors (champion's minus
    candidate's). Both ask whether the difference could be noise on this many rows; the margin
    asks whether it is worth a swap. :attr:`passed` needs both.
    """

    task: str
    metric: str
    candidate: float
    champion: float
    rows: int
    margin: float
    significance: float  # the test's one-sided level (``retraining.significance``; 1.0: no test)
    test: str  # mcnemar_exact | paired_t_squared_error
    p_value: float
    candidate_only: int | None = None  # classification: rows only the candidate got right
    champion_only: int | None = None  # ...and only the champion
    tolerance: float = 0.0  # > 0: a non-inferiority test, "the candidate is not worse by this much"

    @property
    def gain(self) -> float:
        return gain(self.task, self.candidate, self.champion)

    @property
    def margin_passed(self) -> bool:
        return self.gain >= self.margin

    @property
    def significant(self) -> bool:
        return self.p_value <= self.significance

    @property
    def passed(self) -> bool:
        return self.margin_passed and self.significant

    def describe(self) -> str:
        """The test's figures, for reasons and the audit trail."""
        rows = (f"{self.candidate_only} rows only the candidate got right, {self.champion_only} only the champion"
                if self.candidate_only is not None else f"{self.rows} rows")
        what = f"not worse by {self.tolerance:g}: " if self.tolerance else ""
        return f"{what}one-sided p {self.p_value:.4f} (significance {self.significance:g}; {self.test}: {rows})"

    def to_dict(self) -> dict[str, Any]:
        return {"test": self.test, "p_value": self.p_value, "significance": self.significance,
                "significant": self.significant, "candidate_only": self.candidate_only,
                "champion_only": self.champion_only, "tolerance": self.tolerance}


MCNEMAR, PAIRED_T = "mcnemar_exact", "paired_t_squared_error"
NONINFERIOR_MCNEMAR, NONINFERIOR_T = "paired_proportions_noninferiority", "paired_t_squared_error_noninferiority"


def compare(task: str, labels: Any, champion: Any, candidate: Any, *, margin: float,
            significance: float, tolerance: float = 0.0) -> Comparison:
    """Candidate and champion predictions on the same rows against their labels: the promotion
    rule of the retrain gate and the shadow judge (see :class:`Comparison`).

    ``tolerance`` > 0 asks another question: not "is the candidate better?" but "is it not worse
    by ``tolerance`` or more?" (non-inferiority; accuracy points, or a share of the champion's
    MSE). That is the question for a follow-up retrain (monitoring/follow_up.py): it learns a
    superset of its champion's rows from the same world, so more data is expected to help, and a
    gain of a point cannot be shown on a few hundred held-out rows; what the gate must stop is
    a follow-up that is worse. Classification: the paired difference of proportions with its
    standard error from the discordant rows (normal approximation); regression: a paired t-test
    on the squared errors' difference plus ``tolerance`` times the champion's MSE."""
    from scipy import stats

    metric, _ = primary(task)
    labels, champion, candidate = list(labels), list(champion), list(candidate)
    n = len(labels)
    if task == "classification":
        right_champion = np.array([same_label(p, y) for p, y in zip(champion, labels, strict=True)], dtype=bool)
        right_candidate = np.array([same_label(p, y) for p, y in zip(candidate, labels, strict=True)], dtype=bool)
        only_candidate = int(np.sum(right_candidate & ~right_champion))
        only_champion = int(np.sum(right_champion & ~right_candidate))
        discordant = only_candidate + only_champion
        if tolerance > 0:
            d = (only_candidate - only_champion) / n if n else 0.0
            var = (discordant / n - d ** 2) / n if n else 0.0
            p = (float(stats.norm.sf((d + tolerance) / np.sqrt(var))) if var > 0
                 else (0.0 if n and d + tolerance > 0 else 1.0))
        else:
            p = float(stats.binom.sf(only_candidate - 1, discordant, 0.5)) if discordant else 1.0
        return Comparison(task, metric, float(right_candidate.mean()) if n else float("nan"),
                          float(right_champion.mean()) if n else float("nan"), n, margin, significance,
                          NONINFERIOR_MCNEMAR if tolerance > 0 else MCNEMAR, p, only_candidate, only_champion,
                          tolerance)
    if task == "regression":
        y = np.asarray(labels, dtype=float)
        err_champion = (np.asarray(champion, dtype=float) - y) ** 2
        err_candidate = (np.asarray(candidate, dtype=float) - y) ** 2
        diff = err_champion - err_candidate + (tolerance * float(err_champion.mean()) if n else 0.0)
        if n < 2 or not np.any(diff):
            p = 1.0
        elif np.allclose(diff, diff[0]):  # no spread: the sign alone decides
            p = 0.0 if diff[0] > 0 else 1.0
        else:
            p = float(stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue)
        rmse = (lambda e: float(np.sqrt(e.mean())) if n else float("nan"))
        return Comparison(task, metric, rmse(err_candidate), rmse(err_champion), n, margin, significance,
                          NONINFERIOR_T if tolerance > 0 else PAIRED_T, p, tolerance=tolerance)
    raise ValueError(f"task {task!r} has no labels: its candidates are judged by the margin alone")
