"""The retrain runner: what a check's ``retrain`` decision leads to, retried with back-off.

A check that decided retrain is recorded first, as ``running`` (monitoring/check.py). Then:

- while a candidate is in shadow, no new one is trained: the check's outcome is
  ``shadow_pending`` and the streak goes on until the shadow judge's verdict
  (monitoring/shadow.py);
- otherwise the retraining job (``training/retrain.py``, bound to the settings and registry) gets
  every logged row since the first window of the flagged streak (:class:`FreshRows`), and its
  outcome lands in the check and the audit trail. The champion is untouched until the job's own
  last step, its promotion.

Each try is recorded by :class:`Attempts`: ``retrain_started``, then ``retrain_<outcome>``, or
``retrain_failed`` with when it will be tried again (``retraining.retry``: doubling back-off, a
bounded number of attempts); :meth:`RetrainRunner.retry_due` runs the newest failed retrain again
once its back-off has passed, in this monitor or a restarted one (the schedule is in the store). A
check still ``running`` when no process holds the retrain lease belongs to a process that died
inside the job: :meth:`RetrainRunner.recover` records it failed, to be retried. An operator's
request (monitoring/requests.py, ``trigger: manual``) is tried the same way, its events carrying
``request`` (the ``retrain_requested`` event's id), and retried the same way; it belongs to no
check's decision, so no check's outcome and no cool-down follow from it. Follow-up and scheduled
retrains (monitoring/follow_up.py, monitoring/scheduled.py) keep their own accounts: their events
are never retried or recovered here, nor supersede a retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

from driftloop.models.registry import Registry
from driftloop.models.schema import SUPERVISED
from driftloop.monitoring.lease import RETRAIN as RETRAIN_LEASE
from driftloop.monitoring.lease import read_state
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.policy import PolicyDecision, RetrainPolicy
from driftloop.monitoring.store import PredictionStore
from driftloop.vocabulary import Check, EventKind, Outcome, Signal, Trigger

if TYPE_CHECKING:
    from driftloop.settings import DataConfig, RetryConfig
    from driftloop.training.retrain import RetrainOutcome

log = logging.getLogger("driftloop.monitor")
# The retraining job, bound to the settings and the registry: job(fresh, trigger=..., reason=...).
Job = Callable[..., "RetrainOutcome"]
INTERRUPTED = "interrupted: the process running it stopped"  # the error of a try its process did not survive


@dataclass(frozen=True)
class FreshRows:
    """The rows a retrain gets: every logged row from ``first_id`` to ``last_id``, read when the
    job starts (labels that arrived since count), with its label as the target (``data.target``;
    None where none arrived yet: the job trains on labelled rows, and the ``reweighted`` strategy
    also weighs by the unlabelled ones' inputs) and its log time as ``data.timestamp``."""

    store: PredictionStore
    task: str
    data: DataConfig

    def __call__(self, first_id: int, last_id: int) -> pd.DataFrame:
        fresh = self.store.rows_between(first_id, last_id)
        if self.task in SUPERVISED:
            fresh = fresh.rename(columns={"label": self.data.target})
        if self.data.timestamp:
            fresh[self.data.timestamp] = fresh["created_at"]
        return fresh

    @property
    def supervised(self) -> bool:
        return self.task in SUPERVISED

    def learnable(self, fresh: pd.DataFrame) -> pd.Series:
        """Per row of ``fresh``, whether a candidate can learn from it: it has a label (supervised
        tasks), or any row (the others)."""
        if self.supervised:
            return fresh[self.data.target].notna()
        return pd.Series(True, index=fresh.index)


class Tried(NamedTuple):
    """What one try of a retrain came to."""

    outcome: Outcome
    detail: dict[str, Any]  # what its last event recorded (retrain_<outcome> or retrain_failed)
    result: RetrainOutcome | None  # the job's answer; None if it raised


class Attempts:
    """One try of a retrain on the rows ``first_id``..``last_id``, recorded in the audit trail and
    the metrics; a failure with when it will be tried again (``retraining.retry``)."""

    def __init__(self, retry: RetryConfig, store: PredictionStore, job: Job, fresh: FreshRows,
                 metrics: MonitorMetrics, *, clock: Callable[[], float] = time.time) -> None:
        self.retry = retry
        self.store = store
        self.job = job
        self.fresh = fresh
        self.metrics = metrics
        self.clock = clock

    def run(self, window: int | None, first_id: int, last_id: int, trigger: str, reason: str, attempt: int = 1,
            episode: int | None = None, request: int | None = None) -> Tried:
        """Try once; ``episode``: the first try's ``retrain_started`` event (None: this is the first),
        ``request``: the operator's request this retrain answers (None: a check's decision)."""
        fresh = self.fresh(first_id, last_id)
        where = {"first_id": first_id, "last_id": last_id, "trigger": trigger, "reason": reason, "attempt": attempt}
        if request is not None:
            where["request"] = request
        started_id = self.store.record_event(EventKind.RETRAIN_STARTED, where | {
            "rows": len(fresh), "labelled": int(self.fresh.learnable(fresh).sum()), "episode": episode}, window)
        where["episode"] = episode = episode or started_id  # the first try's event: what the retries belong to
        started = time.perf_counter()
        try:
            result = self.job(fresh, trigger=trigger, reason=reason)
        except Exception as exc:
            log.exception("window %s: retraining failed (attempt %d)", window, attempt)
            return Tried(Outcome.FAILED, self.failed(window, where, f"{type(exc).__name__}: {exc}"), None)
        seconds = time.perf_counter() - started
        outcome = Outcome(result.status)
        detail = result.to_dict() | {k: where[k] for k in ("trigger", "attempt", "episode", "request") if k in where}
        self.store.record_event(EventKind.retrain(outcome), detail, window, result.candidate)
        self.metrics.retrains.labels(outcome).inc()
        if outcome != Outcome.WAITING:
            self.metrics.retrain_seconds.observe(seconds)
        return Tried(outcome, detail, result)

    def failed(self, window: int | None, attempt: dict[str, Any], error: str) -> dict[str, Any]:
        """Record the try ``attempt`` (its ``retrain_started`` detail: rows, trigger, reason, attempt,
        episode) as failed with ``error``, and when it is tried again; returns the detail recorded."""
        n = attempt["attempt"]
        delay = min(self.retry.backoff_s * 2 ** (n - 1), self.retry.max_backoff_s)
        retry_at = self.clock() + delay if n < self.retry.attempts else None
        detail = attempt | {"error": error, "retry_at": retry_at, "retry_in_s": delay if retry_at else None}
        self.store.record_event(EventKind.RETRAIN_FAILED, detail, window)
        self.metrics.retrains.labels(Outcome.FAILED).inc()
        if retry_at is None:
            log.error("window %s: retraining failed %d times; not retried again", window, n)
        return detail


class RetrainRunner:
    """Runs the retrains checks decide, and retries every failed one (``retraining.retry``:
    attempts and back-off), an operator's request's included."""

    def __init__(self, retry: RetryConfig, store: PredictionStore, registry: Registry, job: Job, fresh: FreshRows,
                 policy: RetrainPolicy, metrics: MonitorMetrics, *, clock: Callable[[], float] = time.time) -> None:
        self.retry = retry
        self.store = store
        self.registry = registry
        self.fresh = fresh
        self.policy = policy
        self.clock = clock
        self.attempts = Attempts(retry, store, job, fresh, metrics, clock=clock)

    def retrain(self, check: Check, decision: PolicyDecision) -> Outcome:
        """Act on ``check`` (recorded ``running``), which decided retrain: train a candidate on the
        streak's rows, or wait for the shadow. Its outcome (and reason) are written into ``check``
        and the store."""
        if (shadow := self.registry.candidate()) is not None:  # a promotion's watch never blocks one
            check.outcome = Outcome.SHADOW_PENDING  # the streak goes on: a retrain follows the shadow's verdict
            check.reason = f"{decision.reason}; {shadow.version} is in shadow: no new candidate until it is judged"
            self.store.update_check(check.window, outcome=check.outcome, reason=check.reason)
            return check.outcome
        trigger = Trigger.DECAY if Signal.DECAY in decision.signals else Trigger.DRIFT
        check.outcome = self.attempt(check.window, self._first_id(decision.since_window, check), check.last_id,
                                     trigger, f"window {check.window}: {decision.reason}")
        return check.outcome

    def attempt(self, window: int, first_id: int, last_id: int, trigger: str, reason: str, attempt: int = 1,
                episode: int | None = None, request: int | None = None) -> Outcome:
        """One try of the retrain the check of ``window`` decided, on the rows ``first_id``..``last_id``;
        the outcome is also written into the window's check. A failure is recorded with when it will
        be tried again. With ``request`` (a retry of an operator's request), ``window`` only says where
        its rows end: no check's outcome changes, no cool-down starts."""
        tried = self.attempts.run(window, first_id, last_id, trigger, reason, attempt, episode, request)
        if request is not None:
            return tried.outcome
        if tried.result is None:
            self._decided_failed(window)
        else:
            if tried.outcome != Outcome.WAITING and not tried.result.promising:
                self.policy.retrained(window)
            # a promising rejection (better, not yet significantly) keeps the streak, like waiting: the next
            # flagged window retrains on the rows since it began, a larger held-out set among them
            self.store.update_check(window, outcome=tried.outcome)
        return tried.outcome

    def retry_due(self) -> list[Outcome]:
        """Run the newest failed retrain again once its back-off has passed, unless a retrain started
        after it (its retry, or a newer one that supersedes it). Returns the outcomes of the retries run."""
        failed = [e for e in self.store.events(EventKind.RETRAIN_FAILED) if not follow_up(e)]
        if not failed:
            return []
        last = failed[-1]
        detail = last["detail"]
        retry_at = detail.get("retry_at")
        if retry_at is None or self.clock() < retry_at:
            return []
        if any(e["id"] > last["id"] for e in self.store.events(EventKind.RETRAIN_STARTED) if not follow_up(e)):
            return []
        log.info("window %s: retrying the retrain (attempt %d)", last["window"], detail["attempt"] + 1)
        return [self.attempt(last["window"], detail["first_id"], detail["last_id"], detail["trigger"],
                             detail["reason"], detail["attempt"] + 1, detail["episode"], detail.get("request"))]

    def recover(self) -> None:
        """Checks still ``running``: the process that ran their retrain died (this one runs none
        now, and no live process holds the retrain lease). Recorded as failed, to be retried."""
        running = self.store.checks(outcome=Outcome.RUNNING)
        if not running or read_state(self.store, RETRAIN_LEASE).active:
            return
        starts = {e["window"]: e for e in self.store.events(EventKind.RETRAIN_STARTED)  # the checks' own
                  if not follow_up(e) and e["detail"].get("request") is None}
        for check in running:
            start = starts.get(check.window)
            if start is None:  # died before the retrain started: nothing to retry from
                self.store.update_check(check.window, outcome=Outcome.FAILED)
                continue
            d = start["detail"]
            attempt = {k: d[k] for k in ("first_id", "last_id", "trigger", "reason", "attempt")}
            attempt["episode"] = d.get("episode") or start["id"]
            log.error("window %d: the retrain was interrupted (its process stopped)", check.window)
            self.attempts.failed(check.window, attempt, INTERRUPTED)
            self._decided_failed(check.window)

    def _decided_failed(self, window: int) -> None:
        """The retrain the check of ``window`` decided failed: its cool-down starts, its check says so."""
        self.policy.retrained(window)
        self.store.update_check(window, outcome=Outcome.FAILED)

    def _first_id(self, since_window: int | None, check: Check) -> int:
        """The first row of the flagged streak (``since_window``'s), or of ``check``'s window."""
        if since_window is not None:
            for earlier in self.store.checks(since_window - 1):
                if earlier.window == since_window:
                    return earlier.first_id
        return check.first_id


def follow_up(event: dict[str, Any]) -> bool:
    """Whether a retrain event belongs to a follow-up (monitoring/follow_up.py) or a scheduled
    retrain (monitoring/scheduled.py): those are neither retried nor recovered here, and never
    supersede a retrain a check decided (each tries again on its own terms)."""
    return event["detail"].get("trigger") in (Trigger.FOLLOW_UP, Trigger.SCHEDULE)
