"""The prediction-log writer: buffered, batched inserts off the request path.

``submit`` never blocks and never raises: rows go into a bounded queue, and when the queue is
full they are dropped and counted. It is bounded in rows (``max_rows``) and, when the caller
estimates a row's memory, in bytes (``max_bytes``): a wide model's rows are large (the serving
worker queues its rows encoded, :data:`driftloop.monitoring.store.LogRow`: about 290 bytes plus
their JSON, 0.4 KB for 6 features, 2.7 KB for 100), so a row bound alone lets its queue take
gigabytes during a store outage. A background thread drains the queue every
``flush_interval_s`` (or sooner, once ``batch_rows`` are waiting) and inserts them in one
transaction. That thread shares the GIL with the worker's event loop, so whatever it does per
row in Python holds requests up: the serving worker's rows reach it ready for the driver
(:meth:`driftloop.monitoring.store.PredictionStore.insert_logged`). ``close`` drains everything
before returning, so a graceful stop loses nothing;
a hard kill loses at most the rows of the last ``flush_interval_s``. If an insert fails (the
database is down), the batch is retried until the queue is full, then rows are dropped and counted.

While inserts fail the writer says so once (one line: why, and how many rows wait), then every
``REPORT_EVERY_S`` while it lasts, and once more when the store takes rows again (how long it
was out, how many rows were written then). ``on_queue`` (optional) is given the number of rows
waiting after every pass of the thread, written or not, and by ``submit`` at most once per
``flush_interval_s`` (the thread may be stuck in an insert that waits for a lock): a gauge fed
from it tells the truth during an outage too, about one ``flush_interval_s`` late.

``after_write`` (optional) is given each batch once it is committed and counted as written, on
the same thread: work that needs the logged rows but must not hold up requests (the serving
worker scores them with its shadow model there). Its errors are logged and go no further: the
batch is not retried, nothing is dropped. It does hold up the next batch for as long as it runs,
and ``flush`` waits for it too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("driftloop.predlog")
REPORT_EVERY_S = 30.0  # while the store refuses rows, how often the writer says so again
STUCK_S = 1.0  # an insert running longer than this is stuck (a lock): rows behind it count as waiting


class PredictionLogWriter:
    def __init__(self, insert: Callable[[Sequence[dict[str, Any]]], None], *, max_rows: int = 100_000,
                 flush_interval_s: float = 0.2, batch_rows: int = 2_000,
                 on_written: Callable[[int], None] = lambda n: None,
                 on_dropped: Callable[[int], None] = lambda n: None,
                 after_write: Callable[[list[dict[str, Any]]], None] | None = None,
                 on_queue: Callable[[int], None] = lambda n: None, max_bytes: int | None = None) -> None:
        self._insert = insert
        self._max_bytes = max_bytes
        self._bytes = 0.0  # the queued rows' estimated memory (what ``submit`` was told), when bounded
        self._on_queue = on_queue
        self._after_write = after_write
        self._max_rows = max_rows
        self._interval = flush_interval_s
        self._batch_rows = batch_rows
        self._on_written = on_written
        self._on_dropped = on_dropped
        self._rows: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self.written = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def submit(self, rows: Sequence[dict[str, Any]], row_bytes: int = 0) -> None:
        """Queue ``rows`` (never blocks): what does not fit under ``max_rows`` or, given the
        caller's estimate of a row's memory, ``max_bytes``, is dropped and counted."""
        with self._cond:
            room = self._max_rows - len(self._rows)
            if self._max_bytes is not None and row_bytes > 0:
                room = min(room, int((self._max_bytes - self._bytes) // row_bytes))
            if self._closing:
                room = 0
            accepted = rows[:max(room, 0)]
            self._rows.extend(accepted)
            self._bytes += len(accepted) * row_bytes
            lost = len(rows) - len(accepted)
            if len(self._rows) >= self._batch_rows:
                self._cond.notify()
            if lost:
                self.dropped += lost
            pending = len(self._rows)
            report = time.monotonic() >= self._queue_reported_at + self._interval
            if report:  # the thread may be stuck in an insert (a lock): the gauge is fed from here too
                self._queue_reported_at = time.monotonic()
        if lost:
            self._on_dropped(lost)
        if report:
            self._report_queue(pending)

    def pending(self) -> int:
        with self._cond:
            return len(self._rows)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every row submitted so far is written; False on timeout."""
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._rows and not self._busy, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write everything still queued, then stop the thread.

        If the store is down, writes are retried until ``timeout``; what is left then is
        dropped and counted.
        """
        with self._cond:
            self._closing = True
            self._close_deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + 2 * self._interval)
        if self._thread.is_alive():
            log.error("prediction log: %d rows still queued after %.0fs at shutdown", self.pending(), timeout)

    @property
    def failing(self) -> bool:
        """Whether the last insert failed (the store is out): queued rows are not being written."""
        return self._failing

    def behind_since(self, stuck_s: float = STUCK_S) -> float | None:
        """Since when (epoch seconds) rows submitted may still be unwritten because the store was
        out or stuck: the last insert failed, or one has been running for over ``stuck_s`` (a
        lock), or one of those happened and the rows it left queued are not all written yet.
        None while inserts go through with nothing left over. Rows queued just before that moment
        may be unwritten too: the answer is moved back by two flush intervals and a second."""
        since = self._backlog_since
        busy_since = self._busy_since
        if self._failing:
            since = min(since or self._failing_wall, self._failing_wall)
        elif busy_since is not None and time.time() - busy_since > stuck_s:
            since = min(since or busy_since, busy_since)
        if since is None:
            return None
        return since - 2 * self._interval - 1.0

    _busy = False
    _queue_reported_at = 0.0  # monotonic: when submit last fed on_queue
    _failing = False
    _failing_since = 0.0  # monotonic
    _failing_wall = 0.0  # the same moment, epoch seconds
    _busy_since: float | None = None  # epoch seconds the running insert began
    _backlog_since: float | None = None  # epoch seconds an outage or a stuck insert began, until its backlog is written
    _reported_at = 0.0
    _flush_requested = False
    _close_deadline = float("inf")

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._failing:  # back off: retry the store once per interval
                    self._cond.wait(self._interval)
                elif not self._closing:
                    self._cond.wait_for(lambda: self._closing or self._flush_requested
                                        or len(self._rows) >= self._batch_rows, self._interval)
                self._flush_requested = False
                before = len(self._rows)
                batch = [self._rows.popleft() for _ in range(min(before, self._batch_rows))]
                # The batch's share of the estimate leaves with it (and comes back if it fails)
                share = self._bytes * len(batch) / before if before else 0.0
                self._bytes -= share
                closing = self._closing
                self._busy = bool(batch)
                self._busy_since = time.time() if batch else None
            if batch:
                self._write(batch, share)
            with self._cond:
                self._busy, self._busy_since = False, None
                self._cond.notify_all()
                pending = len(self._rows)
                done = closing and not self._rows
            self._report_queue(pending)
            if done:
                return

    def _write(self, batch: list[dict[str, Any]], share: float = 0.0) -> None:
        try:
            self._insert(batch)
        except Exception as exc:
            self._failed(exc, len(batch))
            with self._cond:
                if self._closing and time.monotonic() >= self._close_deadline:
                    self.dropped += len(batch)
                    self._on_dropped(len(batch))
                    return
                room = self._max_rows - len(self._rows)
                per_row = share / len(batch)
                if self._max_bytes is not None and per_row > 0:
                    room = min(room, int((self._max_bytes - self._bytes) // per_row))
                keep, lost = batch[:max(room, 0)], len(batch) - max(room, 0)
                self._rows.extendleft(reversed(keep))
                self._bytes += len(keep) * per_row
                if lost > 0:
                    self.dropped += lost
            if lost > 0:
                self._on_dropped(lost)
            return
        if self._failing:
            log.warning("prediction log: the store takes rows again after %.1fs", time.monotonic() - self._failing_since)
            self._failing = False
        with self._cond:
            began = self._busy_since
            if began is not None and time.time() - began > STUCK_S:  # stuck behind a lock: a backlog to drain
                self._backlog_since = min(self._backlog_since or began, began)
            if not self._rows:
                self._backlog_since = None  # every row queued during the outage is written
        self.written += len(batch)
        self._on_written(len(batch))
        if self._after_write is not None:
            try:
                self._after_write(batch)
            except Exception:  # the rows are written: whatever went wrong here stays here
                log.exception("prediction log: after-write step failed on %d written rows", len(batch))

    def _report_queue(self, pending: int) -> None:
        try:
            self._on_queue(pending)
        except Exception:  # a metric must not stop the log, nor a request
            log.exception("prediction log: on_queue failed")

    def _failed(self, exc: Exception, rows: int) -> None:
        """Say that inserts fail: the first time with the cause, then every ``REPORT_EVERY_S``."""
        now = time.monotonic()
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        waiting = self.pending() + rows
        if not self._failing:
            self._failing_wall, self._failing_since, self._reported_at = time.time(), now, now
            self._backlog_since = min(self._backlog_since or self._failing_wall, self._failing_wall)
            self._failing = True
            log.error("prediction log: the store refuses rows (%s: %s); %d rows wait, retried every %.1fs, "
                      "dropped and counted only past %d", type(exc).__name__, reason, waiting,
                      self._interval, self._max_rows)
        elif now - self._reported_at >= REPORT_EVERY_S:
            self._reported_at = now
            log.error("prediction log: the store still refuses rows after %.0fs (%s); %d rows wait, %d dropped "
                      "so far", now - self._failing_since, reason, waiting, self.dropped)
