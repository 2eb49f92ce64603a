"""Data quality beside drift (issue 16): each check counts, per feature, the champion's rows that lie
below its training minimum, above its maximum or hold a category it never saw, records them in the
check's ``feature_scores`` and adds them to the monitor's counters, which exist at 0 from the start.

A real SQLite store, a fake registry and drift test (as tests/unit/test_window_check.py); the
real monitor on a real model: tests/unit/test_monitor.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from driftloop.models.schema import Feature, FeatureSchema
from driftloop.monitoring.check import WindowCheck
from driftloop.monitoring.drift import PREDICTION
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.monitor import policy_config
from driftloop.monitoring.policy import RetrainPolicy
from driftloop.monitoring.store import PredictionStore
from driftloop.settings import MonitoringConfig

from tests.unit.test_window_check import METADATA, T0, FakeBaselines

ROWS = 10
OUTSIDE = "driftloop_feature_outside_training_total"
CHECKED = "driftloop_feature_checked_rows_total"
SCHEMAS = {
    # x seen between 0 and 2, region as east or north; note: free text, never judged
    "v1": FeatureSchema((Feature("x", "numeric", min=0.0, max=2.0),
                         Feature("region", "categorical", categories=("east", "north")),
                         Feature("note", "categorical")), task="classification", target="y"),
    "v2": FeatureSchema((Feature("x", "numeric", min=0.0, max=4.0), Feature("z", "numeric", min=-1.0, max=1.0)),
                        task="classification", target="y"),
}


class Registry:
    """A champion the test can change, with the schemas above."""

    def __init__(self) -> None:
        self.version = "v1"

    def champion(self) -> Any:
        return SimpleNamespace(version=self.version)

    def get(self, version: str) -> Any:
        return SimpleNamespace(version=version, metadata=METADATA, schema=SCHEMAS[version])


class Drift:
    """No drift, in every column of the schema, and in the prediction."""

    version = "v1"
    columns = {"x": {"method": "ks", "score": 0.5, "threshold": 0.05, "drifted": False},
               "region": {"method": "chisquare", "score": 0.4, "threshold": 0.05, "drifted": False},
               "note": {"method": "chisquare", "score": 0.3, "threshold": 0.05, "drifted": False}}

    def check(self, frame: Any) -> Any:
        return SimpleNamespace(share=0.0, drifted=[], columns=self.columns,
                               prediction={"method": "chisquare", "score": 0.9, "threshold": 0.05, "drifted": False})


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    store = PredictionStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    config = MonitoringConfig(window_rows=ROWS, min_labels=5, label_wait_s=0.0, reports_dir=tmp_path / "reports")
    registry, metrics = Registry(), MonitorMetrics()
    baselines = FakeBaselines(registry)
    baselines.fake = Drift()
    windows = WindowCheck(config, "classification", store, registry, baselines, RetrainPolicy(policy_config(config)),
                          metrics, clock=lambda: 4e9)
    yield {"store": store, "windows": windows, "metrics": metrics, "registry": registry}
    store.close()


def log(store: PredictionStore, rows: list[tuple[str, Any, Any]]) -> None:
    """Rows of (model version, x, region), each answered 1 (None: a missing value)."""
    start = store.count_predictions()
    store.insert_predictions([{"request_id": f"r{start + i}", "created_at": T0 + timedelta(seconds=start + i),
                               "model_version": version, "features": {"x": x, "region": region, "note": "hi"},
                               "prediction": 1, "confidence": 0.9} for i, (version, x, region) in enumerate(rows)])


def value(metrics: MonitorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# v1 answers 9 rows: x once below 0 and twice above 2 (3.6: 1.8x the maximum; 2.0 is inside, a
# missing x is on no side), region once unseen (a missing one is not); v0 answered one row, far
# outside v1's ranges: not v1's to judge.
WINDOW = [("v1", -1.0, "east"), ("v1", 3.6, "north"), ("v1", 3.0, "east"), ("v1", None, "east"),
          ("v1", 1.0, "west"), ("v1", 2.0, None), ("v1", 0.0, "north"), ("v1", 1.5, "east"),
          ("v0", 50.0, "south"), ("v1", 1.0, "east")]


def test_a_check_records_the_champion_s_rows_outside_training_per_feature(world: dict[str, Any]) -> None:
    store, windows = world["store"], world["windows"]
    log(store, WINDOW)
    check = windows.run(*windows.ready()).check
    scores = check.feature_scores
    assert scores["x"]["outside_training"] == {"rows": 9, "below": 1, "above": 2}
    assert scores["region"]["outside_training"] == {"rows": 9, "unseen": 1}
    assert "outside_training" not in scores["note"] and "outside_training" not in scores[PREDICTION]
    assert scores["x"] | {"outside_training": None} == Drift.columns["x"] | {"outside_training": None}  # drift kept
    assert "outside_training" not in Drift.columns["x"]  # the drift result (drawn later) is left as it was
    assert check.unfamiliar_share == pytest.approx(4 / 9)  # the same rows, any feature: what the policy reads
    assert store.last_check().feature_scores == scores  # stored in the check's JSON, as it was recorded


def test_the_counters_exist_at_0_and_add_every_check(world: dict[str, Any]) -> None:
    store, windows, metrics = world["store"], world["windows"], world["metrics"]
    # from the start, for every feature the champion's schema judges (note has no categories: not judged)
    assert {(s.labels["feature"], s.labels.get("side"), s.value) for family in metrics.registry.collect()
            if family.name in (OUTSIDE.removesuffix("_total"), CHECKED.removesuffix("_total"))
            for s in family.samples if s.name.endswith("_total")} == {
        ("x", "below", 0.0), ("x", "above", 0.0), ("region", "unseen", 0.0), ("x", None, 0.0),
        ("region", None, 0.0)}
    log(store, WINDOW)
    windows.export(windows.run(*windows.ready()))
    log(store, [("v1", 2.5, "south")] * ROWS)
    windows.export(windows.run(*windows.ready()))
    assert value(metrics, OUTSIDE, feature="x", side="below") == 1
    assert value(metrics, OUTSIDE, feature="x", side="above") == 2 + ROWS
    assert value(metrics, OUTSIDE, feature="region", side="unseen") == 1 + ROWS
    assert value(metrics, CHECKED, feature="x") == value(metrics, CHECKED, feature="region") == 9 + ROWS
    assert value(metrics, OUTSIDE, feature="note", side="unseen") is None
    assert value(metrics, CHECKED, feature=PREDICTION) is None


def test_a_new_champion_s_features_are_at_0_after_the_check_that_promoted_it(world: dict[str, Any]) -> None:
    store, windows, metrics, registry = world["store"], world["windows"], world["metrics"], world["registry"]
    log(store, WINDOW)
    checked = windows.run(*windows.ready())
    registry.version = "v2"  # promoted by the check's retrain, before its gauges are set
    windows.export(checked)
    assert value(metrics, OUTSIDE, feature="z", side="below") == 0 and value(metrics, CHECKED, feature="z") == 0
    assert value(metrics, OUTSIDE, feature="x", side="above") == 2  # v1's counts stay


def test_a_check_without_counts_counts_nothing() -> None:
    """A check recorded before the counts were (or a window the champion answered no row of)."""
    from driftloop.vocabulary import Check, Decision

    metrics = MonitorMetrics()
    metrics.count_outside_training({"x": Drift.columns["x"], PREDICTION: {"method": "ks", "score": 1.0}})
    metrics.count_outside_training({"x": Drift.columns["x"] | {"outside_training": {"rows": 0, "below": 0,
                                                                                      "above": 0}}})
    assert value(metrics, CHECKED, feature="x") == 0 and value(metrics, OUTSIDE, feature="x", side="above") == 0
    assert value(metrics, CHECKED, feature=PREDICTION) is None
    check = Check(window=0, first_id=1, last_id=10, rows=10, model_version="v1", reference_version="v1",
                  drift_share=0.0, drifted_features=[], labelled=0, accuracy=None, champion_labelled=0,
                  champion_accuracy=None, decision=Decision.NONE, reason="",
                  feature_scores={"x": Drift.columns["x"] | {"outside_training": {"rows": 10, "below": 3, "above": 0}}})
    metrics.observe_check(check, (), threshold=0.5, expected_accuracy=None, champion="v1", now=0.0)
    assert value(metrics, OUTSIDE, feature="x", side="below") == 3 and value(metrics, CHECKED, feature="x") == 10
    assert value(metrics, "driftloop_feature_drift_score", feature="x", method="ks") == 0.5  # drift read as before
