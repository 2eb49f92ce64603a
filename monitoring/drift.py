"""Data drift with Evidently 0.7: a window of logged inputs against the champion's reference.

One :func:`check_drift` call runs ``Report([DataDriftPreset()], include_tests=True)`` with the
column types from the model's feature schema and returns, per feature, the method Evidently
chose, its score, threshold and verdict (the verdict is Evidently's own test status), plus
the share of drifted features. The snapshot is kept so the caller can save the HTML report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from models.schema import FeatureSchema

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


def _frame(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    out = pd.DataFrame(index=range(len(frame)))
    for feat in schema.features:
        col = frame[feat.name].reset_index(drop=True)
        out[feat.name] = pd.to_numeric(col).astype(float) if feat.kind == "numeric" else col.astype(str)
    return out


def check_drift(reference: pd.DataFrame, current: pd.DataFrame, schema: FeatureSchema) -> DriftResult:
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's telemetry: never phone home
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=schema.numeric, categorical_columns=schema.categorical)
    ref = Dataset.from_pandas(_frame(reference, schema), data_definition=definition)
    cur = Dataset.from_pandas(_frame(current, schema), data_definition=definition)
    snapshot = Report([DataDriftPreset()], include_tests=True).run(cur, ref)
    columns = _columns(snapshot.dict())
    drifted = [name for name in schema.names if columns.get(name, {}).get("drifted")]
    return DriftResult(len(drifted) / len(schema.names), drifted, columns, snapshot)


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
