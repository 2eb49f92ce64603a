"""The monitor: every complete window of logged predictions -> drift + accuracy -> policy -> retrain.

It is the composition of the loop's rooms, each given only the settings it reads:

- :class:`~monitoring.check.WindowCheck` (``monitoring``): the ready windows measured (drift,
  accuracy, the confidence estimate), decided by the policy, recorded with their events; their
  gauges set. Windows waiting for labels are estimated meanwhile
  (:class:`~monitoring.early_warning.EarlyWarning`).
- :class:`~monitoring.workspace.Pictures` (``monitoring.workspace``): each check's HTML report
  (flagged windows) and Evidently snapshot, drawn by a background thread after the check, while
  no window is being checked; :meth:`Monitor.flush` waits for them.
- :class:`~monitoring.retraining.RetrainRunner` (``retraining.retry``): what a retrain decision
  leads to, retried with back-off; retrains interrupted by a dead process.
- :class:`~monitoring.requests.RetrainRequests` (``monitoring.consecutive``, ``retraining.retry``):
  retrains an operator asked for (``POST /admin/retrain``), retried by the runner like a check's.
- :class:`~monitoring.shadow.ShadowJudge` (``retraining``: ``shadow``, ``margin``): the shadow's verdict.
- :class:`~monitoring.watch.PromotionWatch` (``retraining.watch``): after a promotion, its predecessor
  scores beside it; a new champion significantly worse on the same live rows is rolled back.
- :class:`~monitoring.follow_up.FollowUps` (``retraining.follow_up``): a change answered by a
  promotion is learnt again as its labelled rows accumulate (2x, 4x, ... up to a cap), each through the gate.
- :class:`~monitoring.scheduled.ScheduledRetrain` (``retraining.schedule``): the calendar's retrain
  (the scheduler's ``retrain`` job), on the newest labelled rows since the champion's promotion.
- :class:`~monitoring.baselines.Baselines` (``monitoring.drift``): what every window is measured
  against, per model version.

They share one :class:`~monitoring.policy.RetrainPolicy`, rebuilt from the stored checks when a
monitor starts. :meth:`Monitor.run_once` is the scheduler's job: queued requests and due retries
first, then every ready window in log order, however many (read many at a time; a check is
recorded, as ``running``, before the retrain it decided starts, and the windows after a retrain
are read again, with the labels that arrived meanwhile), then the shadow.
:meth:`Monitor.retrain_on_schedule` is the ``retrain`` job's, when ``retraining.schedule`` is on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import pandas as pd

from driftloop.models.registry import Registry
from driftloop.monitoring.baselines import Baselines
from driftloop.monitoring.check import WindowCheck
from driftloop.monitoring.follow_up import FollowUps
from driftloop.monitoring.lease import LeaseBusy
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.policy import PolicyConfig, RetrainPolicy
from driftloop.monitoring.requests import RetrainRequests
from driftloop.monitoring.retraining import FreshRows, RetrainRunner
from driftloop.monitoring.scheduled import ScheduledRetrain
from driftloop.monitoring.shadow import ShadowJudge
from driftloop.monitoring.store import PredictionStore
from driftloop.monitoring.watch import PromotionWatch
from driftloop.monitoring.workspace import DriftWorkspace, Pictures
from driftloop.monitoring.retention import restore_checks
from driftloop.vocabulary import RETRAINED, Check, Decision, EventKind, Outcome, Trigger

if TYPE_CHECKING:
    from driftloop.settings import MonitoringConfig, Settings
    from driftloop.training.retrain import RetrainOutcome

log = logging.getLogger("driftloop.monitor")
# training's entry point: retrainer(settings, registry, fresh, trigger=..., reason=...)
Retrainer = Callable[..., "RetrainOutcome"]


def policy_config(monitoring: MonitoringConfig) -> PolicyConfig:
    m = monitoring
    return PolicyConfig(drift_share=m.drift_share, max_accuracy_drop=m.max_accuracy_drop,
                        max_error_rise=m.max_error_rise, min_labels=m.min_labels, consecutive=m.consecutive,
                        cooldown_windows=m.cooldown_windows, dry_run=m.dry_run, decay_z=m.decay_z,
                        calibration_windows=m.calibration_windows, explain_by_confidence=m.explain_by_confidence,
                        max_unfamiliar=m.max_unfamiliar,
                        labels_overrule_drift=m.labels_overrule_drift)


class Monitor:
    """``policy``: the retraining policy to use instead of the configured one (benchmarks: a
    periodic baseline); it is restored from the stored checks either way."""

    def __init__(self, settings: Settings, store: PredictionStore, registry: Registry, *,
                 retrainer: Retrainer | None = None, metrics: MonitorMetrics | None = None,
                 clock: Callable[[], float] = time.time, on_check: Callable[[Check], None] | None = None,
                 policy: RetrainPolicy | None = None) -> None:
        if retrainer is None:
            from driftloop.training.retrain import retrain as retrainer
        self.settings = settings
        self.store = store
        self.registry = registry
        self.retrainer = retrainer
        self.metrics = metrics or MonitorMetrics()
        self.clock = clock
        self.on_check = on_check
        self.policy = policy or RetrainPolicy(policy_config(settings.monitoring))
        self.baselines = Baselines(registry, settings.monitoring.drift)
        job = counted(partial(retrainer, settings, registry), self.metrics)
        fresh = FreshRows(store, settings.task, settings.data)
        self.pictures = Pictures(DriftWorkspace.from_settings(settings), self.metrics)
        self.windows = WindowCheck(settings.monitoring, settings.task, store, registry, self.baselines, self.policy,
                                   self.metrics, pictures=self.pictures, clock=clock)
        self.retraining = RetrainRunner(settings.retraining.retry, store, registry, job, fresh, self.policy,
                                        self.metrics, clock=clock)
        self.requests = RetrainRequests(store, job, fresh, self.metrics, windows=settings.monitoring.consecutive,
                                        retry=settings.retraining.retry, clock=clock)
        self.shadow = ShadowJudge(settings.retraining, settings.task, store, registry, self.policy, self.metrics)
        self.watch = PromotionWatch(settings.retraining.watch, settings.task, store, registry, self.metrics)
        self.follow_ups = FollowUps(settings.retraining, store, registry, job, fresh, self.metrics)
        self.scheduled = ScheduledRetrain(settings.retraining.schedule, store, registry, job, fresh, self.policy,
                                          self.metrics)
        self._lock = threading.Lock()  # one run at a time: the check job and the scheduled retrain
        # A bounded slice: the checks the policy's state can depend on (monitoring/retention.py), not every one
        restore(self.policy, self.baselines, restore_checks(store, settings), scheduled_promotions(store),
                promising_rejections(store))

    def run_once(self) -> list[Check]:
        """Serve queued retrain requests and due retries, check every window that is ready, then
        judge the shadow (if any); returns the checks recorded, oldest first."""
        with self._lock:
            return self._run_once()

    def _run_once(self) -> list[Check]:
        retrained = bool(self.handle_requests()) | bool(self.handle_retries())
        done: list[Check] = []
        with self.pictures.paused():  # every core for the checks while windows wait
            while ready := self.windows.ready_windows():
                for index, frame in ready:
                    done.append(self.check_window(index, frame))
                    if done[-1].decision == Decision.RETRAIN:
                        break  # it took a while: the next windows are read again, with their new labels
        self.judge_shadow()
        self.watch.run()  # after the shadow's verdict: a promotion it made is watched at once
        # last, and never in a run that retrained already (monitoring/follow_up.py)
        self.follow_ups.run(retrained=retrained or any(c.decision == Decision.RETRAIN for c in done))
        return done

    def check_window(self, index: int, frame: pd.DataFrame) -> Check:
        """Check window ``index`` (``frame``: its rows), act on its decision, set the gauges."""
        checked = self.windows.run(index, frame)  # recorded; "running" if it decided a retrain
        check = checked.check
        if check.decision == Decision.RETRAIN:
            self.retraining.retrain(check, checked.decision)
        self.windows.export(checked)
        score = (f"rmse={check.rmse:.4g}" if check.rmse is not None
                 else f"accuracy={'-' if check.accuracy is None else f'{check.accuracy:.3f}'}")
        log.info("window %d: rows=%d drift_share=%.2f %s decision=%s %s", index, check.rows, check.drift_share,
                 score, check.decision, check.outcome or "")
        if self.on_check:
            self.on_check(check)
        return check

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the pictures (reports, snapshots) of every check so far are drawn; False if
        ``timeout`` passed first."""
        return self.pictures.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Draw the pictures still queued and let their thread end (a clean shutdown)."""
        return self.pictures.close(timeout)

    def handle_requests(self) -> list[dict[str, Any]]:
        """Run the retrains requested through ``POST /admin/retrain``; returns what was done."""
        return self.requests.handle()

    def handle_retries(self) -> list[Outcome]:
        """Record retrains interrupted by a dead process as failed, then run the newest failed
        retrain again if its back-off has passed; returns the outcomes of the retries run."""
        self.retraining.recover()
        return self.retraining.retry_due()

    def judge_shadow(self) -> dict[str, Any] | None:
        """The shadow's verdict, if one is due (see :class:`~monitoring.shadow.ShadowJudge`)."""
        return self.shadow.judge()

    def retrain_on_schedule(self) -> Outcome:
        """The scheduler's ``retrain`` job: one scheduled retrain, recorded (see
        :class:`~monitoring.scheduled.ScheduledRetrain`)."""
        with self._lock:  # the check job's thread shares the policy: never both at once
            return self.scheduled.run()


def counted(job: Retrainer, metrics: MonitorMetrics) -> Retrainer:
    """``job`` counting every run in ``driftloop_retrain_jobs_total{trigger, outcome}``: the one
    place every source of retrains (a check's decision, a retry, an operator's request, a follow-up,
    the schedule) goes through. A run that raised counts as ``failed``; one that never started
    because another process holds the retrain lease is not a run."""
    def run(*args: Any, trigger: Any, **kwargs: Any) -> RetrainOutcome:
        try:
            result = job(*args, trigger=trigger, **kwargs)
        except LeaseBusy:
            raise
        except Exception:
            metrics.retrain_jobs.labels(str(trigger), Outcome.FAILED).inc()
            raise
        metrics.retrain_jobs.labels(str(trigger), result.status).inc()
        return result

    return run


def restore(policy: RetrainPolicy, baselines: Baselines, checks: Iterable[Check],
            promoted_after: Iterable[int] = (), promising: Iterable[int] = ()) -> None:
    """Rebuild the policy's streak, calibration and cool-down from the stored checks (a restarted
    monitor); ``promoted_after``: windows after whose check a promotion with no check of its own
    (a scheduled retrain's) started a cool-down; ``promising``: windows whose retrain was rejected
    only for want of held-out rows (the streak went on)."""
    promoted, kept_on = set(promoted_after), set(promising)
    for check in checks:
        policy.update(baselines.stats_of(check))
        ran = check.decision == Decision.RETRAIN and check.outcome in RETRAINED and check.window not in kept_on
        if ran or check.window in promoted:
            policy.retrained(check.window)


def promising_rejections(store: PredictionStore) -> list[int]:
    """The windows whose retrain was rejected only because the paired test could not yet tell."""
    return [e["window"] for e in store.events(EventKind.RETRAIN_REJECTED)
            if e["detail"].get("promising") and e["window"] is not None]


def scheduled_promotions(store: PredictionStore) -> list[int]:
    """The windows after which scheduled retrains promoted (monitoring/scheduled.py records them)."""
    return [e["window"] for e in store.events(EventKind.RETRAIN_PROMOTED)
            if e["detail"].get("trigger") == Trigger.SCHEDULE and e["window"] is not None]
