"""Importance weights for covariate shift: learn from the old labels as if they came from the new inputs.

When the inputs move but the rule from inputs to label does not (covariate shift), the initial
labelled data still holds the right answers; it only over-represents the old population. Weighting
each initial row by ``w(x) = p_live(x) / p_train(x)`` makes its weighted distribution the live one,
with no live label needed. The density ratio comes from a *domain classifier* that tells initial
rows (0) from live rows (1), labelled or not, on the model's preprocessed features (the families'
:func:`~models.families.preprocessor`: numeric features scaled, categorical ones one-hot encoded)
with a logistic regression: by Bayes,

    w(x) = P(live | x) / P(initial | x) * n_initial / n_live,

scaled to mean 1 and clipped to ``retraining.max_weight`` (a few rows must not carry the whole fit; the
scale is chosen so that the clipped weights still average 1).
The summary records the mean, min and max, how many were clipped, the domain classifier's in-sample
ROC AUC (0.5: no shift to correct) and the effective sample size ``(sum w)^2 / sum w^2``: how
many unweighted rows the weighted ones are worth; a small one means the live inputs lie where the
initial data has few rows, which no weighting can fix.

Only tabular features: image and sequence networks are refused (:class:`ConfigError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from driftloop.models.errors import ConfigError
from driftloop.models.families import preprocessor
from driftloop.models.schema import FeatureSchema


@dataclass(frozen=True)
class ImportanceWeights:
    values: np.ndarray  # one per initial row, mean 1
    live_rows: int  # live rows the domain classifier saw
    clipped: int  # weights cut down to max_weight
    domain_auc: float  # in-sample ROC AUC of the domain classifier

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures for the candidate's metadata and the retrain outcome."""
        w = self.values
        ess = float(w.sum() ** 2 / np.square(w).sum())
        return {"rows": int(len(w)), "live_rows": self.live_rows, "mean": round(float(w.mean()), 6),
                "min": round(float(w.min()), 6), "max": round(float(w.max()), 6), "clipped": self.clipped,
                "ess": round(ess, 1), "ess_share": round(ess / len(w), 4), "domain_auc": round(self.domain_auc, 4)}


def importance_weights(schema: FeatureSchema, initial: pd.DataFrame, live: pd.DataFrame, max_weight: float,
                       seed: int) -> ImportanceWeights:
    """Weights of ``initial``'s rows that make them look like ``live``'s (see the module docstring)."""
    if schema.media:
        raise ConfigError(f"retraining.strategy: reweighted needs tabular features; {schema.media[0].name!r} is "
                          f"an {schema.media[0].kind}")
    if initial.empty or live.empty:
        raise ValueError(f"importance weights need initial and live rows ({len(initial)}, {len(live)} given)")
    x = pd.concat([initial[schema.names], live[schema.names]], ignore_index=True)
    domain = np.r_[np.zeros(len(initial)), np.ones(len(live))]
    classifier = Pipeline([("pre", preprocessor(schema)),
                           ("model", LogisticRegression(max_iter=1000, random_state=seed))]).fit(x, domain)
    p_live = classifier.predict_proba(x)[:, 1]
    p = np.clip(p_live[:len(initial)], 1e-6, 1 - 1e-6)
    w = p / (1 - p) * len(initial) / len(live)
    w = _clip_to_mean_one(w, max_weight)
    return ImportanceWeights(w, len(live), int((w >= max_weight).sum()), float(roc_auc_score(domain, p_live)))


def _clip_to_mean_one(w: np.ndarray, max_weight: float) -> np.ndarray:
    """``min(c * w, max_weight)`` with the scale ``c`` that makes the mean 1 (found by bisection:
    the mean grows with ``c``), so the weights end both clipped and normalised."""
    low, high = 0.0, max_weight / max(float(w.min()), 1e-12)  # at ``high`` every weight is clipped: mean > 1
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if np.minimum(mid * w, max_weight).mean() < 1.0 else (low, mid)
    return np.minimum(high * w, max_weight)


def weighted_metric(task: str, y_true: Any, y_pred: Any, weights: np.ndarray) -> float:
    """The gate's primary metric (:func:`training.evaluate.primary`) with row weights:
    accuracy (classification) or RMSE (regression)."""
    w = np.asarray(weights, dtype=np.float64)
    if task == "classification":
        right = np.asarray([a == b for a, b in zip(np.asarray(y_true).tolist(), np.asarray(y_pred).tolist())])
        return float(np.average(right, weights=w))
    if task == "regression":
        err = np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64)
        return float(np.sqrt(np.average(np.square(err), weights=w)))
    raise ConfigError(f"retraining.strategy: reweighted needs labels; task {task!r} has none")
