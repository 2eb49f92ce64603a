"""The monitor's APScheduler: the ``check`` job runs :meth:`Monitor.run_once`; the
``retention`` job prunes the registry (``registry.keep_*``) once per ``retention_interval_s``.

``max_instances=1``: a check that outlasts its interval (a retrain inside it) is never run
twice at once; ``coalesce=True``: the runs missed meanwhile collapse into one, which then
catches up on every ready window; ``misfire_grace_time=None``: a late run still runs.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from monitoring.monitor import Monitor

log = logging.getLogger("driftloop.scheduler")
CHECK_JOB = "check"
RETENTION_JOB = "retention"


def _run_checks(monitor: Monitor) -> None:
    monitor.run_once()


def run_retention(monitor: Monitor) -> list[str]:
    """Delete the versions the retention settings do not keep; recorded as an event."""
    r = monitor.settings.registry
    if monitor.registry.champion() is None:
        return []
    deleted = monitor.registry.prune(r.keep_ancestors, r.keep_candidates, actor="monitor", reason="retention")
    if deleted:
        monitor.store.record_event("versions_deleted", {"versions": deleted, "keep_ancestors": r.keep_ancestors,
                                                        "keep_candidates": r.keep_candidates})
    return deleted


def build_scheduler(monitor: Monitor, interval_s: float) -> Any:
    from apscheduler.events import EVENT_JOB_ERROR
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(timezone=timezone.utc, job_defaults={
        "max_instances": 1, "coalesce": True, "misfire_grace_time": None})
    scheduler.add_job(_run_checks, "interval", seconds=interval_s, args=[monitor], id=CHECK_JOB,
                      name="drift and performance checks", next_run_time=datetime.now(timezone.utc),
                      replace_existing=True)
    if monitor.settings.registry.retention_interval_s > 0:
        scheduler.add_job(run_retention, "interval", seconds=monitor.settings.registry.retention_interval_s,
                          args=[monitor], id=RETENTION_JOB, name="registry retention", replace_existing=True)

    def on_error(event: Any) -> None:
        log.error("job %s failed: %r", event.job_id, event.exception)
        monitor.store.record_event("job_failed", {"job": event.job_id, "error": repr(event.exception)})

    scheduler.add_listener(on_error, EVENT_JOB_ERROR)
    return scheduler
