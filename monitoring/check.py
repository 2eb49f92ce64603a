"""The window check: the next complete window of logged predictions, measured and decided.

A window is the next ``window_rows`` predictions in log order. It is ready once it is full and
either ``min_label_coverage`` of its rows have labels or ``label_wait_s`` has passed since its
newest row (labels may lag; meanwhile :class:`~monitoring.early_warning.EarlyWarning` estimates it).
A ready window's check, in order:

1. drift: Evidently's tests on the window's inputs against the champion's reference sample
   (monitoring/baselines.py prepares it once per version), and on the champion's served
   predictions against its predictions on that sample (under ``prediction`` in
   ``feature_scores``; not counted in the drift share);
2. accuracy: served predictions against the labels that arrived (classification; regression:
   RMSE and MAE, and the spread of the squared errors the decay test needs), and the accuracy
   estimated from the champion's calibrated confidence;
3. the policy decides (a :class:`~driftloop.vocabulary.Decision`);
4. a flagged window's Evidently HTML report and its events (``drift_detected``, ...);
5. the :class:`~driftloop.vocabulary.Check` is recorded, as ``running`` when it decided a retrain
   (recorded *before* that retrain starts, so a monitor that dies inside it leaves a trace the
   next one finds: monitoring/retraining.py), and the window's Evidently snapshot goes into the
   workspace (``evidently ui``, monitoring/workspace.py).

The check measures and records; it acts on nothing. What its decision leads to is the retrain
runner's (monitoring/retraining.py); the gauges are set by :meth:`WindowCheck.export` once that
is done, so they show the champion the window left behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from driftloop.models.registry import Registry
from driftloop.models.schema import SUPERVISED
from driftloop.monitoring.baselines import Baselines
from driftloop.monitoring.drift import PREDICTION, DriftResult
from driftloop.monitoring.early_warning import EarlyWarning
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.policy import PolicyDecision, RetrainPolicy, Sample
from driftloop.monitoring.store import PredictionStore, as_utc
from driftloop.monitoring.workspace import DriftWorkspace
from driftloop.training.evaluate import errors, logged_score
from driftloop.vocabulary import Check, Decision, EventKind, Outcome, Signal

if TYPE_CHECKING:
    from driftloop.settings import MonitoringConfig

log = logging.getLogger("driftloop.monitor")


@dataclass
class Checked:
    """One window's check as recorded, the policy's decision, and the signals its gauges show
    (the decision's, and ``suspected`` when the confidence estimate says so)."""

    check: Check
    decision: PolicyDecision
    signals: tuple[Signal, ...]


class WindowCheck:
    """Checks windows in log order (``monitoring``: the window, label wait, reports, workspace
    windows and the drift-share gauge; ``task``: whether labels are awaited at all)."""

    def __init__(self, config: MonitoringConfig, task: str, store: PredictionStore, registry: Registry,
                 baselines: Baselines, policy: RetrainPolicy, metrics: MonitorMetrics, *,
                 workspace: DriftWorkspace | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.task = task
        self.store = store
        self.registry = registry
        self.baselines = baselines
        self.policy = policy
        self.metrics = metrics
        self.workspace = workspace
        self.clock = clock
        self.early = EarlyWarning(config, store, registry, baselines, policy, metrics)

    def ready(self) -> tuple[int, pd.DataFrame] | None:
        """The next window to check (its index and rows), or None: not full yet, or its labels are
        still arriving (then the early warning estimates it)."""
        last = self.store.last_check()
        after_id = last.last_id if last else 0
        index = last.window + 1 if last else 0
        rows = self.config.window_rows
        frame = self.store.window(after_id, rows)
        if len(frame) < rows:
            return None
        labelled = int(frame["label"].notna().sum())
        waited = self.clock() - as_utc(frame["created_at"].max()).timestamp()
        if self.task in SUPERVISED and labelled / len(frame) < self.config.min_label_coverage \
                and waited < self.config.label_wait_s:
            self.early.waiting(index, frame)
            return None
        return index, frame

    def run(self, index: int, frame: pd.DataFrame) -> Checked:
        """Measure window ``index`` (``frame``), decide, record (see the module docstring)."""
        started = time.perf_counter()
        champion = self.registry.champion()
        if champion is None:
            raise RuntimeError("no champion: train and promote a model before monitoring")
        version = champion.version
        task = self.baselines.version(version).schema.task
        classifier, regressor = task == "classification", task == "regression"
        served = frame["model_version"].mode().iloc[0]

        drift = self.baselines.drift(version).check(frame)
        labelled = frame[frame["label"].notna()]
        by_champion = labelled[labelled["model_version"] == version]
        accuracy = _accuracy(labelled) if classifier else None  # what users got
        champion_accuracy = _accuracy(by_champion) if classifier else None
        served_errors = _errors(labelled) if regressor else {}  # what users got
        champion_errors = _errors(by_champion) if regressor else {}
        squared = (Sample(len(by_champion), champion_errors["mse"], champion_errors["squared_error_std"])
                   if champion_errors else None)  # the decay test's figure (regression)
        estimated = self.baselines.estimate(version, frame)
        unfamiliar = self.baselines.unfamiliar(version, frame)
        stats = self.baselines.stats(index, len(frame), drift.share, version, len(by_champion),
                                     champion_accuracy, estimated, errors=squared, unfamiliar=unfamiliar)
        decision = self.policy.update(stats)

        report_path = None
        if decision.action != Decision.NONE:
            path = self.config.reports_dir / f"window-{index:05d}-drift.html"
            report_path = str(drift.save_html(path))
        if decision.action in (Decision.ALERT, Decision.RETRAIN) and decision.signals:
            self.store.record_event(EventKind.detected(decision.signals), {
                "reason": decision.reason, "since_window": decision.since_window, "report": report_path,
                "drift_share": drift.share, "drifted": drift.drifted, "accuracy": accuracy}
                | ({"rmse": served_errors.get("rmse"), "mae": served_errors.get("mae")} if regressor else {}),
                index, served)
        elif decision.action == Decision.SUSPECT and index != self.early.suspected_window:
            self.store.record_event(EventKind.DECAY_SUSPECTED, {
                "reason": decision.reason, "estimated_accuracy": estimated, "labelled": len(by_champion)},
                index, version)
        self._snapshot(index, version, drift, frame, decision)

        check = Check(
            window=index, first_id=int(frame["id"].iloc[0]), last_id=int(frame["id"].iloc[-1]), rows=len(frame),
            model_version=served, reference_version=version, drift_share=drift.share,
            drifted_features=drift.drifted,
            feature_scores=drift.columns | ({PREDICTION: drift.prediction} if drift.prediction else {}),
            labelled=len(labelled), accuracy=accuracy, champion_labelled=len(by_champion),
            champion_accuracy=champion_accuracy, estimated_accuracy=estimated, decision=decision.action,
            reason=decision.reason, outcome=Outcome.RUNNING if decision.action == Decision.RETRAIN else None,
            report_path=report_path, duration_s=round(time.perf_counter() - started, 3),
            rmse=served_errors.get("rmse"), mae=served_errors.get("mae"), champion_rmse=champion_errors.get("rmse"),
            champion_mae=champion_errors.get("mae"),
            champion_squared_error_std=champion_errors.get("squared_error_std"), unfamiliar_share=unfamiliar)
        self.store.record_check(check)  # before any retrain it decided: see the module docstring
        suspected = (Signal.SUSPECTED,) if self.policy.suspected(stats) else ()
        return Checked(check, decision, decision.signals + suspected)

    def export(self, checked: Checked) -> None:
        """The check's gauges (after its retrain, if any: the champion gauge shows what came of it)."""
        check = checked.check
        champion = self.registry.champion()
        self.metrics.observe_check(check, checked.signals, threshold=self.config.drift_share,
                                   expected_accuracy=self.baselines.expected_accuracy(check.reference_version),
                                   expected_rmse=self.baselines.expected_rmse(check.reference_version),
                                   champion=champion.version if champion else None, now=self.clock())

    def _snapshot(self, index: int, version: str, drift: DriftResult, frame: pd.DataFrame,
                  decision: PolicyDecision) -> None:
        """The window's Evidently snapshot into the workspace (every window, or flagged ones only).
        A failure to write it is logged: the check itself stands."""
        if self.workspace is None or (self.config.workspace.windows == "flagged"
                                      and decision.action == Decision.NONE):
            return
        try:
            self.workspace.record(version, index, drift, timestamp=as_utc(frame["created_at"].max()),
                                  tags=[f"decision={decision.action}"],
                                  metadata={"decision": str(decision.action), "reason": decision.reason},
                                  description=f"{self.baselines.version(version).metadata.get('kind')} {version}: "
                                              "every checked window against this version's reference")
        except Exception:
            log.exception("window %d: the Evidently snapshot could not be written", index)


def _accuracy(rows: pd.DataFrame) -> float | None:
    """Accuracy of the served predictions of ``rows`` against their labels; None without rows."""
    return None if rows.empty else logged_score("classification", rows["prediction"], rows["label"])


def _errors(rows: pd.DataFrame) -> dict[str, float]:
    """RMSE, MAE and the squared errors' mean and spread of the served predictions of ``rows``
    against their labels (:func:`~driftloop.training.evaluate.errors`); empty without rows."""
    return {} if rows.empty else errors(rows["label"], rows["prediction"])
