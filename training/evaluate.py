"""Evaluation per task, and the one figure the gate and the monitor compare."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm


def classification_metrics(y_true: Any, y_pred: Any, proba: np.ndarray | None,
                           labels: list[Any]) -> dict[str, float]:
    out = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(skm.precision_score(y_true, y_pred, average="macro", zero_division=0)),
        "recall": float(skm.recall_score(y_true, y_pred, average="macro", zero_division=0)),
        "f1": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }
    if proba is not None and len(set(np.asarray(y_true).tolist())) > 1:
        if len(labels) == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y_true, proba[:, 1]))
        else:
            out["roc_auc"] = float(skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=labels))
        out["log_loss"] = float(skm.log_loss(y_true, proba, labels=labels))
    return out


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    mse = float(skm.mean_squared_error(y_true, y_pred))
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(skm.mean_absolute_error(y_true, y_pred)),
            "r2": float(skm.r2_score(y_true, y_pred))}


def score(task: str, y_true: Any, y_pred: Any, proba: np.ndarray | None = None,
          labels: list[Any] | None = None) -> dict[str, float]:
    if task == "classification":
        return classification_metrics(y_true, y_pred, proba, labels or sorted(set(np.asarray(y_true).tolist())))
    return regression_metrics(y_true, y_pred)


def primary(task: str) -> tuple[str, bool]:
    """The metric the gate compares, and whether higher is better."""
    return ("accuracy", True) if task == "classification" else ("rmse", False)
