"""The window check: the next complete window of logged predictions, measured and decided.

A window is the next ``window_rows`` predictions in log order. It is ready once it is full and
either ``min_label_coverage`` of its rows have labels or ``label_wait_s`` has passed since its
newest row (labels may lag; meanwhile :class:`~monitoring.early_warning.EarlyWarning` estimates it).
The ready windows are read many at a time (:meth:`WindowCheck.ready_windows`: one query of up to
``BATCH_ROWS`` rows, only the columns a check reads), so a monitor behind by hours of log catches
up at the speed of its checks, not of one query and one scheduler tick per window.
A ready window's check, in order:

1. drift: Evidently's tests on the window's inputs against the champion's reference sample
   (monitoring/baselines.py prepares it once per version), and on the champion's served
   predictions against its predictions on that sample (under ``prediction`` in
   ``feature_scores``; not counted in the drift share); and the champion's rows against its
   training data, per feature: how many lay below its minimum, above its maximum or held a
   category it never saw (``feature_scores[feature]["outside_training"]``; their share over all
   features is ``unfamiliar_share``, which the policy reads);
2. accuracy: served predictions against the labels that arrived (classification; regression:
   RMSE and MAE, and the spread of the squared errors the decay test needs), and the accuracy
   estimated from the champion's calibrated confidence;
3. the policy decides (a :class:`~driftloop.vocabulary.Decision`);
4. a flagged window's events (``drift_detected``, ...), naming its Evidently HTML report;
5. the :class:`~driftloop.vocabulary.Check` is recorded, as ``running`` when it decided a retrain
   (recorded *before* that retrain starts, so a monitor that dies inside it leaves a trace the
   next one finds: monitoring/retraining.py);
6. its pictures, the flagged window's HTML report and the window's Evidently snapshot for the
   workspace (``evidently ui``), are handed to :class:`~monitoring.workspace.Pictures`, which
   draws them after the check, off its path: a decision never waits for a picture.

The check measures and records; it acts on nothing. What its decision leads to is the retrain
runner's (monitoring/retraining.py); the gauges are set by :meth:`WindowCheck.export` once that
is done, so they show the champion the window left behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from driftloop.models.registry import Champion, Registry
from driftloop.models.schema import OUTSIDE_TRAINING, SUPERVISED
from driftloop.monitoring.backlog import Backlog
from driftloop.monitoring.baselines import Baselines
from driftloop.monitoring.drift import PREDICTION, DriftResult
from driftloop.monitoring.early_warning import EarlyWarning
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.policy import PolicyDecision, RetrainPolicy, Sample
from driftloop.monitoring.store import PredictionStore, as_utc
from driftloop.monitoring.workspace import Picture, Pictures
from driftloop.training.evaluate import errors, logged_score
from driftloop.vocabulary import Check, Decision, EventKind, Outcome, Signal

if TYPE_CHECKING:
    from driftloop.settings import MonitoringConfig

log = logging.getLogger("driftloop.monitor")
BATCH_ROWS = 50_000  # rows read at once when windows are waiting (at least one window's)


@dataclass
class Checked:
    """One window's check as recorded, the policy's decision, and the signals its gauges show
    (the decision's, and ``suspected`` when the confidence estimate says so)."""

    check: Check
    decision: PolicyDecision
    signals: tuple[Signal, ...]


class WindowCheck:
    """Checks windows in log order (``monitoring``: the window, label wait, reports, workspace
    windows and the drift-share gauge; ``task``: whether labels are awaited at all).

    ``pictures``: who draws the reports and snapshots (the monitor's, in the background); by
    default they are drawn at once, HTML reports only."""

    def __init__(self, config: MonitoringConfig, task: str, store: PredictionStore, registry: Registry,
                 baselines: Baselines, policy: RetrainPolicy, metrics: MonitorMetrics, *,
                 pictures: Pictures | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.task = task
        self.store = store
        self.registry = registry
        self.baselines = baselines
        self.policy = policy
        self.metrics = metrics
        self.pictures = pictures or Pictures(None, metrics, background=False)
        self.clock = clock
        self.early = EarlyWarning(config, store, registry, baselines, policy, metrics)
        self.track_features(registry.champion())
        self.backlog = Backlog(store, config.window_rows, config.max_backlog_windows, metrics)

    def ready(self) -> tuple[int, pd.DataFrame] | None:
        """The next window to check (its index and rows), or None: not full yet, or its labels are
        still arriving (then the early warning estimates it)."""
        ready = self.ready_windows(limit=1)
        return ready[0] if ready else None

    def ready_windows(self, limit: int | None = None) -> list[tuple[int, pd.DataFrame]]:
        """The windows ready to check after the last one checked, oldest first, with their rows
        (at most ``limit``; by default as many as ``BATCH_ROWS`` rows hold): one query. The first
        window that waits for its labels ends them (the early warning estimates it)."""
        last = self.store.last_check()
        index = last.window + 1 if last else 0
        after_id = self.backlog.start_after(last.last_id if last else 0, index)  # far behind: the newest first
        rows = self.config.window_rows
        count = limit if limit is not None else max(1, BATCH_ROWS // rows)
        frame = self.store.window(after_id, count * rows, request_ids=False)
        ready: list[tuple[int, pd.DataFrame]] = []
        for start in range(0, len(frame) - rows + 1, rows):
            window = frame.iloc[start:start + rows].reset_index(drop=True) if len(frame) > rows else frame
            if not self._labelled_or_waited(window):
                self.early.waiting(index + len(ready), window)
                break
            ready.append((index + len(ready), window))
        return ready

    def _labelled_or_waited(self, window: pd.DataFrame) -> bool:
        """Whether a full window's labels are in, or have had ``label_wait_s`` (or none are awaited)."""
        if self.task not in SUPERVISED:
            return True
        labelled = int(window["label"].notna().sum())
        waited = self.clock() - as_utc(window["created_at"].max()).timestamp()
        return labelled / len(window) >= self.config.min_label_coverage or waited >= self.config.label_wait_s

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
        predictions, labels = frame["prediction"], frame["label"]
        labelled = labels.notna().to_numpy()
        by_champion = labelled & (frame["model_version"] == version).to_numpy()
        n_labelled, n_champion = int(labelled.sum()), int(by_champion.sum())
        served_score = champion_score = None  # what users got; what the champion's rows got
        if score := _accuracy if classifier else _errors if regressor else None:
            served_score = score(predictions[labelled], labels[labelled])
            champion_score = (served_score if n_champion == n_labelled  # the usual window: the same rows
                              else score(predictions[by_champion], labels[by_champion]))
        accuracy, champion_accuracy = (served_score, champion_score) if classifier else (None, None)
        served_errors, champion_errors = (served_score, champion_score) if regressor else ({}, {})
        squared = (Sample(n_champion, champion_errors["mse"], champion_errors["squared_error_std"])
                   if champion_errors else None)  # the decay test's figure (regression)
        estimated = self.baselines.estimate(version, frame)
        outside = self.baselines.outside_training(version, frame)  # the champion's rows, against its schema
        stats = self.baselines.stats(index, len(frame), drift.share, version, n_champion,
                                     champion_accuracy, estimated, errors=squared, unfamiliar=outside.share)
        decision = self.policy.update(stats)

        report = None  # drawn after the check (monitoring/workspace.py Pictures)
        if decision.action != Decision.NONE:
            report = self.config.reports_dir / f"window-{index:05d}-drift.html"
        report_path = None if report is None else str(report)
        if decision.action in (Decision.ALERT, Decision.RETRAIN) and decision.signals:
            self.store.record_event(EventKind.detected(decision.signals), {
                "reason": decision.reason, "since_window": decision.since_window, "report": report_path,
                "drift_share": drift.share, "drifted": drift.drifted, "accuracy": accuracy}
                | ({"rmse": served_errors.get("rmse"), "mae": served_errors.get("mae")} if regressor else {}),
                index, served)
        elif decision.action == Decision.SUSPECT and index != self.early.suspected_window:
            self.store.record_event(EventKind.DECAY_SUSPECTED, {
                "reason": decision.reason, "estimated_accuracy": estimated, "labelled": n_champion},
                index, version)

        check = Check(
            window=index, first_id=int(frame["id"].iloc[0]), last_id=int(frame["id"].iloc[-1]), rows=len(frame),
            model_version=served, reference_version=version, drift_share=drift.share,
            drifted_features=drift.drifted,
            feature_scores=feature_scores(drift, outside.counts),
            labelled=n_labelled, accuracy=accuracy, champion_labelled=n_champion,
            champion_accuracy=champion_accuracy, estimated_accuracy=estimated, decision=decision.action,
            reason=decision.reason, outcome=Outcome.RUNNING if decision.action == Decision.RETRAIN else None,
            report_path=report_path, duration_s=round(time.perf_counter() - started, 3),
            rmse=served_errors.get("rmse"), mae=served_errors.get("mae"), champion_rmse=champion_errors.get("rmse"),
            champion_mae=champion_errors.get("mae"),
            champion_squared_error_std=champion_errors.get("squared_error_std"), unfamiliar_share=outside.share)
        self.store.record_check(check)  # before any retrain it decided: see the module docstring
        self.pictures.submit(self._picture(index, version, drift, frame, decision, report))
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
        self.track_features(champion)  # a version promoted by the check's retrain: its features at 0

    def track_features(self, champion: Champion | None) -> None:
        """The out-of-training counters of the ``champion``'s judged features, created at 0
        (:meth:`MonitorMetrics.track_features`): at the start, and after each check."""
        if champion is not None:
            self.metrics.track_features(self.baselines.version(champion.version).schema.training_sides)

    def _picture(self, index: int, version: str, drift: DriftResult, frame: pd.DataFrame,
                 decision: PolicyDecision, report: Path | None) -> Picture:
        """What the window leaves to draw: its report (flagged windows), its Evidently snapshot for
        the workspace (every window, or flagged ones only: ``monitoring.workspace.windows``)."""
        return Picture(
            index, version, drift, timestamp=as_utc(frame["created_at"].max()), rows=len(frame),
            tags=(f"decision={decision.action}",),
            metadata={"decision": str(decision.action), "reason": decision.reason},
            description=f"{self.baselines.version(version).metadata.get('kind')} {version}: "
                        "every checked window against this version's reference",
            snapshot=not (self.config.workspace.windows == "flagged" and decision.action == Decision.NONE),
            report=report)


def feature_scores(drift: DriftResult, outside: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """A check's ``feature_scores``: each feature's drift (``method``, ``score``, ``threshold``,
    ``drifted``) with, for the features judged against the champion's training data, its rows
    outside it as ``outside_training`` (``{"rows", "below", "above"}`` or ``{"rows", "unseen"}``:
    :meth:`~monitoring.baselines.Baselines.outside_training`); and the prediction's drift. New
    dicts: the drift result (drawn later as pictures) is left as it was."""
    scores = {name: col | {OUTSIDE_TRAINING: outside[name]} if name in outside else col
              for name, col in drift.columns.items()}
    return scores | ({PREDICTION: drift.prediction} if drift.prediction else {})


def _accuracy(predictions: pd.Series, labels: pd.Series) -> float | None:
    """Accuracy of served predictions against their labels; None without rows."""
    return None if predictions.empty else logged_score("classification", predictions, labels)


def _errors(predictions: pd.Series, labels: pd.Series) -> dict[str, float]:
    """RMSE, MAE and the squared errors' mean and spread of served predictions against their
    labels (:func:`~driftloop.training.evaluate.errors`); empty without rows."""
    return {} if predictions.empty else errors(labels, predictions)
