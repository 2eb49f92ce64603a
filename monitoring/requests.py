"""Retrains an operator asked for (``POST /admin/retrain`` records ``retrain_requested``).

The service only queues a request in the store (it never imports training code); the monitor
runs each one once, on the rows of the newest ``windows`` checked windows (``monitoring.consecutive``:
what a retrain the policy decided would see), and records ``retrain_request_done`` with what came
of it. A failed request is not retried: the operator sees it and asks again.
"""

from __future__ import annotations

import logging
from typing import Any

from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.retraining import FreshRows, Job
from driftloop.monitoring.store import PredictionStore
from driftloop.vocabulary import EventKind, Outcome, Trigger

log = logging.getLogger("driftloop.monitor")
NO_DATA = "no data"  # a request's outcome before any window was checked


class RetrainRequests:
    def __init__(self, store: PredictionStore, job: Job, fresh: FreshRows, metrics: MonitorMetrics, *,
                 windows: int) -> None:
        self.store = store
        self.job = job
        self.fresh = fresh
        self.metrics = metrics
        self.windows = windows

    def handle(self) -> list[dict[str, Any]]:
        """Retrain for every request not yet handled; returns what was done, one detail per request."""
        handled = {e["detail"].get("request") for e in self.store.events(EventKind.RETRAIN_REQUEST_DONE)}
        pending = [r for r in self.store.events(EventKind.RETRAIN_REQUESTED) if r["id"] not in handled]
        checks = self.store.checks()[-self.windows:] if pending else []
        done = []
        for request in pending:
            detail: dict[str, Any] = {"request": request["id"]}
            if not checks:
                detail |= {"outcome": NO_DATA, "reason": "no window has been checked yet"}
            else:
                reason = f"requested by {request['detail'].get('actor')}: {request['detail'].get('reason')}"
                fresh = self.fresh(checks[0].first_id, checks[-1].last_id)
                detail |= {"first_id": checks[0].first_id, "last_id": checks[-1].last_id,
                           "labelled": int(self.fresh.learnable(fresh).sum())}  # where a follow-up starts from
                try:
                    result = self.job(fresh, trigger=Trigger.MANUAL, reason=reason)
                    outcome = Outcome(result.status)
                    detail |= result.to_dict() | {"outcome": outcome}
                    self.metrics.retrains.labels(outcome).inc()
                except Exception as exc:  # the champion is untouched
                    log.exception("requested retrain failed")
                    detail |= {"outcome": Outcome.FAILED, "error": f"{type(exc).__name__}: {exc}"}
                    self.metrics.retrains.labels(Outcome.FAILED).inc()
            self.store.record_event(EventKind.RETRAIN_REQUEST_DONE, detail)
            done.append(detail)
        return done
