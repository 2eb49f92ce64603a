"""Fault matrix: the running service under steady load while its store or its processes are broken.

    python -m bench.chaos [--only NAME[,NAME]] [--duration S] [--json FILE] [--workdir DIR]

(``make chaos``.) It trains the built-in ``loans`` scenario's gradient boosting model into a
temporary registry (:func:`bench.serving.prepare`), then, for each fault, starts a fresh
``driftloop serve`` (one worker, a port of its own) over a fresh store: a SQLite file in the
fault's own directory, or for ``postgres`` a database in a throw-away PostgreSQL cluster
(:class:`tests.conftest.PostgresServer`, the tests' helper). A load generator offers ``RATE``
one-row ``POST /predict`` requests per second, open loop (a fixed timetable, whatever the answers
do) on ``CONNECTIONS`` keep-alive connections (asyncio, in a thread of its own), from ``WARMUP_S``
before the fault until ``SETTLE_S`` after recovery, and records every answer's request id.

Faults (``--duration`` replaces each one's length):

``unwritable``   ``chattr +i`` on the SQLite file and its -wal and -shm files for 10 s, then ``chattr -i``.
``lock``         another process holds ``BEGIN EXCLUSIVE`` on the SQLite file for 20 s. Meanwhile a
                 ``/feedback`` with one label is sent every ``FEEDBACK_EVERY_S`` for the newest id
                 answered and not yet labelled; its answers are counted by status, and the labels
                 found in the store at the end.
``moved``        the SQLite file and its -wal and -shm files are renamed away, and back after 5 s
                 (whatever the service created at the path meanwhile is replaced). ``/feedback`` is
                 probed as for ``lock``, while the files are away and after, until the load stops.
``postgres``     the store on PostgreSQL; the server is stopped for 10 s (``PostgresServer.pause``:
                 ``pg_ctl stop -m fast``, every connection cut) and started again (``resume``).
                 Skipped, with the reason, when PostgreSQL is not installed.
``kill_worker``  ``kill -9`` of the service's worker (the arbiter starts another).
``sigterm``      SIGTERM to ``driftloop serve`` under load: a graceful stop, which should lose nothing.
``slow_bodies``  ``SLOW_CONNECTIONS`` connections each declare a 1,000-byte body, send 10 bytes and
                 hold for 10 s; the load's 503s (and other statuses) in that time are counted.
``hostile``      four bodies, sent at once under the load: JSON nested 100,000 deep, a 401-digit
                 integer, a lone surrogate (``"\\ud800"``) as a category, a 7 MB category string;
                 each one's status and time to answer.

Columns of the table:

* rows sent: the load's requests put on the wire (one row each; the probes' and the hostile
  bodies are apart); rows answered: those answered 200, each with its request id. Other
  statuses, and socket errors and timeouts (``REQUEST_TIMEOUT_S``), are listed under the table.
* rows stored: answered request ids found in the store's ``predictions`` table after a graceful
  stop of the service (SIGTERM to ``driftloop serve``, so its buffers are flushed).
* rows counted as dropped: the increase of ``driftloop_prediction_log_rows_total{outcome="dropped"}``
  between a scrape of ``/metrics`` once the service is ready and one after the load, before the
  stop (rows dropped during the stop itself are not in it; for ``sigterm``, the last scrape is
  just before the signal).
* unaccounted: rows answered - stored - counted as dropped (at least 0): rows lost silently.
* first 200 (s): from the end of the fault to the answer of the first request sent after it that
  was answered 200.
* time to recover (s): from the end of the fault until the row of a request sent after it is
  visible in the store, read through a connection of this process's own, polled every ``POLL_S``
  (measured when the poll that finds it returns; a stored row implies the request was answered
  200). Its floor is the prediction log's flush interval (0.2 s) plus a poll. ``>N``: no such
  row within ``RECOVER_LIMIT_S``. ``-``: not measured (``sigterm`` stops the service).

The end of a fault: when ``chattr -i`` returned (``unwritable``), the locking transaction was
rolled back and its process had exited (``lock``), the files were back (``moved``), ``pg_ctl`` had started the server
(``postgres``), the SIGKILL was sent (``kill_worker``), the slow connections were closed
(``slow_bodies``), the last hostile body was answered (``hostile``).

Each fault undoes itself in a ``finally`` (``chattr -i``, the lock released, the files moved
back, PostgreSQL started) and every server is stopped, whatever happens. Nothing is asserted:
the table reports what the code does. Under it, per fault: the load's statuses, the worker's pid
when it changed, the service log's ERROR lines, and what the fault itself saw (``/feedback``
answers, the slow uploads' answers, each hostile body's status and time). Times are wall-clock
on whatever else the machine runs; ``--json`` keeps every figure, ``--workdir`` the stores and logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.serving import Prepared, _Connection, _host_port, _run_async, http_request, machine_info, prepare, process_tree

FAULTS = ("unwritable", "lock", "moved", "postgres", "kill_worker", "sigterm", "slow_bodies", "hostile")
HOLD_S = {"unwritable": 10.0, "lock": 20.0, "moved": 5.0, "postgres": 10.0, "slow_bodies": 10.0}
RATE = 200.0  # one-row /predict requests per second
CONNECTIONS = 16
REQUEST_TIMEOUT_S = 10.0
WARMUP_S = 2.0  # load before the fault
SETTLE_S = 2.0  # load after recovery
RECOVER_LIMIT_S = 15.0
POLL_S = 0.1
FEEDBACK_EVERY_S = 0.5
FEEDBACK_TIMEOUT_S = 15.0
RESEND_FOR_S = 60.0  # how long the feedback probe keeps sending a label answered 503 with Retry-After
SLOW_CONNECTIONS = 128
HOSTILE_TIMEOUT_S = 40.0
LOG_ROWS = "driftloop_prediction_log_rows_total"  # {outcome="written" | "dropped"}
LOG_ERRORS = ("ERROR", "Traceback", "Fatal Python error")
SQLITE_SUFFIXES = ("", "-wal", "-shm")

Progress = Callable[[str], None]


# -- accounting and the table (pure) ---------------------------------------------------------------
def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``, in Prometheus' text
    format; 0 when there is none (a labelled counter has no series before its first increment)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = labels or {}
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items()))


@dataclass
class Outcome:
    """One fault's row of the table, and what is listed under it."""

    fault: str
    sent: int = 0
    answered: int = 0
    stored: int | None = None
    dropped: float | None = None  # None: /metrics could not be read
    first_ok_s: float | None = None
    recover_s: float | None = None
    recover_limit_s: float | None = None  # None: recovery not measured for this fault
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def unaccounted(self) -> int | None:
        """Answered rows neither stored nor counted as dropped."""
        if self.stored is None or self.dropped is None:
            return None
        return max(0, self.answered - self.stored - int(self.dropped))


COLUMNS = ("fault", "rows sent", "rows answered", "rows stored", "rows counted as dropped", "unaccounted",
           "first 200 (s)", "time to recover (s)")


def _cells(o: Outcome) -> list[str]:
    def num(value: float | None, fmt: str = "{:.0f}") -> str:
        return "?" if value is None else fmt.format(value)

    if o.recover_limit_s is None:
        recover = first = "-"
    else:
        recover = f">{o.recover_limit_s:g}" if o.recover_s is None else f"{o.recover_s:.2f}"
        first = f">{o.recover_limit_s:g}" if o.first_ok_s is None else f"{o.first_ok_s:.2f}"
    return [o.fault, str(o.sent), str(o.answered), num(o.stored), num(o.dropped), num(o.unaccounted), first, recover]


def format_table(outcomes: Sequence[Outcome]) -> str:
    """The table, one row per fault (a skipped one says why), then each fault's notes."""
    rows = [list(COLUMNS)] + [_cells(o) for o in outcomes if o.skipped is None]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    lines.insert(1, "  ".join("-" * w for w in widths))
    for o in outcomes:
        if o.skipped is not None:
            lines.append(f"{o.fault.ljust(widths[0])}  skipped: {o.skipped}")
    notes = [f"{o.fault}: {note}" for o in outcomes for note in o.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


def status_summary(statuses: Counter[int]) -> str:
    """``200 x1234, 503 x5, socket error/timeout x2``."""
    return ", ".join(f"{'socket error/timeout' if code < 0 else code} x{n}" for code, n in sorted(statuses.items()))


# -- load ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic() when the request went on the wire
    done: float
    status: int  # -1: socket error or timeout
    request_id: str | None  # from a 200's body


_FAILURES = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError)


class Load:
    """``rate`` one-row ``POST /predict`` per second, open loop, on ``connections`` keep-alive
    connections, in a thread of its own until :meth:`stop`. A request waiting for a free
    connection waits in a queue; it counts as sent when it goes on the wire."""

    def __init__(self, url: str, bodies: Sequence[bytes], rate: float = RATE, connections: int = CONNECTIONS,
                 timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.host, self.port = _host_port(url)
        self.payloads = [http_request(self.host, self.port, "/predict", b) for b in bodies]
        self.rate, self.connections, self.timeout = rate, connections, timeout
        self.answers: list[Answer] = []  # appended by the load's thread; read by copying
        self.sent = 0
        self.unsent = 0  # still queued when the load stopped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: _run_async(self._main()), name="chaos-load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout + 10)

    def ok_since(self, t: float) -> list[Answer]:
        """200 answers to requests sent at or after ``t``, in the order they came."""
        return [a for a in list(self.answers) if a.sent >= t and a.status == 200 and a.request_id]

    async def _main(self) -> None:
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        conns = [_Connection(self.host, self.port) for _ in range(self.connections)]
        workers = [asyncio.create_task(self._worker(c, queue)) for c in conns]
        t0, i = time.monotonic(), 0
        while not self._stop.is_set():
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait(i)
            i += 1
        for _ in conns:
            queue.put_nowait(None)
        _, pending = await asyncio.wait(workers, timeout=self.timeout + 1)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.unsent = sum(1 for _ in range(queue.qsize()) if queue.get_nowait() is not None)
        for conn in conns:
            await conn.close()

    async def _worker(self, conn: _Connection, queue: asyncio.Queue[int | None]) -> None:
        while (i := await queue.get()) is not None:
            sent = time.monotonic()
            self.sent += 1
            try:
                async with asyncio.timeout(self.timeout):
                    status, body = await conn.request(self.payloads[i % len(self.payloads)])
            except _FAILURES:
                await conn.close()  # reopened by the next request
                self.answers.append(Answer(sent, time.monotonic(), -1, None))
                continue
            request_id = None
            if status == 200:
                with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                    request_id = json.loads(body)["request_ids"][0]
            self.answers.append(Answer(sent, time.monotonic(), status, request_id))


class FeedbackProbe:
    """Every ``every`` seconds, ``POST /feedback`` with one label for the newest request id the
    load got answered since the probe started and not yet labelled; each answer is recorded with
    the phase it was sent in (``phase`` is set by the caller)."""

    def __init__(self, url: str, load: Load, label: Any, every: float = FEEDBACK_EVERY_S,
                 timeout: float = FEEDBACK_TIMEOUT_S) -> None:
        self.url, self.load, self.label, self.every, self.timeout = url, load, label, every, timeout
        self.phase = "during"
        self.results: list[dict[str, Any]] = []
        self._labelled: set[str] = set()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="chaos-feedback")
        self._thread = threading.Thread(target=self._run, name="chaos-feedback-probe", daemon=True)

    def start(self) -> FeedbackProbe:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop_sending(self) -> None:
        self._stop.set()
        self._thread.join()

    def stop(self) -> None:
        """Stop sending; wait for the answers of what was sent."""
        self.stop_sending()
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            fresh = [a.request_id for a in self.load.ok_since(self._started) if a.request_id not in self._labelled]
            if fresh:
                self._labelled.add(fresh[-1])
                self._pool.submit(self._send, fresh[-1], self.phase)

    def _send(self, request_id: str, phase: str) -> None:
        """Send one label as a well-behaved client does: a 503 with Retry-After is sent again
        after that delay, for up to ``RESEND_FOR_S``; the first answer and the last are kept."""
        started = time.monotonic()
        error = retry_after = None
        first: int | None = None
        attempts = 0
        body = {"labels": [{"request_id": request_id, "label": self.label}]}
        while True:
            attempts += 1
            try:  # a connection per label: one httpx.Client shared by these threads failed reads with EBADF here
                resp = httpx.post(f"{self.url}/feedback", json=body, timeout=self.timeout)
                status, retry_after = resp.status_code, resp.headers.get("retry-after")
            except httpx.HTTPError as exc:
                status, error = -1, f"{type(exc).__name__}: {exc}"
            first = status if first is None else first
            if status != 503 or retry_after is None or time.monotonic() - started > RESEND_FOR_S:
                break
            time.sleep(float(retry_after))
        self.results.append({"request_id": request_id, "phase": phase, "status": first, "final": status,
                             "attempts": attempts, "error": error, "retry_after": retry_after,
                             "seconds": time.monotonic() - started})

    def summary(self, labelled_in_store: set[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for phase in dict.fromkeys(r["phase"] for r in self.results):
            mine = [r for r in self.results if r["phase"] == phase]
            out[phase] = {"sent": len(mine), "statuses": dict(Counter(r["status"] for r in mine)),
                          "stored": sum(r["request_id"] in labelled_in_store for r in mine),
                          "stored_by_status": dict(Counter(r["status"] for r in mine
                                                           if r["request_id"] in labelled_in_store)),
                          "final_statuses": dict(Counter(r["final"] for r in mine)),
                          "resent": sum(r["attempts"] > 1 for r in mine),
                          "retry_after": sum(r["retry_after"] is not None for r in mine),
                          "errors": sorted({r["error"] for r in mine if r["error"]}),
                          "max_seconds": max(r["seconds"] for r in mine)}
        return out


# -- the store, read apart from the service ----------------------------------------------------------
class StoreReader:
    """Reads the service's store through connections of this process's own (the project's table
    definitions). A SQLite file is opened read-write but never created: a missing file is an error."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            path = parsed.database
            self.engine = sa.create_engine("sqlite://", poolclass=sa.pool.NullPool, creator=lambda: sqlite3.connect(
                f"file:{path}?mode=rw", uri=True, timeout=1.0, check_same_thread=False))
        else:
            self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 2})

    def found(self, column: Any, ids: Sequence[str]) -> set[str]:
        import sqlalchemy as sa

        out: set[str] = set()
        with self.engine.connect() as conn:
            for at in range(0, len(ids), 500):
                out.update(conn.execute(sa.select(column).where(column.in_(ids[at:at + 500]))).scalars())
        return out

    def stored(self, ids: Sequence[str]) -> set[str]:
        from driftloop.monitoring.store import predictions

        return self.found(predictions.c.request_id, ids)

    def labelled(self, ids: Sequence[str]) -> set[str]:
        from driftloop.monitoring.store import feedback

        return self.found(feedback.c.request_id, ids)

    def any_stored(self, ids: Sequence[str]) -> bool:
        """Whether any of ``ids`` is in the store; False while it cannot be read."""
        import sqlalchemy as sa

        try:
            return bool(ids) and bool(self.stored(ids))
        except (sa.exc.SQLAlchemyError, sqlite3.Error, OSError):
            return False

    def dispose(self) -> None:
        self.engine.dispose()


# -- the service -------------------------------------------------------------------------------------
class Served:
    """``driftloop serve`` in a session of its own, its output in ``serve.log``."""

    def __init__(self, settings: Any, workdir: Path) -> None:
        from driftloop.launch import ServiceProcess, write_config

        self.config = write_config(settings, workdir / "driftloop.yaml")
        self.log_path = workdir / "serve.log"
        self.ready = ServiceProcess(settings, log_path=self.log_path)  # its readiness check, on our process
        self.url = self.ready.url
        self.proc: subprocess.Popen[bytes] | None = None
        self._tree: list[psutil.Process] = []

    def start(self, timeout: float = 120.0) -> Served:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(Path(sys.executable).with_name("driftloop")), "serve", "--config",
                                          str(self.config)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.ready.proc = self.proc  # wait_ready stops waiting if it exits
        self.ready.wait_ready(timeout)
        self.remember()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def remember(self) -> None:
        """Note every process of the server, to be sure none survives :meth:`stop`."""
        if self.proc is not None:
            known = {p.pid for p in self._tree}
            self._tree += [p for p in process_tree(self.proc.pid) if p.pid not in known]

    def worker_pids(self) -> list[int]:
        out = []
        for p in process_tree(self.proc.pid) if self.proc else []:
            with contextlib.suppress(psutil.Error):
                if "_bentoml_impl.worker" in " ".join(p.cmdline()):
                    out.append(p.pid)
        return out

    def log_rows(self) -> dict[str, float] | None:
        """The prediction log's rows written and dropped, from ``/metrics``; None if it cannot be read."""
        try:
            text = httpx.get(f"{self.url}/metrics", timeout=10).text
            return {outcome: metric_value(text, LOG_ROWS, {"outcome": outcome}) for outcome in ("written", "dropped")}
        except (httpx.HTTPError, ValueError):
            return None

    def stop(self, timeout: float = 60.0) -> float | None:
        """SIGTERM to ``driftloop serve`` (a graceful stop); seconds until it exited. Whatever of
        the server still runs after that is killed."""
        if self.proc is None:
            return None
        self.remember()
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        took = time.monotonic() - started
        _, alive = psutil.wait_procs(self._tree, timeout=15)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        return took

    def log_errors(self, limit: int = 3) -> tuple[int, list[str]]:
        """Lines of the service's log with one of ``LOG_ERRORS`` (a worker killed by a signal
        leaves only Python's faulthandler's "Fatal Python error"), and the first distinct few."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return 0, []
        hits = [ln.strip() for ln in lines if any(marker in ln for marker in LOG_ERRORS)]
        untimed = (re.sub(r"^\d{4}-\d\d-\d\dT\S+\s+", "", h)[:160] for h in hits)  # repeats differ by time only
        return len(hits), list(dict.fromkeys(untimed))[:limit]


# -- running one fault -------------------------------------------------------------------------------
@dataclass
class Bench:
    prepared: Prepared
    root: Path
    bodies: list[bytes]
    hold: dict[str, float]
    progress: Progress

    def settings(self, store_url: str) -> Any:
        from driftloop.launch import free_port

        s = self.prepared.settings
        return s.model_copy(update={"serving": s.serving.model_copy(update={"port": free_port(), "workers": 1}),
                                    "store": s.store.model_copy(update={"url": store_url})})


@dataclass
class Run:
    """What a fault gets: the service, the load, the store's reader, and the row to fill in."""

    bench: Bench
    service: Served
    load: Load
    reader: StoreReader
    outcome: Outcome
    db: Path | None  # the SQLite file, if the store is one
    hold: float
    log_rows_last: dict[str, float] | None = None  # a fault that stops the service scrapes before
    probe: FeedbackProbe | None = None  # a fault's /feedback probe: stopped with the load


Fault = Callable[[Run], float | None]  # applies and undoes the fault; returns when it ended (None: the service stopped)


def run_fault(bench: Bench, name: str, fault: Fault, store_url: str | None = None) -> Outcome:
    workdir = bench.root / name
    workdir.mkdir(parents=True, exist_ok=True)
    db = None if store_url else workdir / "driftloop.db"
    url = store_url or f"sqlite:///{db}"
    service = Served(bench.settings(url), workdir)
    outcome = Outcome(name)
    reader = StoreReader(url)
    load: Load | None = None
    run: Run | None = None
    started = time.monotonic()
    try:
        service.start()
        rows0 = service.log_rows()
        workers0 = service.worker_pids()
        load = Load(service.url, bench.bodies).start()
        time.sleep(WARMUP_S)  # traffic before the fault is part of the experiment
        run = Run(bench, service, load, reader, outcome, db, bench.hold.get(name, 0.0))
        ended = fault(run)
        if ended is not None:
            outcome.recover_limit_s = RECOVER_LIMIT_S
            outcome.recover_s = wait_recovery(load, reader, ended, RECOVER_LIMIT_S)
            time.sleep(SETTLE_S)
        if run.probe is not None:
            run.probe.stop()
        load.stop()
        workers1 = service.worker_pids()
        rows1 = service.log_rows() if service.alive() else run.log_rows_last
        stop_s = service.stop()
        answers = list(load.answers)
        ok = [a.request_id for a in answers if a.status == 200 and a.request_id]
        outcome.sent, outcome.answered = load.sent, len(ok)
        outcome.stored = len(reader.stored(ok))
        if run.probe is not None:
            feedback_notes(outcome, run.probe, reader)
        if rows0 is not None and rows1 is not None:
            outcome.dropped = rows1["dropped"] - rows0["dropped"]
            outcome.detail["log_rows_counted"] = {k: rows1[k] - rows0[k] for k in rows0}
            if any(rows1[k] < rows0[k] for k in rows0):  # a dead worker's counts left /metrics with it
                outcome.notes.append(f"prediction-log counters went down: {rows0} -> {rows1}")
        if ended is not None:
            firsts = [a.done for a in answers if a.sent >= ended and a.status == 200]
            outcome.first_ok_s = min(firsts) - ended if firsts and min(firsts) - ended <= RECOVER_LIMIT_S else None
        statuses = Counter(a.status for a in answers)
        errors, first_errors = service.log_errors()
        outcome.detail.update({"statuses": dict(statuses), "unsent": load.unsent, "worker_pids_before": workers0,
                               "worker_pids_after": workers1, "stop_s": stop_s, "log_error_lines": errors,
                               "log_errors": first_errors, "store": "postgresql" if store_url else "sqlite",
                               "hold_s": run.hold})
        outcome.notes.insert(0, f"statuses {status_summary(statuses)}")
        if workers1 != workers0:
            outcome.notes.append(f"worker pids {workers0} -> {workers1}")
        outcome.notes.append(f"log: {errors} line(s) with {'/'.join(LOG_ERRORS)}"
                             + "".join(f"; {line!r}" for line in first_errors))
    except Exception as exc:  # one broken fault must not hide the others' rows
        outcome.notes.append(f"the run failed: {type(exc).__name__}: {exc}")
        outcome.detail["error"] = repr(exc)
    finally:
        if run is not None and run.probe is not None:  # a failed run's probe stops too
            run.probe.stop()
        if db is not None:
            chattr("-i", sqlite_files(db))  # whatever happened above; before the stop, which writes
        if load is not None:
            load.stop()
        service.stop()
        reader.dispose()
    outcome.detail["wall_s"] = time.monotonic() - started
    return outcome


def wait_recovery(load: Load, reader: StoreReader, ended: float, limit: float) -> float | None:
    """Seconds from ``ended`` until the store holds the row of a request sent at or after it;
    None if none appears within ``limit``."""
    while time.monotonic() - ended < limit:
        if reader.any_stored([a.request_id for a in load.ok_since(ended) if a.request_id]):
            return time.monotonic() - ended
        time.sleep(POLL_S)
    return None


# -- the faults --------------------------------------------------------------------------------------
def sqlite_files(db: Path) -> list[Path]:
    return [db.with_name(db.name + suffix) for suffix in SQLITE_SUFFIXES]


def chattr(flag: str, paths: Sequence[Path]) -> subprocess.CompletedProcess[str] | None:
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return None
    return subprocess.run(["chattr", flag, *existing], capture_output=True, text=True)


def chattr_works(directory: Path) -> str | None:
    """None if ``chattr +i`` works in ``directory``; else why not."""
    probe = directory / "chattr-probe"
    probe.write_text("")
    try:
        done = chattr("+i", [probe])
    except FileNotFoundError:
        return "chattr is not installed (e2fsprogs)"
    finally:
        with contextlib.suppress(FileNotFoundError):
            chattr("-i", [probe])
        probe.unlink()
    if done is None or done.returncode != 0:
        return f"chattr +i failed here ({(done.stderr.strip() if done else '')}; it needs root and ext4 or similar)"
    return None


def fault_unwritable(run: Run) -> float:
    assert run.db is not None
    files = [p for p in sqlite_files(run.db) if p.exists()]
    done = chattr("+i", files)
    if done is None or done.returncode != 0:
        raise RuntimeError(f"chattr +i failed: {done.stderr if done else 'no files'}")
    run.outcome.notes.append(f"immutable: {', '.join(p.name for p in files)} for {run.hold:g}s")
    try:
        time.sleep(run.hold)
    finally:
        undone = chattr("-i", files)
    if undone is not None and undone.returncode != 0:
        run.outcome.notes.append(f"chattr -i failed: {undone.stderr.strip()}")
    return time.monotonic()


LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


def fault_lock(run: Run) -> float:
    assert run.db is not None
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(run.db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert locker.stdout is not None and locker.stdin is not None
        if locker.stdout.readline() != b"locked\n":
            raise RuntimeError(f"the locking process failed: {locker.stderr.read().decode() if locker.stderr else ''}")
        took_lock = time.monotonic()
        run.probe = FeedbackProbe(run.service.url, run.load, label=run.bench.prepared.schema["labels"][-1]).start()
        time.sleep(max(0.0, run.hold - (time.monotonic() - took_lock)))
        run.probe.stop_sending()  # labels for ids answered during the lock only; their answers may come later
        locker.stdin.close()
        locker.wait(30)
        ended = time.monotonic()
        run.outcome.notes.append(f"exclusive lock held {ended - took_lock:.1f}s")
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait(10)
    return ended


def feedback_notes(outcome: Outcome, probe: FeedbackProbe, reader: StoreReader) -> None:
    """The probe's answers by status, and its labels in the store (read after the graceful stop)."""
    ids = [r["request_id"] for r in probe.results]
    summary = probe.summary(reader.labelled(ids) if ids else set())
    outcome.detail["feedback"] = summary
    for phase, s in summary.items():
        outcome.notes.append(f"feedback sent {phase} the fault: {s['sent']} label(s), first answered "
                             f"{status_summary(Counter(s['statuses']))}; {s['resent']} sent again after "
                             f"Retry-After, finally {status_summary(Counter(s['final_statuses']))}; "
                             f"{s['stored']} labels stored at the end; slowest {s['max_seconds']:.1f}s")


def fault_moved(run: Run) -> float:
    assert run.db is not None
    away = {p: p.with_name(p.name + ".away") for p in sqlite_files(run.db) if p.exists()}
    for path, moved in away.items():  # the database first: nothing opens a -wal without it
        os.rename(path, moved)
    run.probe = FeedbackProbe(run.service.url, run.load, label=run.bench.prepared.schema["labels"][-1]).start()
    try:
        time.sleep(run.hold)
        created = [p.name for p in sqlite_files(run.db) if p.exists()]
        if created:
            run.outcome.notes.append(f"the service created {', '.join(created)} while the files were away "
                                     "(replaced by the move back)")
    finally:
        for path, moved in reversed(away.items()):  # the database last: its -wal is in place when it appears
            if moved.exists():
                os.replace(moved, path)
        for stray in sqlite_files(run.db):
            if stray not in away and stray.exists():
                stray.unlink()  # a -wal or -shm made for the new file would not belong to the old one
    run.probe.phase = "after"  # and on, until the load stops
    return time.monotonic()


def fault_postgres(server: Any) -> Fault:
    def fault(run: Run) -> float:
        server.pause()
        try:
            time.sleep(run.hold)
        finally:
            server.resume()
        run.outcome.notes.append(f"PostgreSQL stopped for {run.hold:g}s")
        return time.monotonic()

    return fault


def fault_kill_worker(run: Run) -> float:
    pids = run.service.worker_pids()
    if not pids:
        raise RuntimeError("no worker process found")
    os.kill(pids[0], signal.SIGKILL)
    return time.monotonic()


def fault_sigterm(run: Run) -> None:
    run.log_rows_last = run.service.log_rows()
    assert run.service.proc is not None
    run.service.remember()
    started = time.monotonic()
    run.service.proc.send_signal(signal.SIGTERM)
    code = run.service.proc.wait(60)
    run.outcome.notes.append(f"driftloop serve exited {code} {time.monotonic() - started:.1f}s after SIGTERM")
    time.sleep(0.5)  # requests against the stopped service are refused: part of what is reported
    return None


SLOW_OUTCOMES = {-2: "nothing", -1: "closed unanswered", 0: "other bytes"}  # else the status they got


def fault_slow_bodies(run: Run) -> float:
    host, port = _host_port(run.service.url)
    head = (f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000\r\n\r\n").encode() + b'{"rows": [{'  # 10 bytes of the 1,000
    socks: list[socket.socket] = []
    answers: dict[int, bytes] = {}
    sel = selectors.DefaultSelector()
    try:
        for i in range(SLOW_CONNECTIONS):
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(head)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
            socks.append(s)
        began = time.monotonic()
        while (left := began + run.hold - time.monotonic()) > 0:
            for key, _ in sel.select(timeout=min(left, 0.5)):
                try:
                    data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except OSError:
                    data = b""
                answers[key.data] = answers.get(key.data, b"") + data
                if not data:  # closed by the server
                    sel.unregister(key.fileobj)
    finally:
        for s in socks:
            s.close()
        sel.close()
    ended = time.monotonic()
    slow = Counter(int(a[9:12]) if a.startswith(b"HTTP/1.1 ") else (-1 if not a else 0) for a in answers.values())
    slow[-2] = SLOW_CONNECTIONS - len(answers)
    window = [a for a in list(run.load.answers) if began <= a.sent < ended]
    legit = Counter(a.status for a in window)
    run.outcome.detail["slow_bodies"] = {"slow_connections": {str(k): v for k, v in slow.items() if v},
                                         "load_statuses_while_held": dict(legit)}
    run.outcome.notes.append(
        f"{SLOW_CONNECTIONS} slow uploads held {ended - began:.1f}s; they got: "
        + ", ".join(f"{SLOW_OUTCOMES.get(k, k)} x{v}" for k, v in sorted(slow.items()) if v)
        + f"; the load meanwhile: {status_summary(legit)} ({legit.get(503, 0)} legit 503s)")
    return ended


def hostile_bodies(row: dict[str, Any], numeric: str, categorical: str) -> dict[str, bytes]:
    """The four hostile bodies, by name."""
    def with_value(raw: str) -> bytes:  # the row's JSON with one value replaced by raw JSON text
        return json.dumps({"rows": [row | {numeric: "@@"}]}).replace('"@@"', raw).encode()

    return {
        "nested 100,000 deep": b'{"rows": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "401-digit integer": with_value("1" + "0" * 400),
        "lone surrogate": json.dumps({"rows": [row | {categorical: "\ud800"}]}).encode(),  # as \ud800
        "7 MB string": json.dumps({"rows": [row | {categorical: "x" * 7_000_000}]}).encode(),
    }


def fault_hostile(run: Run) -> float:
    schema = run.bench.prepared.schema
    numeric = next(f["name"] for f in schema["features"] if f["kind"] == "numeric")
    categorical = next(f["name"] for f in schema["features"] if f["kind"] == "categorical")
    bodies = hostile_bodies(run.bench.prepared.rows[0], numeric, categorical)
    results: dict[str, dict[str, Any]] = {}

    def send(name: str, body: bytes) -> None:
        started = time.monotonic()
        try:
            resp = httpx.post(f"{run.service.url}/predict", content=body, timeout=HOSTILE_TIMEOUT_S,
                              headers={"Content-Type": "application/json"})
            results[name] = {"status": resp.status_code, "answer": resp.text[:200]}
        except httpx.HTTPError as exc:
            results[name] = {"status": -1, "answer": f"{type(exc).__name__}: {exc}"[:200]}
        results[name]["seconds"] = time.monotonic() - started
        results[name]["bytes"] = len(body)

    threads = [threading.Thread(target=send, args=item, name=f"chaos-hostile-{i}") for i, item in
               enumerate(bodies.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.outcome.detail["hostile"] = results
    for name, r in results.items():
        run.outcome.notes.append(f"{name} ({r['bytes']:,} bytes): {r['status']} in {r['seconds']:.2f}s: "
                                 f"{r['answer'][:120]!r}")
    return time.monotonic()


def run_postgres(bench: Bench) -> Outcome:
    from tests.conftest import PostgresServer, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        return Outcome("postgres", skipped="PostgreSQL is not installed (no initdb): run scripts/system-deps.sh")
    server = PostgresServer(bindir).start()
    try:
        return run_fault(bench, "postgres", fault_postgres(server), store_url=server.create_database())
    finally:
        server.stop()


SQLITE_FAULTS: dict[str, Fault] = {"unwritable": fault_unwritable, "lock": fault_lock, "moved": fault_moved,
                                   "kill_worker": fault_kill_worker, "sigterm": fault_sigterm,
                                   "slow_bodies": fault_slow_bodies, "hostile": fault_hostile}


def run_matrix(faults: Sequence[str], root: Path, hold: float | None = None,
               progress: Progress = lambda line: None) -> dict[str, Any]:
    started = time.monotonic()
    progress("training the loans model ...")
    prepared = prepare(root / "model")
    bodies = [json.dumps({"rows": [row]}).encode() for row in prepared.rows]
    bench = Bench(prepared, root, bodies, {k: hold if hold is not None else v for k, v in HOLD_S.items()}, progress)
    outcomes = []
    for name in faults:
        progress(f"{name} ...")
        if name == "postgres":
            outcome = run_postgres(bench)
        elif name == "unwritable" and (why := chattr_works(root)) is not None:
            outcome = Outcome(name, skipped=why)
        else:
            outcome = run_fault(bench, name, SQLITE_FAULTS[name])
        outcomes.append(outcome)
        progress(format_table([outcome]).split("\n", 2)[-1])
    return {"outcomes": outcomes, "wall_s": time.monotonic() - started, "rate": RATE, "connections": CONNECTIONS,
            "hold_s": bench.hold, "recover_limit_s": RECOVER_LIMIT_S}


@contextlib.contextmanager
def workspace(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
    else:
        with tempfile.TemporaryDirectory(prefix="driftloop-chaos-") as tmp:
            yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(FAULTS), help=f"comma-separated, from: {', '.join(FAULTS)}")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds each fault lasts (default: " + ", ".join(f"{k} {v:g}" for k, v in HOLD_S.items())
                        + ")")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--workdir", help="keep registries, stores and service logs here")
    args = parser.parse_args(argv)
    chosen = [f.strip() for f in args.only.split(",") if f.strip()]
    if unknown := [f for f in chosen if f not in FAULTS]:
        parser.error(f"unknown fault(s) {unknown}; choose from {list(FAULTS)}")
    progress: Progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    info = machine_info()
    with workspace(args.workdir) as root:
        result = run_matrix(chosen, root, args.duration, progress)
    print(format_table(result["outcomes"]))
    print(f"\n{len(chosen)} fault(s) in {result['wall_s']:.0f}s; load {RATE:g} req/s on {CONNECTIONS} connections")
    if args.json:
        out = {"machine": info, **result, "outcomes": [asdict(o) | {"unaccounted": o.unaccounted}
                                                       for o in result["outcomes"]]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
