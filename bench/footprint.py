"""A serving worker's footprint: what it imports, its start-up, its resident memory.

    python -m bench.footprint [--repeat 3] [--json FILE]

Trains the ``loans`` gradient boosting model and promotes it as :mod:`bench.serving` does, then,
``--repeat`` times each:

1. in process: a fresh interpreter imports the service module (``driftloop.service.app``), builds
   the service as a BentoML worker does (``Driftloop.to_asgi()``, whose lifespan runs
   ``Driftloop.__init__``: settings, registry, prediction store, ``Serving.start()`` loading the
   champion) and answers one ``POST /predict`` (:func:`worker_in_process`). Reported: the import's
   seconds, the build and first answer's, the resident memory after it, and which of
   :data:`NOT_IN_A_WORKER` it imported (tests/unit/test_worker_imports.py: none may be).
2. servers: each server alone, the bare Starlette + onnxruntime app (``bench/bare_app.py``), an
   empty BentoML service (``bench/empty_service.py``: one worker that imports numpy and
   onnxruntime; the floor under any BentoML service) and the real service (``bentoml serve``,
   one worker, as shipped): started, one one-row ``POST /predict`` answered, the worker's resident
   memory read (:meth:`bench.serving.Server.memory`), stopped. Cold start is :mod:`bench.serving`'s:
   process start until the server is ready and (the service) its worker serves the model, polled
   every 0.1 s.

Printed: the median and range of each figure, and the ratios driftloop / bare and driftloop /
empty BentoML. The load-free part of ``python -m bench.serving``, which has no switch to run it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.serving import POLL_S, ROOT, BareServer, DriftloopServer, Server, prepare, process_tree

# Learning (scikit-learn, SciPy, PyTorch, LightGBM, the exporters), reporting (Evidently,
# matplotlib), frames (pandas, pyarrow) and the onnx package (a graph that names no external file
# is not parsed): each costs every worker memory and start-up, and serving uses none of them.
NOT_IN_A_WORKER = ("sklearn", "scipy", "torch", "lightgbm", "skl2onnx", "onnxmltools", "evidently", "matplotlib",
                   "pandas", "pyarrow", "onnx")

WORKER = """
import json, sys, time, warnings
warnings.simplefilter("ignore")  # third-party deprecations at import: not measured here
started = time.perf_counter()
from driftloop.service.app import Driftloop
imported = time.perf_counter()
from starlette.testclient import TestClient

built = time.perf_counter()
with TestClient(Driftloop.to_asgi()) as client:  # its lifespan runs Driftloop.__init__
    answer = client.post("/predict", json={"rows": [json.loads(sys.argv[1])]})
    answered = time.perf_counter()
    rss = [line for line in open("/proc/self/status") if line.startswith("VmRSS:")][0].split()[1]
print(json.dumps({"status": answer.status_code, "answer": answer.json(), "import_s": imported - started,
                  "build_and_answer_s": answered - built, "rss_mib": int(rss) / 1024, "modules": sorted(sys.modules)}))
"""


def worker_in_process(config: Path, row: dict[str, Any], cwd: Path, timeout: float = 120.0) -> dict[str, Any]:
    """A service worker built and asked once in a fresh interpreter (``config``: its settings file,
    as ``driftloop serve`` passes it): the answer's status and body, ``import_s``,
    ``build_and_answer_s``, ``rss_mib``, every module it imported (``modules``), and those of
    :data:`NOT_IN_A_WORKER` among them (``not_in_a_worker``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")} | {
        "DRIFTLOOP_CONFIG": str(config), "BENTOML_HOME": str(cwd / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "true"}
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(row)], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the worker failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-4000:]}")
    worker: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    worker["not_in_a_worker"] = [name for name in NOT_IN_A_WORKER
                                 if any(m == name or m.startswith(f"{name}.") for m in worker["modules"])]
    return worker


class EmptyBentoServer(Server):
    """``bentoml serve bench.empty_service:Empty``: one worker, ready when ``/readyz`` says so."""

    name = "empty-bentoml"

    def __init__(self, workdir: Path, host: str, port: int) -> None:
        self.url = f"http://{host}:{port}"
        self.argv = [str(Path(sys.executable).with_name("bentoml")), "serve", "bench.empty_service:Empty",
                     "--host", host, "--port", str(port)]
        self.env = dict(os.environ, BENTOML_HOME=str(workdir / "empty-bentoml-home"), BENTOML_DO_NOT_TRACK="true")
        self.log_path = workdir / "empty-bentoml.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> EmptyBentoServer:
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() - started < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the empty service exited with code {self.proc.returncode}; see {self.log_path}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        self.cold_start_s = time.monotonic() - started
                        return self
                time.sleep(POLL_S)
        self.stop()
        raise TimeoutError(f"the empty service was not ready within {timeout:.0f}s; see {self.log_path}")

    def processes(self) -> list[Any]:
        return process_tree(self.proc.pid) if self.proc else []

    def workers(self) -> list[Any]:
        out = []
        for p in self.processes():
            with contextlib.suppress(Exception):
                if "_bentoml_impl.worker" in " ".join(p.cmdline()):
                    out.append(p)
        return out

    def stop(self) -> None:
        from driftloop.launch import stop_process

        if self.proc is not None:
            stop_process(self.proc, 15)


def one_start(server: Server, body: dict[str, Any]) -> dict[str, float]:
    """Start ``server``, answer one request, measure, stop."""
    try:
        server.start()
        answer = httpx.post(f"{server.url}/predict", json=body, timeout=30.0)
        answer.raise_for_status()
        memory = server.memory()
        return {"cold_start_s": float(server.cold_start_s or 0.0), "worker_mib": memory.workers_mib,
                "total_mib": memory.total_mib}
    finally:
        server.stop()


def _spread(figures: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: {"median": statistics.median(r[key] for r in figures), "min": min(r[key] for r in figures),
                  "max": max(r[key] for r in figures)} for key in figures[0]}


def measure(repeat: int, workdir: Path) -> dict[str, Any]:
    from driftloop.launch import free_port, write_config

    prep = prepare(workdir)
    body = {"rows": [prep.rows[0]]}
    config = write_config(prep.settings, workdir / "inprocess.yaml")
    inprocess = []
    for _ in range(repeat):
        worker = worker_in_process(config, prep.rows[0], workdir)
        inprocess.append({key: worker[key] for key in ("import_s", "build_and_answer_s", "rss_mib")})
    host = prep.settings.serving.host
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "empty-bentoml": [], "driftloop": []}
    for _ in range(repeat):  # one at a time, so that no start competes with another
        bare = BareServer(prep.model_path, prep.sha256, prep.version, prep.schema, workdir, host, free_port())
        runs["bare"].append(one_start(bare, body))
        runs["empty-bentoml"].append(one_start(EmptyBentoServer(workdir, host, free_port()), body))
        runs["driftloop"].append(one_start(DriftloopServer(prep.settings, workdir), body))
    summary: dict[str, Any] = {"repeat": repeat, "load_average_end": list(os.getloadavg()),
                               "inprocess": _spread(inprocess), "not_in_a_worker": worker["not_in_a_worker"],
                               "runs": runs | {"inprocess": inprocess}}
    for name, figures in runs.items():
        summary[name] = _spread(figures)
    summary["ratio"] = {base: {key: summary["driftloop"][key]["median"] / summary[base][key]["median"]
                               for key in ("cold_start_s", "worker_mib")} for base in ("bare", "empty-bentoml")}
    return summary


def _cell(spread: dict[str, float], digits: int) -> str:
    return f"{spread['median']:.{digits}f} ({spread['min']:.{digits}f}-{spread['max']:.{digits}f})"


def format_summary(summary: dict[str, Any]) -> str:
    inproc = summary["inprocess"]
    lines = [f"in process (median (range) of {summary['repeat']}): import {_cell(inproc['import_s'], 2)} s, "
             f"build + first answer {_cell(inproc['build_and_answer_s'], 2)} s, "
             f"RSS {_cell(inproc['rss_mib'], 0)} MiB; imported of {', '.join(NOT_IN_A_WORKER)}: "
             f"{', '.join(summary['not_in_a_worker']) or 'none'}",
             f"{'server':<14} {'cold start s':>18} {'worker RSS MiB':>24} {'tree RSS MiB':>24}"]
    for name in ("bare", "empty-bentoml", "driftloop"):
        s = summary[name]
        lines.append(f"{name:<14} {_cell(s['cold_start_s'], 2):>18} {_cell(s['worker_mib'], 0):>24} "
                     f"{_cell(s['total_mib'], 0):>24}")
    for base, ratio in summary["ratio"].items():
        lines.append(f"driftloop / {base} (medians): cold start {ratio['cold_start_s']:.2f}x, worker RSS "
                     f"{ratio['worker_mib']:.2f}x")
    lines.append(f"load average at the end: {', '.join(f'{x:.1f}' for x in summary['load_average_end'])}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each kind (3)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="driftloop-footprint-")))
        summary = measure(max(1, args.repeat), workdir)
    print(format_summary(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
