"""The monitor's APScheduler: jobs kept in the store's database, one active scheduler at a time.

Jobs. ``check`` runs :meth:`Monitor.run_once` every ``monitoring.interval_s``; ``retention``
prunes the registry (``registry.keep_*``) every ``registry.retention_interval_s``;
``store_retention`` prunes the store, the reports and the Evidently snapshots
(``monitoring.retention``, :mod:`monitoring.retention`) every ``monitoring.retention.interval_s``,
beside the check (it never takes the monitor's lock: it deletes nothing a check or a retrain still
reads) and is removed on start when that interval is 0; ``retrain``
(only with ``retraining.schedule.enabled``) runs :meth:`Monitor.retrain_on_schedule` every
``retraining.schedule.interval_s`` or on its ``cron`` expression (five fields, UTC, weekdays by
name: :func:`~driftloop.adapters.apscheduler.crontab`). With the schedule off, a ``retrain`` job
stored earlier is removed when a monitor starts, so ``driftloop jobs list`` never shows a job that
will not run. It runs beside ``check`` (a long retrain does not hold the checks back) and, like
every retrain, under the ``retrain`` lease. They live in
the project database (table ``apscheduler_jobs``), in :class:`~driftloop.adapters.apscheduler.JsonJobStore`:
APScheduler's interface, each job's state as JSON, nothing ever unpickled. An operator's
``driftloop jobs pause|resume|run`` reaches whichever monitor is active and outlives restarts. A
stored job names :func:`_unbound_job` and the job's name; the job store binds the name to this
process's runner when it loads the job. A row that is not such a JSON job (a pickled row left by
an earlier driftloop, another program's job) is never loaded: ``driftloop jobs`` skips it with a
log line, and the monitor's start writes the fresh job over it (a pause stored in the old format
is lost once; the job runs on its default schedule).

Settings, on purpose:

- ``max_instances=1``: a check that outlasts its interval (a retrain inside it) never runs twice
  at once, and neither does retention.
- ``coalesce=True``: runs missed meanwhile (a long retrain, a takeover after the active monitor
  died, a monitor down for a day) collapse into one. One check run catches up on every ready
  window, and one retention run is as good as three, so running more would only repeat work.
- ``misfire_grace_time=None``: a late run is never skipped. A check is idempotent and the only
  way windows get checked; skipping a late retention run could postpone it by a whole interval.
- A (re)started scheduler keeps the stored state of a job: paused stays paused, and a stored
  next run earlier than the definition's is kept (so restarts do not keep postponing a daily
  retention, and a cron run missed while no monitor ran runs at once); the schedule comes from
  the settings: when it changed there (another interval or cron expression), the next run is the
  new schedule's (a pause still stands). ``check`` runs at once on start.
- An operator's change is never overwritten by the scheduler: after launching a job it writes the
  job's next run only if the stored job is still the one it read (``job_store``), so a ``pause``
  or ``run`` that lands in between stands.

One active scheduler (:class:`ActiveScheduler`): a monitor runs its scheduler only while it holds
the ``scheduler`` lease (``monitoring/lease.py``), renewed every ``scheduler.lease_s / 3``; the
others wait and poll as often. If the active one dies, another takes over within ``lease_s``
plus one poll, with a fresh :class:`Monitor` (the policy restored from the stored checks). The
holder renews from the moment it takes the lease, while it builds its monitor and starts its
scheduler (seconds on a loaded machine), and records ``scheduler_active`` once the scheduler has
started, before any job runs. Each renewal also wakes the scheduler, so operator changes to the
job store are seen within ``lease_s / 3``. Jobs do nothing unless the lease is held (a fence against a holder that was cut
off), and every retrain holds the ``retrain`` lease (:func:`exclusive_retrainer`): two retrains
never run at once, whatever runs them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from driftloop.models.errors import ConfigError
from driftloop.monitoring.lease import RETRAIN, SCHEDULER, Heartbeat, Lease, holding
from driftloop.monitoring.monitor import Monitor
from driftloop.monitoring.retention import retention_counter, run_store_retention
from driftloop.monitoring.store import PredictionStore, StoreError
from driftloop.vocabulary import EventKind, Job

if TYPE_CHECKING:
    from driftloop.settings import ScheduleConfig

log = logging.getLogger("driftloop.scheduler")
# plain strings: the ids APScheduler keeps in the job store
CHECK_JOB, RETENTION_JOB, STORE_RETENTION_JOB, RETRAIN_JOB = (
    Job.CHECK.value, Job.RETENTION.value, Job.STORE_RETENTION.value, Job.RETRAIN.value)
JOB_FUNC = "driftloop.monitoring.scheduler:_unbound_job"
LEGACY_JOB_FUNC = "monitoring.scheduler:_unbound_job"  # what driftloop wrote before the one import name
JOB_DEFAULTS = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}


def _unbound_job(name: str) -> None:
    raise RuntimeError(f"job {name!r} has no runner in this process (only a monitor runs jobs)")


def run_retention(monitor: Monitor) -> list[str]:
    """Delete the versions the retention settings do not keep; recorded as an event."""
    r = monitor.settings.registry
    if monitor.registry.champion() is None:
        return []
    deleted = monitor.registry.prune(r.keep_ancestors, r.keep_candidates, actor="monitor", reason="retention")
    if deleted:
        monitor.store.record_event(EventKind.VERSIONS_DELETED, {"versions": deleted, "keep_ancestors": r.keep_ancestors,
                                                        "keep_candidates": r.keep_candidates})
    return deleted


def exclusive_retrainer(retrainer: Callable[..., Any], store: PredictionStore, ttl_s: float) -> Callable[..., Any]:
    """``retrainer`` that holds the ``retrain`` lease while it runs; raises ``LeaseBusy`` (the
    monitor records a failed retrain) if another process is retraining."""
    def run(*args: Any, **kwargs: Any) -> Any:
        with holding(store, RETRAIN, ttl_s):
            return retrainer(*args, **kwargs)
    return run


def retrain_trigger(schedule: ScheduleConfig) -> Any:
    """The ``retrain`` job's trigger: every ``interval_s``, or on the ``cron`` expression in UTC;
    ``ConfigError`` naming the field for an expression APScheduler cannot run."""
    from apscheduler.triggers.interval import IntervalTrigger

    from driftloop.adapters.apscheduler import crontab

    if schedule.cron is not None:
        try:
            return crontab(schedule.cron, timezone.utc)
        except ValueError as exc:
            raise ConfigError(f"retraining.schedule.cron: {exc}") from None
    if schedule.interval_s is None:
        raise ConfigError("retraining.schedule: set interval_s or cron")
    return IntervalTrigger(seconds=schedule.interval_s, timezone=timezone.utc)


def job_store(store: PredictionStore, runners: dict[str, Callable[[str], Any]] | None = None,
              keep_operator_changes: bool = False) -> Any:
    """The job store on the store's database; jobs get ``runners[name]`` when loaded.

    ``keep_operator_changes`` (the scheduler's store): a job written since this store read it
    is not overwritten (``JsonJobStore.update_job``, one conditional UPDATE, atomic on both
    databases); when it matches nothing the operator's change stands and the next wakeup reads it.
    The operator's commands use a store without it."""
    from driftloop.adapters.apscheduler import JsonJobStore

    def resolve(func_ref: str, args: list[Any]) -> Callable[..., Any] | None:
        if func_ref not in (JOB_FUNC, LEGACY_JOB_FUNC) or len(args) != 1 or not isinstance(args[0], str):
            return None  # not one of ours: skipped (its module is never imported)
        return (runners or {}).get(args[0], _unbound_job)  # func_ref and args stay as stored

    return JsonJobStore(store.engine, resolve, keep_operator_changes=keep_operator_changes)


def build_scheduler(monitor: Monitor, interval_s: float, lease: Lease | None = None) -> Any:
    """A BackgroundScheduler with the monitor's jobs in the store's database (not started).

    With ``lease``, jobs run only while it is held."""
    from apscheduler.events import EVENT_JOB_ERROR

    from driftloop.adapters.apscheduler import StateKeepingScheduler

    def guarded(name: str, run: Callable[[], Any]) -> Callable[[str], Any]:
        def job(_name: str) -> Any:
            if lease is not None and not lease.held:
                log.warning("job %s skipped: this monitor no longer holds the scheduler lease", name)
                return None
            return run()
        return job

    def stopping() -> bool:  # a long job's question between batches: shutting down, or the lease lost
        return not scheduler.running or (lease is not None and not lease.held)

    runners = {CHECK_JOB: guarded(CHECK_JOB, monitor.run_once),
               RETENTION_JOB: guarded(RETENTION_JOB, lambda: run_retention(monitor)),
               STORE_RETENTION_JOB: guarded(STORE_RETENTION_JOB, lambda: run_store_retention(monitor, stop=stopping)),
               RETRAIN_JOB: guarded(RETRAIN_JOB, monitor.retrain_on_schedule)}

    def keep(stored: datetime | None, fresh: datetime, same_schedule: bool) -> datetime | None:
        """A stored job's state stands (see the module's docstring): paused stays paused, an
        earlier stored next run is kept unless the schedule changed."""
        if stored is None:
            return None
        return min(stored, fresh) if same_schedule else fresh

    schedule = monitor.settings.retraining.schedule
    trigger = retrain_trigger(schedule) if schedule.enabled else None  # a bad expression fails before anything runs
    jobs = job_store(monitor.store, runners, keep_operator_changes=True)
    scheduler = StateKeepingScheduler(keep, timezone=timezone.utc, job_defaults=JOB_DEFAULTS,
                                      jobstores={"default": jobs})
    scheduler.add_job(JOB_FUNC, "interval", seconds=interval_s, args=[CHECK_JOB], id=CHECK_JOB,
                      name="drift and performance checks", next_run_time=datetime.now(timezone.utc),
                      replace_existing=True)
    if monitor.settings.registry.retention_interval_s > 0:
        scheduler.add_job(JOB_FUNC, "interval", seconds=monitor.settings.registry.retention_interval_s,
                          args=[RETENTION_JOB], id=RETENTION_JOB, name="registry retention", replace_existing=True)
    store_every = monitor.settings.monitoring.retention.interval_s
    if store_every > 0:
        if (metrics := getattr(monitor, "metrics", None)) is not None:
            retention_counter(metrics)  # at 0 on /metrics from the start: its first run is an increase()
        scheduler.add_job(JOB_FUNC, "interval", seconds=store_every, args=[STORE_RETENTION_JOB],
                          id=STORE_RETENTION_JOB, replace_existing=True,
                          name="store retention (prediction log, checks, events, reports, snapshots)")
    elif jobs.lookup_job(STORE_RETENTION_JOB) is not None:  # ours, from when it had an interval
        jobs.remove_job(STORE_RETENTION_JOB)
        log.info("job %s removed: monitoring.retention.interval_s is 0", STORE_RETENTION_JOB)
    if trigger is not None:
        scheduler.add_job(JOB_FUNC, trigger, args=[RETRAIN_JOB], id=RETRAIN_JOB, name="scheduled retrain",
                          replace_existing=True)
    elif jobs.lookup_job(RETRAIN_JOB) is not None:  # ours, from when the schedule was on
        jobs.remove_job(RETRAIN_JOB)
        log.info("job %s removed: retraining.schedule is off", RETRAIN_JOB)

    def on_error(event: Any) -> None:
        log.error("job %s failed: %r", event.job_id, event.exception)
        monitor.store.record_event(EventKind.JOB_FAILED, {"job": event.job_id, "error": repr(event.exception)})

    scheduler.add_listener(on_error, EVENT_JOB_ERROR)
    return scheduler


class ActiveScheduler:
    """Runs a monitor's scheduler only while holding the ``scheduler`` lease; a standby otherwise.

    ``make_monitor`` builds the monitor each time this process becomes active, so its policy
    starts from the checks the previous holder stored.
    """

    def __init__(self, store: PredictionStore, make_monitor: Callable[[], Monitor], interval_s: float,
                 lease_s: float, owner: str | None = None) -> None:
        self.store = store
        self.make_monitor = make_monitor
        self.interval_s = interval_s
        self.lease = Lease(store, SCHEDULER, lease_s, owner)
        self.active = threading.Event()  # set while this process runs the scheduler

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set: wait for the lease, run the scheduler while it is held."""
        poll = self.lease.ttl_s / 3
        announced = False
        while not stop.is_set():
            try:
                got = self.lease.acquire()
            except sa.exc.SQLAlchemyError as exc:
                log.warning("scheduler lease: %s", exc)
                got = False
            if got:
                self._serve(stop)
                announced = False
            else:
                if not announced:
                    state = self.lease.state()
                    log.info("standby: the scheduler runs in %s (lease for %.1fs more)", state.owner,
                             state.expires_in_s)
                    announced = True
                stop.wait(poll)

    def _serve(self, stop: threading.Event) -> None:
        # The heartbeat runs from the moment the lease is ours: building the monitor and starting
        # the scheduler (imports, the job store) can take longer than the lease on a loaded machine,
        # and a lease left to expire meanwhile would let a second monitor start a second scheduler.
        scheduler: Any = None
        monitor: Monitor | None = None

        def wake() -> None:  # each renewal: see operator changes to the job store
            if scheduler is not None and scheduler.running:
                scheduler.wakeup()

        beat = Heartbeat(self.lease, on_tick=wake).start()
        try:
            monitor = self.make_monitor()
            scheduler = build_scheduler(monitor, self.interval_s, lease=self.lease)
            if beat.lost.is_set() or stop.is_set():
                return
            scheduler.start(paused=True)  # the stored job state is applied; nothing runs yet
            self.store.record_event(EventKind.SCHEDULER_ACTIVE, {"owner": self.lease.owner, "epoch": self.lease.epoch})
            log.info("active: holding the scheduler lease (epoch %s, owner %s)", self.lease.epoch, self.lease.owner)
            scheduler.resume()
            self.active.set()
            while not stop.wait(0.2) and not beat.lost.is_set():
                pass
        finally:
            self.active.clear()
            if scheduler is not None and scheduler.running:
                scheduler.shutdown(wait=True)  # a running check finishes (its retrain holds its own lease)
            if monitor is not None:
                monitor.close(timeout=60)  # the pictures its checks queued are drawn before the handover
            beat.stop()
            if not beat.lost.is_set():
                self.lease.release()
                log.info("released the scheduler lease")


# -- what the CLI's `driftloop jobs` does: the job store, without a scheduler ------------------
def list_jobs(store: PredictionStore) -> list[Any]:
    return _jobs(store).get_all_jobs()


def pause_job(store: PredictionStore, name: str) -> Any:
    job = _lookup(store, name)
    job.next_run_time = None
    _jobs(store).update_job(job)
    return job


def resume_job(store: PredictionStore, name: str) -> Any:
    job = _lookup(store, name)
    if job.next_run_time is None:
        job.next_run_time = job.trigger.get_next_fire_time(None, datetime.now(timezone.utc))
        _jobs(store).update_job(job)
    return job


def run_job_now(store: PredictionStore, name: str) -> Any:
    """Make ``name`` due now: the active scheduler runs it within ``lease_s / 3``."""
    job = _lookup(store, name)
    if job.next_run_time is None:
        raise StoreError(f"job {name!r} is paused: `driftloop jobs resume {name}` first")
    job.next_run_time = datetime.now(timezone.utc)
    _jobs(store).update_job(job)
    return job


def _jobs(store: PredictionStore) -> Any:
    return job_store(store)


def _lookup(store: PredictionStore, name: str) -> Any:
    job = _jobs(store).lookup_job(name)
    if job is None:
        known = [j.id for j in list_jobs(store)]
        hint = " (set retraining.schedule to add it)" if name == RETRAIN_JOB else ""
        raise StoreError(f"no job {name!r}{hint}; known: {known or 'none (start `driftloop monitor` once)'}")
    return job
