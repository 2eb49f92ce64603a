"""Benchmark every model family: training time, ONNX size, latency (native against onnxruntime), parity.

One case per kind and task in :data:`models.families.FAMILIES` (discovered, never listed here).
Tabular kinds learn from the built-in ``loans`` scenario (regression: the same inputs with a
generated target, :func:`regression_frame`); the CNN from the ``digits`` images, GRU and LSTM
from the ``sensors`` sequences (:func:`array_frame`). Each case:

1. fits through :func:`models.families.fit_model` (wall time, all threads the library wants);
2. exports with the model's own ``to_onnx`` and opens the graph with
   :func:`models.onnx_model.session` (one onnxruntime thread);
3. times one row and a batch, native against ONNX, alternating the two so that a busy machine
   slows both alike. Both start from the same DataFrame: the native side calls ``predict`` plus
   whatever gives the graph's second output (``predict_proba`` for classifiers, ``scores`` for
   clustering and anomaly kinds); the ONNX side builds ``schema.feeds`` and calls
   :func:`models.onnx_model.run`. The native side is held to one thread too (threadpoolctl, and
   torch's own pool), so the ratio compares implementations, not core counts. Figures are medians
   after a warm-up;
4. compares the two outputs on the held-out rows as :func:`models.onnx_model.check_parity` does
   (same figures, same tolerances), without raising.

A case that fails at any step becomes an error row (with the figures it got before failing); the
others still run. Nothing here asserts anything about speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.models import onnx_model
from driftloop.models.errors import ConfigError
from driftloop.models.families import FAMILIES, fit_model
from driftloop.models.schema import FeatureSchema
from driftloop.training import scenarios
from driftloop.models.files import jsonable
from driftloop.training.train import library_versions

ROWS = 3000  # training rows
BATCH = 1024  # rows of the batch latency; also the held-out rows of the parity check
REPEATS = 50  # one-row latency; the batch gets a fifth of it (at least one)
WARMUP = 3  # untimed calls of each side before timing
QUICK_EPOCHS = 20  # neural kinds with quick=True
REGRESSION_TARGET = "limit"
LIBRARIES = ("onnxruntime", "scikit-learn", "torch", "skl2onnx", "onnx", "numpy")

Progress = Callable[[str], None]


@dataclass
class CaseResult:
    """One kind on one task: every figure, or ``None`` where it failed before getting there."""

    kind: str
    task: str
    rows: int
    batch_rows: int
    params: dict[str, Any]
    train_s: float | None = None
    export_s: float | None = None
    onnx_kib: float | None = None
    session_ms: float | None = None  # creating the onnxruntime session
    native_1_us: float | None = None  # median latency of one row
    onnx_1_us: float | None = None
    speedup_1: float | None = None  # native / onnx: above 1, the graph is faster
    native_batch_ms: float | None = None  # median latency of batch_rows rows
    onnx_batch_ms: float | None = None
    speedup_batch: float | None = None
    parity_rows: int | None = None
    max_abs_diff: float | None = None  # probabilities, scores (clustering, anomaly) or predictions
    label_agreement: float | None = None  # classification, clustering, anomaly
    parity_tolerance: float | None = None  # the largest max_abs_diff check_parity accepts here
    parity_ok: bool | None = None
    error: str | None = None
    failed_at: str | None = None  # fit, export, session, latency or parity
    samples: dict[str, list[float]] = field(default_factory=dict)  # every timed call, in seconds

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


@dataclass
class Benchmark:
    machine: dict[str, Any]
    settings: dict[str, Any]
    results: list[CaseResult]
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "settings": self.settings, "seconds": round(self.seconds, 3),
                "results": [r.to_dict() for r in self.results]}

    def write_json(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False, default=str) + "\n")
        return path

    def table(self) -> str:
        return format_table(self)


# -- what runs ----------------------------------------------------------------------------------

def cases(kinds: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Every (kind, task) of :data:`FAMILIES`, or of the named ``kinds`` (unknown ones refused)."""
    if kinds:
        unknown = [k for k in kinds if k not in FAMILIES]
        if unknown:
            raise ConfigError(f"--kinds: unknown kind(s) {unknown}; available: {sorted(FAMILIES)}")
    wanted = set(kinds) if kinds else set(FAMILIES)
    return [(kind, task) for kind, family in sorted(FAMILIES.items()) if kind in wanted for task in family.tasks]


def params_for(kind: str, quick: bool) -> dict[str, Any]:
    """The kind's default parameters, except fewer epochs for neural kinds when ``quick``."""
    return {"epochs": QUICK_EPOCHS} if quick and FAMILIES[kind].neural else {}


def loans_frame(rows: int, seed: int = 42) -> pd.DataFrame:
    """``rows`` rows of the loans scenario's ``train`` period (features, ``default``)."""
    frame = scenarios.generate([scenarios.Period("train", rows)], seed=seed)
    return frame[[*scenarios.FEATURES, scenarios.TARGET]]


def regression_frame(rows: int, seed: int = 42) -> pd.DataFrame:
    """The loans inputs with a regression target: a noisy credit limit (thousands)."""
    frame = loans_frame(rows, seed).drop(columns=[scenarios.TARGET])
    rng = np.random.default_rng(seed + 1)
    region = frame["region"].map({"north": 2.0, "south": 0.0, "east": -3.0, "west": 1.0}).to_numpy()
    employment = frame["employment"].map({"salaried": 3.0, "self_employed": 0.0, "unemployed": -6.0}).to_numpy()
    frame[REGRESSION_TARGET] = (0.35 * frame["income"].to_numpy() / 1000.0 * (1.0 - frame["debt_ratio"].to_numpy())
                                + 1.2 * frame["credit_lines"].to_numpy() + 0.1 * (frame["age"].to_numpy() - 40.0)
                                + region + employment + rng.normal(0.0, 2.0, len(frame)))
    return frame


def array_frame(inputs: str, task: str, rows: int, seed: int) -> tuple[pd.DataFrame, dict[str, str], str]:
    """Images (digits) or sequences (sensors) from the ``train`` period; regression on sequences
    predicts the machine's mean current draw."""
    scenario = scenarios.SCENARIOS["digits" if inputs == "image" else "sensors"]
    frame = scenario.frame(seed=seed, train_rows=rows)
    frame = frame[frame["period"] == "train"].reset_index(drop=True)
    target = scenario.target
    if task == "regression":
        name = next(iter(scenario.features))
        frame[REGRESSION_TARGET] = [float(np.mean(np.asarray(v)[:, -1])) * 10.0 for v in frame[name]]
        target = REGRESSION_TARGET
    return frame, dict(scenario.features), target


def task_data(task: str, rows: int, held_out: int, seed: int,
              inputs: str = "tabular") -> tuple[FeatureSchema, pd.DataFrame, pd.DataFrame]:
    """The schema, ``rows`` training rows and ``held_out`` further rows for ``task`` on
    ``inputs`` (tabular: the loans scenario; image: digits; sequence: sensors)."""
    features = dict(scenarios.FEATURES)
    target = {"classification": scenarios.TARGET, "regression": REGRESSION_TARGET}.get(task)
    if inputs != "tabular":
        frame, features, target = array_frame(inputs, task, rows + held_out, seed)
    else:
        frame = regression_frame(rows + held_out, seed) if task == "regression" else loans_frame(rows + held_out, seed)
    train, test = frame.iloc[:rows].reset_index(drop=True), frame.iloc[rows:].reset_index(drop=True)
    labels = tuple(sorted(train[target].unique().tolist())) if task == "classification" else ()
    schema = FeatureSchema.infer(train, features, task, target, labels)
    return schema, train, test


# -- the benchmark --------------------------------------------------------------------------------

def run_benchmark(rows: int = ROWS, kinds: Sequence[str] | None = None, repeats: int = REPEATS,
                  batch_repeats: int | None = None, batch: int = BATCH, quick: bool = False, seed: int = 42,
                  progress: Progress | None = None) -> Benchmark:
    """Benchmark every (kind, task) of :func:`cases`; a failing case is reported, never raised."""
    if rows < 10 or batch < 1 or repeats < 1 or (batch_repeats is not None and batch_repeats < 1):
        raise ConfigError("bench: rows must be at least 10; batch, repeats and batch repeats at least 1")
    todo = cases(kinds)
    batch_repeats = batch_repeats or max(1, repeats // 5)
    started = time.perf_counter()
    machine = machine_info()
    data: dict[tuple[str, str], tuple[FeatureSchema, pd.DataFrame, pd.DataFrame]] = {}
    results = []
    for kind, task in todo:
        key = (FAMILIES[kind].inputs, task)
        if key not in data:
            data[key] = task_data(task, rows, batch, seed, inputs=key[0])
        schema, train, test = data[key]
        result = run_case(kind, task, schema, train, test, params_for(kind, quick), repeats, batch_repeats, seed)
        results.append(result)
        if progress is not None:
            took = f"fit {result.train_s:.2f}s" if result.train_s is not None else "no fit"
            progress(f"{kind} ({task}): {took}; {'ok' if result.ok else 'error at ' + str(result.failed_at)}")
    machine["load_average_end"] = _load_average()
    settings = {"rows": rows, "batch_rows": batch, "repeats_1_row": repeats, "repeats_batch": batch_repeats,
                "warmup": WARMUP, "quick": quick, "seed": seed, "onnxruntime_threads": 1, "native_threads": 1,
                "kinds": [f"{k}:{t}" for k, t in todo]}
    return Benchmark(machine, settings, results, time.perf_counter() - started)


def run_case(kind: str, task: str, schema: FeatureSchema, train: pd.DataFrame, test: pd.DataFrame,
             params: dict[str, Any], repeats: int, batch_repeats: int, seed: int = 42) -> CaseResult:
    """One case, step by step; the first step that raises ends it as an error row."""
    result = CaseResult(kind, task, rows=len(train), batch_rows=len(test), params=dict(params))
    stage = "fit"
    try:
        y = train[schema.target] if schema.target else None
        t0 = time.perf_counter()
        model = fit_model(schema, kind, params, seed, train[schema.names], y)
        result.train_s = time.perf_counter() - t0

        stage = "export"
        t0 = time.perf_counter()
        onnx_bytes = model.to_onnx(schema)
        result.export_s = time.perf_counter() - t0
        result.onnx_kib = len(onnx_bytes) / 1024

        stage = "session"
        t0 = time.perf_counter()
        sess = onnx_model.session(onnx_bytes, threads=1)
        result.session_ms = (time.perf_counter() - t0) * 1e3

        stage = "latency"
        native, graph = _native_call(model, schema), _onnx_call(sess, schema)
        with single_thread():
            one, many = test.iloc[[0]], test
            n1, o1 = _time_pair(native, graph, one, repeats)
            nb, ob = _time_pair(native, graph, many, batch_repeats)
            stage = "parity"
            _parity(result, task, native(test), graph(test))
        result.samples = {"native_1": n1, "onnx_1": o1, "native_batch": nb, "onnx_batch": ob}
        result.native_1_us, result.onnx_1_us = statistics.median(n1) * 1e6, statistics.median(o1) * 1e6
        result.native_batch_ms, result.onnx_batch_ms = statistics.median(nb) * 1e3, statistics.median(ob) * 1e3
        result.speedup_1 = result.native_1_us / result.onnx_1_us
        result.speedup_batch = result.native_batch_ms / result.onnx_batch_ms
    except Exception as exc:  # any family, any library: report it and go on with the next case
        result.error = f"{type(exc).__name__}: {exc}".strip()
        result.failed_at = stage
    return result


Call = Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray | None]]


def _native_call(model: Any, schema: FeatureSchema) -> Call:
    """What produces the graph's outputs natively: predictions and the task's second output."""
    names = schema.names

    def call(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        x = frame[names]
        if schema.task == "classification":
            return np.asarray(model.predict(x)), np.asarray(model.predict_proba(x))
        if schema.task in ("clustering", "anomaly"):
            return np.asarray(model.predict(x)), np.asarray(model.scores(x))
        return np.asarray(model.predict(x)), None

    return call


def _onnx_call(sess: Any, schema: FeatureSchema) -> Call:
    def call(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        return onnx_model.run(sess, schema.feeds(frame))

    return call


def _time_pair(native: Call, graph: Call, frame: pd.DataFrame, repeats: int) -> tuple[list[float], list[float]]:
    """``repeats`` timings of each, alternated, after ``WARMUP`` untimed calls of each."""
    for _ in range(WARMUP):
        native(frame)
        graph(frame)
    native_s, onnx_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        native(frame)
        t1 = time.perf_counter()
        graph(frame)
        t2 = time.perf_counter()
        native_s.append(t1 - t0)
        onnx_s.append(t2 - t1)
    return native_s, onnx_s


def _parity(result: CaseResult, task: str, native: tuple[np.ndarray, np.ndarray | None],
            graph: tuple[np.ndarray, np.ndarray | None]) -> None:
    """check_parity's figures and tolerances, recorded rather than raised."""
    (native_pred, native_second), (onnx_pred, onnx_second) = native, graph
    native_pred, onnx_pred = native_pred.reshape(-1), onnx_pred.reshape(-1)
    result.parity_rows = len(native_pred)
    if task == "regression":
        result.max_abs_diff = float(np.max(np.abs(native_pred.astype(np.float64) - onnx_pred)))
        result.parity_tolerance = onnx_model.REGRESSION_RTOL * (float(np.max(np.abs(native_pred))) or 1.0)
        result.parity_ok = result.max_abs_diff <= result.parity_tolerance
        return
    if native_second is None or onnx_second is None:
        raise ValueError(f"{task}: the model or the graph has no second output to compare")
    result.label_agreement = float(np.mean(native_pred == onnx_pred))
    ns = np.asarray(native_second, dtype=np.float64)
    os_ = np.asarray(onnx_second, dtype=np.float64).reshape(ns.shape)
    result.max_abs_diff = float(np.max(np.abs(ns - os_)))
    if task == "classification":
        result.parity_tolerance = onnx_model.PROBA_TOLERANCE
    else:
        result.parity_tolerance = onnx_model.REGRESSION_RTOL * max(float(np.max(np.abs(ns))), 1.0)
    result.parity_ok = (result.max_abs_diff <= result.parity_tolerance
                        and result.label_agreement >= onnx_model.LABEL_AGREEMENT)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Native libraries on one thread (BLAS, OpenMP and, if loaded, torch), restored afterwards."""
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=1):
        if torch is not None:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch is not None and before is not None:
                torch.set_num_threads(before)


# -- the machine and the report ---------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    versions = library_versions(LIBRARIES)
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "system": f"{platform.system()} {platform.release()}",
            "processor": platform.processor() or None, "versions": versions,
            "load_average_start": _load_average()}


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def header(bench: Benchmark) -> list[str]:
    m, s, v = bench.machine, bench.settings, bench.machine["versions"]
    load = m.get("load_average_start")
    lines = [f"machine: {m['cpus']} CPUs ({m['machine']}, {m['system']}), Python {v['python']}; "
             f"onnxruntime {v['onnxruntime']}, scikit-learn {v['scikit-learn']}, torch {v['torch']}"
             + (f"; load average {load[0]:.2f} at start" if load else "")]
    lines.append(f"data: {s['rows']} training rows (loans, digits images, sensor sequences; regression: generated "
                 f"target), {s['batch_rows']} "
                 f"held-out rows; latency: median of {s['repeats_1_row']} (1 row) / {s['repeats_batch']} "
                 f"({s['batch_rows']} rows) calls after {s['warmup']} warm-up calls; one thread each"
                 + ("; neural kinds quick" if s["quick"] else ""))
    return lines


COLUMNS = ("kind", "task", "train s", "KiB", "1-row native us", "1-row onnx us", "x", "N-row native ms",
           "N-row onnx ms", "x", "max diff", "agree", "note")


def format_table(bench: Benchmark) -> str:
    """The header lines, then one aligned row per case (x: native / onnx, above 1 the graph is faster)."""
    columns = [c.replace("N-row", f"{bench.settings['batch_rows']}-row") for c in COLUMNS]
    rows = [columns]
    for r in bench.results:
        note = ""
        if r.error:
            note = f"error ({r.failed_at}): {_shorten(r.error)}"
        elif not r.parity_ok:
            note = f"parity beyond tolerance {r.parity_tolerance:.1e}"
        rows.append([r.kind, r.task, _num(r.train_s, ".2f"), _num(r.onnx_kib, ".1f"),
                     _num(r.native_1_us, ".0f"), _num(r.onnx_1_us, ".0f"), _num(r.speedup_1, ".1f", "x"),
                     _num(r.native_batch_ms, ".2f"), _num(r.onnx_batch_ms, ".2f"), _num(r.speedup_batch, ".1f", "x"),
                     _num(r.max_abs_diff, ".1e"), _num(r.label_agreement, ".4f"), note])
    text_columns = {0, 1, len(columns) - 1}
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = header(bench)
    for row in rows:
        cells = [c.ljust(w) if i in text_columns else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    failed = sum(not r.ok for r in bench.results)
    lines.append(f"{len(bench.results)} cases in {bench.seconds:.1f}s, {failed} failed; x = native / onnx "
                 f"(above 1: onnxruntime is faster)")
    return "\n".join(lines)


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _shorten(text: str, limit: int = 80) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 3] + "..."
