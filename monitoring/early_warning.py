"""The early warning: windows that wait for their labels are estimated from confidence meanwhile.

A full window is checked once its labels are in (``monitoring.min_label_coverage``) or have had
``monitoring.label_wait_s`` to arrive. Until then the champion's calibrated confidence already
estimates its accuracy; an estimate more than ``max_accuracy_drop`` below the version's validation
accuracy records ``decay_suspected`` (once per window), which the window's check confirms or clears
when the labels are in. The estimate is exported either way. A regressor states no confidence,
so its windows are not estimated: their decay shows once the labels are in.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pandas as pd

from driftloop.models.registry import Registry
from driftloop.monitoring.baselines import Baselines
from driftloop.monitoring.metrics import CONFIDENCE, MonitorMetrics
from driftloop.monitoring.policy import RetrainPolicy
from driftloop.monitoring.store import PredictionStore
from driftloop.vocabulary import EventKind, Signal

if TYPE_CHECKING:
    from driftloop.settings import MonitoringConfig

log = logging.getLogger("driftloop.monitor")


class EarlyWarning:
    """Estimates each waiting window once (``monitoring``: ``window_rows``, ``max_accuracy_drop``)."""

    def __init__(self, config: MonitoringConfig, store: PredictionStore, registry: Registry, baselines: Baselines,
                 policy: RetrainPolicy, metrics: MonitorMetrics) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.baselines = baselines
        self.policy = policy
        self.metrics = metrics
        self._estimated = (-1, 0)  # the newest window estimated while it waited for labels, and its last id
        self.suspected_window = -1  # ...and the newest of those suspected (its event is recorded)

    def waiting(self, index: int, frame: pd.DataFrame) -> None:
        """Window ``index`` (``frame``) and the full windows after it wait for their labels:
        estimate each one's accuracy from confidence now, once per window."""
        if index > self._estimated[0]:
            self._estimated = (index, int(frame["id"].iloc[-1]))
            self._suspect(index, frame)
        rows = self.config.window_rows
        while len(ahead := self.store.window(self._estimated[1], rows, request_ids=False)) == rows:
            self._estimated = (self._estimated[0] + 1, int(ahead["id"].iloc[-1]))
            self._suspect(self._estimated[0], ahead)

    def _suspect(self, index: int, frame: pd.DataFrame) -> None:
        labelled = int(frame["label"].notna().sum())
        champion = self.registry.champion()
        if champion is None or (estimate := self.baselines.estimate(champion.version, frame)) is None:
            return
        self.metrics.estimated_accuracy.labels(CONFIDENCE).set(estimate)
        stats = self.baselines.stats(index, len(frame), 0.0, champion.version, labelled, None, estimate)
        suspected = self.policy.suspected(stats)
        self.metrics.signal.labels(Signal.SUSPECTED).set(1 if suspected else 0)
        if suspected:
            self.suspected_window = index
            self.store.record_event(EventKind.DECAY_SUSPECTED, {
                "estimated_accuracy": estimate, "validation_accuracy": stats.estimated_baseline,
                "max_accuracy_drop": self.config.max_accuracy_drop, "rows": len(frame),
                "labelled": labelled}, index, champion.version)
            log.warning("window %d: decay suspected before labels: accuracy estimated from confidence %.3f "
                        "(validation %.3f)", index, estimate, stats.estimated_baseline)
