"""What three serving features cost or buy, each measured against itself switched off, in one run.

    python -m bench.serving_features [--duration 10] [--json FILE] [--only logging,batching,overload]

Every experiment starts the real service (``bentoml serve`` through
:class:`driftloop.launch.ServiceProcess`, one worker) in two configurations, one after the other,
on the same model, and drives both with the same load (wrk for closed loops, :mod:`bench.serving`'s
open-loop generator for fixed rates). Nothing is asserted about speed; the figures are printed
with the server's CPU per request, which moves less than throughput when the machine is shared.

1. ``logging``: the prediction log and driftloop's per-request metrics on (as shipped) against both
   off (``serving.prediction_log: false``, ``serving.metrics: false``), one-row requests to the
   ``loans`` gradient boosting model at 32 and 64 connections.
2. ``batching``: a GRU on the ``sensors`` scenario (one 32 x 3 window per request) with
   ``serving.batching: on`` against ``off``, at 64 connections; the batch sizes seen (from the
   ``driftloop_batch_rows`` histogram) are reported.
3. ``overload``: the ``loans`` model's saturation throughput (closed loop, 64 connections), then a
   fixed rate of twice that, offered open-loop on up to 512 connections so the server sees the
   excess. Reported: successful (2xx) throughput against saturation, the share refused with 503,
   how fast a refusal came back (from its scheduled send time; every 503 carries ``Retry-After``,
   see tests/http/test_gate.py), the p99 of the successful requests against the request timeout, and
   how late the generator itself was (on 2 cores it competes with the server).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.serving import (REQUEST_TIMEOUT_S, DriftloopServer, LoadResult, _attach_cpu, _host_port,
                           _open_loop, _percentiles, _run_async, cpu_meter, cpu_ms_per_request, http_request,
                           machine_info, run_wrk, write_wrk_script)

Progress = Callable[[str], None]
EXPERIMENTS = ("logging", "batching", "overload")
GRU_PARAMS = {"epochs": 20, "patience": 3}  # the default network (32 units, a 64-unit dense layer)


def train(workdir: Path, kind: str, scenario: str, params: dict[str, Any] | None = None, **serving: Any) -> Any:
    """Settings for a one-worker service over a fresh registry with ``kind`` trained and promoted."""
    from driftloop.launch import free_port
    from driftloop.vocabulary import Trigger
    from driftloop.settings import load_settings
    from driftloop.models.registry import Registry
    from driftloop.training.scenarios import scenario_frame
    from driftloop.training.train import train_version

    settings = load_settings(None, seed=42, model={"kind": kind, "params": params or {}}, data={"scenario": scenario},
                             registry={"home": str(workdir / "bentoml")},
                             store={"url": f"sqlite:///{workdir / 'driftloop.db'}"},
                             monitoring={"reports_dir": str(workdir / "reports"), "metrics_port": 0},
                             serving={"port": free_port(), "workers": 1} | serving)
    registry = Registry(settings.registry.home, settings.registry.project)
    frame = scenario_frame(scenario, seed=42)
    train_rows = frame[frame["period"] == "train"].reset_index(drop=True)
    version = train_version(settings, train_rows, registry, trigger=Trigger.INITIAL).version.version
    registry.promote(version, actor="bench.serving_features", reason="benchmark")
    schema = registry.get(version).schema
    row = frame[frame["period"] == "train"][schema.names].head(1).to_dict("records")[0]
    row = {k: (np.asarray(v).tolist() if not isinstance(v, (int, float, str)) else v) for k, v in row.items()}
    return settings, row


@contextlib.contextmanager
def serving(settings: Any, workdir: Path, name: str, **overrides: Any) -> Iterator[DriftloopServer]:
    """The service with ``serving`` overrides, its own store and port; stopped on exit."""
    from driftloop.launch import free_port

    run_dir = workdir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    s = settings.model_copy(update={
        "serving": settings.serving.model_copy(update={"port": free_port()} | overrides),
        "store": settings.store.model_copy(update={"url": f"sqlite:///{run_dir / 'driftloop.db'}"})})
    server = DriftloopServer(s, run_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def closed(server: DriftloopServer, script: Path, conns: int, seconds: float, name: str) -> LoadResult:
    box: list[dict[str, float]] = []
    with cpu_meter(server.processes, box):
        res = run_wrk(server.url, script, conns, seconds, server=name)
    _attach_cpu(res, box[0])
    return res


def _line(r: LoadResult) -> str:
    cpu = cpu_ms_per_request(r)
    return (f"  {r.server:<22} c={r.connections:<3} {r.rps:8.0f} req/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms"
            f"  non-2xx {r.non_2xx}  server {r.server_cpu_cores or 0:.2f} cores, "
            f"{cpu if cpu is not None else float('nan'):.3f} CPU ms/req")


def batch_sizes(url: str) -> dict[str, float]:
    """Count and mean of the ``driftloop_batch_rows`` histogram from the service's /metrics."""
    values: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        for key in ("driftloop_batch_rows_count", "driftloop_batch_rows_sum"):
            if line.startswith(key):
                values[key] = float(line.rsplit(" ", 1)[1])
    count = values.get("driftloop_batch_rows_count", 0.0)
    return {"graph_runs": count, "mean_rows": values.get("driftloop_batch_rows_sum", 0.0) / count if count else 0.0}


def exp_logging(workdir: Path, seconds: float, progress: Progress) -> dict[str, Any]:
    settings, row = train(workdir, "gradient_boosting", "loans")
    script = write_wrk_script(json.dumps({"rows": [row]}).encode(), workdir / "loans.lua")
    results: list[LoadResult] = []
    configs = {"log+metrics on": {}, "log+metrics off": {"prediction_log": False, "metrics": False}}
    for conns in (32, 64):
        for name, overrides in configs.items():  # alternating, so a busier machine slows both
            with serving(settings, workdir, f"logging-{len(results)}", **overrides) as server:
                closed(server, script, 8, 2.0, name)  # warm-up
                results.append(closed(server, script, conns, seconds, name))
                progress(_line(results[-1]))
    ratios = {}
    for conns in (32, 64):
        on, off = (next(r for r in results if r.server == n and r.connections == conns) for n in configs)
        ratios[conns] = {"throughput_on_over_off": on.rps / off.rps,
                         "cpu_per_request_on_over_off": (cpu_ms_per_request(on) or 0) / (cpu_ms_per_request(off) or 1)}
        progress(f"  c={conns}: throughput on/off {ratios[conns]['throughput_on_over_off']:.2f}x, "
                 f"CPU per request on/off {ratios[conns]['cpu_per_request_on_over_off']:.2f}x")
    return {"runs": [r.__dict__ for r in results], "ratios": ratios}


def exp_batching(workdir: Path, seconds: float, progress: Progress) -> dict[str, Any]:
    settings, row = train(workdir, "gru", "sensors", GRU_PARAMS)
    script = write_wrk_script(json.dumps({"rows": [row]}).encode(), workdir / "sensors.lua")
    out: dict[str, Any] = {}
    for name in ("off", "on"):
        with serving(settings, workdir, f"batching-{name}", batching=name) as server:
            closed(server, script, 8, 2.0, f"batching {name}")
            before = batch_sizes(server.url)
            res = closed(server, script, 64, seconds, f"gru batching {name}")
            after = batch_sizes(server.url)
            runs = after["graph_runs"] - before["graph_runs"]
            mean = ((after["mean_rows"] * after["graph_runs"] - before["mean_rows"] * before["graph_runs"]) / runs
                    if runs else 0.0)
            out[name] = {"result": res.__dict__, "graph_runs": runs, "mean_batch_rows": mean}
            progress(_line(res) + f"  graph runs {runs:.0f}, mean batch {mean:.1f} rows")
    out["throughput_on_over_off"] = out["on"]["result"]["rps"] / out["off"]["result"]["rps"]
    progress(f"  batching on/off at 64 connections: {out['throughput_on_over_off']:.2f}x")
    return out


def exp_overload(workdir: Path, seconds: float, progress: Progress, connections: int = 512) -> dict[str, Any]:
    settings, row = train(workdir, "gradient_boosting", "loans")
    body = json.dumps({"rows": [row]}).encode()
    script = write_wrk_script(body, workdir / "overload.lua")
    with serving(settings, workdir, "overload") as server:
        closed(server, script, 8, 2.0, "warm-up")
        saturation = closed(server, script, 64, seconds, "saturation")
        progress(_line(saturation))
        rate = 2.0 * saturation.rps
        host, port = _host_port(server.url)
        box: list[dict[str, float]] = []
        with cpu_meter(server.processes, box):
            raw = _run_async(_open_loop(host, port, http_request(host, port, "/predict", body), rate, seconds,
                                        connections, REQUEST_TIMEOUT_S))
    answered = ~np.isnan(raw["done"])
    latency = (raw["done"] - raw["scheduled"]) * 1000.0
    ok = answered & (raw["status"] >= 200) & (raw["status"] < 300)
    shed = answered & (raw["status"] == 503)
    other = answered & ~ok & ~shed
    span = float(np.nanmax(raw["done"]) - raw["t0"]) if answered.any() else seconds
    result = {
        "saturation_rps": saturation.rps, "offered_rps": rate, "connections": connections,
        "scheduled": len(raw["status"]), "ok": int(ok.sum()), "shed_503": int(shed.sum()), "other_status": int(other.sum()),
        "socket_errors": int(raw["socket_errors"]), "unanswered": int((raw["status"] == 0).sum()),
        "ok_rps": float(ok.sum()) / span, "ok_over_saturation": float(ok.sum()) / span / saturation.rps,
        "shed_share": float(shed.sum()) / len(raw["status"]),
        "ok_latency": _percentiles(latency[ok]), "shed_latency": _percentiles(latency[shed]),
        "timeout_s": REQUEST_TIMEOUT_S, "server_cpu_cores": box[0]["server"],
        "generator_send_lag_ms": {"p50": float(np.nanpercentile((raw["put"] - raw["scheduled"]) * 1000, 50)),
                                  "p99": float(np.nanpercentile((raw["put"] - raw["scheduled"]) * 1000, 99))},
        "generator_cpu_cores": box[0]["loadgen"],
    }
    progress(f"  offered {rate:.0f} req/s (2x saturation) on {connections} connections: {result['ok_rps']:.0f} req/s "
             f"answered 200 ({result['ok_over_saturation']:.2f} of saturation), {result['shed_share']:.1%} refused "
             f"with 503 (p50 {result['shed_latency']['p50_ms']:.1f} ms, p99 {result['shed_latency']['p99_ms']:.1f} ms "
             f"from the scheduled send), 2xx p99 {result['ok_latency']['p99_ms']:.0f} ms (timeout "
             f"{REQUEST_TIMEOUT_S:.0f} s), other statuses {result['other_status']}, socket errors "
             f"{result['socket_errors']}, unanswered {result['unanswered']}; the generator put requests on the wire "
             f"{result['generator_send_lag_ms']['p99']:.0f} ms late at p99 and used {result['generator_cpu_cores']:.2f} "
             f"cores, the server {result['server_cpu_cores']:.2f}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_features", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (10)")
    parser.add_argument("--only", default=",".join(EXPERIMENTS), help=f"comma-separated: {', '.join(EXPERIMENTS)}")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--workdir", help="keep registries, stores and logs here")
    args = parser.parse_args(argv)
    chosen = [e.strip() for e in args.only.split(",") if e.strip()]
    unknown = [e for e in chosen if e not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {unknown}; choose from {EXPERIMENTS}")
    progress: Progress = lambda line: print(line, flush=True)  # noqa: E731
    out: dict[str, Any] = {"machine": machine_info(), "duration_s": args.duration}
    with contextlib.ExitStack() as stack:
        root = Path(args.workdir) if args.workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="driftloop-bench-features-")))
        for name in chosen:
            progress(f"{name}:")
            started = time.monotonic()
            out[name] = {"logging": exp_logging, "batching": exp_batching, "overload": exp_overload}[name](
                root / name, args.duration, progress)
            out[name]["wall_s"] = time.monotonic() - started
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
