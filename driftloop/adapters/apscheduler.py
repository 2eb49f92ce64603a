"""APScheduler 3's private API, in one place; and a job store that never unpickles.

Why a job store of our own: APScheduler's ``SQLAlchemyJobStore`` pickles each job's state into
the database and unpickles it on every read, so whoever can write that table runs code in the
monitor. :class:`JsonJobStore` keeps the same table (``apscheduler_jobs``: ``id``,
``next_run_time``, ``job_state``) but writes ``job_state`` as JSON (format below) and reads only
that. A row that is not this JSON (a pickled row from an earlier driftloop, another program's job)
is never unpickled: readers skip it with a log line; the scheduler's ``add_job(...,
replace_existing=True)`` overwrites it with the fresh job.

``job_state`` (UTF-8 JSON, keys sorted, so equal jobs give equal bytes)::

    {"driftloop_job": 1, "id": "check", "name": "...", "func": "pkg.module:function",
     "args": ["check"], "kwargs": {}, "executor": "default",
     "trigger": {"type": "interval", "interval_s": 60.0, "start_date": "<ISO 8601>",
                 "end_date": null, "timezone": "UTC", "jitter": null},
     "coalesce": true, "max_instances": 1, "misfire_grace_time": null,
     "next_run_time": "<ISO 8601>" | null}

with a cron trigger ``"trigger": {"type": "cron", "expression": "0 3 * * mon-fri", "timezone":
"UTC", "start_date": null, "end_date": null, "jitter": null}``: the five crontab fields as
APScheduler reads them back (``CronTrigger.from_crontab``; a trigger with other fields set, a
year or seconds, is refused). Build a cron trigger from an operator's expression with
:func:`crontab`, which refuses weekday numbers: APScheduler 3 counts weekdays from Monday = 0,
crontab from Sunday = 0, so ``0 3 * * 0`` would run on the wrong day; names mean the same in both.

Only interval and cron triggers, a function named by reference and JSON arguments are kept; the
store's ``resolve(func_ref, args)`` gives the callable (or ``None``: not one of ours, skipped), so
no module named in the database is ever imported either.

Private names touched (pinned: apscheduler >=3.11,<4, pyproject.toml):

- ``Job.__new__`` plus the attributes of ``Job.__slots__`` (what ``Job.__setstate__`` sets), and
  ``Job._scheduler`` / ``Job._jobstore_alias``: a job is rebuilt from its row the way APScheduler's
  own stores do, but without ``__setstate__``, which would import ``func_ref`` (an old driftloop
  ref such as ``monitoring.scheduler:_unbound_job`` no longer imports).
- ``BaseScheduler._real_add_job``, ``BaseScheduler._lookup_jobstore`` and ``Job._modify``
  (:class:`StateKeepingScheduler`): ``add_job(replace_existing=True)`` is the only hook between
  "a job is defined" and "it is written over the stored one".
- ``CronTrigger.fields`` (each field's ``name`` and ``str``): the only way back from a cron trigger
  to its expression.
- ``BaseScheduler._process_jobs`` (:class:`StateKeepingScheduler`): skipped once the scheduler
  is stopped (APScheduler 3 runs it once more after ``shutdown`` and logs an error).

Contract tests: tests/unit/test_adapters.py::test_apscheduler_job_rebuilt_like_setstate,
::test_apscheduler_store_hooks_called_as_expected, ::test_apscheduler_cron_trigger_round_trip.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore, ConflictingIdError, JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

__all__ = ["FORMAT", "JsonJobStore", "StateKeepingScheduler", "crontab", "decode_job_state", "describe_trigger",
           "encode_job_state", "same_schedule"]

log = logging.getLogger("driftloop.scheduler")
FORMAT = 1  # the "driftloop_job" key of a stored job_state
TABLE = "apscheduler_jobs"
# What Job.__setstate__ sets (apscheduler 3.11), less the two private links set on load.
JOB_FIELDS = ("id", "func_ref", "func", "trigger", "executor", "args", "kwargs", "name",
              "misfire_grace_time", "coalesce", "max_instances", "next_run_time")
KEYS = {"id", "name", "func", "args", "kwargs", "executor", "trigger", "coalesce", "max_instances",
        "misfire_grace_time", "next_run_time"}
Resolver = Callable[[str, list[Any]], Callable[..., Any] | None]
CRONTAB_FIELDS = ("minute", "hour", "day", "month", "day_of_week")  # a crontab line's five, in its order
TRIGGERS = ("interval", "cron")  # the "type" of a stored trigger


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def _tz_name(tz: tzinfo) -> str:
    if isinstance(tz, ZoneInfo):
        return tz.key
    if tz == timezone.utc:
        return "UTC"
    raise ValueError(f"time zone {tz!r} has no name to store (use UTC or an IANA zone)")


def crontab(expression: str, tz: tzinfo = timezone.utc) -> CronTrigger:
    """A cron trigger from a five-field crontab line (minute hour day month weekday), in ``tz``;
    ``ValueError`` saying what is wrong. Weekdays must be names (``mon-fri``, ``sun``): APScheduler 3
    numbers them from Monday = 0, crontab from Sunday = 0, so a number would run on the wrong day."""
    fields = expression.split()
    if len(fields) != len(CRONTAB_FIELDS):
        raise ValueError(f"five fields (minute hour day month weekday), got {expression!r}")
    if fields[2] != "*" and fields[4] != "*":
        raise ValueError(f"{expression!r} restricts both the day of the month and the weekday: crontab runs when "
                         "either matches, APScheduler 3 only when both do; restrict one of them")
    if any(c.isdigit() for c in fields[4]):
        raise ValueError(f"weekday {fields[4]!r}: give weekdays by name (mon-fri, sat,sun, or *): APScheduler 3 "
                         "counts them from Monday = 0, crontab from Sunday = 0, so a number would run on the wrong day")
    return CronTrigger.from_crontab(expression, timezone=tz)


def _trigger_state(trigger: Any) -> dict[str, Any]:
    """A trigger as the JSON of a stored job; ``ValueError`` for one this store cannot keep."""
    if isinstance(trigger, IntervalTrigger):
        spec: dict[str, Any] = {"type": "interval", "interval_s": trigger.interval.total_seconds()}
    elif isinstance(trigger, CronTrigger):
        fields = {f.name: str(f) for f in trigger.fields}
        if fields["year"] != "*" or fields["week"] != "*" or fields["second"] != "0":
            raise ValueError(f"only crontab-like cron triggers (minute hour day month weekday) are stored, "
                             f"not {trigger}")
        spec = {"type": "cron", "expression": " ".join(fields[name] for name in CRONTAB_FIELDS)}
    else:
        raise ValueError(f"only interval and cron triggers are stored, not {trigger}")
    return spec | {"start_date": _iso(trigger.start_date), "end_date": _iso(trigger.end_date),
                   "timezone": _tz_name(trigger.timezone), "jitter": trigger.jitter}


def same_schedule(a: Any, b: Any) -> bool:
    """Whether two triggers fire on the same schedule (an interval trigger's start date, the moment
    it was defined, aside); a trigger this store cannot keep is never the same."""
    def schedule(trigger: Any) -> dict[str, Any]:
        state = _trigger_state(trigger)
        if state["type"] == "interval":
            del state["start_date"]
        return state

    try:
        return schedule(a) == schedule(b)
    except ValueError:
        return False


def describe_trigger(trigger: Any) -> str:
    """A trigger as an operator reads it: ``every 3600s``, ``cron '0 3 * * mon' UTC``."""
    try:
        spec = _trigger_state(trigger)
    except ValueError:
        return str(trigger)
    if spec["type"] == "interval":
        return f"every {spec['interval_s']:g}s"
    return f"cron '{spec['expression']}' {spec['timezone']}"


def encode_job_state(job: Any) -> bytes:
    """A job's state as JSON bytes; ``ValueError`` for a job this store cannot keep."""
    try:
        trigger = _trigger_state(job.trigger)
    except ValueError as exc:
        raise ValueError(f"job {job.id!r}: {exc}") from None
    if not isinstance(job.func_ref, str) or not job.func_ref:
        raise ValueError(f"job {job.id!r}: the function must be given by reference ('module:function')")
    state = {
        "driftloop_job": FORMAT, "id": job.id, "name": job.name, "func": job.func_ref,
        "args": list(job.args), "kwargs": dict(job.kwargs), "executor": job.executor, "trigger": trigger,
        "coalesce": job.coalesce, "max_instances": job.max_instances,
        "misfire_grace_time": job.misfire_grace_time, "next_run_time": _iso(job.next_run_time),
    }
    try:
        return json.dumps(state, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"job {job.id!r}: arguments must be JSON values: {exc}") from None


def decode_job_state(raw: bytes | None) -> dict[str, Any] | None:
    """The JSON state of a row, or ``None`` if the row is not ours (never unpickled)."""
    if not raw:
        return None
    try:
        state = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("driftloop_job") != FORMAT or not KEYS <= state.keys():
        return None
    trigger = state.get("trigger")
    if not isinstance(trigger, dict) or trigger.get("type") not in TRIGGERS or not isinstance(state["kwargs"], dict):
        return None
    if not isinstance(state.get("func"), str) or not isinstance(state.get("args"), list):
        return None
    return state


def _trigger(state: dict[str, Any]) -> IntervalTrigger | CronTrigger:
    def when(value: str | None) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)

    dates = {"start_date": when(state["start_date"]), "end_date": when(state["end_date"]),
             "timezone": state["timezone"], "jitter": state["jitter"]}
    if state["type"] == "cron":  # what CronTrigger.from_crontab builds, with the stored dates
        fields = state["expression"].split()
        if len(fields) != len(CRONTAB_FIELDS):
            raise ValueError(f"a stored cron expression has five fields, not {state['expression']!r}")
        return CronTrigger(**dict(zip(CRONTAB_FIELDS, fields)), **dates)
    return IntervalTrigger(seconds=state["interval_s"], **dates)


class JsonJobStore(BaseJobStore):
    """APScheduler's job-store interface on one table, JSON state, nothing unpickled.

    ``resolve(func_ref, args)`` gives a job's callable, or ``None`` to skip the job. With
    ``keep_operator_changes`` a job written since this store read it is not overwritten by
    :meth:`update_job` (one conditional UPDATE; the other writer's change stands). The engine is
    the caller's: :meth:`shutdown` leaves it open.
    """

    def __init__(self, engine: sa.Engine, resolve: Resolver, keep_operator_changes: bool = False,
                 tablename: str = TABLE) -> None:
        super().__init__()
        self.engine = engine
        self.resolve = resolve
        self.keep_operator_changes = keep_operator_changes
        self.jobs_t = sa.Table(tablename, sa.MetaData(),
                               sa.Column("id", sa.Unicode(191), primary_key=True),
                               sa.Column("next_run_time", sa.Float(25), index=True),
                               sa.Column("job_state", sa.LargeBinary, nullable=False))
        self._read: dict[str, bytes] = {}  # job id -> its stored state when last read or written
        self._skipped: set[str] = set()  # ids already logged as not ours

    # -- reading --------------------------------------------------------------------------------
    def _load(self, job_id: str, raw: bytes | None) -> Job | None:
        state = decode_job_state(raw)
        func = None if state is None else self.resolve(state["func"], state["args"])
        try:
            trigger = None if func is None else _trigger(state["trigger"])  # type: ignore[index]
        except (KeyError, TypeError, ValueError, AttributeError):
            trigger = None
        if state is None or trigger is None or state.get("id") != job_id:
            if job_id not in self._skipped:
                self._skipped.add(job_id)
                log.warning("job %r in the job store is not a driftloop job (a pickled row from an earlier "
                            "driftloop, or another program's job): skipped, never unpickled", job_id)
            return None
        job = Job.__new__(Job)
        job.id, job.func_ref, job.func = state["id"], state["func"], func
        job.trigger, job.executor = trigger, state["executor"]
        job.args, job.kwargs, job.name = tuple(state["args"]), state["kwargs"], state["name"]
        job.misfire_grace_time, job.coalesce = state["misfire_grace_time"], state["coalesce"]
        job.max_instances = state["max_instances"]
        nxt = state["next_run_time"]
        job.next_run_time = None if nxt is None else datetime.fromisoformat(nxt).astimezone(trigger.timezone)
        job._scheduler, job._jobstore_alias = self._scheduler, self._alias
        self._read[job.id] = bytes(raw)  # type: ignore[arg-type]
        return job

    def _jobs(self, *where: Any) -> list[Job]:
        t = self.jobs_t
        query = sa.select(t.c.id, t.c.job_state).where(*where).order_by(t.c.next_run_time)
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
        return [job for row in rows if (job := self._load(row.id, row.job_state)) is not None]

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        self.jobs_t.create(self.engine, checkfirst=True)

    def lookup_job(self, job_id: str) -> Job | None:
        t = self.jobs_t
        with self.engine.begin() as conn:
            raw = conn.execute(sa.select(t.c.job_state).where(t.c.id == job_id)).scalar()
        return None if raw is None else self._load(job_id, raw)

    def get_due_jobs(self, now: datetime) -> list[Job]:
        return self._jobs(self.jobs_t.c.next_run_time <= now.timestamp())

    def get_next_run_time(self) -> datetime | None:
        # A skipped row must not set the wakeup (it would be due forever): the first of ours.
        jobs = self._jobs(self.jobs_t.c.next_run_time.is_not(None))
        return jobs[0].next_run_time if jobs else None

    def get_all_jobs(self) -> list[Job]:
        jobs = self._jobs()
        return [j for j in jobs if j.next_run_time is not None] + [j for j in jobs if j.next_run_time is None]

    # -- writing --------------------------------------------------------------------------------
    @staticmethod
    def _timestamp(job: Job) -> float | None:
        return None if job.next_run_time is None else job.next_run_time.timestamp()

    def add_job(self, job: Job) -> None:
        state = encode_job_state(job)
        insert = self.jobs_t.insert().values(id=job.id, next_run_time=self._timestamp(job), job_state=state)
        try:
            with self.engine.begin() as conn:
                conn.execute(insert)
        except sa.exc.IntegrityError:
            raise ConflictingIdError(job.id) from None
        self._read.pop(job.id, None)

    def update_job(self, job: Job) -> None:
        """Write ``job``; with ``keep_operator_changes``, only if the stored job is still the one
        this store read (else the other writer's change stands and a line is logged)."""
        t = self.jobs_t
        state = encode_job_state(job)
        read = self._read.pop(job.id, None)
        update = t.update().where(t.c.id == job.id).values(next_run_time=self._timestamp(job), job_state=state)
        conditional = self.keep_operator_changes and read is not None
        if conditional:
            update = update.where(t.c.job_state == read)
        with self.engine.begin() as conn:
            if conn.execute(update).rowcount == 1:
                if conditional:
                    self._read[job.id] = state
                return
            if not conditional or conn.execute(sa.select(t.c.id).where(t.c.id == job.id)).first() is None:
                raise JobLookupError(job.id)
        log.info("job %s was changed in the job store meanwhile (`driftloop jobs`): that change stands", job.id)

    def remove_job(self, job_id: str) -> None:
        with self.engine.begin() as conn:
            if conn.execute(self.jobs_t.delete().where(self.jobs_t.c.id == job_id)).rowcount == 0:
                raise JobLookupError(job_id)
        self._read.pop(job_id, None)

    def remove_all_jobs(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.jobs_t.delete())
        self._read.clear()

    def shutdown(self) -> None:
        pass  # the engine is the caller's, shared with the rest of the process

    def __repr__(self) -> str:
        return f"<{type(self).__name__} (url={self.engine.url!r})>"


class StateKeepingScheduler(BackgroundScheduler):
    """A BackgroundScheduler whose ``add_job`` never loses a stored job's state: when a job of the
    same id is stored (and readable), the new job's next run becomes ``keep(stored, fresh,
    same_schedule)`` (``stored`` ``None`` = paused; ``same_schedule``: the stored trigger fires on the
    new one's schedule, :func:`same_schedule`), and the stored job is replaced."""

    def __init__(self, keep: Callable[[datetime | None, datetime, bool], datetime | None], **options: Any) -> None:
        self._keep = keep
        super().__init__(**options)

    def _real_add_job(self, job: Any, jobstore_alias: str, replace_existing: bool) -> None:
        stored = self._lookup_jobstore(jobstore_alias).lookup_job(job.id)
        if stored is not None:
            fresh = getattr(job, "next_run_time", None) or job.trigger.get_next_fire_time(
                None, datetime.now(self.timezone))
            same = same_schedule(stored.trigger, job.trigger)
            job._modify(next_run_time=self._keep(stored.next_run_time, fresh, same))
        super()._real_add_job(job, jobstore_alias, True)

    def _process_jobs(self) -> float | None:
        """Nothing once stopped. APScheduler 3's background thread wakes, then processes due jobs,
        then looks at the state: woken while ``shutdown`` waits for a running job, it submits to
        an executor already shut down and logs the error ("cannot schedule new futures after
        shutdown") with a traceback, on every clean stop of a monitor or the demo."""
        if self.state == STATE_STOPPED:
            return None
        return super()._process_jobs()
