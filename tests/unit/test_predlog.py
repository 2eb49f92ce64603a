"""The buffered prediction-log writer. Synchronised with flush()/close() only, never sleeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from driftloop.monitoring.store import PredictionStore
from driftloop.service.predlog import PredictionLogWriter
from tests.waiting import wait_until

LONG = 60.0  # a flush interval no test waits for: only close()/a full batch may trigger a write
SHORT = 0.01


class Sink:
    """An insert function that records batches; it may fail its first ``failures`` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0
        self.batches: list[list[dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, rows: Sequence[dict[str, Any]]) -> None:
        with self.lock:
            self.calls += 1
            if self.calls <= self.failures:
                raise ConnectionError(f"store down (call {self.calls})")
            self.batches.append(list(rows))

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [r for b in self.batches for r in b]


def rows(start: int, n: int) -> list[dict[str, Any]]:
    return [{"i": i} for i in range(start, start + n)]


@pytest.fixture
def writers():
    """Writers made by a test are closed even if it fails (their thread must not outlive it)."""
    made: list[PredictionLogWriter] = []

    def make(insert, **kw) -> PredictionLogWriter:  # noqa: ANN001
        w = PredictionLogWriter(insert, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close(timeout=5)


@pytest.mark.parametrize(("n", "chunk", "batch_rows"), [(1, 1, 2000), (250, 7, 2000), (5000, 10, 2000),
                                                        (1000, 1, 64)])
def test_close_writes_every_submitted_row(writers, n: int, chunk: int, batch_rows: int) -> None:  # noqa: ANN001
    sink = Sink()
    written, dropped = [], []
    w = writers(sink, flush_interval_s=LONG, batch_rows=batch_rows,
                on_written=written.append, on_dropped=dropped.append)
    for start in range(0, n, chunk):
        w.submit(rows(start, min(chunk, n - start)))
    w.close()
    assert [r["i"] for r in sink.rows] == list(range(n))  # all, once each, in order
    assert all(len(b) <= batch_rows for b in sink.batches)
    assert w.written == n and sum(written) == n
    assert w.dropped == 0 and dropped == []
    assert w.pending() == 0


def test_close_into_the_store(writers, tmp_path: Path) -> None:  # noqa: ANN001
    store = PredictionStore(f"sqlite:///{tmp_path / 'log.db'}").create()
    now = datetime.now(timezone.utc)
    w = writers(store.insert_predictions, flush_interval_s=LONG, batch_rows=500)
    n = 1234
    for i in range(n):
        w.submit([{"request_id": f"r{i}", "created_at": now, "model_version": "v1",
                   "features": {"x": float(i)}, "prediction": i % 2, "confidence": 0.9}])
    w.close()
    try:
        assert store.count_predictions() == n
        assert list(store.window(0, n)["x"]) == [float(i) for i in range(n)]
    finally:
        store.close()


def test_submit_beyond_max_rows_drops_and_counts(writers) -> None:  # noqa: ANN001
    sink = Sink()
    dropped: list[int] = []
    # batch_rows above max_rows: nothing wakes the writer before close, so the queue stays full.
    w = writers(sink, max_rows=100, flush_interval_s=LONG, batch_rows=1000, on_dropped=dropped.append)
    w.submit(rows(0, 90))
    w.submit(rows(90, 25))  # 10 fit, 15 are dropped
    assert w.pending() == 100
    w.submit(rows(115, 5))  # all 5 dropped
    assert dropped == [15, 5] and w.dropped == 20
    w.close()
    assert [r["i"] for r in sink.rows] == list(range(100))  # the accepted prefix, nothing else
    assert w.written == 100


def test_submit_after_close_is_dropped(writers) -> None:  # noqa: ANN001
    sink = Sink()
    dropped: list[int] = []
    w = writers(sink, flush_interval_s=LONG, on_dropped=dropped.append)
    w.submit(rows(0, 3))
    w.close()
    w.submit(rows(3, 2))
    assert dropped == [2] and len(sink.rows) == 3


def test_failed_inserts_are_retried_until_written(writers) -> None:  # noqa: ANN001
    sink = Sink(failures=2)
    written, dropped = [], []
    w = writers(sink, flush_interval_s=SHORT, batch_rows=50, on_written=written.append,
                on_dropped=dropped.append)
    w.submit(rows(0, 120))
    assert w.flush(timeout=10) is True
    assert sink.calls >= 3  # two failures, then successes
    assert [r["i"] for r in sink.rows] == list(range(120))  # retried rows kept their place, no duplicates
    assert w.written == 120 and sum(written) == 120
    assert w.dropped == 0 and dropped == []
    w.submit(rows(120, 5))  # the writer is healthy again
    assert w.flush(timeout=10) is True
    assert [r["i"] for r in sink.rows] == list(range(125))


def test_retry_keeps_what_fits_in_the_queue(writers) -> None:  # noqa: ANN001
    """A failed batch goes back to the queue; rows beyond max_rows are dropped and counted."""
    gate = threading.Event()
    entered = threading.Event()
    calls = []

    def insert(batch: Sequence[dict[str, Any]]) -> None:
        calls.append(list(batch))
        if len(calls) == 1:
            entered.set()
            gate.wait(10)
            raise ConnectionError("down")

    dropped: list[int] = []
    w = writers(insert, max_rows=10, flush_interval_s=SHORT, batch_rows=6, on_dropped=dropped.append)
    w.submit(rows(0, 6))  # a full batch: the writer takes it and blocks in the first insert
    assert entered.wait(10)
    w.submit(rows(6, 10))  # the queue is empty again: all 10 fit
    gate.set()  # the first insert fails: only 0 of its 6 rows fit back
    assert w.flush(timeout=10) is True
    assert dropped == [6] and w.dropped == 6
    written = [r["i"] for b in calls[1:] for r in b]
    assert written == list(range(6, 16))


def test_flush_returns_true_when_everything_is_written(writers) -> None:  # noqa: ANN001
    sink = Sink()
    w = writers(sink, flush_interval_s=SHORT)
    assert w.flush(timeout=10) is True  # nothing to write
    for start in range(0, 300, 30):
        w.submit(rows(start, 30))
    assert w.flush(timeout=10) is True
    assert w.pending() == 0
    assert [r["i"] for r in sink.rows] == list(range(300))
    assert w.written == 300


def test_flush_writes_now_rather_than_after_the_interval(writers) -> None:  # noqa: ANN001
    sink = Sink()
    w = writers(sink, flush_interval_s=LONG)
    w.submit(rows(0, 10))
    assert w.flush(timeout=1.0) is True
    assert len(sink.rows) == 10


def test_an_outage_is_told_by_the_queue_gauge_the_failing_flag_and_two_log_lines(writers, caplog) -> None:  # noqa: ANN001
    """While the store refuses rows: on_queue reports every waiting row (not the last written
    figure), ``failing`` and ``behind_since`` say since when, the log says so once (not once per
    retry); when the store is back everything is written and one line says so."""
    down = threading.Event()
    down.set()
    seen: list[int] = []
    inserted: list[int] = []

    def insert(batch: Sequence[dict[str, Any]]) -> None:
        if down.is_set():
            raise ConnectionError("store down")
        inserted.extend(r["i"] for r in batch)

    caplog.set_level("WARNING", logger="driftloop.predlog")
    before = time.time()
    w = writers(insert, flush_interval_s=SHORT, batch_rows=10, on_queue=seen.append)
    w.submit(rows(0, 25))
    wait_until(lambda: w.failing and seen and seen[-1] == 25, "the gauge to count all 25 waiting rows")
    wait_until(lambda: len(seen) > 20, "20 passes of the retrying writer")
    since = w.behind_since()
    assert since is not None and since <= before
    failures = [r for r in caplog.records if "refuses rows" in r.getMessage()]
    assert len(failures) == 1 and "store down" in failures[0].getMessage()
    down.clear()
    assert w.flush(timeout=10) is True
    assert inserted == list(range(25)) and w.written == 25 and w.dropped == 0
    assert not w.failing and w.behind_since() is None
    wait_until(lambda: seen[-1] == 0, "the gauge back at 0")
    assert any("takes rows again" in r.getMessage() for r in caplog.records)


def test_a_stuck_insert_makes_the_writer_behind_until_its_backlog_is_written(writers, monkeypatch) -> None:  # noqa: ANN001
    """A lock held on the store: the insert waits. Rows queued meanwhile may still be unwritten
    after it returns (the backlog drains batch by batch): behind until the queue is empty."""
    import driftloop.service.predlog as predlog

    monkeypatch.setattr(predlog, "STUCK_S", 0.05)
    gate, entered, drain = threading.Event(), threading.Event(), threading.Event()
    calls: list[int] = []

    def insert(batch: Sequence[dict[str, Any]]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            entered.set()
            gate.wait(10)
        elif len(calls) == 2:
            drain.wait(10)  # the first batch of the backlog: written, but more rows wait

    w = writers(insert, flush_interval_s=SHORT, batch_rows=5)
    w.submit(rows(0, 5))
    assert entered.wait(10)
    assert wait_until(lambda: w.behind_since(stuck_s=0.05), "the stuck insert to count as behind") is not None
    w.submit(rows(5, 10))  # queued behind the lock
    gate.set()
    wait_until(lambda: len(calls) == 2, "the backlog's first batch")
    assert w.behind_since(stuck_s=60) is not None  # not for a stuck insert: 5 rows of the backlog still wait
    drain.set()
    assert w.flush(timeout=10) is True
    assert w.behind_since() is None


def test_the_queue_is_bounded_in_bytes_too_and_a_failed_batch_keeps_its_share(writers) -> None:  # noqa: ANN001
    down = threading.Event()
    down.set()
    dropped: list[int] = []
    written: list[int] = []

    def insert(batch: Sequence[dict[str, Any]]) -> None:
        if down.is_set():
            raise ConnectionError("store down")
        written.extend(r["i"] for r in batch)

    w = writers(insert, max_rows=1000, max_bytes=10_000, flush_interval_s=SHORT, batch_rows=4,
                on_dropped=dropped.append)
    w.submit(rows(0, 8), row_bytes=1000)  # 8 KB of 10
    wait_until(lambda: w.failing, "a failed insert (its batch back in the queue)")
    w.submit(rows(8, 5), row_bytes=1000)  # 10 KB in all: 3 rows too many (these, or a retried batch's)
    down.clear()
    assert w.flush(timeout=10) is True
    assert len(written) == 10 and len(set(written)) == 10 and w.dropped == 3 and sum(dropped) == 3
    w.submit(rows(100, 10), row_bytes=1000)  # the queue is empty again: all fit
    assert w.flush(timeout=10) is True and len(written) == 20


@pytest.mark.parametrize(("features", "text"), [(6, "north"), (100, "north"), (25, "Zürich ✓ ünïcödé " * 3)])
def test_a_queued_log_row_costs_no_more_than_its_estimate(tmp_path: Path, features: int, text: str) -> None:
    """What the serving worker queues per row (``PredictionStore.log_rows``: encoded tuples) is
    measured with tracemalloc and must not exceed ``log_row_bytes``, which the byte bound
    (``serving.log_queue_bytes``) counts: an estimate that erred low would let the queue outgrow it."""
    import tracemalloc
    import uuid

    from driftloop.monitoring.store import log_row_bytes

    store = PredictionStore(f"sqlite:///{tmp_path / 'never-opened.db'}")  # log_rows needs the dialect only
    n = 2000
    requests = [{f"feature_{j:03d}": (j * 1.37 + i if j % 3 else text) for j in range(features)} for i in range(n)]
    ids = [str(uuid.uuid4()) for _ in range(n)]  # the request ids exist before the log sees them
    now = datetime.now(timezone.utc)
    queue: list[Any] = []
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(n):  # one request each, as the worker submits them
            queue.extend(store.log_rows([ids[i]], now, "v1", [requests[i]], ["yes"], [0.93]))
        used = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    estimate = sum(map(log_row_bytes, queue)) / n
    assert used <= estimate, f"{used:.0f} B measured per row, {estimate:.0f} B estimated"
    assert estimate <= 1.5 * used + 200, "the estimate errs so high that the byte bound wastes the queue"
