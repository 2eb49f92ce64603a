"""Contract tests of ``driftloop/adapters/``: one per private behaviour the project relies on, run
against the versions pinned in pyproject.toml. A library upgrade that moves one of these breaks
the named test here, not the loop."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from tests.waiting import wait_until


# -- scikit-learn ---------------------------------------------------------------------------------
def test_sklearn_invalid_parameter_error() -> None:
    from sklearn.linear_model import LogisticRegression

    from driftloop.adapters.sklearn import InvalidParameterError

    assert issubclass(InvalidParameterError, ValueError)
    x, y = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 1, 0, 1])
    with pytest.raises(InvalidParameterError, match="'C' parameter"):
        LogisticRegression(C=-1.0).fit(x, y)


# -- BentoML --------------------------------------------------------------------------------------
def test_bentoml_model_store_at_a_path(tmp_path: Path) -> None:
    from driftloop.adapters import bentoml as store_api

    store = store_api.model_store(tmp_path / "models")
    with pytest.raises(Exception):  # no models of that name yet
        names = store_api.list_models(store, "proj")
        assert not names
    for version in ("v1", "v2"):
        with store_api.create_model(store, f"proj:{version}", metadata={"driftloop": '{"a": 1}'},
                                    labels={"trigger": "initial"}, module="driftloop") as model:
            Path(model.path_of("model.onnx")).write_bytes(b"graph")
    assert (tmp_path / "models" / "proj" / "v1").is_dir()  # rooted at our path, not BENTOML_HOME
    assert sorted(m.tag.version for m in store_api.list_models(store, "proj")) == ["v1", "v2"]
    got = store_api.get_model(store, "proj:v2")
    assert got.info.metadata["driftloop"] == '{"a": 1}' and got.info.labels == {"trigger": "initial"}
    assert (Path(got.path) / "model.onnx").read_bytes() == b"graph"
    store_api.delete_model(store, "proj:v1")
    assert [m.tag.version for m in store_api.list_models(store, "proj")] == ["v2"]
    with pytest.raises(Exception):
        store_api.get_model(store, "proj:v1")


# -- APScheduler ----------------------------------------------------------------------------------
def _resolve_all(calls: list[str]) -> Any:
    def resolve(func_ref: str, args: list[Any]) -> Any:
        if func_ref != "tests.unit.test_adapters:_job":
            return None
        return lambda *a: calls.append(a[0])
    return resolve


def _job(name: str) -> None:  # what the jobs name by reference
    raise AssertionError("bound by the job store, never called")


def test_apscheduler_job_rebuilt_like_setstate(tmp_path: Path) -> None:
    """A job is rebuilt from JSON with every attribute ``Job.__setstate__`` sets, and compares
    equal, field by field, to the one the scheduler made."""
    from apscheduler.job import Job

    from driftloop.adapters.apscheduler import JOB_FIELDS, JsonJobStore, StateKeepingScheduler

    assert set(Job.__slots__) - {"__weakref__"} == set(JOB_FIELDS) | {"_scheduler", "_jobstore_alias"}
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    store = JsonJobStore(engine, _resolve_all([]))
    scheduler = StateKeepingScheduler(lambda stored, fresh, same: stored, timezone=timezone.utc,
                                      jobstores={"default": store})
    scheduler.start(paused=True)
    try:
        made = scheduler.add_job("tests.unit.test_adapters:_job", "interval", seconds=90, args=["a"], id="a",
                                 name="job a", coalesce=True, max_instances=1, misfire_grace_time=None)
        back = store.lookup_job("a")
        for name in JOB_FIELDS:
            if name not in ("func", "trigger"):  # a trigger has no __eq__: its state is compared
                assert getattr(back, name) == getattr(made, name), name
        assert back.trigger.__getstate__() == made.trigger.__getstate__()
        assert back._scheduler is scheduler and back._jobstore_alias == "default"
        back.pause()  # a rebuilt job is wired to its scheduler: Job.modify goes through the store
        assert store.lookup_job("a").next_run_time is None
    finally:
        scheduler.shutdown()
        engine.dispose()


def test_apscheduler_store_hooks_called_as_expected(tmp_path: Path) -> None:
    """``add_job(replace_existing=True)`` goes through ``_real_add_job`` (our keep hook sees the
    stored job), and a running scheduler reads due jobs, writes the next run and asks for the next
    wakeup through the job store's public methods."""
    from driftloop.adapters.apscheduler import JsonJobStore, StateKeepingScheduler

    calls: list[str] = []
    ran: list[str] = []

    class Recording(JsonJobStore):
        def __getattribute__(self, name: str) -> Any:
            if name in ("lookup_job", "get_due_jobs", "update_job", "add_job", "get_next_run_time"):
                calls.append(name)
            return super().__getattribute__(name)

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    kept: list[Any] = []

    def keep(stored: datetime | None, fresh: datetime, same: bool) -> datetime | None:
        kept.append((stored, fresh, same))
        return stored

    def make() -> Any:
        return StateKeepingScheduler(keep, timezone=timezone.utc,
                                     jobstores={"default": Recording(engine, _resolve_all(ran))})

    first = make()
    first.start(paused=True)
    first.add_job("tests.unit.test_adapters:_job", "interval", seconds=0.1, args=["x"], id="x")
    first.pause_job("x")
    first.shutdown()
    assert kept == []  # nothing stored yet: no keep decision
    second = make()
    second.add_job("tests.unit.test_adapters:_job", "interval", seconds=0.1, args=["x"], id="x",
                   next_run_time=datetime.now(timezone.utc), replace_existing=True)
    second.start(paused=True)  # pending jobs are added at start
    assert [(stored, same) for stored, _, same in kept] == [(None, True)]  # it saw the stored (paused) job
    second.resume_job("x")
    calls.clear()
    second.resume()
    try:
        wait_until(lambda: len(ran) >= 2, "the resumed job running twice", 10)
    finally:
        second.shutdown(wait=True)
        engine.dispose()
    assert ran[:2] == ["x", "x"]
    assert {"get_due_jobs", "update_job", "get_next_run_time"} <= set(calls)


def test_apscheduler_cron_trigger_round_trip(tmp_path: Path) -> None:
    """A crontab-like cron trigger is stored as its expression and time zone (plain JSON) and read
    back firing at the same times; the keep hook is told when a stored job's schedule changed;
    what the JSON cannot say is refused when written, not lost."""
    import json

    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    from driftloop.adapters.apscheduler import (
        JsonJobStore,
        StateKeepingScheduler,
        crontab,
        describe_trigger,
        same_schedule,
    )

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    kept: list[bool] = []

    def keep(stored: datetime | None, fresh: datetime, same: bool) -> datetime | None:
        kept.append(same)
        return stored if same else fresh

    store = JsonJobStore(engine, _resolve_all([]))
    scheduler = StateKeepingScheduler(keep, timezone=timezone.utc, jobstores={"default": store})
    scheduler.start(paused=True)
    try:
        for expression in ("0 3 * * mon-fri", "*/15 1,13 * jan-jun sun", "30 4 last * *"):
            made = scheduler.add_job("tests.unit.test_adapters:_job", crontab(expression), args=["c"], id="c",
                                     replace_existing=True)
            with engine.begin() as conn:
                raw = conn.execute(sa.text("SELECT job_state FROM apscheduler_jobs WHERE id = 'c'")).scalar_one()
            assert json.loads(raw)["trigger"] == {"type": "cron", "expression": expression, "timezone": "UTC",
                                                  "start_date": None, "end_date": None, "jitter": None}
            back = store.lookup_job("c")
            assert isinstance(back.trigger, CronTrigger)
            assert back.trigger.__getstate__() == made.trigger.__getstate__()
            assert back.next_run_time == made.next_run_time
            assert same_schedule(back.trigger, made.trigger)
            assert describe_trigger(back.trigger) == f"cron '{expression}' UTC"
            now = datetime(2026, 2, 27, 12, 34, tzinfo=timezone.utc)  # a Friday
            for _ in range(5):  # the same firing times, one after another
                nxt = back.trigger.get_next_fire_time(None, now)
                assert nxt == made.trigger.get_next_fire_time(None, now)
                now = nxt + timedelta(seconds=1)
        assert kept == [False, False]  # each new expression replaced a different schedule
        assert back.trigger.get_next_fire_time(None, datetime(2026, 2, 1, tzinfo=timezone.utc)) == \
            datetime(2026, 2, 28, 4, 30, tzinfo=timezone.utc)  # the last day of February
        hourly = IntervalTrigger(hours=1, timezone=timezone.utc)
        assert same_schedule(hourly, IntervalTrigger(hours=1, timezone=timezone.utc))  # defined at another moment
        assert not same_schedule(hourly, IntervalTrigger(hours=2, timezone=timezone.utc))
        assert not same_schedule(hourly, crontab("0 * * * *"))
        for trigger in (CronTrigger(second="*/5", timezone="UTC"), CronTrigger(year=2030, timezone="UTC")):
            with pytest.raises(ValueError, match="crontab-like"):  # seconds or a year: not a crontab line
                scheduler.add_job("tests.unit.test_adapters:_job", trigger, args=["d"], id="d")
        assert store.lookup_job("d") is None
    finally:
        scheduler.shutdown()
        engine.dispose()
    assert crontab("0 3 * * sun").get_next_fire_time(None, datetime(2026, 3, 2, tzinfo=timezone.utc)) == \
        datetime(2026, 3, 8, 3, tzinfo=timezone.utc)  # a Sunday, as crontab means it
    with pytest.raises(ValueError, match="weekday '0'.*by name"):  # APScheduler 3 would read 0 as Monday
        crontab("0 3 * * 0")
    with pytest.raises(ValueError, match="five fields"):
        crontab("0 3 * *")


# -- Evidently ------------------------------------------------------------------------------------
def test_evidently_stattest_registry_and_options() -> None:
    from driftloop.adapters import evidently as ev

    ks = ev.registered_stattest("ks", "num")
    assert ks.name == "ks" and ks.display_name == "K-S p_value"
    assert ev.stattest_display_name("ks") == "K-S p_value" and ev.stattest_display_name("nope") is None
    with pytest.raises(ValueError, match="nope"):
        ev.registered_stattest("nope", "num")
    assert ev.column_type("num").value == "num" and ev.column_type("cat").value == "cat"
    options = ev.drift_options(num_features_stattest="psi", per_feature_stattest={"b": "chisquare"},
                               cat_features_threshold=0.2)
    assert options.get_feature_stattest_func("a", "num") == "psi"
    assert options.get_feature_stattest_func("b", "cat") == "chisquare"
    assert options.get_feature_stattest_func("c", "cat") is None  # Evidently's default, chosen later
    assert options.get_threshold("c", "cat") == 0.2 and options.get_threshold("a", "num") is None
    st = ev.default_stattests()
    assert [t.name for t in (st.ks, st.wasserstein, st.jensenshannon, st.chi, st.z)] == \
        ["ks", "wasserstein", "jensenshannon", "chisquare", "z"]
    rng = np.random.default_rng(0)
    ref, cur = pd.Series(rng.normal(size=300)), pd.Series(rng.normal(1.0, size=200))
    result = st.ks(ref, cur, ev.column_type("num"), None)
    assert result.drifted and 0 <= result.drift_score < 0.05 and result.actual_threshold == 0.05


def test_evidently_embedding_methods() -> None:
    from driftloop.adapters import evidently as ev

    methods = ev.embedding_drift_methods()
    rng = np.random.default_rng(0)
    columns = [f"e.e{i}" for i in range(4)]
    ref = pd.DataFrame(rng.normal(size=(200, 4)), columns=columns)
    cur = pd.DataFrame(rng.normal(2.0, size=(200, 4)), columns=columns)
    for method in (methods.model(bootstrap=False), methods.ratio(), methods.distance(), methods.mmd()):
        score, drifted, kind = method(cur.copy(), ref.copy())  # the model method adds a column
        assert drifted and isinstance(float(score), float) and isinstance(kind, str)
    assert methods.model(bootstrap=True).bootstrap and methods.model(threshold=0.6).threshold == 0.6


def test_evidently_local_workspace(tmp_path: Path) -> None:
    """A ``Workspace`` built without its ``__init__`` reads and writes projects and runs through
    ``LocalState``; ``add_run`` goes through our ``_add_run`` (a whole file, ``new_id``, NumpyEncoder)."""
    from driftloop.adapters import evidently as ev

    ev.no_telemetry()
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    cls = ev.local_workspace_class()
    ws = cls(str(tmp_path / "ws"))
    project = ws.create_project("p v1")
    frame = pd.DataFrame({"a": np.arange(50, dtype=float), "b": np.arange(50) % 3})
    definition = DataDefinition(numerical_columns=["a", "b"])
    snapshot = Report([DataDriftPreset()]).run(Dataset.from_pandas(frame, data_definition=definition),
                                                Dataset.from_pandas(frame, data_definition=definition))
    run = ws.add_run(project.id, snapshot, name="w1")
    path = Path(ws._get_snapshot_url(project.id, run.id))
    assert path.is_file() and not list(path.parent.glob(".*.partial"))
    again = cls(str(tmp_path / "ws"))  # a fresh one sees what the first wrote
    assert [str(p) for p in again.state.list_projects()] == [str(project.id)]
    assert [str(r) for r in again.list_runs(project.id)] == [str(run.id)]


# -- onnx ----------------------------------------------------------------------------------------
def test_onnx_all_tensors_includes_external_data(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from driftloop.adapters.onnx import all_tensors

    def const(name: str, value: float, size: int = 1) -> TensorProto:
        return numpy_helper.from_array(np.full(size, value, dtype=np.float32), name)

    branch = helper.make_graph([helper.make_node("Identity", ["w_then"], ["out"])], "then", [],
                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
                               [const("w_then", 2.0)])
    other = helper.make_graph([helper.make_node("Identity", ["w_else"], ["out"])], "else", [],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
                              [const("w_else", 3.0)])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w_big"], ["s"]),
         helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256]),
              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [const("w_big", 1.0, 256)])
    model = helper.make_model(graph)
    assert {t.name for t in all_tensors(model)} == {"w_big", "w_then", "w_else"}  # subgraphs included
    onnx.save_model(model, tmp_path / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    stored = onnx.load_model(tmp_path / "model.onnx", load_external_data=False)
    tensors = {t.name: t for t in all_tensors(stored)}
    assert set(tensors) == {"w_big", "w_then", "w_else"}
    for tensor in tensors.values():  # external ones yielded as such, their data not read
        assert tensor.data_location == TensorProto.EXTERNAL and not tensor.raw_data, tensor.name
        assert {e.key: e.value for e in tensor.external_data}["location"] == "weights.bin"


def test_apscheduler_processes_no_jobs_once_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """BaseScheduler._process_jobs runs once more after shutdown in APScheduler 3 (the thread wakes,
    processes, then checks the state) and submitted to a stopped executor, logging an error with
    a traceback on every clean stop (the demo printed it): skipped once stopped."""
    from datetime import timezone

    from apscheduler.schedulers.background import BackgroundScheduler

    from driftloop.adapters.apscheduler import StateKeepingScheduler

    calls: list[str] = []
    real = BackgroundScheduler._process_jobs
    monkeypatch.setattr(BackgroundScheduler, "_process_jobs", lambda self: calls.append(self.state) or real(self))
    scheduler = StateKeepingScheduler(lambda stored, fresh, same: fresh, timezone=timezone.utc)
    scheduler.start()
    scheduler._process_jobs()
    assert calls  # running: APScheduler's own processing
    scheduler.shutdown(wait=True)
    calls.clear()
    assert scheduler._process_jobs() is None and calls == []
