"""The monitor and the retraining job in process: the loop's decisions without HTTP.

Predictions are made by the champion's real ONNX graph and written to a real SQLite store, as
the service would; labels arrive as feedback. Windows are small to keep the test quick.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from driftloop.models.registry import Registry
from driftloop.monitoring.monitor import Monitor
from driftloop.monitoring.store import PredictionStore, utcnow
from driftloop.service.serving import new_request_id
from driftloop.training import scenarios
from driftloop.training.retrain import retrain
from driftloop.vocabulary import Check

from tests.conftest import make_settings

WINDOW = 300


def serve(store: PredictionStore, registry: Registry, rows: pd.DataFrame, label: bool = True) -> None:
    """What the service does for ``rows``: predict with the champion, log; then send the labels."""
    model = registry.load(registry.champion().version)
    preds, proba = model.predict_frame(rows)
    ids = [new_request_id() for _ in range(len(rows))]
    features = rows[model.schema.names].to_dict(orient="records")
    store.insert_predictions([
        {"request_id": rid, "created_at": utcnow(), "model_version": model.version, "features": f,
         "prediction": p, "confidence": float(c)}
        for rid, f, p, c in zip(ids, features, preds.tolist(), proba.max(axis=1))])
    if label:
        store.insert_feedback(list(zip(ids, rows[scenarios.TARGET].astype(int).tolist())))


@pytest.fixture
def world(champion_home: Path, tmp_path: Path) -> dict[str, Any]:
    home = tmp_path / "bentoml"
    shutil.copytree(champion_home / "bentoml", home)
    settings = make_settings(tmp_path, registry={"home": str(home)},
                             monitoring={"window_rows": WINDOW, "min_labels": 100},
                             # no guard set: a pre-drift guard set rejects the adapted candidates (tests/unit/test_guard.py)
                             retraining={"min_rows": 300, "guard": {"rows": 0}})
    store = PredictionStore(settings.store.url).create()
    registry = Registry(settings.registry.home, "loans")
    frame = scenarios.generate(scenarios.loans_periods(window=WINDOW, stable=3, covariate=4, concept=4), seed=7)
    return {"settings": settings, "store": store, "registry": registry, "frame": frame}


def run_windows(world: dict[str, Any], monitor: Monitor) -> list[Check]:
    live = world["frame"][world["frame"]["period"] != "train"].reset_index(drop=True)
    checks = []
    for start in range(0, len(live), WINDOW):
        serve(world["store"], world["registry"], live.iloc[start:start + WINDOW])
        checks += monitor.run_once()
    return checks


def test_loop_detects_both_drifts_after_onset_and_promotes_better_models(world: dict[str, Any]) -> None:
    monitor = Monitor(world["settings"], world["store"], world["registry"])
    checks = run_windows(world, monitor)
    assert [c.window for c in checks] == list(range(11))
    flagged = [c.window for c in checks if c.decision != "none"]
    assert flagged and min(flagged) >= 3, f"flagged before the covariate shift began (window 3): {flagged}"

    promoted = [c for c in checks if c.outcome == "promoted"]
    assert len(promoted) == 2, [(c.window, c.decision, c.outcome, c.reason) for c in checks]
    # within 2 windows of the covariate onset (a candidate better on 150 held-out rows, not yet
    # significantly, is retrained on the next window's rows too)
    assert 3 <= promoted[0].window <= 5
    assert 7 <= promoted[1].window <= 8  # within 2 windows of the concept onset

    # The final champion beats v1 on fresh post-drift data (another seed), through ONNX.
    registry = world["registry"]
    fresh = scenarios.generate([scenarios.Period("concept", 2000, scenarios.SEGMENT, scenarios.RATE_RISE)], seed=99)
    def accuracy(version: str) -> float:
        preds, _ = registry.load(version).predict_frame(fresh)
        return float((preds == fresh[scenarios.TARGET].to_numpy()).mean())
    final = registry.champion().version
    assert final != "v1" and accuracy(final) > accuracy("v1") + 0.1

    kinds = [e["kind"] for e in world["store"].events()]
    assert kinds.count("retrain_promoted") == 2 and "retrain_started" in kinds
    assert monitor.flush(timeout=120)  # the reports are drawn after the checks, in the background
    assert all(Path(c.report_path).is_file() for c in checks if c.decision != "none")


def test_a_window_waits_for_its_labels(world: dict[str, Any]) -> None:
    monitor = Monitor(world["settings"], world["store"], world["registry"])
    live = world["frame"][world["frame"]["period"] == "stable"].head(WINDOW)
    serve(world["store"], world["registry"], live, label=False)
    assert monitor.run_once() == []  # no labels yet, and label_wait_s has not passed
    late = Monitor(world["settings"], world["store"], world["registry"], clock=lambda: 1e12)
    (check,) = late.run_once()  # long after: checked with what there is
    assert check.labelled == 0 and check.accuracy is None


def test_values_outside_training_are_counted_in_the_check_and_its_metrics(world: dict[str, Any]) -> None:
    """Issue 16: incomes 1.8x the training maximum and a region training never saw, served and
    logged (the service accepts both), are counted per feature in the check and in the
    counters, which the monitor creates at 0 before its first check."""
    registry = world["registry"]
    schema = registry.get(registry.champion().version).schema
    monitor = Monitor(world["settings"], world["store"], registry, clock=lambda: 1e12)  # no label wait
    metrics = monitor.metrics.registry
    for feature, sides in schema.training_sides.items():
        assert metrics.get_sample_value("driftloop_feature_checked_rows_total", {"feature": feature}) == 0
        for side in sides:
            assert metrics.get_sample_value("driftloop_feature_outside_training_total",
                                            {"feature": feature, "side": side}) == 0
    income, region = (next(f for f in schema.features if f.name == name) for name in ("income", "region"))
    rows = world["frame"][world["frame"]["period"] == "stable"].head(WINDOW).copy()
    rows.iloc[:9, rows.columns.get_loc("income")] = income.max * 1.8
    rows.iloc[9:12, rows.columns.get_loc("region")] = "atlantis"
    serve(world["store"], registry, rows, label=False)
    (check,) = monitor.run_once()
    counted = check.feature_scores["income"]["outside_training"]
    # the stable period's own rows may stray past the training range by chance: counted as they lie
    assert counted == {"rows": WINDOW, "below": int((rows["income"] < income.min).sum()),
                       "above": int((rows["income"] > income.max).sum())}
    assert counted["above"] >= 9
    assert check.feature_scores["region"]["outside_training"] == {"rows": WINDOW, "unseen": 3}
    assert set(check.feature_scores["age"]["outside_training"]) == {"rows", "below", "above"}
    assert check.unfamiliar_share >= 12 / WINDOW
    assert world["store"].last_check().feature_scores == check.feature_scores
    assert metrics.get_sample_value("driftloop_feature_outside_training_total",
                                    {"feature": "income", "side": "above"}) == counted["above"]
    assert metrics.get_sample_value("driftloop_feature_outside_training_total",
                                    {"feature": "region", "side": "unseen"}) == 3
    assert metrics.get_sample_value("driftloop_feature_checked_rows_total", {"feature": "income"}) == WINDOW


def test_a_crashing_retrain_leaves_the_champion_and_is_recorded(world: dict[str, Any]) -> None:
    def crash(*args: Any, **kwargs: Any) -> None:
        raise MemoryError("killed mid-training")

    monitor = Monitor(world["settings"], world["store"], world["registry"], retrainer=crash)
    checks = run_windows(world, monitor)
    assert world["registry"].champion().version == "v1"
    assert any(c.outcome == "failed" for c in checks)
    failed = world["store"].events("retrain_failed")
    assert failed and "killed mid-training" in failed[0]["detail"]["error"]


def test_a_restarted_monitor_resumes_after_the_last_check(world: dict[str, Any]) -> None:
    first = Monitor(world["settings"], world["store"], world["registry"], retrainer=retrain)
    live = world["frame"][world["frame"]["period"] != "train"].reset_index(drop=True)
    for start in range(0, 5 * WINDOW, WINDOW):
        serve(world["store"], world["registry"], live.iloc[start:start + WINDOW])
        first.run_once()
    before = world["store"].checks()
    second = Monitor(world["settings"], world["store"], world["registry"])
    assert second.run_once() == []  # nothing re-checked
    serve(world["store"], world["registry"], live.iloc[5 * WINDOW:6 * WINDOW])
    (check,) = second.run_once()
    assert check.window == before[-1].window + 1
    if before[-1].outcome == "promoted" or any(c.outcome == "promoted" for c in before[-2:]):
        assert check.decision in ("none", "cooldown")  # the cool-down survived the restart


def test_a_requested_retrain_runs_once_on_the_newest_windows(world: dict[str, Any]) -> None:
    monitor = Monitor(world["settings"], world["store"], world["registry"])
    store = world["store"]
    store.record_event("retrain_requested", {"reason": "before any data", "actor": "test"})
    assert monitor.handle_requests()[0]["outcome"] == "no data"
    live = world["frame"][world["frame"]["period"] == "covariate"].reset_index(drop=True)
    for start in range(0, 2 * WINDOW, WINDOW):
        serve(store, world["registry"], live.iloc[start:start + WINDOW])
    monitor.run_once()
    request = store.record_event("retrain_requested", {"reason": "new segment", "actor": "test"})
    (done,) = monitor.handle_requests()
    assert done["request"] == request and done["outcome"] in ("promoted", "rejected")
    # the newest `consecutive` windows (the tournament's window_and_original adds the initial data to them)
    assert done["training_data"]["rows"]["window"] + done["holdout_rows"] == 2 * WINDOW
    candidate = world["registry"].get(done["candidate"]).metadata
    assert candidate["trigger"] == "manual" and "new segment" in candidate["retrain_reason"]
    assert monitor.handle_requests() == []  # handled once


def test_retention_keeps_the_champion_and_its_lineage(world: dict[str, Any]) -> None:
    from driftloop.monitoring.scheduler import build_scheduler, run_retention
    from tests.conftest import make_settings as settings_for

    registry: Registry = world["registry"]
    v1 = registry.get("v1")
    for _ in range(4):  # v2..v5: candidates nobody promoted
        registry.register((v1.path / "model.onnx").read_bytes(), v1.schema, registry.reference("v1"),
                          dict(v1.metadata), trigger="manual", parent="v1")
    registry.promote("v3", actor="test", reason="lineage: v1 -> v3")
    root = Path(world["settings"].registry.home).parent
    settings = settings_for(root, registry={"home": str(registry.home), "keep_ancestors": 1, "keep_candidates": 1})
    monitor = Monitor(settings, world["store"], registry)
    assert run_retention(monitor) == ["v2", "v4"]  # kept: v3 (champion), v1 (its lineage), v5 (newest other)
    assert [v.version for v in registry.versions()] == ["v1", "v3", "v5"]
    assert world["store"].events("versions_deleted")[-1]["detail"]["versions"] == ["v2", "v4"]
    scheduler = build_scheduler(monitor, 60)
    assert {job.id for job in scheduler.get_jobs()} == {"check", "retention", "store_retention"}


def test_every_retrain_job_is_counted_by_trigger_and_outcome() -> None:
    """driftloop_retrain_jobs_total{trigger, outcome}: every source of retrains goes through one
    counted job; a run that raised is failed, one the retrain lease kept from starting is no run."""
    from types import SimpleNamespace

    from driftloop.monitoring.lease import LeaseBusy
    from driftloop.monitoring.metrics import MonitorMetrics
    from driftloop.monitoring.monitor import counted

    metrics = MonitorMetrics()
    outcomes = iter([SimpleNamespace(status="promoted"), SimpleNamespace(status="rejected"),
                     RuntimeError("out of memory"),
                     LeaseBusy("retrain", SimpleNamespace(owner="another process", expires_in_s=10.0))])

    def job(fresh: Any, *, trigger: str, reason: str) -> Any:
        result = next(outcomes)
        if isinstance(result, Exception):
            raise result
        return result

    run = counted(job, metrics)
    assert run(None, trigger="follow_up", reason="2x").status == "promoted"
    assert run(None, trigger="schedule", reason="sunday").status == "rejected"
    with pytest.raises(RuntimeError):
        run(None, trigger="drift", reason="flagged")
    with pytest.raises(LeaseBusy):
        run(None, trigger="drift", reason="flagged")

    def jobs(trigger: str, outcome: str) -> float:
        return metrics.registry.get_sample_value("driftloop_retrain_jobs_total",
                                                 {"trigger": trigger, "outcome": outcome})

    assert (jobs("follow_up", "promoted"), jobs("schedule", "rejected"), jobs("drift", "failed")) == (1, 1, 1)
    assert jobs("drift", "promoted") == 0 and jobs("manual", "waiting") == 0  # exported at 0 from the start
    assert jobs("initial", "promoted") is None
