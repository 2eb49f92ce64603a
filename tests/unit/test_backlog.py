"""A monitor far behind the log checks its newest windows first (monitoring/backlog.py), on a real
SQLite store with the fake registry and drift test of test_window_check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from driftloop.monitoring.backlog import Backlog
from driftloop.monitoring.check import WindowCheck
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.monitor import policy_config
from driftloop.monitoring.policy import RetrainPolicy
from driftloop.monitoring.store import PredictionStore
from driftloop.settings import MonitoringConfig
from driftloop.vocabulary import EventKind
from tests.unit.test_window_check import ROWS, Clock, FakeBaselines, Registry, log

MAX = 3  # windows


def checker(store: PredictionStore, tmp_path: Path, max_windows: int = MAX) -> tuple[WindowCheck, MonitorMetrics]:
    config = MonitoringConfig(window_rows=ROWS, max_backlog_windows=max_windows, reports_dir=tmp_path / "reports")
    metrics, clock = MonitorMetrics(), Clock()
    clock.now = 4e9  # no label wait
    return WindowCheck(config, "clustering", store, Registry(), FakeBaselines(), RetrainPolicy(policy_config(config)),
                       metrics, clock=clock), metrics


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = PredictionStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    yield store
    store.close()


def test_a_backlog_within_the_limit_is_checked_whole(store: PredictionStore, tmp_path: Path) -> None:
    windows, _ = checker(store, tmp_path)
    log(store, MAX * ROWS + ROWS // 2)  # three full windows and half of one
    ready = windows.ready_windows()
    assert [i for i, _ in ready] == [0, 1, 2] and int(ready[0][1]["id"].iloc[0]) == 1
    assert store.events(EventKind.BACKLOG_SKIPPED) == []


def test_a_long_backlog_starts_at_its_newest_windows_and_says_so(store: PredictionStore, tmp_path: Path) -> None:
    windows, metrics = checker(store, tmp_path)
    log(store, ROWS)
    windows.run(*windows.ready())  # window 0: ids 1-10
    log(store, 10 * ROWS + 4)  # then a monitor outage: ids 11-114
    ready = windows.ready_windows()
    # 10 full windows and 4 rows wait: the newest 3 windows keep their bounds (81-110), the 4 rows
    # after them wait for their window to fill
    assert [i for i, _ in ready] == [1, 2, 3]
    assert [(int(f["id"].iloc[0]), int(f["id"].iloc[-1])) for _, f in ready] == [(81, 90), (91, 100), (101, 110)]
    [event] = store.events(EventKind.BACKLOG_SKIPPED)
    assert event["window"] == 1
    assert {k: event["detail"][k] for k in ("from_id", "to_id", "rows", "max_backlog_windows")} == \
        {"from_id": 11, "to_id": 80, "rows": 70, "max_backlog_windows": MAX}
    assert metrics.registry.get_sample_value("driftloop_backlog_skipped_rows_total") == 70
    # read again before any check past the skip: the same windows, no second skip
    assert [int(f["id"].iloc[0]) for _, f in windows.ready_windows()] == [81, 91, 101]
    # a monitor that takes over (a restart) holds to the recorded skip
    again, _ = checker(store, tmp_path)
    assert [int(f["id"].iloc[0]) for _, f in again.ready_windows()] == [81, 91, 101]
    assert len(store.events(EventKind.BACKLOG_SKIPPED)) == 1
    for index, frame in ready:
        checked = windows.run(index, frame)
    assert (checked.check.first_id, checked.check.last_id) == (101, 110)


def test_zero_never_skips(store: PredictionStore, tmp_path: Path) -> None:
    windows, _ = checker(store, tmp_path, max_windows=0)
    log(store, 20 * ROWS)
    assert int(windows.ready_windows()[0][1]["id"].iloc[0]) == 1
    assert store.events(EventKind.BACKLOG_SKIPPED) == []


def test_the_id_below_the_newest_rows(store: PredictionStore) -> None:
    assert store.id_before_newest(5) is None
    log(store, 5)
    assert store.id_before_newest(5) is None and store.id_before_newest(4) == 1
    assert Backlog(store, 1, 2).start_after(0, 0) == 3  # windows of one row: the newest two are ids 4 and 5
