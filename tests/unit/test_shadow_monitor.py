"""Shadow mode, the monitor's side: the candidate scored beside the champion is promoted or
rejected on the labels of the live rows it scored (``retraining.shadow``), in process on a real
store. The service's side (scoring in the log writer) is tests/servers/test_shadow.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from driftloop.models.registry import Registry
from driftloop.monitoring.monitor import Monitor
from driftloop.monitoring.store import PredictionStore
from driftloop.training import scenarios
from driftloop.training.train import train_version

from tests.conftest import make_settings
from tests.unit.test_monitor import serve

WINDOW = 300


@pytest.fixture
def shadow_world(champion_home: Path, tmp_path: Path) -> dict[str, Any]:
    home = tmp_path / "bentoml"
    shutil.copytree(champion_home / "bentoml", home)
    settings = make_settings(tmp_path, registry={"home": str(home)},
                             monitoring={"window_rows": WINDOW, "min_labels": 100, "dry_run": True},
                             retraining={"shadow": {"enabled": True, "min_labels": 400, "max_windows": 3}})
    frame = scenarios.generate(scenarios.loans_periods(window=WINDOW, stable=0, covariate=8, concept=0), seed=3)
    return {"settings": settings, "store": PredictionStore(settings.store.url).create(),
            "registry": Registry(settings.registry.home, "loans"), "frame": frame}


def candidate(world: dict[str, Any], rows: pd.DataFrame, flip: bool = False) -> str:
    """Register a version trained on ``rows`` (labels flipped: a bad one) and put it in shadow."""
    if flip:
        rows = rows.assign(**{scenarios.TARGET: 1 - rows[scenarios.TARGET]})
    version = train_version(world["settings"], rows.reset_index(drop=True), world["registry"], trigger="manual").version
    world["registry"].set_shadow(version.version, actor="test", reason="under test")
    return version.version


def serve_with_shadow(world: dict[str, Any], rows: pd.DataFrame, label: bool = True) -> None:
    """What a worker does with a shadow: the champion answers and is logged, then the shadow's
    graph scores the same logged inputs (tests/servers/test_shadow.py checks the worker does exactly this)."""
    store, registry = world["store"], world["registry"]
    before = store.count_predictions()
    serve(store, registry, rows, label=label)
    logged = store.window(before, len(rows))
    shadow = registry.load(registry.shadow().version)
    preds, proba = shadow.predict_frame(logged[shadow.schema.names])
    store.insert_shadow_predictions([
        {"request_id": rid, "model_version": shadow.version, "prediction": p, "confidence": float(c)}
        for rid, p, c in zip(logged["request_id"], preds.tolist(), proba.max(axis=1))])


def live(world: dict[str, Any]) -> pd.DataFrame:
    return world["frame"][world["frame"]["period"] == "covariate"].reset_index(drop=True)


def test_a_better_shadow_is_promoted_once_enough_of_its_rows_are_labelled(shadow_world: dict[str, Any]) -> None:
    rows = live(shadow_world)
    better = candidate(shadow_world, rows.iloc[:900])  # learnt the new segment
    monitor = Monitor(shadow_world["settings"], shadow_world["store"], shadow_world["registry"])
    serve_with_shadow(shadow_world, rows.iloc[900:1200])
    assert monitor.judge_shadow() is None  # 300 labelled rows of the 400 needed
    assert shadow_world["registry"].champion().version == "v1"
    serve_with_shadow(shadow_world, rows.iloc[1200:1500])
    verdict = monitor.judge_shadow()
    assert verdict is not None and verdict["verdict"] == "promoted", verdict
    assert verdict["labelled"] == 600 and verdict["shadow_score"] > verdict["champion_score"] + 0.01
    registry = shadow_world["registry"]
    assert registry.champion().version == better and registry.shadow() is None
    (event,) = shadow_world["store"].events("shadow_promoted")
    assert event["model_version"] == better and "labelled live rows" in event["detail"]["reason"]


def test_a_worse_shadow_is_rejected_and_the_champion_stays(shadow_world: dict[str, Any]) -> None:
    rows = live(shadow_world)
    worse = candidate(shadow_world, rows.iloc[:900], flip=True)
    monitor = Monitor(shadow_world["settings"], shadow_world["store"], shadow_world["registry"])
    serve_with_shadow(shadow_world, rows.iloc[900:1500])
    verdict = monitor.judge_shadow()
    assert verdict is not None and verdict["verdict"] == "rejected"
    assert verdict["shadow_score"] < verdict["champion_score"]
    registry = shadow_world["registry"]
    assert registry.champion().version == "v1" and registry.shadow() is None
    assert [h["action"] for h in registry.history() if h["version"] == worse][-1] == "shadow_clear"


def test_a_shadow_without_labels_is_rejected_after_max_windows(shadow_world: dict[str, Any]) -> None:
    rows = live(shadow_world)
    candidate(shadow_world, rows.iloc[:900])
    settings = shadow_world["settings"]
    late = Monitor(settings, shadow_world["store"], shadow_world["registry"], clock=lambda: 4e9)  # no label wait
    for start in range(900, 900 + 3 * WINDOW, WINDOW):
        assert shadow_world["registry"].shadow() is not None
        serve_with_shadow(shadow_world, rows.iloc[start:start + WINDOW], label=False)
        late.run_once()
    assert shadow_world["registry"].shadow() is None  # judged at the third window's run
    (event,) = shadow_world["store"].events("shadow_rejected")
    assert "0 of 400 labelled rows after 3 windows" in event["detail"]["reason"]
    assert shadow_world["registry"].champion().version == "v1"


def test_no_new_retrain_while_a_candidate_is_in_shadow(shadow_world: dict[str, Any]) -> None:
    settings = make_settings(Path(shadow_world["settings"].monitoring.reports_dir).parent,
                             registry={"home": str(shadow_world["settings"].registry.home)},
                             monitoring={"window_rows": WINDOW, "min_labels": 100},
                             retraining={"shadow": {"enabled": True, "min_labels": 10_000, "max_windows": 50}})
    rows = live(shadow_world)
    candidate(shadow_world, rows.iloc[:900])
    calls = []
    monitor = Monitor(settings, shadow_world["store"], shadow_world["registry"],
                      retrainer=lambda *a, **k: calls.append(1))
    checks = []
    for start in range(900, 900 + 4 * WINDOW, WINDOW):
        serve_with_shadow(shadow_world, rows.iloc[start:start + WINDOW])
        checks += monitor.run_once()
    retrains = [c for c in checks if c.decision == "retrain"]
    assert retrains and calls == []
    assert {c.outcome for c in retrains} == {"shadow_pending"}
    assert all("is in shadow" in c.reason for c in shadow_world["store"].checks() if c.decision == "retrain")


def test_a_candidate_that_passes_the_gate_goes_to_shadow_not_to_the_champion(shadow_world: dict[str, Any]) -> None:
    settings = make_settings(Path(shadow_world["settings"].monitoring.reports_dir).parent,
                             registry={"home": str(shadow_world["settings"].registry.home)},
                             monitoring={"window_rows": WINDOW, "min_labels": 100},
                             retraining={"min_rows": 300, "shadow": {"enabled": True, "min_labels": 300},
                                         "watch": {"enabled": False}})  # a candidate's shadow, not a watch
    store, registry = shadow_world["store"], shadow_world["registry"]
    monitor = Monitor(settings, store, registry)
    rows = live(shadow_world)
    checks = []
    for start in range(0, 3 * WINDOW, WINDOW):
        serve(store, registry, rows.iloc[start:start + WINDOW])
        checks += monitor.run_once()
    (retrained,) = [c for c in checks if c.decision == "retrain"]
    assert retrained.outcome == "shadow", retrained
    (event,) = store.events("retrain_shadow")
    assert registry.shadow().version == event["detail"]["candidate"] and registry.champion().version == "v1"
    serve_with_shadow(shadow_world, rows.iloc[3 * WINDOW:4 * WINDOW])  # the workers score it; 300 labels arrive
    monitor.run_once()
    assert registry.shadow() is None  # retraining.watch is off by default (tests/unit/test_watch.py)
    (verdict,) = store.events("shadow_promoted") + store.events("shadow_rejected")
    assert verdict["model_version"] == event["detail"]["candidate"] and verdict["detail"]["labelled"] >= 300
