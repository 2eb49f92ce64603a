"""The monitor: every complete window of logged predictions -> drift + accuracy -> policy -> retrain.

A window is the next ``window_rows`` predictions in log order. It is checked once it is full
and either ``min_label_coverage`` of its rows have labels or ``label_wait_s`` has passed since
its newest row (labels may lag). For each window, in order:

1. drift: Evidently's tests on the window's inputs against the champion's reference sample
   (prepared once per version, monitoring/drift.py), and on the champion's served predictions
   against its predictions on that sample (stored under ``prediction`` in ``feature_scores``;
   not counted in the drift share);
2. accuracy: served predictions against the labels that arrived (classification);
3. the policy decides: none, watch, cooldown, alert or retrain;
4. on retrain: the labelled rows since the first flagged window go to the retraining job,
   whose gate promotes the candidate or rejects it;
5. the check (figures, decision, outcome, report path) and events are stored; gauges are set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pandas as pd

from models.registry import Registry
from models.schema import SUPERVISED, FeatureSchema
from monitoring import policy as pol
from monitoring.drift import PREDICTION, DriftBaseline
from monitoring.metrics import MonitorMetrics
from monitoring.store import PredictionStore

if TYPE_CHECKING:
    from driftloop.settings import Settings
    from training.retrain import RetrainOutcome

log = logging.getLogger("driftloop.monitor")
Retrainer = Callable[..., "RetrainOutcome"]


def policy_config(settings: Settings) -> pol.PolicyConfig:
    m = settings.monitoring
    return pol.PolicyConfig(drift_share=m.drift_share, max_accuracy_drop=m.max_accuracy_drop,
                            min_labels=m.min_labels, consecutive=m.consecutive,
                            cooldown_windows=m.cooldown_windows, dry_run=m.dry_run, decay_z=m.decay_z,
                            calibration_windows=m.calibration_windows)


class Monitor:
    def __init__(self, settings: Settings, store: PredictionStore, registry: Registry, *,
                 retrainer: Retrainer | None = None, metrics: MonitorMetrics | None = None,
                 clock: Callable[[], float] = time.time,
                 on_check: Callable[[dict[str, Any]], None] | None = None) -> None:
        if retrainer is None:
            from training.retrain import retrain as retrainer
        self.settings = settings
        self.store = store
        self.registry = registry
        self.retrainer = retrainer
        self.metrics = metrics or MonitorMetrics()
        self.clock = clock
        self.on_check = on_check
        self.policy = pol.RetrainPolicy(policy_config(settings))
        self._baseline: DriftBaseline | None = None  # the champion's reference, prepared once
        self._restore()

    def _restore(self) -> None:
        """Rebuild the policy's streak and cool-down from the stored checks (a restarted monitor)."""
        for check in self.store.checks():
            self.policy.update(self._stats(check))
            if check["decision"] == pol.RETRAIN and check["outcome"] in ("promoted", "rejected", "failed"):
                self.policy.retrained(check["window"])

    def _stats(self, check: dict[str, Any]) -> pol.WindowStats:
        return self._window_stats(check["window"], check["rows"], check["drift_share"], check["reference_version"],
                                  check["champion_labelled"], check["champion_accuracy"])

    def _window_stats(self, index: int, rows: int, drift_share: float, champion: str, labelled: int,
                      accuracy: float | None) -> pol.WindowStats:
        """The policy's view of a window: drift, and the accuracy of the rows the champion answered."""
        baseline, baseline_rows = expected_accuracy(self.registry.get(champion).metadata)
        return pol.WindowStats(index, rows, drift_share, labelled, accuracy,
                               baseline_accuracy=baseline, baseline_rows=baseline_rows, champion=champion)

    # -- the job --------------------------------------------------------------------------------
    def run_once(self) -> list[dict[str, Any]]:
        """Serve queued retrain requests, then check every window that is ready; returns the
        checks recorded, oldest first."""
        self.handle_requests()
        done = []
        while (check := self._next_window()) is not None:
            done.append(check)
        return done

    def _next_window(self) -> dict[str, Any] | None:
        last = self.store.last_check()
        after_id = last["last_id"] if last else 0
        index = last["window"] + 1 if last else 0
        rows = self.settings.monitoring.window_rows
        frame = self.store.window(after_id, rows)
        if len(frame) < rows:
            return None
        labelled = int(frame["label"].notna().sum())
        newest = _utc(frame["created_at"].max())
        waited = self.clock() - newest.timestamp()
        if self.settings.task in SUPERVISED and labelled / len(frame) < self.settings.monitoring.min_label_coverage \
                and waited < self.settings.monitoring.label_wait_s:
            return None  # labels are still arriving
        return self.check_window(index, frame)

    def check_window(self, index: int, frame: pd.DataFrame) -> dict[str, Any]:
        started = time.perf_counter()
        champion = self.registry.champion()
        if champion is None:
            raise RuntimeError("no champion: train and promote a model before monitoring")
        reference_version = champion.version
        schema = self.registry.get(reference_version).schema
        served = frame["model_version"].mode().iloc[0]

        drift = self._drift_baseline(reference_version, schema).check(frame)
        labelled = frame[frame["label"].notna()]
        by_champion = labelled[labelled["model_version"] == champion.version]
        accuracy = _accuracy(labelled) if schema.task == "classification" else None  # what users got
        champion_accuracy = _accuracy(by_champion) if schema.task == "classification" else None
        stats = self._window_stats(index, len(frame), drift.share, champion.version, len(by_champion),
                                   champion_accuracy)
        decision = self.policy.update(stats)

        report_path = None
        if decision.action != pol.NONE:
            path = self.settings.monitoring.reports_dir / f"window-{index:05d}-drift.html"
            report_path = str(drift.save_html(path))
        outcome = None
        if decision.action in (pol.ALERT, pol.RETRAIN):
            self.store.record_event(f"{'+'.join(decision.signals)}_detected", {
                "reason": decision.reason, "since_window": decision.since_window, "report": report_path,
                "drift_share": drift.share, "drifted": drift.drifted, "accuracy": accuracy}, index, served)
        if decision.action == pol.RETRAIN:
            outcome = self._retrain(index, decision, frame)

        check = {
            "window": index, "first_id": int(frame["id"].iloc[0]), "last_id": int(frame["id"].iloc[-1]),
            "rows": len(frame), "model_version": served, "reference_version": reference_version,
            "drift_share": drift.share, "drifted_features": drift.drifted,
            "feature_scores": drift.columns | ({PREDICTION: drift.prediction} if drift.prediction else {}),
            "labelled": len(labelled), "accuracy": accuracy, "champion_labelled": len(by_champion),
            "champion_accuracy": champion_accuracy, "decision": decision.action,
            "reason": decision.reason, "outcome": outcome, "report_path": report_path,
            "duration_s": round(time.perf_counter() - started, 3),
        }
        self.store.record_check(check)
        self._export(check, decision.signals, frame)
        log.info("window %d: rows=%d drift_share=%.2f accuracy=%s decision=%s %s", index, len(frame), drift.share,
                 "-" if accuracy is None else f"{accuracy:.3f}", decision.action, outcome or "")
        if self.on_check:
            self.on_check(check)
        return check

    def _drift_baseline(self, version: str, schema: FeatureSchema) -> DriftBaseline:
        """The version's reference prepared for drift checks (its predictions too), once per version."""
        if self._baseline is None or self._baseline.version != version:
            self._baseline = DriftBaseline(self.registry.reference(version), schema, self.settings.monitoring.drift,
                                           version=version, model=self.registry.load(version))
        return self._baseline

    def handle_requests(self) -> list[dict[str, Any]]:
        """Retrain for every ``retrain_requested`` event (``POST /admin/retrain``) not yet handled,
        on the rows of the newest ``consecutive`` checked windows. Returns what was done."""
        handled = {e["detail"].get("request") for e in self.store.events("retrain_request_done")}
        pending = [r for r in self.store.events("retrain_requested") if r["id"] not in handled]
        checks = self.store.checks()[-self.settings.monitoring.consecutive:] if pending else []
        done = []
        for request in pending:
            detail: dict[str, Any] = {"request": request["id"]}
            if not checks:
                detail |= {"outcome": "no data", "reason": "no window has been checked yet"}
            else:
                reason = f"requested by {request['detail'].get('actor')}: {request['detail'].get('reason')}"
                fresh = self._fresh_rows(int(checks[0]["first_id"]), int(checks[-1]["last_id"]))
                try:
                    result = self.retrainer(self.settings, self.registry, fresh, trigger="manual", reason=reason)
                    detail |= result.to_dict() | {"outcome": result.status}
                    self.metrics.retrains.labels(result.status).inc()
                except Exception as exc:  # the champion is untouched
                    log.exception("requested retrain failed")
                    detail |= {"outcome": "failed", "error": f"{type(exc).__name__}: {exc}"}
                    self.metrics.retrains.labels("failed").inc()
            self.store.record_event("retrain_request_done", detail)
            done.append(detail)
        return done

    def _fresh_rows(self, first_id: int, last_id: int) -> pd.DataFrame:
        """The rows a retrain learns from: labelled ones (supervised) or all (unsupervised)."""
        if self.settings.task in SUPERVISED:
            fresh = self.store.labelled_rows(first_id, last_id).rename(columns={"label": self.settings.data.target})
        else:
            fresh = self.store.rows_between(first_id, last_id)
        if self.settings.data.timestamp:
            fresh[self.settings.data.timestamp] = fresh["created_at"]
        return fresh

    def _retrain(self, index: int, decision: pol.Decision, frame: pd.DataFrame) -> str:
        fresh = self._fresh_rows(self._first_id(decision.since_window, frame), int(frame["id"].iloc[-1]))
        trigger = "decay" if "decay" in decision.signals else "drift"
        self.store.record_event("retrain_started", {"rows": len(fresh), "since_window": decision.since_window,
                                                    "trigger": trigger}, index)
        started = time.perf_counter()
        try:
            result = self.retrainer(self.settings, self.registry, fresh, trigger=trigger,
                                    reason=f"window {index}: {decision.reason}")
        except Exception as exc:  # the champion is untouched: promotion is the job's last step
            log.exception("window %d: retraining failed", index)
            self.store.record_event("retrain_failed", {"error": f"{type(exc).__name__}: {exc}"}, index)
            self.metrics.retrains.labels("failed").inc()
            self.policy.retrained(index)
            return "failed"
        seconds = time.perf_counter() - started
        self.store.record_event(f"retrain_{result.status}", result.to_dict(), index, result.candidate)
        self.metrics.retrains.labels(result.status).inc()
        if result.status != "waiting":
            self.metrics.retrain_seconds.observe(seconds)
            self.policy.retrained(index)
        return result.status

    def _first_id(self, since_window: int | None, frame: pd.DataFrame) -> int:
        if since_window is not None:
            for check in self.store.checks(since_window - 1):
                if check["window"] == since_window:
                    return int(check["first_id"])
        return int(frame["id"].iloc[0])

    def _export(self, check: dict[str, Any], signals: tuple[str, ...], frame: pd.DataFrame) -> None:
        m = self.metrics
        m.drift_share.set(check["drift_share"])
        m.drift_threshold.set(self.settings.monitoring.drift_share)
        m.set_features(check["feature_scores"])
        m.set_signals(signals)
        if check["accuracy"] is not None:
            m.accuracy.set(check["accuracy"])
        version = check["reference_version"]
        mv = self.registry.get(version)
        m.set_expected_accuracy(version, expected_accuracy(mv.metadata)[0])
        # confidence-based estimate (classifiers: the logged top-class probability; calibrated
        # models' mean confidence estimates their accuracy before labels arrive)
        if mv.schema.task == "classification" and "confidence" in frame and frame["confidence"].notna().any():
            m.estimated_accuracy.labels("confidence").set(float(frame["confidence"].mean()))
        m.label_coverage.set(check["labelled"] / check["rows"])
        m.window_rows.set(check["rows"])
        m.checks.labels(check["decision"]).inc()
        m.check_seconds.observe(check["duration_s"])
        m.last_check.set(self.clock())
        champion = self.registry.champion()
        m.set_champion(champion.version if champion else None)


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


def _accuracy(rows: pd.DataFrame) -> float | None:
    if rows.empty:
        return None
    return float(sum(_same(p, y) for p, y in zip(rows["prediction"], rows["label"])) / len(rows))


def _same(prediction: Any, label: Any) -> bool:
    """Served prediction equals label: 1 == 1.0 (pandas turns labels with gaps into floats)."""
    if isinstance(prediction, (int, float)) and isinstance(label, (int, float)):
        return float(prediction) == float(label)
    return str(prediction) == str(label)


def _utc(value: Any) -> datetime:
    ts = pd.Timestamp(value).to_pydatetime()
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts
