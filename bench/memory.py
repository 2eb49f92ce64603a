"""A serving worker's resident memory under sustained load, per configuration.

    python -m bench.memory [--duration 45] [--rounds 2] [--connections 64] [--configs shipped,no-log,...]

Trains the ``loans`` gradient boosting model as :mod:`bench.serving` does, then for each
configuration starts the real service (``bentoml serve`` through
:class:`driftloop.launch.ServiceProcess`, one worker, a store of its own) and drives it with wrk
(one thread, one-row ``POST /predict``) at ``--connections`` for ``--rounds`` back-to-back runs of
``--duration`` seconds, sampling the worker's RSS every ``--interval`` seconds
(``/proc/PID/smaps_rollup``: anonymous and file-backed apart). Printed per configuration: RSS
at start (ready, before any request), after each round, the peak, the slope over the last half
of the load (MB/min; near 0 once the worker has reached its working size), req/s and the
server's CPU per request in each round (CPU per request moves less than req/s when the machine
is shared), and the answers that were not 2xx or failed (wrk's non-2xx and socket errors).
``--smaps`` also prints the mappings whose RSS grew most between start and end.

What it found (issue 13, part 6: "a worker's RSS grew 70 MB over the first 45 s at 64
connections and stayed there"). Nearly all of the growth was BentoML's ``TimeoutMiddleware``
leaving one ``loop.call_later`` timer per request alive for ``traffic.timeout`` (30 s), about
0.85 KB each (Python objects in ``[anon]``, libuv's timers in ``[heap]``): the worker holds 30 s
of its own throughput, so the growth stops after 30 s and its size follows the request rate
(:func:`driftloop.service.lifecycle.cancel_request_timers` cancels the timer once the answer has
started). With it cancelled, a worker grows 8 MB in 90 s as shipped, of which about 5.5 MB is
the prediction log's working set (batches in flight, SQLite) and 2.5 MB everything else (the
connections' objects, onnxruntime, the metrics' files), flat after 15 s; the metrics,
``MALLOC_ARENA_MAX=2`` and ``malloc_trim`` (0.1-3 MB) change nothing worth having. Not seen
here, because the store kept up: the prediction log's queue is bounded in rows, and a queued
row of this model cost about 1.2 KB when measured here (100,000 rows: about 120 MB; a 100-feature row about
12 KB); since the rows are queued encoded, about 0.41 KB (2.7 KB for 100 features).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.serving import (DriftloopServer, LoadResult, _attach_cpu, cpu_meter, cpu_ms_per_request, prepare, run_wrk,
                           wrk_path, write_wrk_script)

MIB = 2**20
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    """A service configuration: ``serving`` settings overrides and extra environment variables."""

    serving: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""


CONFIGS: dict[str, Config] = {
    "shipped": Config(note="as shipped"),
    "no-log": Config({"prediction_log": False}, note="serving.prediction_log: false"),
    "no-metrics": Config({"metrics": False}, note="serving.metrics: false"),
    "no-log-no-metrics": Config({"prediction_log": False, "metrics": False}, note="both off"),
    "arena-2": Config(env={"MALLOC_ARENA_MAX": "2"}, note="MALLOC_ARENA_MAX=2"),
}
DEFAULT_CONFIGS = ("shipped", "no-log", "no-metrics")


# -- reading a process's memory ------------------------------------------------------------------
def rollup(pid: int) -> dict[str, int]:
    """``/proc/PID/smaps_rollup`` in bytes (Rss, Anonymous, Pss_File, ...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def mappings(pid: int) -> dict[str, int]:
    """RSS in bytes per mapping name of ``/proc/PID/smaps`` (anonymous mappings: ``[anon]``;
    ``[heap]``, ``[stack]`` and files by path), summed over the mappings of the same name."""
    out: dict[str, int] = {}
    name = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                name = head[5].strip() if len(head) == 6 else "[anon]"
            elif head[0] == "Rss:":
                out[name] = out.get(name, 0) + int(head[1]) * 1024
    return out


@dataclass
class Sample:
    t: float  # seconds since the load began (negative: before)
    rss: int
    anon: int
    file: int  # Rss - Anonymous: file-backed and shared pages


def sample(pid: int, t: float) -> Sample:
    r = rollup(pid)
    return Sample(t, r["Rss"], r.get("Anonymous", 0), r["Rss"] - r.get("Anonymous", 0))


def slope_mb_per_min(samples: Sequence[Sample]) -> float:
    """Least-squares slope of RSS over ``samples``, in MB (10^6 bytes) per minute."""
    if len(samples) < 3:
        return float("nan")
    t = np.array([s.t for s in samples])
    rss = np.array([s.rss for s in samples], dtype=np.float64)
    return float(np.polyfit(t, rss, 1)[0]) * 60 / 1e6


# -- one configuration ---------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    config: Config
    samples: list[Sample]
    loads: list[LoadResult]
    smaps_start: dict[str, int]
    smaps_end: dict[str, int]
    metrics: dict[str, float]

    def at(self, t: float) -> Sample:
        """The last sample taken at or before ``t``."""
        return [s for s in self.samples if s.t <= t + 1e-6][-1]

    def summary(self) -> dict[str, Any]:
        loaded = [s for s in self.samples if s.t >= 0]
        end = loaded[-1].t
        start = self.at(0.0)
        rounds = [self.at(sum(r.duration_s for r in self.loads[:i + 1])) for i in range(len(self.loads))]
        peak = max(self.samples, key=lambda s: s.rss)
        return {
            "start_mib": start.rss / MIB, "anon_start_mib": start.anon / MIB, "file_start_mib": start.file / MIB,
            "rounds_mib": [s.rss / MIB for s in rounds], "rounds_t": [s.t for s in rounds],
            "peak_mib": peak.rss / MIB, "end_mib": loaded[-1].rss / MIB,
            "anon_end_mib": loaded[-1].anon / MIB, "file_end_mib": loaded[-1].file / MIB,
            "growth_mib": (loaded[-1].rss - start.rss) / MIB,
            "slope_last_half_mb_min": slope_mb_per_min([s for s in loaded if s.t >= end / 2]),
            "rps": [r.rps for r in self.loads], "cpu_ms_per_request": [cpu_ms_per_request(r) for r in self.loads],
            "non_2xx": sum(r.non_2xx for r in self.loads),
            "socket_errors": sum(r.socket_errors for r in self.loads), "metrics": self.metrics,
        }


@contextlib.contextmanager
def _service_env(env: dict[str, str]) -> Iterator[None]:
    """This process's environment with ``env`` added while the service starts (the launcher
    passes its environment on to ``bentoml serve``, and so to the worker)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def scrape(url: str) -> dict[str, float]:
    """The prediction log's written and dropped rows and the request count from ``/metrics``."""
    import httpx

    wanted = {'driftloop_prediction_log_rows_total{outcome="written"}': "log_written",
              'driftloop_prediction_log_rows_total{outcome="dropped"}': "log_dropped"}
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        key, _, value = line.rpartition(" ")
        if key in wanted:
            out[wanted[key]] = float(value)
    return out


def measure(name: str, config: Config, settings: Any, workdir: Path, script: Path, *, connections: int,
            duration: float, rounds: int, interval: float, progress: Progress,
            on_loaded: Callable[[DriftloopServer, int], None] | None = None) -> Run:
    """Start the service in ``config``, load it for ``rounds`` x ``duration`` seconds while sampling
    its worker's memory, stop it."""
    from driftloop.launch import free_port

    run_dir = workdir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    s = settings.model_copy(update={
        "serving": settings.serving.model_copy(update={"port": free_port()} | config.serving),
        "store": settings.store.model_copy(update={"url": f"sqlite:///{run_dir / 'driftloop.db'}"})})
    server = DriftloopServer(s, run_dir)
    with _service_env(config.env):
        server.start()
    try:
        (worker,) = server.workers()
        pid = worker.pid
        time.sleep(1.0)  # let the worker settle after its first /readyz and /metrics answers
        samples = [sample(pid, -interval)]
        smaps_start = mappings(pid)
        loads: list[LoadResult] = []
        failure: list[BaseException] = []

        def drive() -> None:
            try:
                for _ in range(rounds):
                    box: list[dict[str, float]] = []
                    with cpu_meter(server.processes, box):
                        res = run_wrk(server.url, script, connections, duration, server=name)
                    _attach_cpu(res, box[0])
                    loads.append(res)
            except BaseException as exc:  # reported by the sampling loop
                failure.append(exc)

        loader = threading.Thread(target=drive, name="wrk")
        t0 = time.monotonic()
        loader.start()
        samples.append(sample(pid, 0.0))
        while loader.is_alive():
            loader.join(max(0.0, t0 + len(samples) * interval - time.monotonic()))
            samples.append(sample(pid, time.monotonic() - t0))
        if failure:
            raise failure[0]
        smaps_end = mappings(pid)
        if on_loaded is not None:
            on_loaded(server, pid)
        metrics = scrape(server.url)
        progress(f"  {name}: start {samples[1].rss / MIB:.1f} MiB, end {samples[-1].rss / MIB:.1f} MiB, "
                 f"{' / '.join(f'{r.rps:.0f}' for r in loads)} req/s")
        return Run(name, config, samples, loads, smaps_start, smaps_end, metrics)
    finally:
        server.stop()


# -- output ----------------------------------------------------------------------------------------
def format_table(runs: Sequence[Run], settings: dict[str, Any]) -> str:
    d, n = settings["duration_s"], settings["rounds"]
    marks = " ".join(f"{'after ' + format((i + 1) * d, 'g') + ' s':>11}" for i in range(n))
    lines = [f"worker RSS (MiB) under wrk, 1 thread, {settings['connections']} connections, one-row POST /predict, "
             f"{n} x {d:g} s; sampled every {settings['interval_s']:g} s",
             f"{'config':<18} {'start':>7} {marks} {'peak':>7} {'growth':>7} {'anon':>13} {'file':>13} "
             f"{'MB/min 2nd half':>15} {'req/s per round':>17} {'CPU ms/req':>13} {'errors':>6}  log rows written/dropped"]
    for r in runs:
        s = r.summary()
        rounds = " ".join(f"{v:>11.1f}" for v in s["rounds_mib"])
        m = s["metrics"]
        log_rows = (f"{m['log_written']:.0f}/{m['log_dropped']:.0f}" if "log_written" in m else "-")
        lines.append(f"{r.name:<18} {s['start_mib']:>7.1f} {rounds} {s['peak_mib']:>7.1f} {s['growth_mib']:>+7.1f} "
                     f"{s['anon_start_mib']:>6.1f}>{s['anon_end_mib']:<6.1f} "
                     f"{s['file_start_mib']:>6.1f}>{s['file_end_mib']:<6.1f} "
                     f"{s['slope_last_half_mb_min']:>+15.2f} {' / '.join(f'{v:.0f}' for v in s['rps']):>17} "
                     f"{' / '.join(f'{v:.3f}' for v in s['cpu_ms_per_request'] if v is not None):>13} "
                     f"{s['non_2xx'] + s['socket_errors']:>6}  "
                     f"{log_rows}")
    lines.append("configs: " + "; ".join(f"{r.name} = {r.config.note}" for r in runs))
    return "\n".join(lines)


def format_smaps(run: Run, top: int = 12) -> str:
    names = set(run.smaps_start) | set(run.smaps_end)
    growth = sorted(((run.smaps_end.get(k, 0) - run.smaps_start.get(k, 0), k) for k in names), reverse=True)
    lines = [f"{run.name}: mappings whose RSS grew most (MiB, start > end)"]
    for delta, k in growth[:top]:
        if delta <= 0:
            break
        lines.append(f"  {delta / MIB:>+7.1f}  {run.smaps_start.get(k, 0) / MIB:>7.1f} > "
                     f"{run.smaps_end.get(k, 0) / MIB:<7.1f} {k}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=45.0, help="seconds per load round (45)")
    parser.add_argument("--rounds", type=int, default=2, help="back-to-back load rounds per configuration (2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between RSS samples (1)")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"comma-separated, in order, from: {', '.join(CONFIGS)}")
    parser.add_argument("--smaps", action="store_true", help="print the mappings that grew most, per configuration")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the registry, stores and logs here")
    parser.add_argument("--json", type=Path, default=None, help="write the samples and summaries to this file")
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; available: {', '.join(CONFIGS)}")
    if wrk_path() is None:
        parser.error("wrk is not installed: apt-get install -y wrk (scripts/system-deps.sh)")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="driftloop-bench-mem-")))
        workdir.mkdir(parents=True, exist_ok=True)
        progress(f"training gradient_boosting on the loans scenario into {workdir}")
        prep = prepare(workdir)
        script = write_wrk_script(json.dumps({"rows": [prep.rows[0]]}).encode(), workdir / "post.lua")
        for name in names:
            progress(f"{name}: {CONFIGS[name].note}")
            runs.append(measure(name, CONFIGS[name], prep.settings, workdir, script, connections=args.connections,
                                duration=args.duration, rounds=args.rounds, interval=args.interval,
                                progress=progress))
    settings = {"duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
                "interval_s": args.interval}
    print(format_table(runs, settings))
    if args.smaps:
        for run in runs:
            print(format_smaps(run))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": settings, "runs": [
            {"name": r.name, "note": r.config.note, "serving": r.config.serving, "env": r.config.env,
             "summary": r.summary(), "samples": [vars(s) for s in r.samples], "smaps_start": r.smaps_start,
             "smaps_end": r.smaps_end} for r in runs]}, indent=1) + "\n")
        print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
