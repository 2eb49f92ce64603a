"""What a window is measured against: each model version's record, expected accuracy, confidence
calibration and drift reference, read from the registry once per version.

The window check, the early warning and a restarted monitor's policy all ask the same questions
of the champion ("what should it reach live?", "what does its confidence say?"); this is the one
place that answers them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from driftloop.models.registry import ModelVersion, Registry
from driftloop.monitoring.drift import DriftBaseline
from driftloop.monitoring.policy import WindowStats
from driftloop.training.evaluate import estimate_accuracy
from driftloop.vocabulary import Check

if TYPE_CHECKING:
    from driftloop.settings import DriftConfig


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

    def estimate(self, version: str, frame: pd.DataFrame) -> float | None:
        """Accuracy of ``version``'s rows in ``frame`` estimated from their logged confidence
        (classifiers; calibrated by the version's validation rows when it has them)."""
        mv = self.version(version)
        if mv.schema.task != "classification" or "confidence" not in frame:
            return None
        rows = frame.loc[frame["model_version"] == version, "confidence"].dropna()
        return estimate_accuracy(mv.metadata.get("confidence_calibration"), rows.to_numpy(dtype=float))

    def stats(self, index: int, rows: int, drift_share: float, champion: str, labelled: int,
              accuracy: float | None, estimated: float | None = None) -> WindowStats:
        """The policy's view of a window: drift, the accuracy of the rows the champion answered,
        and the estimate from its confidence (compared with its validation accuracy, the scale
        its calibration was learnt on)."""
        metadata = self.version(champion).metadata
        baseline, baseline_rows = expected_accuracy(metadata)
        calibrated = metadata.get("confidence_calibration") and metadata.get("metrics", {}).get("accuracy")
        return WindowStats(index, rows, drift_share, labelled, accuracy,
                           baseline_accuracy=baseline, baseline_rows=baseline_rows, champion=champion,
                           estimated_accuracy=estimated if calibrated else None,
                           estimated_baseline=calibrated or None)

    def stats_of(self, check: Check) -> WindowStats:
        """The policy's view of a recorded check (a restarted monitor replays them)."""
        return self.stats(check.window, check.rows, check.drift_share, check.reference_version,
                          check.champion_labelled, check.champion_accuracy, check.estimated_accuracy)


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
