"""The monitor: every complete window of logged predictions -> drift + accuracy -> policy -> retrain.

A window is the next ``window_rows`` predictions in log order. It is checked once it is full
and either ``min_label_coverage`` of its rows have labels or ``label_wait_s`` has passed since
its newest row (labels may lag). For each window, in order:

1. drift: Evidently's tests on the window's inputs against the champion's reference sample
   (prepared once per version, monitoring/drift.py), and on the champion's served predictions
   against its predictions on that sample (stored under ``prediction`` in ``feature_scores``;
   not counted in the drift share);
2. accuracy: served predictions against the labels that arrived (classification), and the
   accuracy estimated from the champion's calibrated confidence (no labels needed; while a full
   window still waits for its labels the estimate alone can raise a ``decay_suspected`` event);
3. the policy decides: none, watch, cooldown, alert or retrain;
4. on retrain: the labelled rows since the first flagged window go to the retraining job,
   whose gate promotes the candidate or rejects it;
5. the check (figures, decision, outcome, report path) and events are stored; gauges are set;
   the window's Evidently snapshot goes into the workspace (``evidently ui``, monitoring/workspace.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pandas as pd

from driftloop.models.registry import ModelVersion, Registry
from driftloop.training.evaluate import estimate_accuracy, primary
from driftloop.training.retrain import PROMOTED, REJECTED
from driftloop.models.schema import SUPERVISED, FeatureSchema
from driftloop.monitoring import policy as pol
from driftloop.monitoring.drift import PREDICTION, DriftBaseline, DriftResult
from driftloop.monitoring.lease import RETRAIN as RETRAIN_LEASE
from driftloop.monitoring.lease import read_state
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.store import PredictionStore
from driftloop.monitoring.workspace import DriftWorkspace

if TYPE_CHECKING:
    from driftloop.settings import Settings
    from driftloop.training.retrain import RetrainOutcome

log = logging.getLogger("driftloop.monitor")
# A check's retrain outcome besides the job's own (promoted, rejected, waiting, shadow)
RUNNING, FAILED, SHADOW_PENDING = "running", "failed", "shadow_pending"
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
            from driftloop.training.retrain import retrain as retrainer
        self.settings = settings
        self.store = store
        self.registry = registry
        self.retrainer = retrainer
        self.metrics = metrics or MonitorMetrics()
        self.clock = clock
        self.on_check = on_check
        self.policy = pol.RetrainPolicy(policy_config(settings))
        self._baseline: DriftBaseline | None = None  # the champion's reference, prepared once
        self.workspace = DriftWorkspace.from_settings(settings)
        self._versions: dict[str, ModelVersion] = {}  # registry records read so far (see _version)
        self._estimated = (-1, 0)  # the newest window estimated while it waited for labels, and its last id
        self._suspected_window = -1  # ...and the newest of those suspected (its event is recorded)
        self._restore()

    def _restore(self) -> None:
        """Rebuild the policy's streak and cool-down from the stored checks (a restarted monitor)."""
        for check in self.store.checks():
            self.policy.update(self._stats(check))
            if check["decision"] == pol.RETRAIN and check["outcome"] in ("promoted", "rejected", FAILED, RUNNING):
                self.policy.retrained(check["window"])

    def _stats(self, check: dict[str, Any]) -> pol.WindowStats:
        return self._window_stats(check["window"], check["rows"], check["drift_share"], check["reference_version"],
                                  check["champion_labelled"], check["champion_accuracy"],
                                  check.get("estimated_accuracy"))

    def _window_stats(self, index: int, rows: int, drift_share: float, champion: str, labelled: int,
                      accuracy: float | None, estimated: float | None = None) -> pol.WindowStats:
        """The policy's view of a window: drift, the accuracy of the rows the champion answered,
        and the estimate from its confidence (compared with its validation accuracy, the scale
        its calibration was learnt on)."""
        metadata = self._version(champion).metadata
        baseline, baseline_rows = expected_accuracy(metadata)
        calibrated = metadata.get("confidence_calibration") and metadata.get("metrics", {}).get("accuracy")
        return pol.WindowStats(index, rows, drift_share, labelled, accuracy,
                               baseline_accuracy=baseline, baseline_rows=baseline_rows, champion=champion,
                               estimated_accuracy=estimated if calibrated else None,
                               estimated_baseline=calibrated or None)

    def _version(self, version: str) -> ModelVersion:
        """A registered version's record, read from the registry once (versions never change)."""
        if version not in self._versions:
            self._versions[version] = self.registry.get(version)
        return self._versions[version]

    def _estimate(self, version: str, frame: pd.DataFrame) -> float | None:
        """Accuracy of ``version``'s rows in ``frame`` estimated from their logged confidence
        (classifiers; calibrated by the version's validation rows when it has them)."""
        mv = self._version(version)
        if mv.schema.task != "classification" or "confidence" not in frame:
            return None
        rows = frame.loc[frame["model_version"] == version, "confidence"].dropna()
        return estimate_accuracy(mv.metadata.get("confidence_calibration"), rows.to_numpy(dtype=float))

    # -- the job --------------------------------------------------------------------------------
    def run_once(self) -> list[dict[str, Any]]:
        """Serve queued retrain requests and due retries, check every window that is ready, then
        judge the shadow (if any); returns the checks recorded, oldest first."""
        self.handle_requests()
        self.handle_retries()
        done = []
        while (check := self._next_window()) is not None:
            done.append(check)
        self.judge_shadow()
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
            self._estimate_waiting(index, frame)
            return None  # labels are still arriving
        return self.check_window(index, frame)

    def _estimate_waiting(self, index: int, frame: pd.DataFrame) -> None:
        """Window ``index`` (``frame``) and the full windows after it wait for their labels:
        estimate each one's accuracy from confidence now, once per window (see :meth:`_suspect_early`)."""
        if index > self._estimated[0]:
            self._estimated = (index, int(frame["id"].iloc[-1]))
            self._suspect_early(index, frame)
        rows = self.settings.monitoring.window_rows
        while len(ahead := self.store.window(self._estimated[1], rows)) == rows:
            self._estimated = (self._estimated[0] + 1, int(ahead["id"].iloc[-1]))
            self._suspect_early(self._estimated[0], ahead)

    def _suspect_early(self, index: int, frame: pd.DataFrame) -> None:
        """Record ``decay_suspected`` if the accuracy estimated from confidence falls too far (the
        check confirms or clears it when the labels are in); the estimate is exported either way."""
        labelled = int(frame["label"].notna().sum())
        champion = self.registry.champion()
        if champion is None or (estimate := self._estimate(champion.version, frame)) is None:
            return
        self.metrics.estimated_accuracy.labels("confidence").set(estimate)
        stats = self._window_stats(index, len(frame), 0.0, champion.version, labelled, None, estimate)
        suspected = self.policy.suspected(stats)
        self.metrics.signal.labels("suspected").set(1 if suspected else 0)
        if suspected:
            self._suspected_window = index
            self.store.record_event("decay_suspected", {
                "estimated_accuracy": estimate, "validation_accuracy": stats.estimated_baseline,
                "max_accuracy_drop": self.settings.monitoring.max_accuracy_drop, "rows": len(frame),
                "labelled": labelled}, index, champion.version)
            log.warning("window %d: decay suspected before labels: accuracy estimated from confidence %.3f "
                        "(validation %.3f)", index, estimate, stats.estimated_baseline)

    def check_window(self, index: int, frame: pd.DataFrame) -> dict[str, Any]:
        started = time.perf_counter()
        champion = self.registry.champion()
        if champion is None:
            raise RuntimeError("no champion: train and promote a model before monitoring")
        reference_version = champion.version
        schema = self._version(reference_version).schema
        served = frame["model_version"].mode().iloc[0]

        drift = self._drift_baseline(reference_version, schema).check(frame)
        labelled = frame[frame["label"].notna()]
        by_champion = labelled[labelled["model_version"] == champion.version]
        accuracy = _accuracy(labelled) if schema.task == "classification" else None  # what users got
        champion_accuracy = _accuracy(by_champion) if schema.task == "classification" else None
        estimated = self._estimate(champion.version, frame)
        stats = self._window_stats(index, len(frame), drift.share, champion.version, len(by_champion),
                                   champion_accuracy, estimated)
        decision = self.policy.update(stats)

        report_path = None
        if decision.action != pol.NONE:
            path = self.settings.monitoring.reports_dir / f"window-{index:05d}-drift.html"
            report_path = str(drift.save_html(path))
        if decision.action in (pol.ALERT, pol.RETRAIN):
            self.store.record_event(f"{'+'.join(decision.signals)}_detected", {
                "reason": decision.reason, "since_window": decision.since_window, "report": report_path,
                "drift_share": drift.share, "drifted": drift.drifted, "accuracy": accuracy}, index, served)
        elif decision.action == pol.SUSPECT and index != self._suspected_window:
            self.store.record_event("decay_suspected", {"reason": decision.reason, "estimated_accuracy": estimated,
                                                        "labelled": len(by_champion)}, index, champion.version)
        self._snapshot(index, reference_version, drift, frame, decision)

        check = {
            "window": index, "first_id": int(frame["id"].iloc[0]), "last_id": int(frame["id"].iloc[-1]),
            "rows": len(frame), "model_version": served, "reference_version": reference_version,
            "drift_share": drift.share, "drifted_features": drift.drifted,
            "feature_scores": drift.columns | ({PREDICTION: drift.prediction} if drift.prediction else {}),
            "labelled": len(labelled), "accuracy": accuracy, "champion_labelled": len(by_champion),
            "champion_accuracy": champion_accuracy, "estimated_accuracy": estimated, "decision": decision.action,
            "reason": decision.reason, "outcome": RUNNING if decision.action == pol.RETRAIN else None,
            "report_path": report_path, "duration_s": round(time.perf_counter() - started, 3),
        }
        # Recorded before a retrain runs, as "running": if this process dies inside the retrain,
        # the next monitor finds it, records it failed and retries it (handle_retries).
        self.store.record_check(check)
        if decision.action == pol.RETRAIN and (shadow := self.registry.shadow()) is not None:
            check["outcome"] = SHADOW_PENDING  # the streak goes on: a retrain follows the shadow's verdict
            check["reason"] = f"{decision.reason}; {shadow.version} is in shadow: no new candidate until it is judged"
            self.store.update_check(index, outcome=check["outcome"], reason=check["reason"])
        elif decision.action == pol.RETRAIN:
            first_id = self._first_id(decision.since_window, frame)
            trigger = "decay" if "decay" in decision.signals else "drift"
            check["outcome"] = self._attempt(index, first_id, check["last_id"], trigger,
                                             f"window {index}: {decision.reason}")
        self._export(check, decision.signals + (("suspected",) if self.policy.suspected(stats) else ()))
        log.info("window %d: rows=%d drift_share=%.2f accuracy=%s decision=%s %s", index, len(frame), drift.share,
                 "-" if accuracy is None else f"{accuracy:.3f}", decision.action, check["outcome"] or "")
        if self.on_check:
            self.on_check(check)
        return check

    def _snapshot(self, index: int, version: str, drift: DriftResult, frame: pd.DataFrame,
                  decision: pol.Decision) -> None:
        """The window's Evidently snapshot into the workspace (every window, or flagged ones only).
        A failure to write it is logged: the check itself stands."""
        if self.workspace is None or (self.settings.monitoring.workspace.windows == "flagged"
                                      and decision.action == pol.NONE):
            return
        try:
            self.workspace.record(version, index, drift, timestamp=_utc(frame["created_at"].max()),
                                  tags=[f"decision={decision.action}"],
                                  metadata={"decision": decision.action, "reason": decision.reason},
                                  description=f"{self._version(version).metadata.get('kind')} {version}: "
                                              "every checked window against this version's reference")
        except Exception:
            log.exception("window %d: the Evidently snapshot could not be written", index)

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
        """The rows a retrain gets: every logged row of the streak, with its label as the target
        (None where none arrived yet: the job trains on labelled rows; the ``reweighted`` strategy
        also weighs by the unlabelled ones' inputs)."""
        fresh = self.store.rows_between(first_id, last_id)
        if self.settings.task in SUPERVISED:
            fresh = fresh.rename(columns={"label": self.settings.data.target})
        if self.settings.data.timestamp:
            fresh[self.settings.data.timestamp] = fresh["created_at"]
        return fresh

    # -- retraining, retried with back-off ------------------------------------------------------
    def _attempt(self, index: int, first_id: int, last_id: int, trigger: str, reason: str, attempt: int = 1,
                 episode: int | None = None) -> str:
        """One try of the retrain a check of window ``index`` decided, on the rows ``first_id``..
        ``last_id`` (read now: labels that arrived since count); the outcome is also written into
        the window's check. A failure is recorded with when it will be tried again
        (``retraining.retry``); the champion is untouched: promotion is the job's last step."""
        fresh = self._fresh_rows(first_id, last_id)
        where = {"first_id": first_id, "last_id": last_id, "trigger": trigger, "reason": reason, "attempt": attempt}
        started_id = self.store.record_event("retrain_started", where | {"rows": len(fresh), "episode": episode},
                                             index)
        where["episode"] = episode = episode or started_id  # the first try's event: what the retries belong to
        started = time.perf_counter()
        try:
            result = self.retrainer(self.settings, self.registry, fresh, trigger=trigger, reason=reason)
        except Exception as exc:
            log.exception("window %d: retraining failed (attempt %d)", index, attempt)
            self._failed(index, where, f"{type(exc).__name__}: {exc}")
            return FAILED
        seconds = time.perf_counter() - started
        self.store.record_event(f"retrain_{result.status}", result.to_dict() | {"attempt": attempt, "episode": episode},
                                index, result.candidate)
        self.metrics.retrains.labels(result.status).inc()
        if result.status != "waiting":
            self.metrics.retrain_seconds.observe(seconds)
            self.policy.retrained(index)
        self.store.update_check(index, outcome=result.status)
        return result.status

    def _failed(self, index: int, attempt: dict[str, Any], error: str) -> None:
        retry = self.settings.retraining.retry
        n = attempt["attempt"]
        delay = min(retry.backoff_s * 2 ** (n - 1), retry.max_backoff_s)
        retry_at = self.clock() + delay if n < retry.attempts else None
        self.store.record_event("retrain_failed", attempt | {"error": error, "retry_at": retry_at,
                                                             "retry_in_s": delay if retry_at else None}, index)
        self.metrics.retrains.labels(FAILED).inc()
        self.policy.retrained(index)
        self.store.update_check(index, outcome=FAILED)
        if retry_at is None:
            log.error("window %d: retraining failed %d times; not retried again", index, n)

    def handle_retries(self) -> list[str]:
        """Record retrains that were running when their process died as failed, then run the newest
        failed retrain again once its back-off has passed, unless a retrain started after it (its
        retry, or a newer one that supersedes it). Returns the outcomes of the retries run."""
        self._interrupted()
        failed = self.store.events("retrain_failed")
        if not failed:
            return []
        last = failed[-1]
        detail = last["detail"]
        retry_at = detail.get("retry_at")
        if retry_at is None or self.clock() < retry_at:
            return []
        if any(e["id"] > last["id"] for e in self.store.events("retrain_started")):
            return []
        log.info("window %s: retrying the retrain (attempt %d)", last["window"], detail["attempt"] + 1)
        return [self._attempt(last["window"], detail["first_id"], detail["last_id"], detail["trigger"],
                              detail["reason"], detail["attempt"] + 1, detail["episode"])]

    # -- shadow mode ------------------------------------------------------------------------------
    def judge_shadow(self) -> dict[str, Any] | None:
        """Shadow mode (``retraining.shadow``): once ``min_labels`` of the live rows the shadow
        scored beside the champion have labels, promote it if it beat the champion on them by
        ``retraining.margin`` (the gate's margin), else clear it; clear it too if ``max_windows``
        windows were checked without enough labels. Returns the verdict recorded, if any."""
        shadow, champion = self.registry.shadow(), self.registry.champion()
        if shadow is None or champion is None:
            return None
        config = self.settings.retraining.shadow
        rows = self.store.shadow_rows(shadow.version)
        labelled = rows[rows["label"].notna() & (rows["model_version"] == champion.version)]
        detail: dict[str, Any] = {"shadow": shadow.version, "champion": champion.version, "scored": len(rows),
                                  "labelled": len(labelled), "min_labels": config.min_labels}
        if len(labelled) < config.min_labels:
            since = _utc(shadow.set_at)
            waited = [c["window"] for c in self.store.checks() if _utc(c["created_at"]) >= since]
            if len(waited) < config.max_windows:
                return None
            verdict = REJECTED
            reason = (f"{len(labelled)} of {config.min_labels} labelled rows after {len(waited)} windows "
                      f"(retraining.shadow.max_windows)")
            window = waited[-1]
        else:
            metric, higher_is_better = primary(self.settings.task)
            champion_score = _score(self.settings.task, labelled["prediction"], labelled["label"])
            shadow_score = _score(self.settings.task, labelled["shadow_prediction"], labelled["label"])
            margin = self.settings.retraining.margin
            gain = (shadow_score - champion_score) * (1 if higher_is_better else -1)
            verdict = PROMOTED if gain >= margin else REJECTED
            reason = (f"{metric} on the {len(labelled)} labelled live rows it scored: shadow {shadow.version} "
                      f"{shadow_score:.4f}, champion {champion.version} {champion_score:.4f}, margin {margin:.4f}")
            detail |= {"metric": metric, "shadow_score": shadow_score, "champion_score": champion_score,
                       "margin": margin}
            last = self.store.last_check()
            window = last["window"] if last else None
        if verdict == PROMOTED:
            self.registry.promote(shadow.version, actor="monitor", reason=f"shadow: {reason}")  # clears the shadow
            if window is not None:
                self.policy.retrained(window)  # the new champion's cool-down starts now
        else:
            self.registry.clear_shadow(actor="monitor", reason=f"shadow rejected: {reason}")
        detail["reason"] = reason
        self.store.record_event(f"shadow_{verdict}", detail, window, shadow.version)
        self.metrics.retrains.labels(verdict).inc()
        log.info("shadow %s %s: %s", shadow.version, verdict, reason)
        return detail | {"verdict": verdict}

    def _interrupted(self) -> None:
        """Checks still "running": the process that ran their retrain died (this one runs none
        now, and no live process holds the retrain lease). Recorded as failed, to be retried."""
        running = self.store.checks(outcome=RUNNING)
        if not running or read_state(self.store, RETRAIN_LEASE).active:
            return
        starts = {e["window"]: e for e in self.store.events("retrain_started")}
        for check in running:
            start = starts.get(check["window"])
            if start is None:  # died before the retrain started: nothing to retry from
                self.store.update_check(check["window"], outcome=FAILED)
                continue
            d = start["detail"]
            attempt = {k: d[k] for k in ("first_id", "last_id", "trigger", "reason", "attempt")}
            attempt["episode"] = d.get("episode") or start["id"]
            log.error("window %d: the retrain was interrupted (its process stopped)", check["window"])
            self._failed(check["window"], attempt, "interrupted: the process running it stopped")

    def _first_id(self, since_window: int | None, frame: pd.DataFrame) -> int:
        if since_window is not None:
            for check in self.store.checks(since_window - 1):
                if check["window"] == since_window:
                    return int(check["first_id"])
        return int(frame["id"].iloc[0])

    def _export(self, check: dict[str, Any], signals: tuple[str, ...]) -> None:
        m = self.metrics
        m.drift_share.set(check["drift_share"])
        m.drift_threshold.set(self.settings.monitoring.drift_share)
        m.set_features(check["feature_scores"])
        m.set_signals(signals)
        if check["accuracy"] is not None:
            m.accuracy.set(check["accuracy"])
        version = check["reference_version"]
        m.set_expected_accuracy(version, expected_accuracy(self._version(version).metadata)[0])
        if check["estimated_accuracy"] is not None:  # classifiers: from the champion's calibrated confidence
            m.estimated_accuracy.labels("confidence").set(check["estimated_accuracy"])
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


def _score(task: str, predictions: pd.Series, labels: pd.Series) -> float:
    """The gate's primary metric of logged predictions against labels: accuracy or RMSE."""
    if task == "classification":
        return float(sum(_same(p, y) for p, y in zip(predictions, labels)) / len(labels))
    errors = predictions.astype(float).to_numpy() - labels.astype(float).to_numpy()
    return float((errors ** 2).mean() ** 0.5)


def _accuracy(rows: pd.DataFrame) -> float | None:
    return None if rows.empty else _score("classification", rows["prediction"], rows["label"])


def _same(prediction: Any, label: Any) -> bool:
    """Served prediction equals label: 1 == 1.0 (pandas turns labels with gaps into floats)."""
    if isinstance(prediction, (int, float)) and isinstance(label, (int, float)):
        return float(prediction) == float(label)
    return str(prediction) == str(label)


def _utc(value: Any) -> datetime:
    ts = pd.Timestamp(value).to_pydatetime()
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts
