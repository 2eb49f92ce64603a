"""What a window is measured against: each model version's record, expected accuracy (or error),
confidence calibration and drift reference, read from the registry once per version.

The window check, the early warning and a restarted monitor's policy all ask the same questions
of the champion ("what should it reach live?", "what does its confidence say?"); this is the one
place that answers them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from driftloop.models.registry import ModelVersion, Registry
from driftloop.monitoring.drift import DriftBaseline
from driftloop.monitoring.policy import Sample, WindowStats, pool
from driftloop.training.evaluate import estimate_accuracy
from driftloop.vocabulary import Check

if TYPE_CHECKING:
    from driftloop.settings import DriftConfig


@dataclass(frozen=True)
class OutsideTraining:
    """A window's rows against the champion's training data (:meth:`Baselines.outside_training`)."""

    share: float | None  # of the champion's rows, with any value outside: checks.unfamiliar_share, the policy's
    # per judged feature: {"rows": n, "below": n, "above": n} (numeric) or {"rows": n, "unseen": n} (categorical)
    counts: dict[str, dict[str, int]]


class Baselines:
    """The registry's versions as the monitor measures against them (``monitoring.drift``: the
    drift methods of the reference each window is compared with)."""

    def __init__(self, registry: Registry, drift: DriftConfig) -> None:
        self.registry = registry
        self.drift_config = drift
        self._versions: dict[str, ModelVersion] = {}  # registry records read so far (versions never change)
        self._drift: DriftBaseline | None = None  # the newest champion's reference, prepared once

    def version(self, version: str) -> ModelVersion:
        """A registered version's record, read from the registry once."""
        if version not in self._versions:
            self._versions[version] = self.registry.get(version)
        return self._versions[version]

    def drift(self, version: str) -> DriftBaseline:
        """The version's reference prepared for drift checks (its predictions too), once per version."""
        if self._drift is None or self._drift.version != version:
            self._drift = DriftBaseline(self.registry.reference(version), self.version(version).schema,
                                        self.drift_config, version=version, model=self.registry.load(version))
        return self._drift

    def expected_accuracy(self, version: str) -> float | None:
        """The accuracy ``version`` should reach live (see :func:`expected_accuracy`)."""
        return expected_accuracy(self.version(version).metadata)[0]

    def expected_rmse(self, version: str) -> float | None:
        """The RMSE a regression ``version`` should show live (see :func:`expected_error`)."""
        mse, _, _ = expected_error(self.version(version).metadata)
        return None if mse is None else math.sqrt(mse)

    def estimate(self, version: str, frame: pd.DataFrame) -> float | None:
        """Accuracy of ``version``'s rows in ``frame`` estimated from their logged confidence
        (classifiers; calibrated by the version's validation rows when it has them)."""
        mv = self.version(version)
        if mv.schema.task != "classification" or "confidence" not in frame:
            return None
        confidence = frame["confidence"].to_numpy(dtype=float)  # missing: NaN, which the estimate leaves out
        answered = (frame["model_version"] == version).to_numpy()
        return estimate_accuracy(mv.metadata.get("confidence_calibration"),
                                 confidence if answered.all() else confidence[answered])

    def outside_training(self, version: str, frame: pd.DataFrame) -> OutsideTraining:
        """How ``version``'s rows in ``frame`` lie against its training data
        (:meth:`FeatureSchema.outside_training_by_side`): the share of them with any value outside
        its training ranges or categories (None: no such row to judge, or no feature judged), and
        per judged feature the rows and the counts below, above (numeric) or unseen (categorical).
        Rows another version answered are left out: they were never this version's to judge."""
        mine = frame
        if "model_version" in frame:
            answered = (frame["model_version"] == version).to_numpy()
            mine = frame if answered.all() else frame[answered]  # the usual window: no copy
        schema = self.version(version).schema
        sides = schema.outside_training_by_side(mine)
        counts = schema.count_outside(sides, len(mine))
        if mine.empty or not sides:
            return OutsideTraining(None, counts)
        masks = [mask for by_side in sides.values() for mask in by_side.values()]
        return OutsideTraining(float(np.logical_or.reduce(masks).mean()), counts)

    def stats(self, index: int, rows: int, drift_share: float, champion: str, labelled: int,
              accuracy: float | None, estimated: float | None = None, *,
              errors: Sample | None = None, unfamiliar: float | None = None) -> WindowStats:
        """The policy's view of a window: drift, the accuracy of the rows the champion answered
        (a regressor: their squared ``errors``, the MSE and its spread), and the estimate from its
        confidence (compared with its validation accuracy, the scale its calibration was learnt on)."""
        metadata = self.version(champion).metadata
        baseline, baseline_rows = expected_accuracy(metadata)
        mse, mse_std, error_rows = expected_error(metadata)
        calibrated = metadata.get("confidence_calibration") and metadata.get("metrics", {}).get("accuracy")
        return WindowStats(index, rows, drift_share, labelled, accuracy,
                           baseline_accuracy=baseline, baseline_rows=baseline_rows if mse is None else error_rows,
                           champion=champion, estimated_accuracy=estimated if calibrated else None,
                           estimated_baseline=calibrated or None,
                           mse=None if errors is None else errors.mean, mse_std=None if errors is None else errors.std,
                           baseline_mse=mse, baseline_mse_std=mse_std, unfamiliar=unfamiliar)

    def stats_of(self, check: Check) -> WindowStats:
        """The policy's view of a recorded check (a restarted monitor replays them)."""
        errors = None if check.champion_rmse is None else Sample(check.champion_labelled, check.champion_rmse ** 2,
                                                                 check.champion_squared_error_std)
        return self.stats(check.window, check.rows, check.drift_share, check.reference_version,
                          check.champion_labelled, check.champion_accuracy, check.estimated_accuracy, errors=errors,
                          unfamiliar=check.unfamiliar_share)


def expected_accuracy(metadata: dict[str, Any]) -> tuple[float | None, int | None]:
    """The accuracy a version should reach live, and how many rows that estimate rests on.

    Its validation accuracy, pooled with the gate's held-out accuracy when it was retrained
    (the newest labelled rows: the best estimate there is).
    """
    accuracy = metadata.get("metrics", {}).get("accuracy")
    rows = metadata.get("rows", {}).get("validation")
    gate = metadata.get("gate") or {}
    if accuracy is None or not rows:
        return accuracy, rows
    if gate.get("metric") == "accuracy" and gate.get("holdout_rows"):
        total = rows + gate["holdout_rows"]
        return (accuracy * rows + gate["candidate"] * gate["holdout_rows"]) / total, total
    return accuracy, rows


def expected_error(metadata: dict[str, Any]) -> tuple[float | None, float | None, int | None]:
    """The mean squared error a regression version should show live, the standard deviation of
    the squared errors behind it (None: unknown, a version trained before it was recorded) and
    how many rows that rests on; (None, None, None) for other tasks.

    Its validation rows' (``metrics.mse``, ``squared_errors.std``), pooled with the gate's
    held-out RMSE when it was retrained, as :func:`expected_accuracy` does. The gate records no
    spread: its rows are taken to spread as the validation rows do relative to their mean (the
    same coefficient of variation: squared errors scale with their mean).
    """
    mse = metadata.get("metrics", {}).get("mse")
    rows = metadata.get("rows", {}).get("validation")
    std = (metadata.get("squared_errors") or {}).get("std")
    gate = metadata.get("gate") or {}
    if mse is None:
        return None, None, None
    if not rows:
        return mse, std, rows
    if gate.get("metric") == "rmse" and gate.get("holdout_rows"):
        held = gate["candidate"] ** 2
        held_std = None if std is None or mse <= 0 else std * held / mse
        pooled = pool(Sample(rows, mse, std), Sample(gate["holdout_rows"], held, held_std))
        return pooled.mean, pooled.std, pooled.rows
    return mse, std, rows
