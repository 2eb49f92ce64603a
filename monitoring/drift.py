"""Data drift with Evidently 0.7: a window of logged inputs against the champion's reference.

One :func:`check_drift` call runs ``Report([DataDriftPreset()], include_tests=True)`` with the
column types from the model's feature schema and returns, per feature, the method Evidently
chose, its score, threshold and verdict (the verdict is Evidently's own test status), plus
the share of drifted features. Images and sequences are compared through a few summary
columns (:func:`summarise`); drift on a network's embeddings is the next step. The snapshot is
kept so the caller can save the HTML report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.schema import MEDIA_KINDS, FeatureSchema, as_array

# stattests whose score is a p-value (drift when score < threshold); the rest are distances.
_PVALUE_METHODS = {"K-S p_value", "chi-square p_value", "Z-test p_value", "Anderson-Darling", "Cramer-von Mises",
                   "Epps-Singleton", "Fisher's Exact test", "g_test", "Mann-Whitney U-rank test", "t_test",
                   "empirical_mmd", "Total-Variation-Distance", "ks", "chisquare", "z", "anderson",
                   "cramer_von_mises", "es", "fisher_exact", "mannw", "TVD"}


@dataclass(frozen=True)
class DriftResult:
    share: float  # drifted features / features
    drifted: list[str]
    columns: dict[str, dict[str, Any]]  # feature -> {method, score, threshold, drifted}
    snapshot: Any  # evidently Snapshot (save_html, json)

    def save_html(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.snapshot.save_html(str(path))
        return path


def summarise(values: pd.Series, kind: str, name: str) -> pd.DataFrame:
    """Images and sequences as a few numeric columns Evidently can compare: an image's mean
    intensity (brightness), spread (noise, contrast) and centre of mass (rotation, shift); a
    sequence's mean and spread per channel."""
    arrays = np.stack([as_array(v, np.float64) for v in values])
    if kind == "image":
        total = arrays.sum(axis=(1, 2))
        safe = np.where(total > 0, total, 1.0)
        rows = np.arange(arrays.shape[1])[None, :, None]
        cols = np.arange(arrays.shape[2])[None, None, :]
        return pd.DataFrame({
            f"{name}.mean": arrays.mean(axis=(1, 2)),
            f"{name}.std": arrays.std(axis=(1, 2)),
            f"{name}.row_centre": (arrays * rows).sum(axis=(1, 2)) / safe,
            f"{name}.col_centre": (arrays * cols).sum(axis=(1, 2)) / safe,
        })
    out = {}
    for c in range(arrays.shape[2]):
        out[f"{name}.ch{c}.mean"] = arrays[:, :, c].mean(axis=1)
        out[f"{name}.ch{c}.std"] = arrays[:, :, c].std(axis=1)
    return pd.DataFrame(out)


def _frame(frame: pd.DataFrame, schema: FeatureSchema) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The columns Evidently compares, and which of them are numeric and categorical."""
    parts, numeric, categorical = [], [], []
    for feat in schema.features:
        col = frame[feat.name].reset_index(drop=True)
        if feat.kind in MEDIA_KINDS:
            summary = summarise(col, feat.kind, feat.name)
            parts.append(summary)
            numeric += list(summary.columns)
        elif feat.kind == "numeric":
            parts.append(pd.to_numeric(col).astype(float).rename(feat.name).to_frame())
            numeric.append(feat.name)
        else:
            parts.append(col.astype(str).rename(feat.name).to_frame())
            categorical.append(feat.name)
    return pd.concat(parts, axis=1), numeric, categorical


def check_drift(reference: pd.DataFrame, current: pd.DataFrame, schema: FeatureSchema) -> DriftResult:
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's telemetry: never phone home
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    ref_frame, numeric, categorical = _frame(reference, schema)
    cur_frame, _, _ = _frame(current, schema)
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    ref = Dataset.from_pandas(ref_frame, data_definition=definition)
    cur = Dataset.from_pandas(cur_frame, data_definition=definition)
    snapshot = Report([DataDriftPreset()], include_tests=True).run(cur, ref)
    columns = _columns(snapshot.dict())
    names = list(ref_frame.columns)
    drifted = [name for name in names if columns.get(name, {}).get("drifted")]
    return DriftResult(len(drifted) / len(names), drifted, columns, snapshot)


def _columns(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    status = {t["metric_config"]["metric_id"]: t["status"] for t in result.get("tests", []) if t.get("id") == "drift"}
    out: dict[str, dict[str, Any]] = {}
    for metric in result["metrics"]:
        cfg = metric["config"]
        if not cfg.get("type", "").endswith(":ValueDrift"):
            continue
        score, method, threshold = float(metric["value"]), cfg.get("method"), cfg.get("threshold")
        if metric["id"] in status:
            drifted = status[metric["id"]] == "FAIL"
        elif method in _PVALUE_METHODS:
            drifted = score < threshold
        else:
            drifted = score >= threshold
        out[cfg["column"]] = {"method": method, "score": round(score, 6), "threshold": threshold,
                              "drifted": bool(drifted)}
    return out
