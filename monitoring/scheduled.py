"""Scheduled retrains: the calendar's ``retrain`` job (``retraining.schedule``), beside the policy's.

Some operators retrain on a calendar whatever the checks say (a nightly or weekly refresh). The
monitor's scheduler runs the ``retrain`` job (monitoring/scheduler.py: every ``interval_s`` or on a
``cron`` expression, listed, paused and run with ``driftloop jobs``); it calls
:meth:`ScheduledRetrain.run`, which sends the rows below through the same retraining job as every
other retrain (``training/retrain.py`` bound in :class:`~monitoring.monitor.Monitor`, under the
``retrain`` lease): the configured data strategy and the gate, trigger ``schedule``.

The rows: those logged since the current champion became champion (the registry pointer's
``promoted_at``; a rollback's time for a rolled-back one), from the first of the newest ``rows``
labelled ones on (:class:`~monitoring.retraining.FreshRows`: unlabelled rows in between come
along, as the ``reweighted`` strategy weighs by them; for tasks without labels, the newest ``rows``
rows): the world since the champion took over, which is what a refresh is for. They are read
newest first, in growing id ranges, until there are ``rows`` of them or a row logged before the
promotion.

It waits (recorded, nothing trained, never an error) while there is no champion, while a
candidate awaits the shadow judge (as a check's retrain does), when no row was logged since the
promotion, when another retrain holds the ``retrain`` lease, and when the job itself says so: too
few labelled rows for the strategy (``retraining.min_rows``) or the gate
(``retraining.min_holdout_rows``). The next scheduled run tries again; a failed one is not retried
either (the calendar is the retry).

Audit trail: one event per run, ``retrain_<outcome>`` (``promoted``, ``rejected``, ``shadow``,
``waiting`` or ``failed``), ``window`` null (it belongs to no window), with ``trigger: schedule``,
``schedule`` (what fired it), ``since`` (the promotion), ``first_id``, ``last_id``, ``rows``,
``labelled``, ``retrain_reason`` and the job's outcome (its ``reason`` says why it waited; a
failure's ``error``, ``retry_at`` null). No ``retrain_started``: there is nothing to recover (the
calendar is its retry), it supersedes no retry of a check's retrain (monitoring/retraining.py), and
it answers no change, so it neither ends nor starts a follow-up series (monitoring/follow_up.py).
A promotion it made cools the policy down, as a check's retrain and the shadow judge's promotion do.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from driftloop.models.registry import Registry
from driftloop.monitoring.lease import LeaseBusy
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.policy import RetrainPolicy
from driftloop.monitoring.retraining import FreshRows, Job
from driftloop.monitoring.store import PredictionStore, as_utc
from driftloop.vocabulary import EventKind, Outcome, Trigger

if TYPE_CHECKING:
    from driftloop.settings import ScheduleConfig

log = logging.getLogger("driftloop.monitor")
MAX_ID = 2**62  # above any prediction id: "the newest row"


class ScheduledRetrain:
    """Runs the scheduled retrain (``retraining.schedule``: ``rows``, and what fired it)."""

    def __init__(self, config: ScheduleConfig, store: PredictionStore, registry: Registry, job: Job,
                 fresh: FreshRows, policy: RetrainPolicy, metrics: MonitorMetrics) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.job = job
        self.fresh = fresh
        self.policy = policy
        self.metrics = metrics

    @property
    def schedule(self) -> str:
        """What fires it, as the config says."""
        c = self.config
        return f"cron {c.cron!r} UTC" if c.cron is not None else f"every {c.interval_s:g}s"

    def run(self) -> Outcome:
        """One scheduled retrain (see the module docstring): recorded, and its outcome returned."""
        where: dict[str, Any] = {"trigger": Trigger.SCHEDULE, "schedule": self.schedule}
        champion = self.registry.champion()
        if champion is None:
            return self._waited(where, None, "no champion yet: `driftloop train` makes one")
        if (shadow := self.registry.candidate()) is not None:
            return self._waited(where, champion.version,
                                f"{shadow.version} is in shadow: no new candidate until it is judged")
        since = as_utc(champion.promoted_at)
        where["since"] = since.isoformat()
        fresh = self.rows_since(since)
        if fresh.empty:
            return self._waited(where, champion.version, f"no row logged since {champion.version} became champion")
        labelled = int(self.fresh.learnable(fresh).sum())
        what = "labelled rows" if self.fresh.supervised else "rows"
        newest = f"the newest {labelled} (retraining.schedule.rows)" if labelled == self.config.rows else f"{labelled}"
        reason = (f"scheduled ({self.schedule}): {newest} {what} logged since {champion.version} became champion "
                  f"at {since:%Y-%m-%d %H:%M:%S} UTC")
        where |= {"first_id": int(fresh["id"].iloc[0]), "last_id": int(fresh["id"].iloc[-1]), "rows": len(fresh),
                  "labelled": labelled, "retrain_reason": reason}
        log.info("%s", reason)
        clock = time.perf_counter()
        try:
            result = self.job(fresh, trigger=Trigger.SCHEDULE, reason=reason)
        except LeaseBusy as exc:  # another retrain runs: the next scheduled run tries again
            return self._waited(where, champion.version, f"another retrain is running: {exc}")
        except Exception as exc:  # the champion is untouched
            log.exception("scheduled retrain failed")
            self.store.record_event(EventKind.RETRAIN_FAILED, where | {
                "champion": champion.version, "error": f"{type(exc).__name__}: {exc}", "retry_at": None})
            self.metrics.retrains.labels(Outcome.FAILED).inc()
            return Outcome.FAILED
        outcome = Outcome(result.status)
        last = self.store.last_check()  # its window: where a promotion's cool-down starts (also on restart)
        self.store.record_event(EventKind.retrain(outcome), result.to_dict() | where,
                                last.window if last else None, result.candidate)
        self.metrics.retrains.labels(outcome).inc()
        if outcome != Outcome.WAITING:
            self.metrics.retrain_seconds.observe(time.perf_counter() - clock)
        if outcome == Outcome.PROMOTED and last is not None:
            self.policy.retrained(last.window)  # the new champion's cool-down starts now
        log.info("scheduled retrain %s: %s", outcome, result.reason)
        return outcome

    def rows_since(self, since: datetime) -> pd.DataFrame:
        """The rows logged at or after ``since``, from the first of the newest ``rows`` learnable
        ones on, in id order (:class:`FreshRows`' columns)."""
        cap = self.config.rows
        _, hi = self.store.count_rows(0, MAX_ID, labelled=False)
        parts: list[pd.DataFrame] = []
        found, size, done = 0, 2 * cap, False
        while hi is not None and hi >= 0 and not done:
            lo = max(0, hi - size + 1)
            part = self.fresh(lo, hi)
            recent = part[pd.to_datetime(part["created_at"], utc=True) >= pd.Timestamp(since)]
            if not recent.empty:
                parts.insert(0, recent)
                found += int(self.fresh.learnable(recent).sum())
            done = len(recent) < len(part) or found >= cap or lo == 0  # reached the promotion, or enough
            hi, size = lo - 1, 2 * size
        if not parts:
            return self.fresh(1, 0)  # no rows, the columns
        fresh = pd.concat(parts, ignore_index=True)
        learnable = self.fresh.learnable(fresh)
        if learnable.sum() > cap:  # the newest `rows` learnable rows, and the rows after the first of them
            fresh = fresh[fresh["id"] >= fresh.loc[learnable, "id"].iloc[-cap]].reset_index(drop=True)
        return fresh

    def _waited(self, where: dict[str, Any], champion: str | None, reason: str) -> Outcome:
        """Nothing trained this time, and why (the next scheduled run tries again)."""
        self.store.record_event(EventKind.RETRAIN_WAITING, where | {"status": Outcome.WAITING, "reason": reason,
                                                                    "champion": champion})
        self.metrics.retrains.labels(Outcome.WAITING).inc()
        log.info("scheduled retrain waits: %s", reason)
        return Outcome.WAITING
