"""What lets the monitor keep up (issue 14): a backlog of windows read many at a time, and the
checks' pictures (HTML reports, Evidently snapshots) drawn after the check, off its path
(monitoring/workspace.py ``Pictures``). Nothing here measures speed (``bench/monitor.py`` does);
it checks the behaviour speed rests on, on a real SQLite store with the fake registry and drift
test of tests/unit/test_window_check.py."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from driftloop.monitoring.check import WindowCheck
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.monitor import policy_config
from driftloop.monitoring.policy import RetrainPolicy
from driftloop.monitoring.store import PredictionStore
from driftloop.monitoring.workspace import Picture, Pictures
from driftloop.settings import MonitoringConfig
from driftloop.vocabulary import Decision

from tests.unit.test_window_check import ROWS, T0, FakeBaselines, Registry, log


class CountingStore(PredictionStore):
    """Counts the monitor's reads of the log."""

    reads = 0

    def window(self, after_id: int, limit: int, *, request_ids: bool = True) -> Any:
        self.reads += 1
        return super().window(after_id, limit, request_ids=request_ids)


class Workspace:
    """A workspace that records what it was given; ``gate`` (when set) holds each write until
    released, ``fail`` makes every write raise."""

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.gate, self.fail = gate, fail
        self.windows: list[int] = []
        self.started = threading.Event()

    def record(self, version: str, window: int, result: Any, **kwargs: Any) -> str:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(60), "never released"
        if self.fail:
            raise OSError("disk full")
        self.windows.append(window)
        return f"run-{window}"


def picture(window: int, tmp_path: Path | None = None, rows: int = ROWS) -> Picture:
    """A window's picture; with ``tmp_path``, a flagged one (its report is written there)."""
    def save_html(path: Path) -> Path:
        path.write_text("<html/>")
        return path
    return Picture(window, "v1", SimpleNamespace(save_html=save_html), timestamp=T0, rows=rows,  # type: ignore[arg-type]
                   report=None if tmp_path is None else tmp_path / f"window-{window}.html")


def count(metrics: MonitorMetrics, kind: str, outcome: str) -> float | None:
    return metrics.registry.get_sample_value("driftloop_pictures_total", {"kind": kind, "outcome": outcome})


@pytest.fixture
def checks(tmp_path: Path) -> dict[str, Any]:
    store = CountingStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    config = MonitoringConfig(window_rows=ROWS, min_labels=5, label_wait_s=60.0, reports_dir=tmp_path / "reports")
    metrics, baselines = MonitorMetrics(), FakeBaselines()
    gate = threading.Event()
    workspace = Workspace(gate)
    pictures = Pictures(workspace, metrics)  # type: ignore[arg-type]
    windows = WindowCheck(config, "classification", store, Registry(), baselines,
                          RetrainPolicy(policy_config(config)), metrics, pictures=pictures, clock=lambda: 4e9)
    yield {"store": store, "windows": windows, "pictures": pictures, "workspace": workspace, "gate": gate,
           "drift": baselines.fake, "metrics": metrics}
    gate.set()
    pictures.close()
    store.close()


def test_a_backlog_is_read_many_windows_at_a_time(checks: dict[str, Any]) -> None:
    store, windows = checks["store"], checks["windows"]
    log(store, 12 * ROWS + 3, labels=[1] * (12 * ROWS + 3))  # 12 full windows and 3 rows of the next
    store.reads = 0
    ready = windows.ready_windows()
    assert [index for index, _ in ready] == list(range(12)) and store.reads == 1
    assert [list(frame["id"]) for _, frame in ready[:2]] == [list(range(1, ROWS + 1)),
                                                              list(range(ROWS + 1, 2 * ROWS + 1))]
    assert "request_id" not in ready[0][1].columns  # only what a check reads
    assert [index for index, _ in windows.ready_windows(limit=5)] == list(range(5))
    for index, frame in ready[:4]:
        windows.run(index, frame)
    assert [index for index, _ in windows.ready_windows()] == list(range(4, 12))  # after the last check


def test_the_first_window_still_waiting_for_labels_ends_the_batch(checks: dict[str, Any]) -> None:
    store, windows = checks["store"], checks["windows"]
    windows.clock = lambda: T0.timestamp()  # just after the rows: labels may still come
    log(store, 2 * ROWS, labels=[1] * 2 * ROWS)
    log(store, ROWS)  # window 2: no label yet
    log(store, ROWS, labels=[1] * ROWS)  # window 3 is labelled, but comes after one that waits
    assert [index for index, _ in windows.ready_windows()] == [0, 1]


def test_a_check_is_recorded_and_returned_while_its_pictures_wait(checks: dict[str, Any]) -> None:
    """The decision never waits for a picture: the snapshot writer is held, the checks go on."""
    store, windows, workspace, pictures = checks["store"], checks["windows"], checks["workspace"], checks["pictures"]
    checks["drift"].share = 1.0  # flagged: an HTML report too
    log(store, 2 * ROWS)
    first = windows.run(*windows.ready())
    assert workspace.started.wait(60)  # drawing window 0's snapshot, held there
    second = windows.run(*windows.ready())
    assert [c.window for c in store.checks()] == [0, 1]
    assert (first.check.decision, second.check.decision) == (Decision.WATCH, Decision.RETRAIN)
    assert workspace.windows == [] and pictures.pending == 2 and not pictures.flush(timeout=0.05)
    assert Path(first.check.report_path).is_file()  # the report is drawn before the snapshot
    assert not Path(second.check.report_path).exists()  # named in the check, written after it
    checks["gate"].set()
    assert pictures.flush(timeout=60)
    assert workspace.windows == [0, 1] and Path(second.check.report_path).is_file()
    metrics = checks["metrics"]
    assert (count(metrics, "snapshot", "drawn"), count(metrics, "report", "drawn")) == (2, 2)
    assert metrics.registry.get_sample_value("driftloop_pictures_pending") == 0


def test_pictures_wait_while_the_monitor_checks(tmp_path: Path) -> None:
    workspace = Workspace()
    pictures = Pictures(workspace)  # type: ignore[arg-type]
    with pictures.paused():
        pictures.submit(picture(0))
        pictures.submit(picture(1))
        assert pictures.pending == 2 and workspace.windows == []  # none started while paused
        assert pictures.flush(timeout=60)  # a flush draws them all the same
        pictures.submit(picture(2))
    assert pictures.close(timeout=60) and workspace.windows == [0, 1, 2]


def test_a_failed_picture_is_logged_and_counted_and_the_rest_still_drawn(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    metrics = MonitorMetrics()
    pictures = Pictures(Workspace(fail=True), metrics)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="driftloop.monitor"):
        pictures.submit(picture(7, tmp_path))
        assert pictures.close(timeout=60)
    assert "window 7: the Evidently snapshot could not be written" in caplog.text and "disk full" in caplog.text
    assert (tmp_path / "window-7.html").is_file()  # its report was drawn regardless
    assert (count(metrics, "snapshot", "failed"), count(metrics, "report", "drawn")) == (1, 1)


def test_a_full_queue_drops_the_oldest_picture_without_a_report_first(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    metrics, gate = MonitorMetrics(), threading.Event()
    workspace = Workspace(gate)
    pictures = Pictures(workspace, metrics, max_pending=2)  # type: ignore[arg-type]
    pictures.submit(picture(0))
    assert workspace.started.wait(60)  # window 0 is being drawn, held: 1, 2, 3 queue behind it
    with caplog.at_level(logging.WARNING, logger="driftloop.monitor"):
        pictures.submit(picture(1, tmp_path))  # flagged: a report
        pictures.submit(picture(2))
        pictures.submit(picture(3))  # full: 2 goes (no report), 1 stays
    assert "window 2: its snapshot dropped" in caplog.text
    gate.set()
    assert pictures.close(timeout=60)
    assert workspace.windows == [0, 1, 3] and (tmp_path / "window-1.html").is_file()
    assert (count(metrics, "snapshot", "dropped"), count(metrics, "report", "dropped")) == (1, 0)


def test_a_full_queue_also_bounds_the_rows_it_holds() -> None:
    metrics, gate = MonitorMetrics(), threading.Event()
    workspace = Workspace(gate)
    pictures = Pictures(workspace, metrics, max_pending_rows=2 * ROWS)  # type: ignore[arg-type]
    pictures.submit(picture(0))
    assert workspace.started.wait(60)
    for window in (1, 2, 3):
        pictures.submit(picture(window))
    gate.set()
    assert pictures.close(timeout=60) and workspace.windows == [0, 2, 3]
    assert count(metrics, "snapshot", "dropped") == 1
    pictures.submit(picture(4, rows=10 * ROWS))  # one picture always fits, however large
    assert pictures.close(timeout=60) and workspace.windows[-1] == 4


def test_without_a_background_worker_pictures_are_drawn_at_once(tmp_path: Path) -> None:
    workspace = Workspace()
    pictures = Pictures(workspace, background=False)  # type: ignore[arg-type]
    pictures.submit(picture(5, tmp_path))
    assert workspace.windows == [5] and (tmp_path / "window-5.html").is_file() and pictures.pending == 0
