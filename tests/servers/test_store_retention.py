"""Store retention (monitoring/retention.py), on SQLite and PostgreSQL (``store_url``): old
prediction-log rows go with their labels and shadow answers (archived to Parquet first when asked),
checks and events are bounded, reports and snapshots are pruned, and nothing the monitor still
needs goes: unchecked rows, the newest windows, the flagged streak, a pending retry, a running
retrain, an open follow-up series, a pending request, the policy a restarted monitor rebuilds."""

from __future__ import annotations

import json
import os
import random
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from driftloop.monitoring import retention
from driftloop.monitoring import scheduler as sched
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.monitor import restore
from driftloop.monitoring.policy import PolicyConfig, RetrainPolicy, WindowStats
from driftloop.monitoring.store import PredictionStore, events as events_table
from driftloop.vocabulary import RETRAINED, Check, Decision, EventKind, Outcome

from tests.conftest import make_settings
from tests.waiting import wait_until

NOW = datetime.now(timezone.utc).replace(microsecond=0)
OLD = NOW - timedelta(days=40)  # past the default 30 days
WINDOW = 100  # rows per window here


@pytest.fixture
def store(store_url: str):
    s = PredictionStore(store_url).create()
    yield s
    s.close()


def settings_for(store: PredictionStore, root: Path, retention_: dict[str, Any] | None = None, **monitoring: Any):
    """Settings that keep only ``keep_windows`` windows (the policy, shadow and watch need fewer)."""
    return make_settings(root, store={"url": store.url},
                         monitoring={"consecutive": 1, "cooldown_windows": 0, "calibration_windows": 0,
                                     "retention": {"keep_windows": 2, "batch_rows": 100} | (retention_ or {}),
                                     **monitoring},
                         retraining={"shadow": {"max_windows": 1}, "watch": {"max_windows": 1}})


def log_rows(store: PredictionStore, n: int, at: datetime, start: int = 0) -> None:
    store.insert_predictions([{"request_id": f"r{i:05d}", "created_at": at + timedelta(seconds=i - start),
                               "model_version": "v1", "features": {"x": float(i), "c": "a"}, "prediction": i % 2,
                               "confidence": 0.75} for i in range(start, start + n)])


def check(window: int, decision: Decision = Decision.NONE, at: datetime = OLD, **fields: Any) -> Check:
    base = {"window": window, "first_id": window * WINDOW + 1, "last_id": (window + 1) * WINDOW, "rows": WINDOW,
            "model_version": "v1", "reference_version": "v1", "drift_share": 0.0, "drifted_features": [],
            "feature_scores": {}, "labelled": 0, "accuracy": None, "champion_labelled": 0,
            "champion_accuracy": None, "decision": decision, "reason": "test", "created_at": at}
    return Check(**(base | fields))


def record_checks(store: PredictionStore, windows: range, **fields: Any) -> None:
    for w in windows:
        store.record_check(check(w, **fields))


def no_pause(seconds: float) -> None:
    pass


def table(store: PredictionStore, name: str) -> pd.DataFrame:
    with store.engine.connect() as conn:
        return pd.read_sql_table(name, conn)


# -- the prediction log --------------------------------------------------------------------------------
def test_old_rows_go_with_their_labels_and_shadow_answers_in_batches(store: PredictionStore, tmp_path: Path) -> None:
    settings = settings_for(store, tmp_path)
    log_rows(store, 1000, OLD)
    store.insert_feedback([(f"r{i:05d}", 1) for i in range(0, 1000, 2)])
    store.insert_shadow_predictions([{"request_id": f"r{i:05d}", "model_version": v, "prediction": 0}
                                     for i in range(0, 1000, 5) for v in ("v2", "v3")])
    record_checks(store, range(8))  # rows 1..800 checked; 801..1000 wait for their window
    pauses: list[float] = []

    result = retention.prune(store, settings, pause=pauses.append)

    # kept: the newest 2 windows (rows 601..800) and the unchecked rows, old as they are
    assert result.needs.window == 6 and result.needs.row_id == 601 and result.needs.why["row_id"] == "newest windows"
    assert result.deleted == {"predictions": 600, "feedback": 300, "shadow_predictions": 240, "checks": 0,
                                   "events": 0, "reports": 0, "snapshots": 0}
    assert result.held == {"predictions": 400}
    rows = table(store, "predictions")
    assert rows["id"].min() == 601 and len(rows) == 400
    kept = set(rows["request_id"])
    assert set(table(store, "feedback")["request_id"]) <= kept and len(table(store, "feedback")) == 200
    assert set(table(store, "shadow_predictions")["request_id"]) <= kept
    # one transaction per 100 ids, up to the floor; SQLite: and one giving the freed pages back
    assert len(pauses) == 6 + (store.dialect == "sqlite")
    if store.dialect == "sqlite":  # the writer gets its turn between batches
        assert all(retention.SHORTEST_PAUSE_S <= p <= retention.LONGEST_PAUSE_S for p in pauses)
    else:
        assert set(pauses) == {0.0}
    again = retention.prune(store, settings, pause=no_pause)
    assert again.total == 0


def test_a_sqlite_store_gives_what_it_pruned_back_to_the_disk(store: PredictionStore, tmp_path: Path) -> None:
    if store.dialect != "sqlite":
        pytest.skip("SQLite's file: PostgreSQL's autovacuum makes the space reusable")
    path = Path(store.engine.url.database)
    files = lambda: sum(f.stat().st_size for f in (path, path.with_name(path.name + "-wal")) if f.is_file())  # noqa: E731
    wide = {f"f{j}": 1000.0 + j for j in range(40)}
    for start in range(0, 20_000, 2_000):
        store.insert_predictions([{"request_id": f"r{i:05d}", "created_at": OLD + timedelta(seconds=i),
                                   "model_version": "v1", "features": wide, "prediction": 1, "confidence": 0.5}
                                  for i in range(start, start + 2_000)])
    record_checks(store, range(200))  # windows of 100: every row checked
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2  # incremental, set by the migrations
    full = files()

    result = retention.prune(store, settings_for(store, tmp_path), pause=no_pause)

    assert result.deleted["predictions"] == 19_800  # the newest 2 windows stay
    assert files() < full / 10 and result.returned_bytes >= full - files() - 1  # the WAL, truncated, counts
    assert not result.free_bytes and "shrank by" in result.describe()
    assert len(table(store, "predictions")) == 200
    log_rows(store, 100, NOW, start=30_000)  # and the store goes on taking rows
    assert store.count_predictions() == 300


def test_a_prune_asked_to_stop_leaves_the_rest_for_the_next_run(store: PredictionStore, tmp_path: Path) -> None:
    settings = settings_for(store, tmp_path, {"archive_dir": str(tmp_path / "archive")})
    log_rows(store, 500, OLD)
    record_checks(store, range(5))
    asked: list[bool] = []

    def stop() -> bool:  # the monitor shuts down while the second batch is copied
        asked.append(len(asked) >= 2)
        return asked[-1]

    result = retention.prune(store, settings, pause=no_pause, stop=stop)
    assert result.stopped and result.archived == {"predictions": 200}  # two batches copied...
    assert result.deleted["predictions"] == 0 and store.count_predictions() == 500  # ...none deleted: asked again
    assert "stopped before the end" in result.describe()
    rest = retention.prune(store, settings, pause=no_pause, now=NOW + timedelta(seconds=1))
    assert not rest.stopped and rest.deleted["predictions"] == 300
    assert pd.read_parquet(tmp_path / "archive" / "predictions")["id"].nunique() == 300  # ids 1..200 twice


def test_young_rows_stay_and_nothing_goes_before_the_first_check(store: PredictionStore, tmp_path: Path) -> None:
    settings = settings_for(store, tmp_path)
    log_rows(store, 300, OLD)
    unchecked = retention.prune(store, settings, pause=no_pause)
    assert unchecked.total == 0 and unchecked.needs.why == {"row_id": "unchecked"} and store.count_predictions() == 300

    log_rows(store, 300, NOW - timedelta(days=29), start=300)  # ids 301..600: younger than 30 days
    record_checks(store, range(6))
    result = retention.prune(store, settings, pause=no_pause)
    assert result.deleted["predictions"] == 300 and table(store, "predictions")["id"].min() == 301
    off = settings_for(store, tmp_path, {"predictions_days": 0})  # 0: off
    log_rows(store, 1, OLD, start=600)
    assert retention.prune(store, off, pause=no_pause, now=NOW + timedelta(days=90)).deleted["predictions"] == 0


def test_the_archive_is_written_whole_before_the_delete_and_reads_with_pandas(store: PredictionStore,
                                                                              tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    settings = settings_for(store, tmp_path, {"archive_dir": str(archive)})
    log_rows(store, 500, OLD)
    store.insert_feedback([(f"r{i:05d}", "yes") for i in range(0, 500, 4)])
    store.insert_shadow_predictions([{"request_id": f"r{i:05d}", "model_version": "v2", "prediction": 1,
                                      "confidence": 0.6} for i in range(0, 500, 10)])
    record_checks(store, range(5))

    dry = retention.prune(store, settings, pause=no_pause, dry_run=True)
    assert dry.deleted["predictions"] == 300 and not dry.archived and not archive.exists()

    result = retention.prune(store, settings, pause=no_pause, now=NOW)
    assert result.archived == {"predictions": 300, "shadow_predictions": 30}
    assert sorted(Path(f).parent.name for f in result.archive_files) == ["predictions", "shadow_predictions"]
    assert not list(archive.rglob("*.partial"))
    rows = pd.read_parquet(archive / "predictions")
    assert list(rows["id"]) == list(range(1, 301)) and rows["request_id"].iloc[0] == "r00000"
    assert str(rows["created_at"].dt.tz) == "UTC" and rows["created_at"].iloc[0] == pd.Timestamp(OLD)
    first = rows.iloc[0]
    assert json.loads(first["features"]) == {"x": 0.0, "c": "a"} and first["prediction"] == "0"
    assert first["label"] == '"yes"' and first["label_received_at"] is not pd.NaT
    assert rows["label"].notna().sum() == 75
    shadow = pd.read_parquet(archive / "shadow_predictions")
    assert len(shadow) == 30 and set(shadow["model_version"]) == {"v2"}
    assert table(store, "predictions")["id"].min() == 301  # and only then deleted

    # a second run's file sits beside the first: one read gives both
    log_rows(store, 200, OLD, start=500)
    record_checks(store, range(5, 7))
    later = retention.prune(store, settings, pause=no_pause, now=NOW + timedelta(seconds=1))
    assert later.archived["predictions"] == 200
    assert len(pd.read_parquet(archive / "predictions")) == 500


def test_a_batch_that_changed_after_its_copy_is_left_for_the_next_run(store: PredictionStore,
                                                                      tmp_path: Path) -> None:
    settings = settings_for(store, tmp_path, {"archive_dir": str(tmp_path / "archive")})
    log_rows(store, 400, OLD)
    record_checks(store, range(4))

    def late_label(seconds: float) -> None:  # after the first batch's delete: a label for the second's row
        if not late:
            late.append(store.insert_feedback([("r00150", 1)]).accepted)

    late: list[int] = []
    result = retention.prune(store, settings, pause=late_label, now=NOW)
    assert late == [1] and result.skipped_batches == 1
    assert result.deleted["predictions"] == 100 and table(store, "predictions")["id"].min() == 101
    following = retention.prune(store, settings, pause=no_pause, now=NOW + timedelta(seconds=1))
    assert following.deleted["predictions"] == 100 and following.deleted["feedback"] == 1
    archived = pd.read_parquet(tmp_path / "archive" / "predictions")
    copies = archived[archived["request_id"] == "r00150"]["label"]  # in both runs' files, the later one whole
    assert copies.isna().tolist() == [True, False] and copies.iloc[1] == "1"


# -- what the monitor still needs ----------------------------------------------------------------------
def test_the_flagged_streak_keeps_its_windows_and_rows(store: PredictionStore, tmp_path: Path) -> None:
    settings = settings_for(store, tmp_path)
    log_rows(store, 2000, OLD)
    record_checks(store, range(10))
    record_checks(store, range(10, 12), decision=Decision.RETRAIN, outcome=Outcome.PROMOTED)  # ran: a new streak
    record_checks(store, range(12, 20), decision=Decision.RETRAIN, outcome=Outcome.WAITING)  # the streak goes on
    need = retention.needs(store, settings)
    assert (need.window, need.row_id, need.why["window"]) == (11, 1101, "streak")  # from the retrain that ran
    result = retention.prune(store, settings, pause=no_pause)
    assert table(store, "predictions")["id"].min() == 1101 and result.held["predictions"] == 900
    dry_run = settings_for(store, tmp_path, dry_run=True)  # no retrain reads a dry run's streak
    assert retention.needs(store, dry_run).window == 18


def test_a_pending_retry_a_running_retrain_and_an_open_series_keep_their_rows(store: PredictionStore,
                                                                            tmp_path: Path) -> None:
    settings = settings_for(store, tmp_path)
    record_checks(store, range(20))

    def floors() -> tuple[Any, ...]:
        n = retention.needs(store, settings)
        return n.window, n.row_id, n.event_id, n.why

    assert floors() == (18, 1801, None, {"window": "newest windows", "row_id": "newest windows"})
    # an open follow-up series: the change since row 301, answered by a promotion at window 4
    start = store.record_event(EventKind.RETRAIN_STARTED, {"first_id": 301, "last_id": 500, "trigger": "drift",
                                                           "attempt": 1, "episode": None, "labelled": 150}, 4)
    store.record_event(EventKind.RETRAIN_PROMOTED, {"status": "promoted", "candidate": "v2", "trigger": "drift",
                                                    "episode": start}, 4, "v2")
    assert floors() == (18, 301, start, {"window": "newest windows", "row_id": "follow-up series",
                                         "event_id": "follow-up series"})
    # a newer retrain failed at window 9 and is retried in an hour
    failed_start = store.record_event(EventKind.RETRAIN_STARTED, {"first_id": 701, "last_id": 1000, "trigger": "drift",
                                                                  "attempt": 1, "episode": None}, 9)
    store.record_event(EventKind.RETRAIN_FAILED, {"first_id": 701, "last_id": 1000, "trigger": "drift", "attempt": 1,
                                                  "episode": failed_start, "error": "boom",
                                                  "retry_at": time.time() + 3600}, 9)
    window, rows, events, why = floors()
    assert (window, rows, events) == (9, 701, failed_start) and why["window"] == "pending retry"  # it ended the series
    # a newer retrain, left running at window 13 (its process died inside it): it supersedes the retry
    store.update_check(13, outcome=Outcome.RUNNING)
    running = store.record_event(EventKind.RETRAIN_STARTED, {"first_id": 1201, "last_id": 1400, "trigger": "drift",
                                                             "attempt": 1, "episode": None}, 13)
    window, rows, events, why = floors()
    assert (window, rows, events) == (13, 1201, running) and why["row_id"] == "running retrain"
    assert retention.prune(store, settings, pause=no_pause).needs.row_id == 1201


def test_checks_and_events_are_bounded_but_keep_what_restore_and_requests_need(store: PredictionStore,
                                                                               tmp_path: Path) -> None:
    settings = settings_for(store, tmp_path, {"checks_max": 30, "events_days": 30, "events_max": 0},
                            calibration_windows=2, min_labels=50)
    young = NOW - timedelta(days=10)
    # v1's run: its first two calibrating windows (quiet, 50 labels, an accuracy) lie at 3 and 5
    for w in range(100):
        calibrating = w in (3, 5, 8)
        store.record_check(check(w, at=OLD if w < 60 else young, champion_labelled=60 if calibrating else 10,
                                 champion_accuracy=0.8 if calibrating else None))
    handled = store.record_event(EventKind.RETRAIN_REQUESTED, {"reason": "r", "actor": "a"})
    store.record_event(EventKind.RETRAIN_REQUEST_DONE, {"request": handled, "outcome": "promoted"})
    pending = store.record_event(EventKind.RETRAIN_REQUESTED, {"reason": "later", "actor": "a"})
    for w in range(100):
        store.record_event(EventKind.DRIFT_DETECTED, {"w": w}, w)
    with store.engine.begin() as conn:  # every event so far is old
        conn.execute(events_table.update().values(created_at=OLD))

    need = retention.needs(store, settings)
    assert need.calibration == (3, 5) and need.event_id == pending and need.why["event_id"] == "pending request"
    result = retention.prune(store, settings, pause=no_pause)

    windows = [c.window for c in store.checks()]
    assert windows == [3, 5] + list(range(70, 100))  # the newest 30, and the champion's calibration
    events = store.events()
    assert [e["id"] for e in events][0] == pending  # the handled request and its answer went together
    assert result.deleted["events"] == 2 and result.held["events"] == 101
    assert retention.restore_checks(store, settings) == store.checks_of([3, 5]) + store.checks(since_window=97)

    settings = settings_for(store, tmp_path, {"checks_max": 30, "events_max": 10})
    store.record_event(EventKind.RETRAIN_REQUEST_DONE, {"request": pending, "outcome": "rejected"})
    assert retention.prune(store, settings, pause=no_pause).deleted["events"] == len(events) + 1 - 10
    assert len(store.events()) == 10


def test_bounded_reads_give_the_newest_oldest_first(store: PredictionStore) -> None:
    record_checks(store, range(10))
    for w in range(10):
        store.record_event(EventKind.DRIFT_DETECTED, {"w": w}, w)
    assert [c.window for c in store.checks(limit=3)] == [7, 8, 9]
    assert [c.window for c in store.checks(since_window=8, limit=3)] == [9]
    assert [e["window"] for e in store.events(EventKind.DRIFT_DETECTED, limit=2)] == [8, 9]
    assert [c.window for c in store.checks_of([4, 2, 99])] == [2, 4]


class StoredStats:
    """Baselines.stats_of for the checks generated below: a fixed baseline per version."""

    def stats_of(self, c: Check) -> WindowStats:
        return WindowStats(c.window, c.rows, c.drift_share, c.champion_labelled, c.champion_accuracy,
                           baseline_accuracy=0.85, baseline_rows=2000, champion=c.reference_version)


def policy_state(policy: RetrainPolicy, newest: int) -> tuple[Any, ...]:
    """What decides the next windows (a cool-down that ended is as good as none)."""
    return (policy._streak, policy._streak_start, max(policy._cooldown_until, newest), policy._calibrated,
            policy._live)


@pytest.mark.parametrize("seed", range(6))
def test_a_restarted_policy_from_the_kept_checks_is_the_one_every_check_makes(store: PredictionStore,
                                                                              tmp_path: Path, seed: int) -> None:
    config = PolicyConfig(consecutive=2, cooldown_windows=2, calibration_windows=3, min_labels=50)
    settings = make_settings(tmp_path, store={"url": store.url},
                             monitoring={"consecutive": 2, "cooldown_windows": 2, "calibration_windows": 3,
                                         "min_labels": 50, "retention": {"keep_windows": 3, "checks_max": 5}},
                             retraining={"shadow": {"max_windows": 1}, "watch": {"max_windows": 1}})
    rng = random.Random(seed)
    live, version, promising = RetrainPolicy(config), 1, []
    windows = 160
    for w in range(windows):  # stretches of quiet, drift and decay; retrains of every outcome
        tail = seed % 2 == 1 and w >= windows - 12  # odd seeds end in a long streak: drift, retrains waiting
        phase = 1 if tail else (w // rng.randint(5, 15)) % 3
        labelled = 0 if tail else rng.choice([0, 30, 80, 120])
        accuracy = None if not labelled else (0.85 if phase != 2 else 0.6) + rng.uniform(-0.02, 0.02)
        drift = 0.8 if phase == 1 else 0.1
        stats = WindowStats(w, WINDOW, drift, labelled, accuracy, 0.85, 2000, champion=f"v{version}")
        decision = live.update(stats)
        outcome = None
        if decision.action == Decision.RETRAIN:
            outcome = Outcome.WAITING if tail else rng.choice([Outcome.PROMOTED, Outcome.REJECTED, Outcome.WAITING,
                                                               Outcome.FAILED])
            if outcome == Outcome.REJECTED and rng.random() < 0.5:
                promising.append(w)  # the streak goes on
                store.record_event(EventKind.RETRAIN_REJECTED, {"promising": True}, w)
            elif outcome in RETRAINED:
                live.retrained(w)
        store.record_check(check(w, decision.action, drift_share=drift, champion_labelled=labelled,
                                 champion_accuracy=accuracy, reference_version=f"v{version}", outcome=outcome))
        version += outcome == Outcome.PROMOTED
    everything = RetrainPolicy(config)
    restore(everything, StoredStats(), store.checks(), promising=promising)
    assert policy_state(everything, windows - 1) == policy_state(live, windows - 1)

    result = retention.prune(store, settings, pause=no_pause)
    assert result.deleted["checks"] > 100
    assert retention.needs(store, settings) == result.needs  # what is left needs the same: the next run keeps it
    restarted = RetrainPolicy(config)
    restore(restarted, StoredStats(), retention.restore_checks(store, settings), promising=promising)
    assert policy_state(restarted, windows - 1) == policy_state(live, windows - 1)


# -- files -----------------------------------------------------------------------------------------------
def touch(path: Path, age: timedelta) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    when = (NOW - age).timestamp()
    os.utime(path, (when, when))
    return path


def test_reports_and_snapshots_are_pruned_by_age_and_count(store: PredictionStore, tmp_path: Path) -> None:
    settings = settings_for(store, tmp_path, {"reports_max": 3, "snapshots_days": 7, "snapshots_max": 0})
    reports = tmp_path / "reports"
    old_reports = [touch(reports / f"window-{i:05d}-drift.html", timedelta(days=31 + i)) for i in range(2)]
    newest = [touch(reports / f"window-{i:05d}-drift.html", timedelta(hours=i)) for i in range(10, 15)]
    other = touch(reports / "notes.txt", timedelta(days=90))
    project = reports / "evidently" / "0190b5c4-0000-7000-8000-000000000000"
    kept_project = touch(project / "project.json", timedelta(days=90))
    snaps = [touch(project / "snapshots" / f"0190b5c4-0000-7000-8000-{i:012d}.json", timedelta(days=i * 3))
             for i in range(5)]
    stale = touch(project / "snapshots" / f".{snaps[0].name}.partial", timedelta(hours=2))
    fresh_partial = touch(project / "snapshots" / f".{snaps[1].name}.partial", timedelta(minutes=1))

    dry = retention.prune(store, settings, dry_run=True, pause=no_pause)
    assert (dry.deleted["reports"], dry.deleted["snapshots"]) == (4, 3) and all(p.exists() for p in old_reports)
    result = retention.prune(store, settings, pause=no_pause)
    assert (result.deleted["reports"], result.deleted["snapshots"]) == (4, 3)
    assert sorted(p.name for p in reports.glob("*.html")) == [p.name for p in newest[:3]]  # the newest 3
    assert other.exists() and kept_project.exists() and fresh_partial.exists() and not stale.exists()
    assert [p.exists() for p in snaps] == [True, True, True, False, False]  # 0, 3, 6 days old: kept


# -- the job and the command -------------------------------------------------------------------------------
class MonitorWithMetrics:
    """What the scheduler's jobs need of a Monitor."""

    def __init__(self, store: PredictionStore, settings: Any) -> None:
        self.store = store
        self.settings = settings
        self.metrics = MonitorMetrics()
        self.runs = 0

    def run_once(self) -> list:
        self.runs += 1
        return []

    def retrain_on_schedule(self) -> str:
        return "waiting"


def test_the_store_retention_job_runs_through_the_scheduler(store: PredictionStore, tmp_path: Path) -> None:
    log_rows(store, 300, OLD)
    record_checks(store, range(3))
    monitor = MonitorWithMetrics(store, settings_for(store, tmp_path, {"interval_s": 0.2}))
    scheduler = sched.build_scheduler(monitor, 3600)
    value = monitor.metrics.registry.get_sample_value
    assert value("driftloop_retention_deleted_total", {"what": "predictions"}) == 0  # scraped at 0 before a run
    scheduler.start()
    try:
        (event,) = wait_until(lambda: store.events(EventKind.STORE_PRUNED), what="a store_pruned event")
    finally:
        scheduler.shutdown(wait=True)
    assert event["detail"]["deleted"]["predictions"] == 100 and event["detail"]["kept_from"]["row_id"] == 101
    assert "store_retention" in {job.id for job in sched.list_jobs(store)}
    assert value("driftloop_retention_deleted_total", {"what": "predictions"}) == 100
    assert value("driftloop_retention_deleted_total", {"what": "snapshots"}) == 0
    again = sched.build_scheduler(MonitorWithMetrics(store, settings_for(store, tmp_path, {"interval_s": 0})), 3600)
    again.start(paused=True)
    again.shutdown()
    assert "store_retention" not in {job.id for job in sched.list_jobs(store)}  # interval 0: no job


def test_db_prune_dry_run_deletes_nothing_and_then_prunes(store: PredictionStore, tmp_path: Path) -> None:
    from driftloop.cli import app
    from driftloop.launch import write_config

    log_rows(store, 300, OLD)
    record_checks(store, range(3))
    config = write_config(settings_for(store, tmp_path), tmp_path / "driftloop.yaml")
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(app, ["db", "prune", *args, "--config", str(config)])
        assert result.exit_code == 0, result.output
        return result.output

    out = cli("--dry-run")
    assert "would delete: 100 predictions" in out and "rows from id 101 (newest windows)" in out
    assert store.count_predictions() == 300 and not store.events(EventKind.STORE_PRUNED)
    out = cli("--vacuum")
    assert "deleted: 100 predictions" in out and store.count_predictions() == 200
    assert "vacuum:" in out
    (event,) = store.events(EventKind.STORE_PRUNED)
    assert event["detail"]["actor"] and event["detail"]["deleted"]["predictions"] == 100
    assert "deleted: 0 predictions" in cli()
