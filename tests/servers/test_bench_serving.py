"""The serving benchmark (bench/serving.py): both servers, every figure, the same answers, and a
load generator that does not omit the requests a stalled server keeps waiting."""

from __future__ import annotations

import json
import math
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.serving import (
    ROOT, LoadResult, Prepared, Server, ServingBenchmark, analyse_profile, closed_loop, cpu_ms_per_request, open_loop,
    parse_collapsed, run_benchmark, wrk_path,
)

pytestmark = pytest.mark.slow
CONNECTIONS = (1, 8)
LATENCIES = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms")


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One small run (1 s per level, wrk if installed); checks that need both servers up run in
    ``on_ready``, before the load."""
    seen: dict[str, Any] = {}

    def on_ready(servers: dict[str, Server], prep: Prepared) -> None:
        with httpx.Client(timeout=30) as client:
            seen["answers"] = {name: client.post(f"{s.url}/predict", json={"rows": prep.rows}).json()
                               for name, s in servers.items()}
            seen["bad"] = client.post(f"{servers['bare'].url}/predict", json={"rows": [{"income": 1.0}]})
        body = json.dumps({"rows": [prep.rows[0]]}).encode()
        seen["closed"] = closed_loop(servers["bare"].url, body, connections=4, duration=0.5, server="bare")
        seen["open"] = open_loop(servers["bare"].url, body, rate=100, duration=1.0, connections=4, server="bare")
        seen["rows"] = prep.rows

    result = run_benchmark(duration=1, connections=CONNECTIONS, warmup=1, inprocess_calls=50,
                           workdir=tmp_path_factory.mktemp("bench-serving"), on_ready=on_ready)
    return {"result": result, **seen}


def assert_figures(r: LoadResult) -> None:
    assert r.requests > 0 and r.rps > 0 and r.duration_s > 0, r
    assert all(math.isfinite(getattr(r, k)) and getattr(r, k) > 0 for k in LATENCIES), r
    assert r.p50_ms <= r.p95_ms <= r.p99_ms <= r.max_ms, r
    assert r.non_2xx == 0 and r.socket_errors == 0, r
    assert r.server_cpu_cores is not None and r.server_cpu_cores > 0, r
    assert r.loadgen_cpu_cores is not None and r.loadgen_cpu_cores >= 0, r
    assert r.other_cpu_cores is not None and r.other_cpu_cores >= 0, r


def test_closed_loop_has_every_figure_for_both_servers(bench: dict[str, Any]) -> None:
    result: ServingBenchmark = bench["result"]
    assert result.settings["generator"] == ("wrk" if wrk_path() else "python")
    assert [(r.connections, r.server) for r in result.closed] == [(c, s) for c in CONNECTIONS
                                                                  for s in ("bare", "driftloop")]
    for r in result.closed:
        assert_figures(r)
        assert r.generator == ("wrk" if wrk_path() else "python-closed")
        assert cpu_ms_per_request(r) > 0


def test_many_row_requests_are_measured_in_rows_for_both_servers(bench: dict[str, Any]) -> None:
    result: ServingBenchmark = bench["result"]
    assert result.settings["multi_row"] == {"rows": 100, "connections": 32}
    assert [r.server for r in result.multi_row] == ["bare", "driftloop"]
    for r in result.multi_row:
        assert_figures(r)
        assert r.connections == 32 and r.detail["rows"] == 100
    line = next(x for x in result.table().splitlines() if x.startswith("100-row requests, 32 connections:"))
    assert "bare " in line and "driftloop " in line and "rows/s" in line and "ratio d/b" in line


def test_open_loop_has_every_figure_for_both_servers(bench: dict[str, Any]) -> None:
    result: ServingBenchmark = bench["result"]
    (spec,) = result.settings["open_loop"]["rates"]  # levels without 32: the bare app's throughput was measured
    assert result.settings["open_loop"]["capacity_rps"]["bare"] > 0
    assert spec["rps"] == pytest.approx(0.5 * result.settings["open_loop"]["capacity_rps"]["bare"])
    assert [r.server for r in result.open] == ["bare", "driftloop"]
    for r in result.open:
        assert r.generator == "python-open" and r.offered_rps == spec["rps"]
        assert r.scheduled == max(1, round(spec["rps"] * 1.0)) and r.unfinished == 0
        assert r.requests == r.scheduled
        assert_figures(r)
        assert r.send_lag_p99_ms is not None and r.send_lag_p99_ms >= 0


def test_cold_start_memory_parity_and_notes(bench: dict[str, Any], tmp_path: Path) -> None:
    result: ServingBenchmark = bench["result"]
    for name in ("bare", "driftloop"):
        srv = result.servers[name]
        assert srv["cold_start_s"] > 0
        for mem in (srv["memory_after_warmup"], srv["memory_end"]):
            assert 0 < mem["workers_mib"] <= mem["total_mib"]
    assert result.servers["bare"]["memory_end"]["processes"] == 1
    assert result.servers["driftloop"]["memory_end"]["processes"] >= 2  # the arbiter and its worker
    assert result.parity["predictions_equal"] and result.parity["max_probability_diff"] == 0.0
    assert result.parity["versions"] == {"bare": ["v1"], "driftloop": ["v1"]}
    ip = result.inprocess
    assert "error" not in ip, ip
    assert min(ip["bare_predict_us"], ip["serving_predict_us"], ip["validate_rows_us"], ip["onnx_run_us"]) > 0
    assert any("prediction log on/off" in n for n in result.notes)

    table = result.table()
    for c in CONNECTIONS:
        rows = [line.split()[:2] for line in table.splitlines() if line.split()[:1] == [str(c)]]
        assert rows == [[str(c), "bare"], [str(c), "driftloop"]]
    assert "ratio d/b" in table and "open loop" in table and "cold start s" in table
    assert "not measured: prediction log on/off, adaptive batching and overload shedding" in table
    data = json.loads(result.write_json(tmp_path / "serving.json").read_text())
    assert set(data) >= {"machine", "settings", "servers", "closed", "open", "parity", "inprocess", "notes"}
    assert len(data["closed"]) == 2 * len(CONNECTIONS) and data["closed"][0]["p99_ms"] > 0


def test_bare_app_answers_what_the_service_answers(bench: dict[str, Any]) -> None:
    bare, served = bench["answers"]["bare"], bench["answers"]["driftloop"]
    assert len(bare["predictions"]) == len(bench["rows"]) == 50
    assert bare["predictions"] == served["predictions"]
    assert bare["probabilities"] == served["probabilities"]  # both rounded to 6 places
    assert bare["model_version"] == served["model_version"] == "v1"
    assert len(served["request_ids"]) == 50 and "request_ids" not in bare
    assert bench["bad"].status_code == 400 and "KeyError" in bench["bad"].text


def test_python_generators_against_the_bare_app(bench: dict[str, Any]) -> None:
    closed, opened = bench["closed"], bench["open"]
    assert closed.generator == "python-closed" and closed.connections == 4
    assert_figures_client_side(closed)
    assert opened.scheduled == 100 and opened.requests == 100 and opened.unfinished == 0
    assert opened.rps == pytest.approx(100, rel=0.25)  # an idle-ish server keeps up with the timetable
    assert_figures_client_side(opened)


def assert_figures_client_side(r: LoadResult) -> None:
    assert r.requests > 0 and r.rps > 0 and r.non_2xx == 0 and r.socket_errors == 0
    assert all(math.isfinite(getattr(r, k)) and getattr(r, k) > 0 for k in LATENCIES)
    assert r.loadgen_cpu_cores is not None and r.loadgen_cpu_cores > 0


# -- no coordinated omission -------------------------------------------------------------------------------
SERVICE_S = 0.02  # the slow server's time per request


class _SlowHandler(socketserver.StreamRequestHandler):
    """Keep-alive HTTP/1.1, one request at a time, each taking SERVICE_S."""

    def handle(self) -> None:
        while True:
            length = 0
            line = self.rfile.readline()
            if not line:
                return
            while line not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                line = self.rfile.readline()
            self.rfile.read(length)
            time.sleep(SERVICE_S)  # the service time being simulated, not synchronisation
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")


@pytest.fixture
def slow_server() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SlowHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_open_loop_charges_the_queue_behind_a_slow_server(slow_server: str) -> None:
    """Twice the rate one connection can carry: closed loop sees the service time, open loop
    sees the queue grow, because latency runs from the scheduled send time."""
    body = b'{"rows": []}'
    closed = closed_loop(slow_server, body, connections=1, duration=0.5)
    assert SERVICE_S * 1000 <= closed.p50_ms < 3 * SERVICE_S * 1000
    rate, duration = 2 / SERVICE_S, 1.0  # 100 req/s offered, 50 req/s served
    opened = open_loop(slow_server, body, rate=rate, duration=duration, connections=1)
    assert opened.scheduled == 100 and opened.requests == 100 and opened.unfinished == 0
    # the last request is due at ~1 s but waits behind ~50 others: about 1 s late
    assert opened.max_ms > 0.7 * duration * 1000
    assert opened.p50_ms > 5 * closed.p50_ms
    assert opened.rps < 0.75 * rate  # achieved: what the server could do, not what was offered


# -- the rest -------------------------------------------------------------------------------------------
def test_profile_analysis_names_the_owners() -> None:
    lib = f"{ROOT}/.venv/lib/python3.11/site-packages"
    text = "\n".join([
        f"Runner.run (/usr/lib/python3.11/asyncio/runners.py:86);"
        f"OpenTelemetryMiddleware.__call__ ({lib}/opentelemetry/instrumentation/asgi/__init__.py:600);"
        f"dumps (/usr/lib/python3.11/json/__init__.py:183) 3",
        f"Thread._bootstrap (/usr/lib/python3.11/threading.py:988);WorkerThread.run ({lib}/anyio/_backends/_asyncio.py:1);"
        f"Serving.predict ({ROOT}/service/serving.py:144);FeatureSchema.validate_rows ({ROOT}/models/schema.py:1) 1",
    ])
    a = analyse_profile(parse_collapsed(text + "\nmalformed line\n"))
    assert a["samples"] == 4
    assert {o["frame"]: o["share"] for o in a["owners"]} == {"OpenTelemetry": 0.75, "driftloop": 0.25}
    assert a["top_components"][0]["frame"].startswith("OpenTelemetryMiddleware.__call__ (opentelemetry/")
    assert a["top_self"][0]["owner"] == "stdlib"  # json's dumps, under OpenTelemetry
    assert {t["frame"] for t in a["threads"]} == {"event loop (uvicorn on uvloop)", "request thread pool (anyio)"}
    assert [f["frame"].split(" (")[0] for f in a["driftloop_total"]] == ["Serving.predict",
                                                                         "FeatureSchema.validate_rows"]


def test_help() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.serving", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "--duration" in out.stdout and "--json" in out.stdout
