"""Retrains an operator asked for (``POST /admin/retrain`` records ``retrain_requested``).

The service only queues a request in the store (it never imports training code); the monitor
runs each one on the rows of the newest ``windows`` checked windows (``monitoring.consecutive``:
what a retrain the policy decided would see), and records ``retrain_request_done`` with what came
of its first try. Each try is recorded as a check's retrain's is (:class:`~monitoring.retraining.Attempts`:
``retrain_started``, then ``retrain_<outcome>`` or ``retrain_failed``, ``trigger: manual``, with
``request``), in the window its rows end at; a failed one is tried again with the same back-off
and number of attempts (``retraining.retry``) by :meth:`RetrainRunner.retry_due
<monitoring.retraining.RetrainRunner.retry_due>`. A request whose first try started in a process
that died before it ended (no ``retrain_request_done``, and nobody holds the retrain lease) is
recorded failed, interrupted, and retried so too: it is never simply run again from scratch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from driftloop.monitoring.lease import RETRAIN as RETRAIN_LEASE
from driftloop.monitoring.lease import read_state
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.retraining import INTERRUPTED, Attempts, FreshRows, Job
from driftloop.monitoring.store import PredictionStore
from driftloop.vocabulary import JOB_OUTCOMES, EventKind, Outcome, Trigger

if TYPE_CHECKING:
    from driftloop.settings import RetryConfig

log = logging.getLogger("driftloop.monitor")
NO_DATA = "no data"  # a request's outcome before any window was checked
FAILURE_FIELDS = ("error", "retry_at", "retry_in_s", "attempt", "episode")  # a failed try's, in the request's answer
# What a try records (monitoring/retraining.py): where a request's first try got to
TRIED = (EventKind.RETRAIN_STARTED, EventKind.RETRAIN_FAILED, *(EventKind.retrain(o) for o in JOB_OUTCOMES))


class RetrainRequests:
    """``retry``: ``retraining.retry`` (its defaults if None)."""

    def __init__(self, store: PredictionStore, job: Job, fresh: FreshRows, metrics: MonitorMetrics, *,
                 windows: int, retry: RetryConfig | None = None, clock: Callable[[], float] = time.time) -> None:
        if retry is None:
            from driftloop.settings import RetryConfig

            retry = RetryConfig()
        self.store = store
        self.fresh = fresh
        self.windows = windows
        self.attempts = Attempts(retry, store, job, fresh, metrics, clock=clock)

    def handle(self) -> list[dict[str, Any]]:
        """Retrain for every request not yet handled; returns what was done, one detail per request."""
        handled = {e["detail"].get("request") for e in self.store.events(EventKind.RETRAIN_REQUEST_DONE)}
        pending = [r for r in self.store.events(EventKind.RETRAIN_REQUESTED) if r["id"] not in handled]
        if not pending:
            return []
        tries: dict[int, list[dict[str, Any]]] = {}  # a request's recorded tries, oldest first
        for event in self.store.events(TRIED):
            if event["detail"].get("request") is not None:
                tries.setdefault(event["detail"]["request"], []).append(event)
        checks = self.store.checks(limit=self.windows)
        done = []
        for request in pending:
            detail: dict[str, Any] = {"request": request["id"]}
            if request["id"] in tries:  # its first try began, but its process died before this record
                if (recorded := self._recorded(tries[request["id"]])) is None:
                    continue  # another process may be running it still: see again next run
                detail |= recorded
            elif not checks:
                detail |= {"outcome": NO_DATA, "reason": "no window has been checked yet"}
            else:
                reason = f"requested by {request['detail'].get('actor')}: {request['detail'].get('reason')}"
                first_id, last_id = checks[0].first_id, checks[-1].last_id
                fresh = self.fresh(first_id, last_id)
                detail |= {"first_id": first_id, "last_id": last_id,
                           "labelled": int(self.fresh.learnable(fresh).sum())}  # where a follow-up starts from
                tried = self.attempts.run(checks[-1].window, first_id, last_id, Trigger.MANUAL, reason,
                                          request=request["id"])
                if tried.result is not None:
                    detail |= tried.result.to_dict()
                else:  # the champion is untouched; retried after its back-off
                    detail |= {k: tried.detail[k] for k in FAILURE_FIELDS}
                detail["outcome"] = tried.outcome
            self.store.record_event(EventKind.RETRAIN_REQUEST_DONE, detail)
            done.append(detail)
        return done

    def _recorded(self, tried: list[dict[str, Any]]) -> dict[str, Any] | None:
        """What came of a first try whose process died before the request's record (``tried``: its
        events): its outcome, if it got as far as recording one; else it is recorded failed, interrupted
        (None while the retrain lease is held: it may still be running)."""
        start, last = tried[0], tried[-1]
        d = start["detail"]
        where = {"first_id": d["first_id"], "last_id": d["last_id"], "labelled": d["labelled"]}
        if last["kind"] == EventKind.RETRAIN_STARTED:
            if read_state(self.store, RETRAIN_LEASE).active:
                return None
            log.error("requested retrain %s was interrupted (its process stopped)", d["request"])
            attempt = {k: d[k] for k in ("first_id", "last_id", "trigger", "reason", "attempt", "request")}
            last = {"kind": EventKind.RETRAIN_FAILED, "detail": self.attempts.failed(
                start["window"], attempt | {"episode": d.get("episode") or start["id"]}, INTERRUPTED)}
        if last["kind"] == EventKind.RETRAIN_FAILED:
            return where | {k: last["detail"][k] for k in FAILURE_FIELDS} | {"outcome": Outcome.FAILED}
        return where | last["detail"] | {"outcome": Outcome(last["detail"]["status"])}
