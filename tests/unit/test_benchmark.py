"""``driftloop bench``: every family discovered, every figure filled in, a failing kind isolated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.models.errors import ConfigError
from driftloop.models.families import FAMILIES, SklearnModel
from driftloop.training import benchmark
from driftloop.training.benchmark import Benchmark, cases, run_benchmark, run_case, task_data

CHEAP = ["logistic_regression", "kmeans", "decision_tree"]
FIGURES = ("train_s", "export_s", "onnx_kib", "session_ms", "native_1_us", "onnx_1_us", "speedup_1",
           "native_batch_ms", "onnx_batch_ms", "speedup_batch", "parity_rows", "max_abs_diff", "parity_tolerance")


@pytest.fixture(scope="module")
def bench() -> Benchmark:
    return run_benchmark(rows=200, kinds=CHEAP, repeats=3, batch=32)


def test_cases_are_every_kind_and_task_of_the_families() -> None:
    assert cases() == [(k, t) for k, f in sorted(FAMILIES.items()) for t in f.tasks]
    assert cases(["decision_tree"]) == [("decision_tree", t) for t in FAMILIES["decision_tree"].tasks]
    with pytest.raises(ConfigError, match=r"unknown kind\(s\) \['xgb'\]"):
        cases(["kmeans", "xgb"])


def test_every_case_has_every_figure(bench: Benchmark) -> None:
    assert [(r.kind, r.task) for r in bench.results] == cases(CHEAP)
    for r in bench.results:
        assert r.ok, r.error
        assert all(getattr(r, name) is not None for name in FIGURES), r
        assert r.train_s > 0 and r.onnx_kib > 0
        assert min(r.native_1_us, r.onnx_1_us, r.native_batch_ms, r.onnx_batch_ms) > 0
        assert r.speedup_1 == pytest.approx(r.native_1_us / r.onnx_1_us)
        assert [len(r.samples[k]) for k in ("native_1", "onnx_1", "native_batch", "onnx_batch")] == [3, 3, 1, 1]
        assert r.rows == 200 and r.batch_rows == r.parity_rows == 32
        assert r.parity_ok and r.max_abs_diff <= r.parity_tolerance
        if r.task == "regression":
            assert r.label_agreement is None and r.max_abs_diff < 1e-3
        else:
            assert r.label_agreement >= 0.999 and r.max_abs_diff < 1e-4
    assert bench.settings["repeats_1_row"] == 3 and bench.settings["repeats_batch"] == 1


def test_table_names_the_machine_and_every_case(bench: Benchmark) -> None:
    lines = bench.table().splitlines()
    assert lines[0].startswith(f"machine: {bench.machine['cpus']} CPUs")
    assert "onnxruntime" in lines[0] and "scikit-learn" in lines[0] and "torch" in lines[0]
    columns = lines[2]
    assert "1-row native us" in columns and "32-row onnx ms" in columns and "max diff" in columns
    body = lines[3:3 + len(bench.results)]
    for r, line in zip(bench.results, body):
        assert line.split()[:2] == [r.kind, r.task]
    assert "0 failed" in lines[-1]


def test_json_holds_every_figure(bench: Benchmark, tmp_path: Path) -> None:
    data = json.loads(bench.write_json(tmp_path / "out" / "bench.json").read_text())
    assert data["machine"]["versions"]["onnxruntime"] and data["settings"]["rows"] == 200
    assert [(r["kind"], r["task"]) for r in data["results"]] == cases(CHEAP)
    assert all(r[name] is not None for r in data["results"] for name in FIGURES)


def test_a_failing_kind_is_an_error_row_and_the_others_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    export = SklearnModel.to_onnx

    def broken(self: SklearnModel, schema):  # noqa: ANN001, ANN202
        if "DecisionTree" in type(self.pipeline.steps[-1][1]).__name__:
            raise RuntimeError("no converter for this tree today")
        return export(self, schema)

    monkeypatch.setattr(SklearnModel, "to_onnx", broken)
    result = run_benchmark(rows=150, kinds=["decision_tree", "logistic_regression"], repeats=2, batch=16)
    by_kind = {(r.kind, r.task): r for r in result.results}
    assert len(by_kind) == len(FAMILIES["decision_tree"].tasks) + 1
    for task in FAMILIES["decision_tree"].tasks:
        r = by_kind["decision_tree", task]
        assert not r.ok and r.failed_at == "export" and "no converter for this tree today" in r.error
        assert r.train_s is not None and r.onnx_kib is None and r.native_1_us is None
    good = by_kind["logistic_regression", "classification"]
    assert good.ok and good.parity_ok and good.speedup_batch is not None
    table = result.table()
    assert table.count("error (export): RuntimeError: no converter") == len(FAMILIES["decision_tree"].tasks)
    assert "failed" in table.splitlines()[-1]


def test_a_fit_error_is_reported_at_the_fit_step() -> None:
    schema, train, test = task_data("clustering", 50, 8, seed=1)
    r = run_case("kmeans", "clustering", schema, train, test, {"no_such_param": 1}, repeats=1, batch_repeats=1)
    assert not r.ok and r.failed_at == "fit" and "ConfigError" in r.error and r.train_s is None


def test_regression_data_is_the_loans_inputs_with_a_noisy_target() -> None:
    schema, train, test = task_data("regression", 300, 20, seed=3)
    assert schema.target == benchmark.REGRESSION_TARGET and schema.names == list(benchmark.scenarios.FEATURES)
    assert len(train) == 300 and len(test) == 20
    assert train[schema.target].corr(train["income"]) > 0.5  # a function of the features, not noise


def test_quick_shortens_only_neural_kinds() -> None:
    for kind, family in FAMILIES.items():
        assert benchmark.params_for(kind, quick=False) == {}
        assert benchmark.params_for(kind, quick=True) == ({"epochs": benchmark.QUICK_EPOCHS} if family.neural else {})


def test_cli_bench_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--rows", "100", "--kinds", "kmeans", "--repeats", "2", "--batch", "16",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "machine:" in result.output and "kmeans" in result.output and "clustering" in result.output
    data = json.loads(out.read_text())
    assert [r["kind"] for r in data["results"]] == ["kmeans"] and data["results"][0]["error"] is None

    refused = runner.invoke(app, ["bench", "--kinds", "kmeans,xgb"])
    assert refused.exit_code == 2 and "unknown kind" in refused.output

    assert runner.invoke(app, ["bench", "--help"]).exit_code == 0
