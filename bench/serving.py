"""Serving benchmark: the driftloop service against a bare Starlette + onnxruntime app.

    python -m bench.serving [--duration 10] [--connections 1,8,32,64] [--json FILE] [--profile DIR]

On this machine and the same ONNX file, it starts

* ``driftloop``: the real service (``bentoml serve`` through :class:`driftloop.launch.ServiceProcess`,
  one worker; prediction log, metrics and BentoML's access log and tracing as shipped), and
* ``bare``: :mod:`bench.bare_app` under uvicorn (one worker): JSON in, ``FeatureSchema.feeds``,
  onnxruntime, JSON out; nothing else,

after training the built-in ``loans`` scenario's ``gradient_boosting`` model into a temporary
registry and promoting it (the bare app gets the registry version's ``model.onnx`` after
:meth:`models.registry.Registry.verify`, and checks its sha256 again itself). Then:

1. closed loop: wrk (one thread; a Lua script POSTs a one-row body to ``/predict``) at each
   concurrency for ``--duration`` seconds, the two servers alternating at each level after a
   warm-up. Throughput, p50/p95/p99 latency, non-2xx responses (wrk counts statuses >= 400),
   socket errors (connect, read, write, timeout), and the ratios driftloop / bare. Without wrk
   (``apt-get install -y wrk``) the Python generator below runs the same levels closed-loop;
   the output says which generator ran.
2. open loop: the Python generator (asyncio streams, keep-alive connections, uvloop when
   installed) offers a fixed rate, by default half the bare app's throughput at 32 connections,
   to each server. Sends follow a fixed timetable whatever the answers do, and latency is
   measured from each request's *scheduled* send time, so a stalled server is charged for the
   requests queued behind the stall (no coordinated omission). A response is read on one of a
   fixed pool of connections; a request waiting for a free connection waits on the clock. After
   the last send, answers are awaited for the run's duration plus the request timeout; a request
   still unanswered then counts as an infinite latency (a server that cannot keep up shows
   ``inf`` percentiles rather than the flattering latencies of the requests it did answer). A
   second rate, half the service's own throughput at 32 connections, compares the two below
   saturation. The generator's CPU is reported beside the figures: on a small machine it takes
   a share of the cores the server would otherwise have.
3. cold start (process start until every worker serves the model, polled every 0.1 s) and
   resident memory: RSS of the server's process tree, the workers alone and in all (circus
   starts each BentoML worker in a session of its own, so the workers are found as descendants
   of the ``bentoml serve`` process rather than in its process group), after the warm-up and at
   the end.

Every run also records CPU time: the server's processes, the load generator's (wrk, or this
process for the Python generator) and everything else on the machine, in cores, so a run shared
with another job (a test suite) shows it, and the server's CPU milliseconds per request. Before
the servers start, both request paths are timed in-process without HTTP (the bare app's
``feeds`` + onnxruntime, and the service's ``Serving.predict``), which separates driftloop's own
cost from the HTTP stack's. ``--profile DIR`` samples the service's worker with py-spy at 32
connections (the thread holding the GIL) and reports where the time goes, by owner (BentoML,
OpenTelemetry, Starlette, uvicorn, anyio, driftloop, ...). Nothing is asserted about speed.

Not measured here: the prediction log and metrics switched off, adaptive batching on and off,
and overload at twice saturation; :mod:`bench.serving_features` measures those, each against the
same service with the feature off (the output says so).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = (1, 8, 32, 64)
DURATION_S = 10.0
CAPACITY_CONNECTIONS = 32  # the open-loop rate is a share of the bare app's throughput here
RATE_SHARE = 0.5
WARMUP_S = 2.0
POLL_S = 0.1  # readiness polling, both servers
REQUEST_TIMEOUT_S = 10.0
PARITY_ROWS = 50
SERVERS = ("bare", "driftloop")
LIBRARIES = ("bentoml", "starlette", "uvicorn", "onnxruntime", "httpx", "uvloop")
NOT_MEASURED = ("prediction log on/off, adaptive batching and overload shedding: each is measured against "
                "itself switched off by `python -m bench.serving_features` (make bench-serving-features)")

BATCH_ROWS = 100  # the many-row level: rows a request
Progress = Callable[[str], None]


# -- load generators --------------------------------------------------------------------------------
@dataclass
class LoadResult:
    """One load run against one server: every figure the table shows, and the CPU it cost."""

    server: str
    generator: str  # wrk | python-closed | python-open
    connections: int
    duration_s: float  # the measured window (open loop: first scheduled send to last answer)
    requests: int  # answered requests (any status)
    non_2xx: int
    socket_errors: int
    rps: float  # answered requests per second (open loop: 2xx answers per second)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    server_cpu_cores: float | None = None  # CPU seconds of the server's processes / wall seconds
    loadgen_cpu_cores: float | None = None  # the same for the load generator
    other_cpu_cores: float | None = None  # everything else on the machine
    offered_rps: float | None = None  # open loop only
    scheduled: int | None = None  # open loop: requests on the timetable
    unfinished: int | None = None  # open loop: no answer within the request timeout / drain
    send_lag_p99_ms: float | None = None  # open loop: how late the generator put requests on the wire
    detail: dict[str, Any] = field(default_factory=dict)


def _percentiles(latencies_ms: np.ndarray) -> dict[str, float]:
    """Percentiles, max and mean; an unanswered request counts as an infinite latency (the mean
    is over the answered ones)."""
    if not len(latencies_ms):
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"),
                "mean_ms": float("nan")}
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99], method="higher")  # no interpolation towards inf
    finite = latencies_ms[np.isfinite(latencies_ms)]
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "max_ms": float(latencies_ms.max()),
            "mean_ms": float(finite.mean()) if len(finite) else float("nan")}


def http_request(host: str, port: int, path: str, body: bytes) -> bytes:
    """The exact bytes of a keep-alive ``POST`` with a JSON body."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode("ascii") + body


class _Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: write a request, read one answer."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        await self.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            writer, self.writer, self.reader = self.writer, None, None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        """Send ``payload`` and read the whole answer: its status code and body."""
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(payload)
        await self.writer.drain()
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        status = int(head[9:12])
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            body = await self.reader.readexactly(int(head[at + 17:head.index(b"\r\n", at + 2)]))
        elif b"\r\ntransfer-encoding: chunked" in head:
            parts = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";", 1)[0], 16):
                parts.append((await self.reader.readexactly(size + 2))[:-2])
            await self.reader.readuntil(b"\r\n")  # the empty line after the last chunk
            body = b"".join(parts)
        else:  # no length: the body runs to the end of the connection
            body = await self.reader.read()
            await self.close()
        if b"\r\nconnection: close" in head:
            await self.close()
        return status, body


_FAILURES = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError)


def _run_async(coro: Any) -> Any:
    """Run on uvloop when it is installed (cheaper per request than asyncio's own loop)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with bentoml
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def loop_kind() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        return "asyncio"
    return "uvloop"


async def _open_loop(host: str, port: int, payload: bytes, rate: float, duration: float, connections: int,
                     timeout: float) -> dict[str, Any]:
    clock = time.perf_counter  # not loop.time(): uvloop's is cached per iteration, in whole milliseconds
    n = max(1, int(round(rate * duration)))
    status = np.zeros(n, dtype=np.int32)  # 0: no answer (yet), -1: socket error
    done = np.full(n, np.nan)
    put = np.full(n, np.nan)
    conns = [_Connection(host, port) for _ in range(connections)]
    for conn in conns:
        await conn.open()
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    socket_errors = 0

    async def worker(conn: _Connection) -> None:
        nonlocal socket_errors
        while (i := await queue.get()) is not None:
            try:
                async with asyncio.timeout(timeout):
                    status[i], _ = await conn.request(payload)
                done[i] = clock()
            except _FAILURES:
                status[i] = -1
                socket_errors += 1
                await conn.close()  # reopened by the next request

    workers = [asyncio.create_task(worker(c)) for c in conns]
    t0 = clock() + 0.01
    interval = 1.0 / rate
    for i in range(n):  # the timetable: request i is due at t0 + i / rate, whatever came back
        delay = t0 + i * interval - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        put[i] = clock()
        queue.put_nowait(i)
    for _ in conns:
        queue.put_nowait(None)
    _, pending = await asyncio.wait(workers, timeout=duration + timeout)  # drain what is queued or in flight
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for conn in conns:
        await conn.close()
    scheduled = t0 + np.arange(n) * interval
    return {"t0": t0, "scheduled": scheduled, "put": put, "done": done, "status": status,
            "socket_errors": socket_errors}


async def _closed_loop(host: str, port: int, payload: bytes, duration: float, connections: int,
                       timeout: float) -> dict[str, Any]:
    clock = time.perf_counter  # not loop.time(): uvloop's is cached per iteration, in whole milliseconds
    conns = [_Connection(host, port) for _ in range(connections)]
    for conn in conns:
        await conn.open()
    latencies: list[float] = []
    statuses: list[int] = []
    socket_errors = 0
    t0 = clock()
    deadline = t0 + duration

    async def worker(conn: _Connection) -> None:
        nonlocal socket_errors
        while (start := clock()) < deadline:
            try:
                async with asyncio.timeout(timeout):
                    code, _ = await conn.request(payload)
            except _FAILURES:
                socket_errors += 1
                await conn.close()
                continue
            latencies.append(clock() - start)
            statuses.append(code)

    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = clock() - t0
    for conn in conns:
        await conn.close()
    return {"latencies": np.asarray(latencies), "statuses": np.asarray(statuses, dtype=np.int32),
            "socket_errors": socket_errors, "elapsed": elapsed}


def open_loop(url: str, body: bytes, rate: float, duration: float, connections: int = CAPACITY_CONNECTIONS,
              timeout: float = REQUEST_TIMEOUT_S, path: str = "/predict", server: str = "") -> LoadResult:
    """Offer ``rate`` requests/s for ``duration`` s on ``connections`` keep-alive connections;
    latency from each request's scheduled send time."""
    host, port = _host_port(url)
    cpu0 = time.process_time()
    wall0 = time.monotonic()
    raw = _run_async(_open_loop(host, port, http_request(host, port, path, body), rate, duration, connections,
                                timeout))
    wall = time.monotonic() - wall0
    answered = ~np.isnan(raw["done"])
    ok = answered & (raw["status"] >= 200) & (raw["status"] < 300)
    # from the scheduled send time; unanswered (still queued or in flight at the end): infinite; socket errors: out
    latencies = np.where(answered, (raw["done"] - raw["scheduled"]) * 1000.0, np.inf)[raw["status"] >= 0]
    span = (float(np.nanmax(raw["done"])) - raw["t0"]) if answered.any() else duration
    lag = (raw["put"] - raw["scheduled"]) * 1000.0
    return LoadResult(
        server=server, generator="python-open", connections=connections, duration_s=span,
        requests=int(answered.sum()), non_2xx=int((answered & ~ok).sum()), socket_errors=int(raw["socket_errors"]),
        rps=float(ok.sum()) / span, offered_rps=rate, scheduled=len(raw["status"]),
        unfinished=int((raw["status"] == 0).sum()), send_lag_p99_ms=float(np.nanpercentile(lag, 99)),
        loadgen_cpu_cores=(time.process_time() - cpu0) / wall, **_percentiles(latencies),
        detail={"loop": loop_kind(), "send_lag_max_ms": float(np.nanmax(lag)), "timeout_s": timeout},
    )


def closed_loop(url: str, body: bytes, connections: int, duration: float, timeout: float = REQUEST_TIMEOUT_S,
                path: str = "/predict", server: str = "") -> LoadResult:
    """Each of ``connections`` connections sends its next request as soon as the last is answered."""
    host, port = _host_port(url)
    cpu0 = time.process_time()
    wall0 = time.monotonic()
    raw = _run_async(_closed_loop(host, port, http_request(host, port, path, body), duration, connections, timeout))
    wall = time.monotonic() - wall0
    statuses = raw["statuses"]
    return LoadResult(
        server=server, generator="python-closed", connections=connections, duration_s=raw["elapsed"],
        requests=len(statuses), non_2xx=int(((statuses < 200) | (statuses >= 300)).sum()),
        socket_errors=int(raw["socket_errors"]), rps=len(statuses) / raw["elapsed"],
        loadgen_cpu_cores=(time.process_time() - cpu0) / wall, **_percentiles(raw["latencies"] * 1000.0),
        detail={"loop": loop_kind()},
    )


WRK_SCRIPT = """-- written by bench/serving.py: POST one JSON body; print the figures as one JSON line
wrk.method = "POST"
wrk.path = "/predict"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def write_wrk_script(body: bytes, path: Path) -> Path:
    text = body.decode()
    if "]==]" in text:
        raise ValueError("the request body cannot be quoted in the wrk script")
    path.write_text(WRK_SCRIPT.format(body=text))
    return path


def run_wrk(url: str, script: Path, connections: int, duration: float, timeout: float = REQUEST_TIMEOUT_S,
            server: str = "") -> LoadResult:
    """wrk, one thread, ``connections`` connections, for ``duration`` seconds."""
    exe = wrk_path()
    if exe is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (Debian), or run with --generator python")
    argv = [exe, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", f"--timeout={max(1, round(timeout))}s",
            "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + timeout + 30)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    w = json.loads(line.split(" ", 1)[1])
    seconds = w["duration_us"] / 1e6
    return LoadResult(
        server=server, generator="wrk", connections=connections, duration_s=seconds, requests=w["requests"],
        non_2xx=w["status"], socket_errors=w["connect"] + w["read"] + w["write"] + w["timeout"],
        rps=w["requests"] / seconds, p50_ms=w["p50_us"] / 1000, p95_ms=w["p95_us"] / 1000,
        p99_ms=w["p99_us"] / 1000, max_ms=w["max_us"] / 1000, mean_ms=w["mean_us"] / 1000,
        detail={"wrk": {k: w[k] for k in ("connect", "read", "write", "timeout", "status", "bytes")},
                "argv": argv[:-3] + [argv[-1]]},
    )


def _host_port(url: str) -> tuple[str, int]:
    parsed = httpx.URL(url)
    return parsed.host, parsed.port or 80


# -- processes: CPU and memory -----------------------------------------------------------------
def process_tree(pid: int) -> list[psutil.Process]:
    try:
        leader = psutil.Process(pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children only: wrk, not the servers
    return r.ru_utime + r.ru_stime


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


@contextlib.contextmanager
def cpu_meter(server_pids: Callable[[], list[psutil.Process]], result_box: list[dict[str, float]]) -> Iterator[None]:
    """CPU seconds over the block: the server's processes, this process plus reaped children (the
    load generator), the machine; appended to ``result_box`` as cores."""
    procs = server_pids()
    s0, own0, kids0, busy0, w0 = cpu_seconds(procs), time.process_time(), _children_cpu(), _machine_busy(), \
        time.monotonic()
    yield
    wall = time.monotonic() - w0
    server = (cpu_seconds(procs) - s0) / wall
    loadgen = ((time.process_time() - own0) + (_children_cpu() - kids0)) / wall
    machine = (_machine_busy() - busy0) / wall
    result_box.append({"server": server, "loadgen": loadgen, "other": max(0.0, machine - server - loadgen),
                       "machine": machine})


# -- the two servers -------------------------------------------------------------------------------
@dataclass
class Memory:
    workers_mib: float  # the processes that answer requests
    total_mib: float  # the whole tree (BentoML: the ``bentoml serve`` arbiter too)
    processes: int


class Server:
    name = ""
    url = ""
    cold_start_s: float | None = None

    def processes(self) -> list[psutil.Process]:
        raise NotImplementedError

    def workers(self) -> list[psutil.Process]:
        return self.processes()

    def memory(self) -> Memory:
        procs = self.processes()
        workers = {p.pid for p in self.workers()}

        def rss(ps: Sequence[psutil.Process]) -> float:
            total = 0
            for p in ps:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            return total / 2**20

        return Memory(rss([p for p in procs if p.pid in workers]), rss(procs), len(procs))

    def stop(self) -> None:
        raise NotImplementedError


class DriftloopServer(Server):
    name = "driftloop"

    def __init__(self, settings: Any, workdir: Path) -> None:
        from driftloop.launch import ServiceProcess, write_config

        self.settings = settings
        self.service = ServiceProcess(settings, write_config(settings, workdir / "driftloop.yaml"),
                                      log_path=workdir / "service.log")
        self.url = self.service.url

    def start(self, timeout: float = 120.0) -> DriftloopServer:
        started = time.monotonic()
        self.service.start(ready_timeout=timeout)  # until /readyz and every worker's model gauge
        self.cold_start_s = time.monotonic() - started
        return self

    def processes(self) -> list[psutil.Process]:
        return process_tree(self.service.proc.pid) if self.service.proc else []

    def workers(self) -> list[psutil.Process]:
        out = []
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                if "_bentoml_impl.worker" in " ".join(p.cmdline()):
                    out.append(p)
        return out

    def stop(self) -> None:
        self.service.stop()


class BareServer(Server):
    name = "bare"

    def __init__(self, model_path: Path, sha256: str, version: str, schema: dict[str, Any], workdir: Path,
                 host: str, port: int) -> None:
        self.config = workdir / "bare.json"
        self.config.write_text(json.dumps({"model_path": str(model_path), "sha256": sha256, "version": version,
                                           "schema": schema}))
        self.log_path = workdir / "bare.log"
        self.url = f"http://{host}:{port}"
        self.argv = [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--app-dir", str(ROOT), "--host", host,
                     "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> BareServer:
        env = dict(os.environ, BARE_APP_CONFIG=str(self.config))
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() - started < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the bare app exited with code {self.proc.returncode}; see {self.log_path}")
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        self.cold_start_s = time.monotonic() - started
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(POLL_S)
        self.stop()
        raise TimeoutError(f"the bare app was not ready within {timeout:.0f}s; see {self.log_path}")

    def processes(self) -> list[psutil.Process]:
        return process_tree(self.proc.pid) if self.proc else []

    def stop(self) -> None:
        from driftloop.launch import stop_process

        if self.proc is not None:
            stop_process(self.proc, 15)


# -- the benchmark ---------------------------------------------------------------------------------
@dataclass
class Prepared:
    settings: Any
    version: str
    model_path: Path
    sha256: str
    schema: dict[str, Any]
    rows: list[dict[str, Any]]  # held-out rows for the parity check; rows[0] is the load body's row
    train_s: float


def prepare(workdir: Path, seed: int = 42, port: int | None = None) -> Prepared:
    """Train the built-in ``loans`` scenario's gradient boosting model into a registry under
    ``workdir``, promote it, and verify the file the bare app will load."""
    from driftloop.launch import free_port
    from driftloop.vocabulary import Trigger
    from driftloop.settings import load_settings
    from driftloop.models.registry import MODEL_FILE, Registry
    from driftloop.training.scenarios import scenario_frame
    from driftloop.training.train import train_version

    settings = load_settings(None, seed=seed, model={"kind": "gradient_boosting"},
                             registry={"home": str(workdir / "bentoml")},
                             store={"url": f"sqlite:///{workdir / 'driftloop.db'}"},
                             monitoring={"reports_dir": str(workdir / "reports"), "metrics_port": 0},
                             serving={"port": port or free_port(), "workers": 1})
    registry = Registry(settings.registry.home, settings.registry.project)
    frame = scenario_frame("loans", seed=seed)
    started = time.monotonic()
    trained = train_version(settings, frame[frame["period"] == "train"].reset_index(drop=True), registry,
                            trigger=Trigger.INITIAL)
    train_s = time.monotonic() - started
    version = trained.version.version
    registry.promote(version, actor="bench.serving", reason="serving benchmark")
    mv = registry.verify(version)  # every file's sha256 against the metadata
    schema = mv.schema
    rows = frame[frame["period"] == "stable"][schema.names].head(PARITY_ROWS).to_dict("records")
    return Prepared(settings, version, mv.path / MODEL_FILE, mv.metadata["sha256"][MODEL_FILE], schema.to_dict(),
                    rows, train_s)


def compare_predictions(bare_url: str, driftloop_url: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Both servers' answers for the same rows: all in one request, and the first rows one by one."""
    with httpx.Client(timeout=30.0) as client:
        def ask(url: str, batch: list[dict[str, Any]]) -> dict[str, Any]:
            resp = client.post(f"{url}/predict", json={"rows": batch})
            resp.raise_for_status()
            return resp.json()

        answers = {name: [ask(url, rows)] + [ask(url, [row]) for row in rows[:5]]
                   for name, url in (("bare", bare_url), ("driftloop", driftloop_url))}
    preds = {n: [p for a in ans for p in a["predictions"]] for n, ans in answers.items()}
    probs = {n: np.asarray([p for a in ans for p in a.get("probabilities", [])], dtype=np.float64)
             for n, ans in answers.items()}
    same_shape = probs["bare"].shape == probs["driftloop"].shape
    diff = float(np.max(np.abs(probs["bare"] - probs["driftloop"]))) if same_shape and probs["bare"].size else None
    return {"rows": len(preds["bare"]), "predictions_equal": preds["bare"] == preds["driftloop"],
            "max_probability_diff": diff if same_shape else None,
            "versions": {n: sorted({a["model_version"] for a in ans}) for n, ans in answers.items()}}


def inprocess_costs(prep: Prepared, workdir: Path, calls: int = 2000) -> dict[str, Any]:
    """One row through each request path in this process, no HTTP: the bare app's
    (``FeatureSchema.feeds`` + onnxruntime) and the service's :meth:`service.serving.Serving.predict`
    (validation, graph, request ids, prediction-log submit, metrics) built as ``service/app.py``
    builds it, on its own SQLite file. Medians of ``calls`` timed calls, and the CPU per call with
    the log writer's inserts included (everything this process spent until the log was flushed)."""
    import statistics

    from bench.bare_app import BareModel
    from driftloop.models.registry import Registry
    from driftloop.monitoring.store import PredictionStore
    from driftloop.service.metrics import serving_metrics
    from driftloop.service.serving import Serving

    rows = [prep.rows[0]]

    def timed(fn: Callable[[], Any]) -> float:
        for _ in range(min(100, calls)):
            fn()
        samples = []
        for _ in range(calls):
            t = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - t)
        return statistics.median(samples) / 1000.0

    bare = BareModel(prep.model_path, prep.sha256, prep.version, prep.schema)
    s = prep.settings.serving
    serving = Serving(Registry(prep.settings.registry.home, prep.settings.registry.project),
                      PredictionStore(f"sqlite:///{workdir / 'inprocess.db'}").create(), serving_metrics(),
                      s.model_copy(update={"poll_interval_s": 3600.0, "log_queue_rows": 10 * calls + 1000}))
    try:
        serving.start()  # loads the champion (verified, warmed up)
        model = serving.model
        assert model is not None
        feeds = model.schema.validate_rows(rows, s.max_rows)
        out = {"calls": calls,
               "bare_predict_us": timed(lambda: bare.predict(rows)),
               "validate_rows_us": timed(lambda: model.schema.validate_rows(rows, s.max_rows)),
               "onnx_run_us": timed(lambda: model.predict(feeds))}
        serving.writer.flush(timeout=60)
        cpu0 = time.process_time()
        out["serving_predict_us"] = timed(lambda: serving.predict(rows))
        serving.writer.flush(timeout=60)
        out["serving_predict_cpu_us"] = (time.process_time() - cpu0) * 1e6 / (calls + min(100, calls))
        return out
    except Exception as exc:  # the service's internals changed: report it, do not sink the benchmark
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        serving.shutdown()


@dataclass
class ServingBenchmark:
    machine: dict[str, Any]
    settings: dict[str, Any]
    servers: dict[str, dict[str, Any]]  # cold start, memory, url, argv
    closed: list[LoadResult]
    open: list[LoadResult]
    parity: dict[str, Any]
    inprocess: dict[str, Any]
    notes: list[str]
    profile: dict[str, Any] | None = None
    multi_row: list[LoadResult] = field(default_factory=list)  # requests of settings["multi_row"]["rows"] rows

    def result(self, server: str, connections: int) -> LoadResult:
        return next(r for r in self.closed if r.server == server and r.connections == connections)

    def table(self) -> str:
        return format_table(self)

    def to_dict(self) -> dict[str, Any]:
        from driftloop.models.files import jsonable

        return jsonable(asdict(self))

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def machine_info() -> dict[str, Any]:
    from driftloop.training.train import library_versions

    versions = library_versions(LIBRARIES)
    exe = wrk_path()
    if exe:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True)
        versions["wrk"] = (out.stdout or out.stderr).split("[", 1)[0].replace("wrk", "").strip() or "?"
    else:
        versions["wrk"] = "absent"
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "system": f"{platform.system()} {platform.release()}",
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "versions": versions,
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}


def run_benchmark(*, duration: float = DURATION_S, connections: Sequence[int] = CONNECTIONS,
                  open_duration: float | None = None, rate: float | None = None,
                  open_connections: int = CAPACITY_CONNECTIONS, generator: str = "auto",
                  warmup: float = WARMUP_S, workdir: Path | None = None, profile_dir: Path | None = None,
                  profile_s: float = 10.0, inprocess_calls: int = 2000, batch_rows: int = BATCH_ROWS,
                  progress: Progress = lambda line: None, on_ready: Callable[[dict[str, Server], Prepared], None] | None = None) -> ServingBenchmark:
    """The whole benchmark; ``on_ready`` (tests) is called with both servers up, before any load."""
    if generator == "auto":
        generator = "wrk" if wrk_path() else "python"
    if generator not in ("wrk", "python"):
        raise ValueError(f"generator must be auto, wrk or python, got {generator!r}")
    notes = [f"not measured: {NOT_MEASURED}"]
    if generator == "python" and wrk_path() is None:
        notes.append("wrk is not installed (apt-get install -y wrk): the closed-loop levels ran on the Python "
                     "generator")
    open_duration = duration if open_duration is None else open_duration
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="driftloop-bench-serving-")))
        workdir.mkdir(parents=True, exist_ok=True)
        machine = machine_info()
        progress(f"training gradient_boosting on the loans scenario into {workdir}")
        prep = prepare(workdir)
        progress("timing the request paths in-process (no HTTP)")
        inprocess = inprocess_costs(prep, workdir, inprocess_calls)
        body = json.dumps({"rows": [prep.rows[0]]}).encode()
        script = write_wrk_script(body, workdir / "post.lua")
        from driftloop.launch import free_port

        host = prep.settings.serving.host
        bare = BareServer(prep.model_path, prep.sha256, prep.version, prep.schema, workdir, host, free_port())
        driftloop = DriftloopServer(prep.settings, workdir)
        servers: dict[str, Server] = {"bare": bare, "driftloop": driftloop}
        for server in (bare, driftloop):  # one at a time, so neither start competes with the other
            progress(f"starting {server.name}")
            stack.callback(server.stop)
            server.start()
            progress(f"  {server.name} ready in {server.cold_start_s:.2f}s at {server.url}")
        parity = compare_predictions(bare.url, driftloop.url, prep.rows)
        if on_ready is not None:
            on_ready(servers, prep)

        def load(server: Server, conns: int, seconds: float) -> LoadResult:
            box: list[dict[str, float]] = []
            with cpu_meter(server.processes, box):
                if generator == "wrk":
                    res = run_wrk(server.url, script, conns, seconds, server=server.name)
                else:
                    res = closed_loop(server.url, body, conns, seconds, server=server.name)
            _attach_cpu(res, box[0])
            return res

        for server in (bare, driftloop):
            if warmup > 0:
                progress(f"warm-up {server.name}: {warmup:g}s at 8 connections")
                load(server, 8, warmup)
        memory_warm = {name: asdict(s.memory()) for name, s in servers.items()}

        closed: list[LoadResult] = []
        for conns in connections:  # the servers alternate at each level: a busier machine slows both
            for server in (bare, driftloop):
                res = load(server, conns, duration)
                closed.append(res)
                progress(f"  {generator} c={conns:<3} {server.name:<9} {res.rps:8.0f} req/s  p50 {res.p50_ms:.2f} ms  "
                         f"p99 {res.p99_ms:.2f} ms  server CPU {res.server_cpu_cores:.2f} cores")

        multi_row: list[LoadResult] = []  # many rows a request: rows/s, where per-row work shows, not per-request
        if batch_rows > 1:
            many = json.dumps({"rows": [prep.rows[i % len(prep.rows)] for i in range(batch_rows)]}).encode()
            many_script = write_wrk_script(many, workdir / "post-many.lua")
            for server in (bare, driftloop):
                box = []
                with cpu_meter(server.processes, box):
                    res = (run_wrk(server.url, many_script, CAPACITY_CONNECTIONS, duration, server=server.name)
                           if generator == "wrk" else
                           closed_loop(server.url, many, CAPACITY_CONNECTIONS, duration, server=server.name))
                _attach_cpu(res, box[0])
                res.detail["rows"] = batch_rows
                multi_row.append(res)
                progress(f"  {generator} c={CAPACITY_CONNECTIONS} {batch_rows}-row requests {server.name:<9} "
                         f"{res.rps * batch_rows:8.0f} rows/s  p99 {res.p99_ms:.2f} ms")

        capacity = {r.server: r.rps for r in closed if r.connections == CAPACITY_CONNECTIONS}
        plan: list[tuple[str, float]] = []  # (what the rate is, req/s)
        if rate is None:
            if "bare" not in capacity:
                progress(f"measuring the bare app's throughput at {CAPACITY_CONNECTIONS} connections")
                capacity["bare"] = load(bare, CAPACITY_CONNECTIONS, duration).rps
            rate = RATE_SHARE * capacity["bare"]
            plan.append((f"{RATE_SHARE:.0%} of bare's throughput at {CAPACITY_CONNECTIONS} connections", rate))
            if "driftloop" in capacity:  # a rate the service can keep up with, for comparison
                plan.append((f"{RATE_SHARE:.0%} of driftloop's throughput at {CAPACITY_CONNECTIONS} connections",
                             RATE_SHARE * capacity["driftloop"]))
        else:
            plan.append(("--rate", rate))
        opened: list[LoadResult] = []
        for basis, offered in plan:
            for server in (bare, driftloop):
                box: list[dict[str, float]] = []
                with cpu_meter(server.processes, box):
                    res = open_loop(server.url, body, offered, open_duration, open_connections, server=server.name)
                _attach_cpu(res, box[0], loadgen_from_meter=False)
                res.detail["rate_basis"] = basis
                opened.append(res)
                progress(f"  open loop {server.name:<9} offered {offered:.0f} req/s, achieved {res.rps:.0f} req/s, "
                         f"p50 {res.p50_ms:.2f} ms p99 {res.p99_ms:.2f} ms")

        profile = None
        if profile_dir is not None:
            profile = profile_service(driftloop, script, body, generator, profile_dir, profile_s, progress)

        memory_end = {name: asdict(s.memory()) for name, s in servers.items()}
        info = {
            "bare": {"url": bare.url, "cold_start_s": bare.cold_start_s, "memory_after_warmup": memory_warm["bare"],
                     "memory_end": memory_end["bare"], "command": " ".join(bare.argv[1:])},
            "driftloop": {"url": driftloop.url, "cold_start_s": driftloop.cold_start_s,
                          "memory_after_warmup": memory_warm["driftloop"], "memory_end": memory_end["driftloop"],
                          "command": "bentoml serve driftloop.service.app:Driftloop (driftloop.launch.ServiceProcess), 1 worker"},
        }
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    settings = {"duration_s": duration, "connections": list(connections), "generator": generator, "warmup_s": warmup,
                "open_loop": {"rates": [{"basis": b, "rps": r} for b, r in plan], "capacity_rps": capacity,
                              "capacity_connections": CAPACITY_CONNECTIONS, "duration_s": open_duration,
                              "connections": open_connections, "request_timeout_s": REQUEST_TIMEOUT_S},
                "request": {"path": "/predict", "rows": 1, "body_bytes": len(body)},
                "multi_row": {"rows": batch_rows, "connections": CAPACITY_CONNECTIONS},
                "model": {"kind": "gradient_boosting", "version": prep.version, "sha256": prep.sha256,
                          "train_s": prep.train_s},
                "request_timeout_s": REQUEST_TIMEOUT_S, "loop": loop_kind()}
    return ServingBenchmark(machine, settings, info, closed, opened, parity, inprocess, notes, profile, multi_row)


def _attach_cpu(res: LoadResult, cpu: dict[str, float], loadgen_from_meter: bool = True) -> None:
    res.server_cpu_cores = cpu["server"]
    if loadgen_from_meter or res.loadgen_cpu_cores is None:
        res.loadgen_cpu_cores = cpu["loadgen"]
    res.other_cpu_cores = max(0.0, cpu["machine"] - cpu["server"] - res.loadgen_cpu_cores)
    res.detail["machine_cpu_cores"] = cpu["machine"]


# -- profiling the service under load (optional: py-spy) ------------------------------------------------
def py_spy_path() -> str | None:
    return shutil.which("py-spy") or (str(Path(sys.executable).with_name("py-spy"))
                                      if Path(sys.executable).with_name("py-spy").exists() else None)


def profile_service(server: DriftloopServer, script: Path, body: bytes, generator: str, outdir: Path,
                    seconds: float, progress: Progress, connections: int = CAPACITY_CONNECTIONS) -> dict[str, Any]:
    """py-spy on the service's worker (the thread holding the GIL) while the load generator runs at
    ``connections``: collapsed stacks, a flame graph and :func:`analyse_profile`'s figures."""
    exe = py_spy_path()
    if exe is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    (worker,) = server.workers()
    outdir.mkdir(parents=True, exist_ok=True)
    raw, svg = outdir / "driftloop-worker.collapsed.txt", outdir / "driftloop-worker.svg"

    def record(fmt: str, out: Path) -> tuple[subprocess.CompletedProcess[bytes], LoadResult]:
        # --gil: only the thread holding the GIL is sampled, i.e. where the worker's Python time goes (py-spy's
        # idle-thread detection is unreliable here: pool threads parked in Condition.wait look busy);
        # --function: one frame per function, not per line; blocking (the default): whole stacks, at a cost
        # of throughput that rps_while_profiled shows.
        argv = [exe, "record", "--pid", str(worker.pid), "--duration", str(max(1, round(seconds))), "--rate", "100",
                "--gil", "--function", "--full-filenames", "--format", fmt, "-o", str(out)]
        spy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # the load outlasts the sampling on both ends
        load = (run_wrk(server.url, script, connections, seconds + 2, server=server.name) if generator == "wrk"
                else closed_loop(server.url, body, connections, seconds + 2, server=server.name))
        text, _ = spy.communicate(timeout=seconds + 60)
        done = subprocess.CompletedProcess(argv, spy.returncode, text)
        return done, load

    progress(f"profiling worker {worker.pid} for {seconds:g}s at {connections} connections (py-spy)")
    done, load = record("raw", raw)
    if done.returncode != 0 or not raw.exists():
        return {"error": f"py-spy failed ({done.returncode}): {done.stdout.decode(errors='replace')[-500:]}"}
    record("flamegraph", svg)
    return {"worker_pid": worker.pid, "seconds": seconds, "connections": connections, "rps_while_profiled": load.rps,
            "p50_ms_while_profiled": load.p50_ms, "collapsed": str(raw), "flamegraph": str(svg),
            **analyse_profile(parse_collapsed(raw.read_text()))}


def parse_collapsed(text: str) -> dict[str, int]:
    """py-spy's ``--format raw`` (collapsed stacks): ``frame;frame;... count`` per line."""
    stacks: dict[str, int] = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] = stacks.get(stack, 0) + int(count)
    return stacks


# Who owns a frame, by its file (py-spy --full-filenames); the first match wins.
_OWNERS = (("/opentelemetry/", "OpenTelemetry"), ("/_bentoml_impl/", "BentoML"), ("/_bentoml_sdk/", "BentoML"),
           ("/bentoml/", "BentoML"), ("/starlette/", "Starlette"), ("/uvicorn/", "uvicorn"), ("/anyio/", "anyio"),
           ("/pydantic", "pydantic"), ("/prometheus_client/", "prometheus_client"), ("/onnxruntime/", "onnxruntime"),
           ("/numpy/", "numpy"), ("/sqlalchemy/", "SQLAlchemy"), ("/pandas/", "pandas"))
_DRIFTLOOP_DIRS = ("service", "models", "monitoring", "driftloop", "training")
_THREAD_ROLES = (("PredictionLogWriter._run", "prediction-log writer thread"),
                 ("PointerWatcher._run", "pointer watcher thread"),
                 ("WorkerThread.run", "request thread pool (anyio)"),
                 ("Thread._bootstrap", "other threads"))
_LAYER_MARKERS = ("Middleware", "api_endpoint", "_local_call", "run_sync_in_worker_thread", "Driftloop.predict")


def _frame_parts(frame: str) -> tuple[str, str]:
    name, _, loc = frame.rpartition(" (")
    return (name or frame), loc.rstrip(")").rsplit(":", 1)[0]


def frame_owner(frame: str, root: Path = ROOT) -> str:
    _, path = _frame_parts(frame)
    if any(path.startswith(f"{root}/{d}/") for d in _DRIFTLOOP_DIRS):
        return "driftloop"
    for marker, owner in _OWNERS:
        if marker in path:
            return owner
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    return "stdlib"


def short_frame(frame: str, root: Path = ROOT) -> str:
    name, path = _frame_parts(frame)
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith(f"{root}/"):
        path = path[len(str(root)) + 1:]
    elif "/lib/python" in path:
        path = path.split("/lib/python", 1)[1].split("/", 1)[-1]
    return f"{name} ({path})"


def analyse_profile(stacks: dict[str, int], n: int = 10, root: Path = ROOT) -> dict[str, Any]:
    """Where the sampled time went: by thread, by the frame that spent it, by owner.

    A sample's *component* is its innermost frame outside the standard library (a sample in
    ``json.encoder`` under Starlette's ``JSONResponse.render`` is Starlette's; one in
    ``asyncio`` under uvicorn is the event loop's), and its owner is that frame's package:
    BentoML, OpenTelemetry, Starlette, uvicorn, anyio, onnxruntime, ... or driftloop (this
    repository's ``service/``, ``models/``, ``monitoring/``). Total time counts every sample
    a frame is on the stack of (nested frames overlap).
    """
    total = sum(stacks.values()) or 1
    roles: dict[str, int] = {}
    leaf: dict[str, int] = {}
    component: dict[str, int] = {}
    owners: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for stack, count in stacks.items():
        frames = stack.split(";")
        role = next((r for marker, r in _THREAD_ROLES if marker in stack), "event loop (uvicorn on uvloop)")
        roles[role] = roles.get(role, 0) + count
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + count
        comp = next((f for f in reversed(frames) if frame_owner(f, root) != "stdlib"), frames[-1])
        component[comp] = component.get(comp, 0) + count
        owner = frame_owner(comp, root)
        owners[owner] = owners.get(owner, 0) + count
        for frame in dict.fromkeys(frames):  # once per sample, in stack order
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(d: dict[str, int], keep: Callable[[str], bool] = lambda f: True, limit: int = n,
               label: bool = True) -> list[dict[str, Any]]:
        items = sorted(((f, c) for f, c in d.items() if keep(f)), key=lambda kv: -kv[1])[:limit]
        return [{"frame": short_frame(f, root) if label else f, "owner": frame_owner(f, root) if label else None,
                 "samples": c, "share": c / total} for f, c in items]

    def layer(frame: str) -> bool:  # BentoML's and OpenTelemetry's middlewares, the endpoint, the thread hop
        return frame_owner(frame, root) != "stdlib" and any(m in _frame_parts(frame)[0] for m in _LAYER_MARKERS)

    return {
        "samples": total,
        "threads": ranked(roles, label=False),
        "owners": ranked(owners, label=False, limit=len(owners)),
        "top_components": ranked(component),
        "top_self": ranked(leaf),
        "driftloop_total": ranked(inclusive, lambda f: frame_owner(f, root) == "driftloop", limit=2 * n),
        "layers_total": ranked(inclusive, layer, limit=2 * n),
    }


# -- output ------------------------------------------------------------------------------------------
def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not np.isfinite(a) or not np.isfinite(b) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def cpu_ms_per_request(r: LoadResult) -> float | None:
    """The server's CPU milliseconds per answered request."""
    if r.server_cpu_cores is None or not r.rps:
        return None
    return 1000.0 * r.server_cpu_cores / r.rps


def _num(x: float | None, fmt: str) -> str:
    if x is None or np.isnan(x):
        return "-"
    return "inf" if np.isinf(x) else format(x, fmt)


def format_table(b: ServingBenchmark) -> str:
    m, s = b.machine, b.settings
    v = m["versions"]
    load = m.get("load_average_start")
    end = m.get("load_average_end")
    lines = [f"machine: {m['cpus']} CPUs ({m['machine']}, {m['system']}), {m['memory_gib']} GiB; Python {v['python']}, "
             f"bentoml {v['bentoml']}, uvicorn {v['uvicorn']}, onnxruntime {v['onnxruntime']}, wrk {v['wrk']}; "
             f"load average {load[0]:.2f} at start" + (f", {end[0]:.2f} at end" if end else ""),
             f"model: {s['model']['kind']} {s['model']['version']} (sha256 {s['model']['sha256'][:12]}...), "
             f"POST /predict with {s['request']['rows']} row ({s['request']['body_bytes']} bytes)",
             ""]
    gen = {"wrk": "wrk, 1 thread", "python": f"Python generator ({s['loop']}), closed loop"}[s["generator"]]
    lines.append(f"closed loop ({gen}; {s['duration_s']:g} s per level after a {s['warmup_s']:g} s warm-up; "
                 f"CPU in cores: server / load generator / rest of the machine)")
    header = (f"{'conns':>5}  {'server':<10} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'non-2xx':>8} {'sock err':>8}  {'cpu srv':>7} {'gen':>5} {'other':>5} {'srv CPU ms/req':>14}")
    lines.append(header)
    for conns in s["connections"]:
        rows = {r.server: r for r in b.closed if r.connections == conns}
        for name in SERVERS:
            r = rows[name]
            lines.append(f"{conns:>5}  {name:<10} {r.rps:>8.0f} {r.p50_ms:>8.2f} {r.p95_ms:>8.2f} {r.p99_ms:>8.2f} "
                         f"{r.non_2xx:>8} {r.socket_errors:>8}  {_num(r.server_cpu_cores, '.2f'):>7} "
                         f"{_num(r.loadgen_cpu_cores, '.2f'):>5} {_num(r.other_cpu_cores, '.2f'):>5} "
                         f"{_num(cpu_ms_per_request(r), '.3f'):>14}")
        d, a = rows["driftloop"], rows["bare"]
        lines.append(f"{'':>5}  {'ratio d/b':<10} {_ratio(d.rps, a.rps):>8} {_ratio(d.p50_ms, a.p50_ms):>8} "
                     f"{_ratio(d.p95_ms, a.p95_ms):>8} {_ratio(d.p99_ms, a.p99_ms):>8} {'':>8} {'':>8}  {'':>7} "
                     f"{'':>5} {'':>5} {_ratio(cpu_ms_per_request(d), cpu_ms_per_request(a)):>14}")
    if b.multi_row:
        many = {r.server: r for r in b.multi_row}
        n = s["multi_row"]["rows"]
        lines += ["", f"{n}-row requests, {s['multi_row']['connections']} connections: "
                      + ", ".join(f"{name} {many[name].rps * n:,.0f} rows/s (p99 {many[name].p99_ms:.1f} ms, "
                                  f"{many[name].non_2xx} non-2xx)" for name in SERVERS if name in many)
                      + (f"; ratio d/b {_ratio(many['driftloop'].rps, many['bare'].rps)}"
                         if {"driftloop", "bare"} <= set(many) else "")]
    o = s["open_loop"]
    lines += ["", (f"open loop (Python generator, {s['loop']}, {o['connections']} keep-alive connections, "
                   f"{o['duration_s']:g} s per run; latency from each request's scheduled send time)")]
    lines.append(f"{'server':<10} {'offered':>8} {'achieved':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
                 f"{'non-2xx':>8} {'sock err':>8} {'unanswered':>10}  {'cpu srv':>7} {'gen':>5} {'other':>5} "
                 f"{'send lag p99 ms':>15}")
    for spec in o["rates"]:
        lines.append(f"offered {spec['rps']:.0f} req/s = {spec['basis']}")
        for r in b.open:
            if r.detail.get("rate_basis") != spec["basis"]:
                continue
            lines.append(f"{r.server:<10} {r.offered_rps:>8.0f} {r.rps:>8.0f} {_num(r.p50_ms, '.2f'):>8} "
                         f"{_num(r.p99_ms, '.2f'):>8} {_num(r.max_ms, '.2f'):>8} {r.non_2xx:>8} {r.socket_errors:>8} "
                         f"{r.unfinished:>10}  {_num(r.server_cpu_cores, '.2f'):>7} "
                         f"{_num(r.loadgen_cpu_cores, '.2f'):>5} {_num(r.other_cpu_cores, '.2f'):>5} "
                         f"{_num(r.send_lag_p99_ms, '.2f'):>15}")
    gen_cpu = max((r.loadgen_cpu_cores or 0.0) for r in b.open) if b.open else 0.0
    lines.append(f"the open-loop generator runs in this process and used up to {gen_cpu:.2f} of a core "
                 f"({gen_cpu / (m['cpus'] or 1):.0%} of this {m['cpus']}-CPU machine) beside the server it measured")
    lines += ["", f"{'server':<10} {'cold start s':>12} {'RSS MiB workers':>16} {'RSS MiB total':>14} {'procs':>6}  "
                  f"{'RSS MiB workers at end':>22}   (RSS after the warm-up; total: the whole process tree)"]
    for name in SERVERS:
        srv = b.servers[name]
        warm, end_mem = srv["memory_after_warmup"], srv["memory_end"]
        lines.append(f"{name:<10} {srv['cold_start_s']:>12.2f} {warm['workers_mib']:>16.1f} {warm['total_mib']:>14.1f} "
                     f"{warm['processes']:>6}  {end_mem['workers_mib']:>22.1f}")
    ip = b.inprocess
    if "error" in ip:
        lines += ["", f"in-process request paths: not measured ({ip['error']})"]
    else:
        lines += ["", f"in-process, one row, no HTTP (median of {ip['calls']} calls): bare path (feeds + onnxruntime) "
                      f"{ip['bare_predict_us']:.0f} us; Serving.predict {ip['serving_predict_us']:.0f} us "
                      f"(validate_rows {ip['validate_rows_us']:.0f} us, graph {ip['onnx_run_us']:.0f} us), "
                      f"{ip['serving_predict_cpu_us']:.0f} us CPU per call with the prediction log's inserts"]
    p = b.parity
    lines += ["", f"same answers: {p['rows']} rows, predictions {'equal' if p['predictions_equal'] else 'DIFFER'}, "
                  f"largest probability difference {_num(p['max_probability_diff'], '.1e')}"]
    if b.profile:
        lines += ["", *profile_lines(b.profile)]
    lines += [f"note: {n}" for n in b.notes]
    return "\n".join(lines)


def profile_lines(profile: dict[str, Any], n: int = 10) -> list[str]:
    if "error" in profile:
        return [f"profile: {profile['error']}"]

    def block(title: str, items: list[dict[str, Any]], limit: int = n) -> list[str]:
        out = [title]
        for f in items[:limit]:
            owner = f" [{f['owner']}]" if f.get("owner") else ""
            out.append(f"  {f['share']:>6.1%}  {f['frame']}{owner}")
        return out

    out = [f"py-spy --gil on the driftloop worker (pid {profile['worker_pid']}), {profile['seconds']:g} s at "
           f"{profile['connections']} connections: {profile['rps_while_profiled']:.0f} req/s while sampled, "
           f"{profile['samples']} samples of the thread holding the GIL (native code without the GIL, such as "
           f"onnxruntime's run and uvloop's I/O, is not in them); flame graph: {profile['flamegraph']}"]
    out += block("by thread:", profile["threads"])
    out += block("by owner (a sample belongs to its innermost frame outside the standard library):",
                 profile["owners"], limit=len(profile["owners"]))
    out += block(f"top {n} frames by self time (innermost frame outside the standard library):",
                 profile["top_components"])
    out += block(f"top {n} leaf frames (standard library included):", profile["top_self"])
    out += block("driftloop's frames by total time (nested frames overlap):", profile["driftloop_total"])
    out += block("the layers a request passes, by total time (nested: each includes the ones inside it):",
                 profile["layers_total"])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=DURATION_S, help="seconds per closed-loop level (10)")
    parser.add_argument("--connections", default=",".join(map(str, CONNECTIONS)),
                        help="closed-loop concurrency levels, comma-separated (1,8,32,64)")
    parser.add_argument("--open-duration", type=float, default=None, help="seconds of the open-loop run "
                                                                         "(default: --duration)")
    parser.add_argument("--rate", type=float, default=None,
                        help="open-loop rate in req/s (default: half the bare app's throughput at 32 connections)")
    parser.add_argument("--open-connections", type=int, default=CAPACITY_CONNECTIONS,
                        help="keep-alive connections of the open-loop generator (32)")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                        help="closed-loop load generator (auto: wrk when installed)")
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="warm-up seconds per server (2)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the registry, logs and configs here")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="also profile the driftloop worker with py-spy at 32 connections; files in DIR")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--batch-rows", type=int, default=BATCH_ROWS,
                        help=f"rows a request in the many-row level at 32 connections ({BATCH_ROWS}; 0: skip it)")
    args = parser.parse_args(argv)
    connections = [int(c) for c in args.connections.split(",") if c.strip()]
    if args.generator == "wrk" and wrk_path() is None:
        parser.error("wrk is not installed: apt-get install -y wrk (Debian), or --generator python")
    if args.generator == "auto" and wrk_path() is None:
        print("wrk is not installed (apt-get install -y wrk): the closed-loop levels use the Python generator",
              file=sys.stderr)
    result = run_benchmark(duration=args.duration, connections=connections, open_duration=args.open_duration,
                           rate=args.rate, open_connections=args.open_connections, generator=args.generator,
                           warmup=args.warmup, workdir=args.workdir, profile_dir=args.profile,
                           profile_s=args.profile_seconds, batch_rows=args.batch_rows, progress=lambda line: print(line, file=sys.stderr))
    print(result.table())
    if args.json is not None:
        print(f"figures: {result.write_json(args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
