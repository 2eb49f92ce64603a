"""The scheduler's lease and jobs, on SQLite and PostgreSQL (``store_url``): one holder at a
time, expiry and takeover, jobs kept in the database and controlled by an operator, and the
misfire and coalescing behaviour. The process tests kill a real ``driftloop monitor``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from driftloop.models.errors import ConfigError
from driftloop.monitoring import scheduler as sched
from driftloop.monitoring.lease import RETRAIN, SCHEDULER, Lease, LeaseBusy, holding, read_state
from driftloop.monitoring.store import PredictionStore, StoreError

from tests.conftest import make_settings
from tests.waiting import wait_until


@pytest.fixture
def store(store_url: str) -> Iterator[PredictionStore]:
    s = PredictionStore(store_url).create()
    yield s
    s.close()


# -- the lease ------------------------------------------------------------------------------------
def test_one_holder_at_a_time_and_release_hands_it_over(store: PredictionStore) -> None:
    a, b = Lease(store, SCHEDULER, 30.0), Lease(store, SCHEDULER, 30.0)
    assert a.acquire() and a.held and a.epoch == 1
    assert not b.acquire() and not b.held
    assert a.acquire() and a.epoch == 1  # re-taking our own lease extends it, same epoch
    state = read_state(store, SCHEDULER)
    assert state.owner == a.owner and state.active and 25 < state.expires_in_s <= 30
    a.release()
    assert not a.held and not read_state(store, SCHEDULER).active
    assert b.acquire() and b.epoch == 2
    assert not a.renew()  # it is b's now


def test_an_expired_lease_is_taken_over(store: PredictionStore) -> None:
    a, b = Lease(store, SCHEDULER, 1.0), Lease(store, SCHEDULER, 1.0)
    assert a.acquire()
    assert not b.acquire()
    started = time.monotonic()
    wait_until(b.acquire, timeout=5, what="b taking the expired lease")
    assert 0.5 < time.monotonic() - started < 3
    assert b.epoch == 2 and not a.renew() and not a.held


def test_a_retrain_holds_its_own_lease(store: PredictionStore) -> None:
    calls = []
    retrainer = sched.exclusive_retrainer(lambda *a, **k: calls.append(read_state(store, RETRAIN).owner) or "done",
                                          store, 30.0)
    assert retrainer() == "done" and calls[0] is not None  # held while it ran
    assert not read_state(store, RETRAIN).active  # released after
    with holding(store, RETRAIN, 30.0):  # another process is retraining
        with pytest.raises(LeaseBusy, match="retrain"):
            retrainer()
    assert len(calls) == 1


# -- jobs in the database --------------------------------------------------------------------------
class FakeMonitor:
    """What the scheduler needs of a Monitor: run_once, retrain_on_schedule, close, the store, the settings."""

    def __init__(self, store: PredictionStore, settings: Any) -> None:
        self.store = store
        self.settings = settings
        self.runs = 0
        self.scheduled = 0

    def run_once(self) -> list:
        self.runs += 1
        return []

    def close(self, timeout: float | None = None) -> bool:  # a Monitor draws its queued pictures here
        return True

    def retrain_on_schedule(self) -> str:
        self.scheduled += 1
        return "promoted"


@pytest.fixture
def monitor(store: PredictionStore, tmp_path: Path) -> FakeMonitor:
    # No store_retention job here: these tests count and drive the check and registry jobs
    return FakeMonitor(store, make_settings(tmp_path, store={"url": store.url},
                                            monitoring={"retention": {"interval_s": 0}}))


def seed_jobs(monitor: FakeMonitor, interval_s: float) -> None:
    """What a monitor's first start leaves in the database: the jobs (nothing runs)."""
    scheduler = sched.build_scheduler(monitor, interval_s)
    scheduler.start(paused=True)
    scheduler.shutdown()


def stored(store: PredictionStore) -> dict[str, Any]:
    return {job.id: job for job in sched.list_jobs(store)}


def test_jobs_are_kept_in_the_database_and_run(monitor: FakeMonitor) -> None:
    scheduler = sched.build_scheduler(monitor, 0.2)
    scheduler.start()
    try:
        wait_until(lambda: monitor.runs >= 2, what="two check runs")
    finally:
        scheduler.shutdown(wait=True)
    jobs = stored(monitor.store)
    assert set(jobs) == {"check", "retention"}
    assert jobs["check"].trigger.interval == timedelta(seconds=0.2)
    assert jobs["retention"].trigger.interval == timedelta(days=1)
    assert {k: getattr(jobs["check"], k) for k in sched.JOB_DEFAULTS} == sched.JOB_DEFAULTS


def test_a_paused_job_stays_paused_across_restarts_until_resumed(monitor: FakeMonitor) -> None:
    seed_jobs(monitor, 0.2)
    sched.pause_job(monitor.store, "check")
    scheduler = sched.build_scheduler(monitor, 0.2)  # a restarted monitor
    scheduler.start()
    try:
        scheduler.wakeup()
        assert stored(monitor.store)["check"].next_run_time is None
        with pytest.raises(StoreError, match="paused"):
            sched.run_job_now(monitor.store, "check")
        assert monitor.runs == 0
        sched.resume_job(monitor.store, "check")
        scheduler.wakeup()  # what each lease renewal does
        wait_until(lambda: monitor.runs >= 1, what="a run after resume")
    finally:
        scheduler.shutdown(wait=True)


def test_run_now_makes_a_job_due_and_a_late_job_runs_once(monitor: FakeMonitor) -> None:
    seed_jobs(monitor, 3600)
    # The check is an hour interval; pretend the monitor was down for ten intervals.
    jobs = sched._jobs(monitor.store)
    check = jobs.lookup_job("check")
    check.next_run_time = datetime.now(timezone.utc) - timedelta(hours=10)
    jobs.update_job(check)
    scheduler = sched.build_scheduler(monitor, 3600)
    scheduler.start()
    try:
        wait_until(lambda: monitor.runs >= 1, what="the late check")
        sched.run_job_now(monitor.store, "check")
        scheduler.wakeup()
        wait_until(lambda: monitor.runs >= 2, what="the check run on demand")
        job = stored(monitor.store)["check"]
        assert job.next_run_time > datetime.now(timezone.utc) + timedelta(minutes=59)  # back on schedule
    finally:
        scheduler.shutdown(wait=True)
    assert monitor.runs == 2  # coalesced: ten missed runs ran once, then the one asked for


def test_unknown_job_names_the_known_ones(store: PredictionStore) -> None:
    with pytest.raises(StoreError, match="no job 'nope'; known: none"):
        sched.pause_job(store, "nope")


def test_cli_jobs_and_db_commands(monitor: FakeMonitor, tmp_path: Path) -> None:
    from driftloop.cli import app
    from driftloop.launch import write_config

    config = write_config(monitor.settings, tmp_path / "driftloop.yaml")
    seed_jobs(monitor, 5)
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(app, [*args, "--config", str(config)])
        assert result.exit_code == 0, result.output
        return result.output

    out = cli("jobs", "list")
    assert "check" in out and "retention" in out and "active monitor: none" in out
    assert "check: paused" in cli("jobs", "pause", "check")
    assert "paused" in next(line for line in cli("jobs", "list").splitlines() if line.startswith("check"))
    assert "check: next run" in cli("jobs", "resume", "check")
    assert "retention: next run" in cli("jobs", "run", "retention")
    assert stored(monitor.store)["retention"].next_run_time <= datetime.now(timezone.utc)
    assert [e["detail"]["job"] for e in monitor.store.events() if e["kind"].startswith("job_")] == \
        ["check", "check", "retention"]
    bad = runner.invoke(app, ["jobs", "pause", "nope", "--config", str(config)])
    assert bad.exit_code == 2 and "no job 'nope'" in bad.output
    from driftloop.monitoring import migrations

    newest = max(p.name[:4] for p in (Path(migrations.__file__).parent / "versions").glob("[0-9]*.py"))
    assert f"revision {newest} (newest: {newest})" in cli("db", "current")
    assert f"store at revision {newest}" in cli("db", "upgrade")


def next_utc(now: datetime, hour: int, minute: int, weekday: int | None = None) -> datetime:
    """The first ``hour:minute`` UTC after ``now`` (on ``weekday``, Monday = 0, if given)."""
    when = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    while when <= now or (weekday is not None and when.weekday() != weekday):
        when += timedelta(days=1)
    return when


def test_a_scheduled_retrain_job_on_a_cron_schedule(store: PredictionStore, tmp_path: Path) -> None:
    """``retraining.schedule`` adds the ``retrain`` job: listed with its cron schedule, paused,
    resumed and run now through the real scheduler with ``driftloop jobs``; a changed schedule
    applies (a pause stands); with the schedule off, the stored job is removed on start."""
    from driftloop.adapters.apscheduler import describe_trigger
    from driftloop.cli import app
    from driftloop.launch import write_config

    def monitor(**schedule: Any) -> FakeMonitor:
        return FakeMonitor(store, make_settings(tmp_path, store={"url": store.url},
                                                retraining={"schedule": schedule},
                                                monitoring={"retention": {"interval_s": 0}}))

    daily, weekly = {"enabled": True, "cron": "30 4 * * *"}, {"enabled": True, "cron": "0 3 * * sun"}
    config = write_config(monitor(**daily).settings, tmp_path / "driftloop.yaml")
    runner = CliRunner()

    def cli(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*args, "--config", str(config)])
        assert result.exit_code == code, result.output
        return result.output

    seed_jobs(monitor(**daily), 3600)
    assert stored(store)["retrain"].next_run_time == next_utc(datetime.now(timezone.utc), 4, 30)
    line = next(line for line in cli("jobs", "list").splitlines() if line.startswith("retrain"))
    assert "cron '30 4 * * *' UTC" in line and "04:30:00 UTC" in line and "scheduled retrain" in line
    seed_jobs(monitor(**weekly), 3600)  # the schedule changed in the config: the new one applies
    assert stored(store)["retrain"].next_run_time == next_utc(datetime.now(timezone.utc), 3, 0, weekday=6)

    assert "retrain: paused" in cli("jobs", "pause", "retrain")
    seed_jobs(monitor(**daily), 3600)  # changed again while paused: the operator's pause stands
    job = stored(store)["retrain"]
    assert job.next_run_time is None and describe_trigger(job.trigger) == "cron '30 4 * * *' UTC"
    assert "04:30:00 UTC" in cli("jobs", "resume", "retrain")  # on the new schedule
    fake = monitor(**daily)
    scheduler = sched.build_scheduler(fake, 3600)
    scheduler.start()
    try:
        cli("jobs", "run", "retrain")
        scheduler.wakeup()  # what each lease renewal does
        wait_until(lambda: fake.scheduled >= 1, what="the scheduled retrain run now")
        wait_until(lambda: stored(store)["retrain"].next_run_time > datetime.now(timezone.utc),
                   what="the retrain job back on its schedule")
    finally:
        scheduler.shutdown(wait=True)
    assert fake.scheduled == 1
    assert stored(store)["retrain"].next_run_time == next_utc(datetime.now(timezone.utc), 4, 30)

    seed_jobs(monitor(enabled=False), 3600)  # switched off: removed on the monitor's start
    assert set(stored(store)) == {"check", "retention"}
    assert "retrain" not in cli("jobs", "list")
    out = cli("jobs", "run", "retrain", code=2)
    assert "no job 'retrain' (set retraining.schedule to add it); known: ['check', 'retention']" in out
    with pytest.raises(ConfigError, match="retraining.schedule.cron: weekday '0'"):
        sched.build_scheduler(monitor(enabled=True, cron="0 3 * * 0"), 3600)  # 0: Sunday to cron, Monday here


def test_one_active_scheduler_and_a_clean_handover(store: PredictionStore, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, store={"url": store.url})
    monitors: list[FakeMonitor] = []

    def make() -> FakeMonitor:
        monitors.append(FakeMonitor(store, settings))
        return monitors[-1]

    a = sched.ActiveScheduler(store, make, 0.1, lease_s=1.5)
    b = sched.ActiveScheduler(store, make, 0.1, lease_s=1.5)
    stop_a, stop_b = threading.Event(), threading.Event()
    ta = threading.Thread(target=a.run, args=(stop_a,))
    ta.start()
    try:
        wait_until(a.active.is_set, what="a active")
        tb = threading.Thread(target=b.run, args=(stop_b,))
        tb.start()
        wait_until(lambda: monitors[0].runs >= 3, what="a's checks")
        assert not b.active.is_set() and len(monitors) == 1  # b waits
        stop_a.set()
        ta.join(10)
        wait_until(b.active.is_set, timeout=3, what="b taking over after a released")
        wait_until(lambda: len(monitors) == 2 and monitors[1].runs >= 1, what="b's checks")
        owners = [e["detail"]["owner"] for e in store.events("scheduler_active")]
        assert owners == [a.lease.owner, b.lease.owner]
    finally:
        stop_a.set()
        stop_b.set()
        ta.join(10)
        if "tb" in locals():
            tb.join(10)
    assert not read_state(store, SCHEDULER).active  # b released it on stop


def test_a_slow_start_keeps_the_lease(store: PredictionStore, tmp_path: Path) -> None:
    """Building the monitor and starting the scheduler may outlast the lease on a loaded machine:
    the holder renews it meanwhile, so no second scheduler starts."""
    settings = make_settings(tmp_path, store={"url": store.url})
    lease_s = 1.0
    monitors: list[FakeMonitor] = []

    def slow() -> FakeMonitor:
        time.sleep(2.5 * lease_s)  # imports, the registry, the job store...
        monitors.append(FakeMonitor(store, settings))
        return monitors[-1]

    a = sched.ActiveScheduler(store, slow, 0.1, lease_s=lease_s)
    b = sched.ActiveScheduler(store, lambda: FakeMonitor(store, settings), 0.1, lease_s=lease_s)
    stop = threading.Event()
    threads = [threading.Thread(target=a.run, args=(stop,))]
    threads[0].start()
    try:
        wait_until(lambda: read_state(store, SCHEDULER).owner == a.lease.owner, what="a holding the lease")
        threads.append(threading.Thread(target=b.run, args=(stop,)))
        threads[1].start()
        wait_until(a.active.is_set, timeout=10, what="a active after its slow start")
        wait_until(lambda: monitors[0].runs >= 2, what="a's checks")
        assert not b.active.is_set()
        assert [e["detail"]["owner"] for e in store.events("scheduler_active")] == [a.lease.owner]
        assert read_state(store, SCHEDULER).epoch == 1  # never changed hands
    finally:
        stop.set()
        for t in threads:
            t.join(10)


def test_an_operator_change_while_the_scheduler_updates_the_job_stands(monitor: FakeMonitor) -> None:
    """The scheduler writes a job's next run after launching it, from what it read before: an
    operator's pause or run-now in between stands (that write is dropped); otherwise it lands."""
    from apscheduler.jobstores.base import JobLookupError

    seed_jobs(monitor, 0.2)
    scheduler = sched.build_scheduler(monitor, 0.2)
    scheduler.start(paused=True)  # its job store, as a running scheduler uses it; nothing runs
    try:
        jobs = scheduler._lookup_jobstore("default")
        later = datetime.now(timezone.utc) + timedelta(minutes=5)

        def launch(operator: Callable[[], Any]) -> dict[str, Any]:
            due = {j.id: j for j in jobs.get_due_jobs(later + timedelta(days=2))}  # what _process_jobs read
            assert set(due) == {"check", "retention"}
            operator()  # meanwhile, `driftloop jobs ...`
            for job in due.values():
                job._modify(next_run_time=later)  # the next run, written after the launch
                jobs.update_job(job)
            return stored(monitor.store)

        now = launch(lambda: sched.pause_job(monitor.store, "check"))
        assert now["check"].next_run_time is None  # still paused
        assert now["retention"].next_run_time == later  # untouched by the operator: written as usual
        sched.resume_job(monitor.store, "check")  # the operator's resume still works
        assert stored(monitor.store)["check"].next_run_time is not None
        asked = sched.run_job_now(monitor.store, "retention").next_run_time
        now = launch(lambda: sched.run_job_now(monitor.store, "check"))
        assert now["check"].next_run_time <= datetime.now(timezone.utc)  # still due now
        assert now["retention"].next_run_time == later  # asked before the read: it ran, then written
        assert asked < later
        jobs.get_due_jobs(later)  # read again, then it is gone
        jobs.remove_job("retention")
        with pytest.raises(JobLookupError):  # a job that is gone is still an error
            jobs.update_job(now["retention"])
    finally:
        scheduler.shutdown()


# -- real processes ------------------------------------------------------------------------------
def start_monitor(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    with log.open("wb") as out:
        return subprocess.Popen([str(Path(sys.executable).with_name("driftloop")), "monitor", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def owner_pid(store: PredictionStore) -> int | None:
    state = read_state(store, SCHEDULER)
    return int(state.owner.split(":")[1]) if state.active else None


@pytest.mark.slow
def test_sigkill_of_the_active_monitor_hands_over_within_the_lease(store: PredictionStore, tmp_path: Path,
                                                                   champion_home: Path) -> None:
    from driftloop.launch import write_config

    lease_s = 3.0
    settings = make_settings(tmp_path, registry={"home": str(champion_home / "bentoml")}, store={"url": store.url},
                             monitoring={"interval_s": 0.5}, scheduler={"lease_s": lease_s})
    config = write_config(settings, tmp_path / "driftloop.yaml")
    procs = [start_monitor(config, tmp_path / f"monitor-{i}.log") for i in range(2)]
    try:
        # Active means its scheduler_active event is recorded, not merely the lease taken: the
        # holder builds its monitor and starts its scheduler first, seconds on a loaded machine.
        # Killed in between, it would leave no event, and the takeover's would be the only one.
        active = wait_until(lambda: store.events("scheduler_active"), timeout=60, what="a monitor active")
        first = int(active[0]["detail"]["owner"].split(":")[1])
        wait_until(lambda: b"standby" in (tmp_path / f"monitor-{[p.pid for p in procs].index(first) ^ 1}.log")
                   .read_bytes(), timeout=60, what="the other monitor in standby")
        assert owner_pid(store) == first and len(store.events("scheduler_active")) == 1
        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()
        second = wait_until(lambda: (pid := owner_pid(store)) not in (None, first) and pid, timeout=lease_s * 3,
                            what="the standby taking over")
        takeover = time.monotonic() - killed
        print(f"takeover after SIGKILL: {takeover:.2f}s (lease {lease_s}s)")
        assert takeover < lease_s + lease_s / 3 + 1.0
        assert second in [p.pid for p in procs]
        events = wait_until(lambda: (e := store.events("scheduler_active"))[1:] and e, timeout=30,
                            what="the new holder's scheduler_active event")
        assert [int(e["detail"]["owner"].split(":")[1]) for e in events] == [first, second]
        assert events[1]["detail"]["epoch"] == events[0]["detail"]["epoch"] + 1
        survivor = next(p for p in procs if p.pid == second)
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(30) == 0
        assert not read_state(store, SCHEDULER).active  # released on a clean stop
    except BaseException:
        for i in range(len(procs)):  # what the monitors said, in the failure's report
            print(f"--- monitor-{i}.log (pid {procs[i].pid})\n{(tmp_path / f'monitor-{i}.log').read_text()[-4000:]}")
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


# -- no pickle in the job store --------------------------------------------------------------------
class _Boom:
    """Unpickling this runs code: it touches ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.path),))


def _raw_rows(store: PredictionStore) -> dict[str, bytes]:
    import sqlalchemy as sa

    with store.engine.begin() as conn:
        return {row.id: bytes(row.job_state) for row in conn.execute(sa.text("SELECT id, job_state FROM apscheduler_jobs"))}


def _write_raw(store: PredictionStore, job_id: str, state: bytes) -> None:
    import sqlalchemy as sa

    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM apscheduler_jobs WHERE id = :id"), {"id": job_id})
        conn.execute(sa.text("INSERT INTO apscheduler_jobs (id, next_run_time, job_state) VALUES (:id, :t, :s)"),
                     {"id": job_id, "t": time.time() - 60, "s": state})


def test_the_job_table_holds_json_not_pickle(monitor: FakeMonitor) -> None:
    import json

    seed_jobs(monitor, 5)
    sched.pause_job(monitor.store, "check")
    rows = _raw_rows(monitor.store)
    assert set(rows) == {"check", "retention"}
    for job_id, raw in rows.items():
        state = json.loads(raw.decode("utf-8"))  # JSON, not a pickle (which starts with b"\x80")
        assert state["id"] == job_id and state["func"] == sched.JOB_FUNC and state["args"] == [job_id]
        assert state["trigger"]["type"] == "interval"
    assert json.loads(rows["check"])["next_run_time"] is None  # the operator's pause, stored as JSON


def test_a_pickled_row_is_never_loaded(monitor: FakeMonitor, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """A row whose pickle would run code (an earlier driftloop's job, or a planted one) is skipped
    by readers, with a log line, and replaced by the fresh job when the scheduler starts."""
    import pickle

    canary = tmp_path / "unpickled"
    planted = pickle.dumps({"version": 1, "id": "check", "boom": _Boom(str(canary))})
    seed_jobs(monitor, 5)
    _write_raw(monitor.store, "check", planted)
    _write_raw(monitor.store, "foreign", planted)
    with caplog.at_level("WARNING", logger="driftloop.scheduler"):
        assert set(stored(monitor.store)) == {"retention"}  # `driftloop jobs list`: skipped
    assert "job 'foreign' in the job store is not a driftloop job" in caplog.text
    assert sched._jobs(monitor.store).lookup_job("foreign") is None
    with pytest.raises(StoreError, match="no job 'foreign'"):
        sched.run_job_now(monitor.store, "foreign")
    scheduler = sched.build_scheduler(monitor, 0.2)
    scheduler.start()
    try:
        wait_until(lambda: monitor.runs >= 2, what="the fresh check job running")
    finally:
        scheduler.shutdown(wait=True)
    assert not canary.exists()  # nothing was ever unpickled
    rows = _raw_rows(monitor.store)
    assert rows["check"] != planted and rows["check"].startswith(b"{")  # replaced on start
    assert rows["foreign"] == planted  # not ours: left alone, never loaded
    assert set(stored(monitor.store)) == {"check", "retention"}


def test_a_job_naming_the_old_func_ref_is_bound(monitor: FakeMonitor) -> None:
    """Rows naming ``monitoring.scheduler:_unbound_job`` (before the one import name) still run."""
    seed_jobs(monitor, 3600)
    raw = _raw_rows(monitor.store)["check"]
    _write_raw(monitor.store, "check", raw.replace(sched.JOB_FUNC.encode(), sched.LEGACY_JOB_FUNC.encode()))
    assert stored(monitor.store)["check"].func_ref == sched.LEGACY_JOB_FUNC
    scheduler = sched.build_scheduler(monitor, 3600)
    scheduler.start()
    try:
        wait_until(lambda: monitor.runs >= 1, what="the check naming the old func ref")
    finally:
        scheduler.shutdown(wait=True)
