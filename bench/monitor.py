"""What the monitor costs: rows checked a second, catch-up after an outage, memory, disk (issue 14).

    python -m bench.monitor [--quick] [--only throughput,catchup,memory,disk] [--rows 30000]
                            [--backlog 50000] [--memory-minutes 1] [--json FILE]

Figures only: nothing here asserts a speed. The monitor is the real one
(:class:`~monitoring.monitor.Monitor`, ``run_once`` as the scheduler's ``check`` job calls it), built
from ``load_settings`` in a process of its own (``--child``), so that its first window pays what a
freshly started monitor pays (imports, the version's reference prepared, the first rows read) and its
resident memory is its own. This process trains the champion (``v1`` on the ``loans`` scenario's
``train`` period, as tests/conftest.py ``champion_home`` does), writes the prediction log the way
the service does (``PredictionStore.insert_predictions``: the champion's real ONNX predictions,
then every row's label through ``insert_feedback``) and reads back what the child recorded.

1. ``throughput``: for every backend (SQLite; PostgreSQL in a throw-away cluster,
   tests/conftest.py ``PostgresServer``, skipped with a line when it is not installed), window size
   (``--windows``, 500 and 5,000) and Evidently workspace (``--workspace``, on and off), a fresh
   store holding ``--rows`` logged, labelled rows (half ``stable``, a quarter ``covariate``, a
   quarter ``concept``: about half the windows drift) is checked from start to end. With
   ``monitoring.dry_run`` on, so the figures are the checks' own: a flagged window is still
   decided, recorded and reported (HTML), but no retrain runs. Printed: rows/s (first window
   included; and after it), ms a window (median, p95, the first apart), windows flagged, and the
   pictures (HTML reports, workspace snapshots): how long after the last check the monitor took
   to draw those still queued (``Monitor.close``), and how many were written of those due.
2. ``catchup``: a monitor down while ``--backlog`` rows were logged (SQLite, every setting at its
   default: 500-row windows, real retrains; the workspace as the first ``--workspace`` value, on
   unless told), the newest ``--change-windows`` windows from the ``covariate`` period. Printed:
   seconds from the monitor's start until the window holding the first changed row is checked,
   until the retrain it leads to is decided (the retrainer called) and done, and until the whole
   backlog is checked, and the pictures after it. Up to ``monitoring.max_backlog_windows`` (120)
   windows the time grows with the backlog at the monitor's rows/s (printed beside it: 300,000
   rows, and the issue's 3,000,000-row outage, 10 minutes at 5,000 rows/s); past it the monitor
   checks only the newest 120 windows (monitoring/backlog.py), and the rows it left are printed
   (``--backlog 3000000``: the issue's outage itself; filling it takes ~20 minutes here).
3. ``memory``: the monitor running as it does in production (``run_once`` every
   ``monitoring.interval_s``, defaults as in the catch-up) while this process replays the
   scenario (stable, then covariate, then concept, repeated) at ``--memory-rate`` rows/s for
   ``--memory-minutes``; its resident set size (psutil) is sampled throughout. Printed: RSS once
   the monitor is built, peak, end, and the slope over the second half (MB/min; the issue asks for
   an hour at 2,000 rows/s: ``--memory-minutes 60``), rows logged and checked.
4. ``disk``: the store file, the HTML reports, the Evidently workspace and the registry after the
   catch-up and memory runs (``--only disk`` alone runs the catch-up for it); after the retention
   a monitor runs (the registry's, ``Registry.prune`` with ``registry.keep_*``, and the store's,
   ``monitoring.retention``: the scheduler's ``store_retention`` job, ``run_store_retention``);
   after the store's retention once everything is past its age (``prune`` a year and a day on);
   and a week at 100 rows/s scaled from the run, without retention and within its limits.

``--quick``: small sizes, SQLite only, 500-row windows (the smoke test, tests/unit/test_bench_monitor.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

SECTIONS = ("throughput", "catchup", "memory", "disk")
BACKENDS = ("sqlite", "postgresql")
ROOT = Path(__file__).resolve().parents[1]  # the repository: the child runs `python -m bench.monitor` from it
ISSUE_BACKLOG = 3_000_000  # the issue's outage: 10 minutes of traffic at 5,000 rows/s
WEEK_AT_100 = 100 * 7 * 24 * 3600  # rows a week at 100 rows/s (the issue's disk bound)


@dataclass(frozen=True)
class Options:
    sections: tuple[str, ...]
    backends: tuple[str, ...]
    windows: tuple[int, ...]
    workspace: tuple[bool, ...]
    rows: int
    backlog: int
    change_windows: int
    memory_minutes: float
    memory_rate: float
    seed: int


DEFAULTS = Options(SECTIONS, BACKENDS, (500, 5000), (True, False), rows=30_000, backlog=50_000, change_windows=4,
                   memory_minutes=1.0, memory_rate=2000.0, seed=1)
QUICK = Options(SECTIONS, ("sqlite",), (500,), (True, False), rows=1500, backlog=1500, change_windows=2,
                memory_minutes=0.1, memory_rate=2000.0, seed=1)


# -- the prediction log, as the service writes it ------------------------------------------------
@dataclass
class Logged:
    """Rows as the service logs them (one dict per prediction) and their labels, in log order."""

    rows: list[dict[str, Any]]
    labels: list[tuple[str, int]]

    def __len__(self) -> int:
        return len(self.rows)


def live_frame(seed: int, stable: int, covariate: int, concept: int) -> Any:
    """The ``loans`` scenario's live periods with these many rows each, in that order."""
    from driftloop.training.scenarios import scenario_frame

    frame = scenario_frame("loans", seed=seed, window=1, stable=stable, covariate=covariate, concept=concept)
    return frame[frame["period"] != "train"].reset_index(drop=True)


def served(model: Any, frame: Any, end: datetime | None = None, rate: float | None = None) -> Logged:
    """What the service logs for ``frame``: the model's predictions; times spaced at ``rate``
    rows/s and ending at ``end`` (a backlog that built up), else all now."""
    from driftloop.training.scenarios import TARGET

    preds, proba = model.predict_frame(frame)
    n = len(frame)
    now = end or datetime.now(timezone.utc)
    step = 1.0 / rate if rate else 0.0
    ids = [str(uuid.uuid4()) for _ in range(n)]
    features = frame[model.schema.names].to_dict(orient="records")
    rows = [{"request_id": rid, "created_at": now - timedelta(seconds=(n - i) * step), "model_version": model.version,
             "features": f, "prediction": p, "confidence": float(c)}
            for i, (rid, f, p, c) in enumerate(zip(ids, features, preds.tolist(), proba.max(axis=1)))]
    return Logged(rows, list(zip(ids, frame[TARGET].astype(int).tolist())))


def fill(store: Any, logged: Logged, chunk: int = 5000) -> None:
    """Write ``logged`` in the service writer's way: predictions in batches, then their labels."""
    for start in range(0, len(logged), chunk):
        store.insert_predictions(logged.rows[start:start + chunk])
        store.insert_feedback(logged.labels[start:start + chunk])


def train_champion(root: Path) -> Path:
    """A registry home with ``v1`` (the ``loans`` train period) promoted; returns the home."""
    from driftloop.models.registry import Registry
    from driftloop.settings import load_settings
    from driftloop.training.scenarios import scenario_frame
    from driftloop.training.train import train_version

    home = root / "bentoml"
    settings = load_settings(None, registry={"home": str(home)}, store={"url": f"sqlite:///{root / 'train.db'}"})
    registry = Registry(settings.registry.home, settings.registry.project)
    loans = scenario_frame("loans", seed=42)
    result = train_version(settings, loans[loans["period"] == "train"].reset_index(drop=True), registry,
                           trigger="initial")
    registry.promote(result.version.version, actor="bench", reason="bench.monitor")
    return home


def settings_for(home: Path, url: str, reports: Path, *, window: int = 500, workspace: bool = True,
                 dry_run: bool = False) -> dict[str, Any]:
    """``load_settings`` overrides for one run: defaults but for where things live, the window,
    the workspace, dry-run, and no metrics endpoint (two monitors never share a port)."""
    return {"registry": {"home": str(home)}, "store": {"url": url},
            "monitoring": {"reports_dir": str(reports), "metrics_port": 0, "window_rows": window,
                           "dry_run": dry_run, "workspace": {"enabled": workspace}}}


# -- the monitor's process ------------------------------------------------------------------------
def child(spec_path: str) -> int:
    """The monitor (``--child SPEC``): ``drain`` checks until nothing is ready; ``follow`` runs
    ``run_once`` every ``monitoring.interval_s`` until the stop file appears. Every step is a
    line of JSON (``at``: epoch seconds) in the events file, read by the parent afterwards."""
    spec = json.loads(Path(spec_path).read_text())
    out = open(spec["events"], "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def emit(kind: str, **fields: Any) -> None:
        out.write(json.dumps({"kind": kind, "at": time.time(), **fields}) + "\n")

    emit("start")
    from driftloop.models.registry import Registry
    from driftloop.monitoring.monitor import Monitor
    from driftloop.monitoring.store import PredictionStore
    from driftloop.settings import load_settings
    from driftloop.training.retrain import retrain

    def retrainer(*args: Any, **kwargs: Any) -> Any:
        emit("retrain_started", trigger=str(kwargs.get("trigger")))
        try:
            result = retrain(*args, **kwargs)
        except Exception as exc:
            emit("retrain_done", status="raised", error=repr(exc)[:200])
            raise
        emit("retrain_done", status=str(result.status))
        return result

    def on_check(check: Any) -> None:
        emit("check", window=check.window, first_id=check.first_id, last_id=check.last_id, rows=check.rows,
             decision=str(check.decision), outcome=None if check.outcome is None else str(check.outcome),
             duration_s=check.duration_s)

    settings = load_settings(None, **spec["settings"])
    store = PredictionStore(settings.store.url).create()
    registry = Registry(settings.registry.home, settings.registry.project)
    monitor = Monitor(settings, store, registry, retrainer=retrainer, on_check=on_check)
    emit("ready")
    stop = Path(spec["stop"]) if spec.get("stop") else None
    while True:
        emit("run")
        checks = monitor.run_once()
        emit("ran", checks=len(checks))
        if spec["mode"] == "drain" and not checks:
            break
        if spec["mode"] == "follow":
            due = time.monotonic() + settings.monitoring.interval_s
            while time.monotonic() < due and not stop.exists():
                time.sleep(0.05)  # the scheduler's interval: pacing, not synchronisation
            if stop.exists():
                break
    close = getattr(monitor, "close", None)  # the pictures (reports, snapshots) drawn after the checks
    if callable(close):
        emit("closing")
        close()
        emit("closed")
    store.close()
    emit("end")
    return 0


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    events: Path
    stop: Path
    log: Path
    spawned: float

    def read(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines() if line.endswith("}")]

    def failed(self) -> str:
        tail = self.log.read_text()[-3000:] if self.log.exists() else ""
        return f"the monitor process exited with {self.proc.returncode}:\n{tail}"


def spawn(run_dir: Path, settings: dict[str, Any], mode: str) -> Child:
    """Start a monitor process for ``settings`` (see :func:`child`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    events, stop, log = run_dir / "events.jsonl", run_dir / "stop", run_dir / "monitor.log"
    spec = run_dir / "spec.json"
    spec.write_text(json.dumps({"settings": settings, "mode": mode, "events": str(events), "stop": str(stop)}))
    # the caller's DRIFTLOOP_* variables would change the settings measured
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    env |= {"BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "1"}
    spawned = time.time()
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "bench.monitor", "--child", str(spec)], cwd=ROOT, env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
    return Child(proc, events, stop, log, spawned)


def drain(run_dir: Path, settings: dict[str, Any]) -> tuple[Child, list[dict[str, Any]]]:
    """A monitor that checks every ready window and exits; its events."""
    monitor = spawn(run_dir, settings, "drain")
    try:
        code = monitor.proc.wait()
    except BaseException:  # interrupted: the monitor goes too
        monitor.proc.kill()
        monitor.proc.wait()
        raise
    if code != 0:
        raise RuntimeError(monitor.failed())
    return monitor, monitor.read()


# -- 1. throughput --------------------------------------------------------------------------------
def per_window(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows/s and per-window times from a drain's events: a window's time runs from the previous
    check (the first: from the start of ``run_once``) to its own, reading its rows included."""
    run = next(e["at"] for e in events if e["kind"] == "run")
    checks = [e for e in events if e["kind"] == "check"]
    if not checks:
        raise RuntimeError("the monitor checked no window")
    times = [checks[0]["at"] - run] + [b["at"] - a["at"] for a, b in zip(checks, checks[1:])]
    rows = sum(c["rows"] for c in checks)
    later = times[1:] or times
    ready = next(e["at"] for e in events if e["kind"] == "ready")
    start = next(e["at"] for e in events if e["kind"] == "start")
    return {
        "windows": len(checks), "rows": rows, "flagged": sum(c["decision"] != "none" for c in checks),
        "seconds": round(checks[-1]["at"] - run, 3),
        "rows_per_s": round(rows / (checks[-1]["at"] - run), 1),
        "rows_per_s_after_first": round((rows - checks[0]["rows"]) / (checks[-1]["at"] - checks[0]["at"]), 1)
        if len(checks) > 1 else None,
        "ms_median": round(1000 * statistics.median(later), 1),
        "ms_p95": round(1000 * percentile(later, 95), 1),
        "ms_first": round(1000 * times[0], 1),
        "ms_first_check": round(1000 * checks[0]["duration_s"], 1),  # of which the check (the rest: reading rows)
        "ms_check_median": round(1000 * statistics.median(c["duration_s"] for c in checks[1:] or checks), 1),
        "monitor_ready_s": round(ready - start, 2),
    }


def pictures(run_dir: Path, events: list[dict[str, Any]], workspace: bool) -> dict[str, Any]:
    """The pictures the run left: HTML reports (one a flagged window) and workspace snapshots (one
    a window, with the workspace on) written against those due, and how long after the last check
    the monitor took to draw what was still queued (``Monitor.close``; None: it was stopped)."""
    checks = [e for e in events if e["kind"] == "check"]
    closing = next((e["at"] for e in events if e["kind"] == "closing"), None)
    closed = next((e["at"] for e in events if e["kind"] == "closed"), None)
    written = files_of(run_dir)
    return {"reports_written": written["reports"], "reports_due": sum(c["decision"] != "none" for c in checks),
            "snapshots_written": written["snapshots"], "snapshots_due": len(checks) if workspace else 0,
            "pictures_after_last_check_s": round(closed - checks[-1]["at"], 2) if closed and checks else None,
            "pictures_close_s": round(closed - closing, 2) if closed and closing else None}


def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def throughput(opts: Options, root: Path, home: Path, progress: Any) -> list[dict[str, Any]]:
    from driftloop.models.registry import Registry

    model = Registry(home, "loans").load("v1")
    size = opts.rows
    logged = served(model, live_frame(opts.seed, size - 2 * (size // 4), size // 4, size // 4))
    results = []
    for backend in opts.backends:
        with store_urls(backend, root) as new_url:
            if new_url is None:
                results.append({"backend": backend, "skipped": "PostgreSQL is not installed (no initdb): "
                                                               "run scripts/system-deps.sh"})
                progress(f"throughput {backend}: skipped, PostgreSQL is not installed")
                continue
            for window in opts.windows:
                for workspace in opts.workspace:
                    name = f"{backend}-{window}-{'ws' if workspace else 'nows'}"
                    run_dir = root / "throughput" / name
                    run_dir.mkdir(parents=True)
                    url = new_url(run_dir)
                    filled = fill_timed(url, logged)
                    settings = settings_for(home, url, run_dir / "reports", window=window, workspace=workspace,
                                            dry_run=True)
                    _, events = drain(run_dir, settings)
                    figures = {"backend": backend, "window": window, "workspace": workspace,
                               "fill_rows_per_s": filled} | per_window(events) | pictures(run_dir, events, workspace)
                    results.append(figures)
                    progress(f"throughput {name}: {figures['rows_per_s']:,.0f} rows/s, "
                             f"{figures['ms_median']:.0f} ms/window, first {figures['ms_first']:.0f} ms")
                    shutil.rmtree(run_dir, ignore_errors=True)  # HTML reports: megabytes a flagged window
    return results


def fill_timed(url: str, logged: Logged) -> float:
    """Create the store at ``url`` and fill it; returns the rows/s written (for scale)."""
    from driftloop.monitoring.store import PredictionStore

    store = PredictionStore(url).create()
    try:
        started = time.perf_counter()
        fill(store, logged)
        return round(len(logged) / (time.perf_counter() - started), 1)
    finally:
        store.close()


@contextlib.contextmanager
def store_urls(backend: str, root: Path) -> Iterator[Any]:
    """A function giving a fresh store URL per run on ``backend`` (None: PostgreSQL is missing);
    PostgreSQL's cluster lives as long as the block."""
    if backend == "sqlite":
        yield lambda run_dir: f"sqlite:///{run_dir / 'store.db'}"
        return
    from tests.conftest import PostgresServer, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        yield None
        return
    server = PostgresServer(bindir).start()
    try:
        yield lambda run_dir: server.create_database()
    finally:
        server.stop()


# -- 2. catch-up ----------------------------------------------------------------------------------
def catchup(opts: Options, root: Path, home: Path, progress: Any) -> dict[str, Any]:
    """A backlog of ``opts.backlog`` rows, its newest ``change_windows`` windows changed."""
    from driftloop.models.registry import Registry
    from driftloop.monitoring.store import PredictionStore
    from driftloop.vocabulary import EventKind

    window = 500  # monitoring.window_rows' default
    changed = opts.change_windows * window
    run_dir = root / "catchup"
    run_home = run_dir / "bentoml"
    shutil.copytree(home, run_home)  # retrains add versions
    url = f"sqlite:///{run_dir / 'store.db'}"
    model = Registry(run_home, "loans").load("v1")
    logged = served(model, live_frame(opts.seed + 1, opts.backlog - changed, changed, 0), rate=5000.0)
    store = PredictionStore(url).create()
    fill(store, logged)
    first_changed = opts.backlog - changed + 1  # ids of a fresh store count from 1: checked here
    seen = store.window(first_changed - 1, 1)
    store.close()
    if seen.empty or seen["request_id"].iloc[0] != logged.rows[first_changed - 1]["request_id"]:
        raise RuntimeError(f"the backlog's row {first_changed} is not id {first_changed}: the change cannot be "
                           "placed in a window")
    progress(f"catch-up: {opts.backlog:,} rows logged, the newest {changed:,} changed; monitor starting")
    monitor, events = drain(run_dir, settings_for(run_home, url, run_dir / "reports", workspace=opts.workspace[0]))
    checks = [e for e in events if e["kind"] == "check"]
    at = lambda e: round(e["at"] - monitor.spawned, 2)  # noqa: E731
    hit = next((c for c in checks if c["first_id"] <= first_changed <= c["last_id"]), None)
    store = PredictionStore(url)
    skips = store.events(EventKind.BACKLOG_SKIPPED)  # monitoring.max_backlog_windows: the older rows left
    store.close()
    started = [e for e in events if e["kind"] == "retrain_started"]
    done = [e for e in events if e["kind"] == "retrain_done"]
    # the window before the change is checked before any retrain the change leads to starts (a
    # window's check event comes after the retrain it decided: Monitor.check_window)
    before = checks[checks.index(hit) - 1]["at"] if hit is not None and checks.index(hit) > 0 else 0.0
    after = [e for e in started if hit is not None and e["at"] >= before]
    decided = after[0] if after else None
    finished = done[started.index(decided)] if decided is not None and started.index(decided) < len(done) else None
    decided_window = next((c for c in checks if decided is not None and c["at"] >= decided["at"]
                           and c["decision"] == "retrain"), None)
    span = checks[-1]["at"] - next(e["at"] for e in events if e["kind"] == "run") if checks else 0.0
    rate = sum(c["rows"] for c in checks) / span if span else 0.0
    return {
        "backlog": opts.backlog, "window": window, "workspace": opts.workspace[0], "changed_rows": changed,
        "first_changed_id": first_changed,
        "monitor_ready_s": at(next(e for e in events if e["kind"] == "ready")),
        "change_window": hit["window"] if hit else None, "change_checked_s": at(hit) if hit else None,
        "retrain_window": decided_window["window"] if decided_window else None,
        "retrain_decided_s": at(decided) if decided else None,
        "retrain_done_s": at(finished) if finished else None,
        "retrain_outcome": finished["status"] if finished else None,
        "retrains_before_change": len(started) - len(after),
        "windows": len(checks), "drained_s": at(checks[-1]) if checks else None, "rows_per_s": round(rate, 1),
        "skipped_rows": sum(e["detail"]["rows"] for e in skips),
        "max_backlog_windows": skips[0]["detail"]["max_backlog_windows"] if skips else None,
        **pictures(run_dir, events, opts.workspace[0]),
        "minutes_for_300k": round(300_000 / rate / 60, 1) if rate else None,
        "minutes_for_issue_backlog": round(ISSUE_BACKLOG / rate / 60, 1) if rate else None,
        "dir": str(run_dir),
    }


# -- 3. memory ------------------------------------------------------------------------------------
def memory(opts: Options, root: Path, home: Path, progress: Any) -> dict[str, Any]:
    """Replay at ``memory_rate`` rows/s to a monitor following the log; its RSS sampled."""
    import psutil

    from driftloop.models.registry import Registry
    from driftloop.monitoring.store import PredictionStore

    run_dir = root / "memory"
    run_home = run_dir / "bentoml"
    shutil.copytree(home, run_home)
    url = f"sqlite:///{run_dir / 'store.db'}"
    duration = 60.0 * opts.memory_minutes
    total = int(opts.memory_rate * duration)
    cycle = min(120_000, max(total, 2000))  # one cycle a minute at 2,000 rows/s: stable, covariate, concept
    frame = live_frame(opts.seed + 2, cycle - 2 * (cycle // 6), cycle // 6, cycle // 6)
    store = PredictionStore(url).create()
    registry = Registry(run_home, "loans")
    monitor = spawn(run_dir, settings_for(run_home, url, run_dir / "reports", workspace=opts.workspace[0]), "follow")
    proc = psutil.Process(monitor.proc.pid)
    samples: list[tuple[float, float]] = []  # (seconds since spawn, RSS MB)
    model, logged, tick, every = None, 0, 0.25, min(1.0, max(0.2, duration / 60))
    try:
        while not any(e["kind"] == "ready" for e in monitor.read()):  # the replay starts with the monitor
            if monitor.proc.poll() is not None:
                raise RuntimeError(monitor.failed())
            with contextlib.suppress(psutil.Error):
                samples.append((time.time() - monitor.spawned, proc.memory_info().rss / 2**20))
            time.sleep(0.2)
        progress(f"memory: replaying {opts.memory_rate:,.0f} rows/s for {duration:.0f} s")
        begin = next_sample = time.monotonic()
        while (elapsed := time.monotonic() - begin) < duration:
            if monitor.proc.poll() is not None:
                raise RuntimeError(monitor.failed())
            due = min(total, int(opts.memory_rate * elapsed)) - logged
            if due > 0:
                champion = registry.champion().version
                if model is None or model.version != champion:
                    model = registry.load(champion)  # the service swaps to a promoted model
                start = logged % len(frame)
                part = frame.iloc[start:start + min(due, len(frame) - start)]
                fill(store, served(model, part))
                logged += len(part)
            if time.monotonic() >= next_sample:
                with contextlib.suppress(psutil.Error):
                    samples.append((time.time() - monitor.spawned, proc.memory_info().rss / 2**20))
                next_sample += every
            time.sleep(max(0.0, tick - (time.monotonic() - begin - elapsed)))  # the replay's pace
        replay_s = time.monotonic() - begin
        with contextlib.suppress(psutil.Error):
            samples.append((time.time() - monitor.spawned, proc.memory_info().rss / 2**20))
    finally:
        stopped_cleanly = stop_child(monitor)
        store.close()
    events = monitor.read()
    checks = [e for e in events if e["kind"] == "check"]
    ready = next(e["at"] - monitor.spawned for e in events if e["kind"] == "ready")
    warm = [(t, mb) for t, mb in samples if t >= ready]
    half = [(t, mb) for t, mb in warm if t >= (warm[0][0] + warm[-1][0]) / 2]  # of the time the monitor ran
    checked = sum(c["rows"] for c in checks)
    return {
        "minutes": round(replay_s / 60, 2), "rate": opts.memory_rate, "rows_logged": logged,
        "rows_checked": checked, "lag_rows": logged - checked, "windows": len(checks),
        "retrains": sum(e["kind"] == "retrain_started" for e in events),
        "workspace": opts.workspace[0], "rss_ready_mb": round(warm[0][1], 1),
        "rss_peak_mb": round(max(mb for _, mb in samples), 1),
        "rss_end_mb": round(samples[-1][1], 1), "slope_mb_per_min": round(slope(half), 2),
        "samples": [(round(t, 1), round(mb, 1)) for t, mb in samples], "stopped_cleanly": stopped_cleanly,
        **pictures(run_dir, events, opts.workspace[0]),
        "dir": str(run_dir),
    }


def slope(samples: Sequence[tuple[float, float]]) -> float:
    """MB per minute: the least-squares line through (seconds, MB)."""
    import numpy as np

    if len(samples) < 2:
        return 0.0
    t, mb = np.asarray(samples, dtype=float).T
    return float(np.polyfit(t / 60.0, mb, 1)[0])


def stop_child(monitor: Child, grace_s: float = 3.0) -> bool:
    """Ask the monitor to stop after its current run; one still inside a run (catching up on a
    backlog, which may take minutes) is ended by SIGTERM at once, as a container stop would.
    True when it stopped on its own."""
    monitor.stop.touch()
    events = monitor.read()
    if not events or events[-1]["kind"] != "ran":  # inside a run: it would not look at the stop file soon
        grace_s = 0.5
    try:
        monitor.proc.wait(timeout=grace_s)
        return True
    except subprocess.TimeoutExpired:
        monitor.proc.send_signal(signal.SIGTERM)
        try:
            monitor.proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            monitor.proc.kill()
            monitor.proc.wait()
        return False


# -- 4. disk --------------------------------------------------------------------------------------
def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def footprint(run_dir: Path) -> dict[str, int]:
    """Bytes of the SQLite store, its -wal and -shm, HTML reports, workspace, registry."""
    reports = run_dir / "reports"
    workspace = reports / "evidently"  # monitoring.workspace.path's default
    return {"store": size_of(run_dir / "store.db"),
            "wal": sum(size_of(run_dir / f"store.db{s}") for s in ("-wal", "-shm")),  # not yet checkpointed
            "reports": size_of(reports) - size_of(workspace), "workspace": size_of(workspace),
            "registry": size_of(run_dir / "bentoml")}


def disk(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each run's footprint, after the retention a monitor runs (the registry's, and the store's
    job: ``run_store_retention``), and after the store's retention as it would run once every
    row, check, event and file is past its age (``prune(now=...)`` a year and a day on: what the
    monitor's own needs keep)."""
    from driftloop.models.registry import Registry
    from driftloop.monitoring.monitor import Monitor
    from driftloop.monitoring.store import PredictionStore, utcnow
    from driftloop.settings import load_settings

    try:  # monitoring/retention.py: the store's retention (issue 14)
        from driftloop.monitoring import retention
    except ImportError:
        retention = None
    out: dict[str, Any] = {}
    for name, run in runs.items():
        run_dir = Path(run["dir"])
        url = f"sqlite:///{run_dir / 'store.db'}"
        settings = load_settings(None, **settings_for(run_dir / "bentoml", url, run_dir / "reports",
                                                      workspace=run["workspace"]))
        rows = run.get("rows_logged", run.get("backlog", 0))
        figures: dict[str, Any] = {"rows": rows, "windows": run.get("windows", 0), "run": footprint(run_dir),
                                   "files": files_of(run_dir)}
        keep = settings.registry
        registry = Registry(keep.home, keep.project)
        figures["versions_deleted"] = registry.prune(keep.keep_ancestors, keep.keep_candidates, actor="bench",
                                                     reason="bench.monitor retention")
        if retention is None:
            figures["store_retention"] = "no store retention yet"
        else:
            store = PredictionStore(url)
            try:
                pruned = retention.run_store_retention(Monitor(settings, store, registry))
                figures["retention"], figures["retention_deleted"] = footprint(run_dir), dict(pruned.deleted)
                figures["free_bytes"] = pruned.free_bytes
                aged = retention.prune(store, settings, now=utcnow() + timedelta(days=366))
                figures["aged"], figures["aged_deleted"] = footprint(run_dir), dict(aged.deleted)
                figures["aged_free_bytes"] = aged.free_bytes
            finally:
                store.close()
        figures["week_at_100_rows_s"] = week(figures, settings) if rows else {}
        out[name] = figures
    return out


def files_of(run_dir: Path) -> dict[str, int]:
    """How many HTML reports and workspace snapshots the run wrote."""
    reports = run_dir / "reports"
    return {"reports": len(list(reports.glob("*.html"))),
            "snapshots": len(list((reports / "evidently").glob("*/snapshots/*.json")))}


def week(figures: dict[str, Any], settings: Any) -> dict[str, int]:
    """A week at 100 rows/s, scaled from this run: without retention (bytes per row logged, as
    the run's mix of quiet and flagged windows), and within ``monitoring.retention``'s limits
    (the log kept ``predictions_days``, at most ``reports_max`` reports and ``snapshots_max``
    snapshots of this run's sizes): the bound retention promises."""
    run, files, rows = figures["run"], figures["files"], figures["rows"]
    store = run["store"] + run["wal"]
    out = {"store_unbounded": int(store / rows * WEEK_AT_100),
           "reports_unbounded": int(run["reports"] / rows * WEEK_AT_100),
           "workspace_unbounded": int(run["workspace"] / rows * WEEK_AT_100)}
    r = getattr(settings.monitoring, "retention", None)
    if r is None or "retention" not in figures:
        return out
    kept_rows = WEEK_AT_100 if not r.predictions_days else min(WEEK_AT_100, 100 * 86_400 * r.predictions_days)
    per_report = run["reports"] / files["reports"] if files["reports"] else 0
    per_snapshot = run["workspace"] / files["snapshots"] if files["snapshots"] else 0
    reports = out["reports_unbounded"] if r.reports_max is None else min(out["reports_unbounded"],
                                                                         r.reports_max * per_report)
    snapshots = out["workspace_unbounded"] if r.snapshots_max is None else min(out["workspace_unbounded"],
                                                                               r.snapshots_max * per_snapshot)
    return out | {"store_bounded": int(store / rows * kept_rows), "reports_bounded": int(reports),
                  "workspace_bounded": int(snapshots)}


# -- the whole run --------------------------------------------------------------------------------
def run(opts: Options, root: Path, progress: Any) -> dict[str, Any]:
    started = time.monotonic()
    progress("training the loans champion (v1) ...")
    home = train_champion(root / "champion")
    out: dict[str, Any] = {"options": asdict(opts)}
    if "throughput" in opts.sections:
        out["throughput"] = throughput(opts, root, home, progress)
    runs = {}
    if "catchup" in opts.sections or opts.sections == ("disk",):
        out["catchup"] = runs["catchup"] = catchup(opts, root, home, progress)
    if "memory" in opts.sections:
        out["memory"] = runs["memory"] = memory(opts, root, home, progress)
    if "disk" in opts.sections:
        out["disk"] = disk(runs)
    out["wall_s"] = round(time.monotonic() - started, 1)
    return out


def drawn(r: dict[str, Any]) -> str:
    """Pictures written against those due (reports of flagged windows, snapshots of every window)."""
    return f"{r['reports_written'] + r['snapshots_written']}/{r['reports_due'] + r['snapshots_due']}"


def mb(n: int | float) -> str:
    return f"{n / 2**20:,.1f} MB" if n < 2**30 else f"{n / 2**30:,.2f} GB"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def report(out: dict[str, Any]) -> str:
    lines = []
    if "throughput" in out:
        rows = out["options"]["rows"]
        lines += [f"throughput: {rows:,} logged, labelled rows a run (loans: 1/2 stable, 1/4 covariate, 1/4 concept); "
                  "monitoring.dry_run on (checks decided, recorded, reported; no retrain runs)",
                  f"{'backend':<11}{'window':>7} {'workspace':<10}{'windows':>8}{'flagged':>8}{'rows/s':>9}"
                  f"{'after 1st':>10}{'ms/window':>10}{'p95':>8}{'first':>8}{'check':>8}{'pictures':>10}"
                  f"{'drawn':>9}"]
        for r in out["throughput"]:
            if "skipped" in r:
                lines.append(f"{r['backend']:<11}skipped: {r['skipped']}")
                continue
            after = "-" if r["rows_per_s_after_first"] is None else f"{r['rows_per_s_after_first']:,.0f}"
            lines.append(f"{r['backend']:<11}{r['window']:>7} {'on' if r['workspace'] else 'off':<10}"
                         f"{r['windows']:>8}{r['flagged']:>8}{r['rows_per_s']:>9,.0f}{after:>10}"
                         f"{r['ms_median']:>10,.0f}{r['ms_p95']:>8,.0f}{r['ms_first']:>8,.0f}"
                         f"{r['ms_check_median']:>8,.0f}{seconds(r['pictures_after_last_check_s']):>10}"
                         f"{drawn(r):>9}")
        lines += ["rows/s: from run_once's start to the last check; after 1st: from the first check to the last",
                  "ms/window: median time between checks after the first, reading rows included; p95 likewise; "
                  "first: from run_once's start",
                  "  to the first check (the first rows read, the version's reference prepared); check: the "
                  "check's own duration_s",
                  "pictures: after the last check, until the reports and snapshots still queued were drawn "
                  "(Monitor.close); drawn: files written / due"]
    if "catchup" in out:
        c = out["catchup"]
        lines += ["", f"catch-up (SQLite, defaults but workspace {'on' if c['workspace'] else 'off'}: "
                      f"{c['window']}-row windows, real retrains): "
                      f"{c['backlog']:,}-row backlog, the newest {c['changed_rows']:,} rows covariate "
                      f"(from id {c['first_changed_id']:,})",
                  f"  monitor ready            {seconds(c['monitor_ready_s'])}",
                  f"  change window checked    {seconds(c['change_checked_s'])} (window {c['change_window']})",
                  f"  retrain decided          {seconds(c['retrain_decided_s'])} (window {c['retrain_window']}); "
                  f"done {seconds(c['retrain_done_s'])}: {c['retrain_outcome'] or '-'}",
                  f"  backlog checked          {seconds(c['drained_s'])} ({c['windows']} windows, "
                  f"{c['rows_per_s']:,.0f} rows/s; retrains before the change: {c['retrains_before_change']})",
                  f"  pictures drawn           {seconds(c['pictures_after_last_check_s'])} after the last check "
                  f"({drawn(c)} written: reports {c['reports_written']}/{c['reports_due']}, snapshots "
                  f"{c['snapshots_written']}/{c['snapshots_due']})",
                  (f"  skipped (monitoring.max_backlog_windows {c['max_backlog_windows']}): {c['skipped_rows']:,} "
                   f"older rows left unchecked, the newest {c['windows']} windows checked"
                   if c.get("skipped_rows") else
                   f"  at that rate: 300,000 rows {c['minutes_for_300k']} min; the issue's {ISSUE_BACKLOG:,} "
                   f"(10 min at 5,000 rows/s) {c['minutes_for_issue_backlog']} min")]
    if "memory" in out:
        m = out["memory"]
        lines += ["", f"memory (SQLite, defaults but workspace {'on' if m['workspace'] else 'off'}): "
                      f"{m['minutes']:.1f} min of replay at {m['rate']:,.0f} rows/s; "
                      f"{m['rows_logged']:,} rows logged, {m['rows_checked']:,} checked (behind by {m['lag_rows']:,}), "
                      f"{m['retrains']} retrain(s)",
                  f"  monitor RSS: ready {m['rss_ready_mb']:,.0f} MB, peak {m['rss_peak_mb']:,.0f} MB, end "
                  f"{m['rss_end_mb']:,.0f} MB, slope over the second half {m['slope_mb_per_min']:+.1f} MB/min"
                  + ("" if m["stopped_cleanly"] else " (stopped by SIGTERM mid-run)"),
                  f"  pictures written by the end: reports {m['reports_written']}/{m['reports_due']}, snapshots "
                  f"{m['snapshots_written']}/{m['snapshots_due']}"]
    if "disk" in out:
        lines += ["", f"disk{'':<23}{'rows':>10}{'store':>11}{'-wal':>11}{'reports':>11}{'workspace':>11}"
                      f"{'registry':>11}"]
        stages = (("run", "after the run"), ("retention", "retention now"), ("aged", "retention +366 d"))
        for name, d in out["disk"].items():
            for key, label in stages:
                if key in d:
                    f = d[key]
                    lines.append(f"{name + ' ' + label:<27}{d['rows']:>10,}{mb(f['store']):>11}{mb(f['wal']):>11}"
                                 f"{mb(f['reports']):>11}{mb(f['workspace']):>11}{mb(f['registry']):>11}")
            notes = [f"registry retention deleted {', '.join(d['versions_deleted']) or 'nothing'}"]
            if "store_retention" in d:
                notes.append(d["store_retention"])
            for key, label in (("retention_deleted", "now"), ("aged_deleted", "+366 d")):
                if key in d:
                    gone = ", ".join(f"{n:,} {what}" for what, n in d[key].items() if n)
                    notes.append(f"store retention {label} deleted {gone or 'nothing'}")
            if d.get("aged_free_bytes"):
                notes.append(f"SQLite file not shrunk: {mb(d['aged_free_bytes'])} free inside it (a store made "
                             "before incremental auto-vacuum: driftloop db prune --vacuum)")
            elif d.get("aged_free_bytes") is not None:
                notes.append("SQLite file shrank with the deletes: nothing free inside it (incremental auto-vacuum)")
            lines += [f"  {note}" for note in notes]
            w = d["week_at_100_rows_s"]
            if w:
                lines.append(f"  a week at 100 rows/s ({WEEK_AT_100:,} rows) scaled from this run: without retention "
                             + ", ".join(f"{k} {mb(w[k + '_unbounded'])}" for k in ("store", "reports", "workspace")))
                if "store_bounded" in w:
                    total = sum(w[k + "_bounded"] for k in ("store", "reports", "workspace"))
                    lines.append("  ...within monitoring.retention's limits "
                                 + ", ".join(f"{k} {mb(w[k + '_bounded'])}" for k in ("store", "reports", "workspace"))
                                 + f": {mb(total)} in all")
    lines += ["", f"wall time {out['wall_s']:.0f} s"]
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(prog="python -m bench.monitor", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, SQLite only, 500-row windows")
    parser.add_argument("--only", help=f"comma-separated, from: {', '.join(SECTIONS)}")
    parser.add_argument("--backends", help="throughput's stores, from: sqlite, postgresql")
    parser.add_argument("--windows", help="throughput's window sizes (default 500,5000)")
    parser.add_argument("--workspace", help="Evidently workspace: on, off or on,off (throughput runs each; "
                        "catch-up and memory use the first)")
    parser.add_argument("--rows", type=int, help=f"logged rows per throughput run (default {DEFAULTS.rows:,})")
    parser.add_argument("--backlog", type=int, help=f"catch-up's backlog in rows (default {DEFAULTS.backlog:,})")
    parser.add_argument("--change-windows", type=int, help="catch-up: the newest windows that changed (default 4)")
    parser.add_argument("--memory-minutes", type=float, help="memory: minutes of replay (default 1; the issue: 60)")
    parser.add_argument("--memory-rate", type=float, help="memory: rows/s replayed (default 2,000)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--workdir", type=Path, help="keep stores, reports and logs here (default: a temp dir)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    split = lambda text: tuple(s.strip() for s in text.split(",") if s.strip())  # noqa: E731
    sections = split(args.only) if args.only else base.sections
    backends = split(args.backends) if args.backends else base.backends
    for chosen, allowed, flag in ((sections, SECTIONS, "--only"), (backends, BACKENDS, "--backends")):
        if unknown := [s for s in chosen if s not in allowed]:
            parser.error(f"{flag}: unknown {unknown}; choose from {list(allowed)}")
    workspace = base.workspace
    if args.workspace:
        if unknown := [s for s in split(args.workspace) if s not in ("on", "off")]:
            parser.error(f"--workspace: unknown {unknown}; choose from ['on', 'off']")
        workspace = tuple(s == "on" for s in split(args.workspace))
    opts = Options(
        sections=tuple(s for s in SECTIONS if s in sections), backends=backends,
        windows=tuple(int(w) for w in split(args.windows)) if args.windows else base.windows, workspace=workspace,
        rows=args.rows or base.rows, backlog=args.backlog or base.backlog,
        change_windows=args.change_windows or base.change_windows,
        memory_minutes=args.memory_minutes or base.memory_minutes, memory_rate=args.memory_rate or base.memory_rate,
        seed=base.seed if args.seed is None else args.seed)
    if opts.backlog < (opts.change_windows + 1) * 500:
        parser.error(f"--backlog: at least {(opts.change_windows + 1) * 500} rows (one unchanged window before the "
                     "change)")
    if min(opts.windows) < 10 or opts.rows < max(opts.windows):
        parser.error("--rows: at least one window of the largest --windows size")
    return args, opts


@contextlib.contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    if path:
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="driftloop-bench-monitor-") as tmp:
            yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    args, opts = parse(argv)
    if args.child:
        return child(args.child)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    load = [round(x, 2) for x in os.getloadavg()]
    with workdir(args.workdir) as root:
        out = run(opts, root, progress)
    out["machine"] = {"cpus": os.cpu_count(), "load_average_start": load,
                      "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    print(report(out))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))
        print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
