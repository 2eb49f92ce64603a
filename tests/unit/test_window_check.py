"""The window check and its early warning (monitoring/check.py, monitoring/early_warning.py), and a
restarted monitor's policy (monitoring/monitor.py ``restore``), on a real SQLite store with a fake
registry and drift test: no model, no Evidently."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from driftloop.models.schema import Feature, FeatureSchema
from driftloop.monitoring.baselines import Baselines, expected_accuracy, expected_error
from driftloop.monitoring.check import WindowCheck
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.monitor import policy_config, restore, scheduled_promotions
from driftloop.monitoring.policy import RetrainPolicy
from driftloop.monitoring.store import PredictionStore
from driftloop.settings import MonitoringConfig
from driftloop.vocabulary import Decision, EventKind, Outcome

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
ROWS = 10
METADATA = {"metrics": {"accuracy": 0.9}, "rows": {"validation": 1000}, "kind": "fake",
            "confidence_calibration": {"x": [0.0, 1.0], "y": [0.0, 1.0]}}


def schema(task: str) -> FeatureSchema:
    """One numeric feature ``x``, seen in training between 0 and 2 (the rows below log x = 1.0)."""
    return FeatureSchema((Feature("x", "numeric", min=0.0, max=2.0),), task=task, target="y")  # type: ignore[arg-type]


class Registry:
    def champion(self) -> Any:
        return SimpleNamespace(version="v1")

    def get(self, version: str) -> Any:
        return SimpleNamespace(version=version, metadata=METADATA, schema=schema("classification"))


class Drift:
    """A drift test whose share the test sets."""

    def __init__(self) -> None:
        self.share = 0.0
        self.version = "v1"

    def check(self, frame: Any) -> Any:
        def save_html(path: Path) -> Path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("<html/>")
            return path
        return SimpleNamespace(share=self.share, drifted=["x"] if self.share else [], prediction=None,
                               columns={"x": {"method": "ks", "score": 0.5, "threshold": 0.05,
                                              "drifted": bool(self.share)}}, save_html=save_html)


class FakeBaselines(Baselines):
    def __init__(self, registry: Any = None) -> None:
        super().__init__(registry or Registry(), None)  # type: ignore[arg-type]
        self.fake = Drift()

    def drift(self, version: str) -> Any:
        return self.fake


class Clock:
    now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    store = PredictionStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    config = MonitoringConfig(window_rows=ROWS, min_labels=5, label_wait_s=60.0, reports_dir=tmp_path / "reports")
    baselines, policy, metrics, clock = FakeBaselines(), RetrainPolicy(policy_config(config)), MonitorMetrics(), Clock()
    windows = WindowCheck(config, "classification", store, Registry(), baselines, policy, metrics, clock=clock)
    yield {"store": store, "windows": windows, "drift": baselines.fake, "metrics": metrics, "clock": clock,
           "policy": policy, "baselines": baselines}
    store.close()


def log(store: PredictionStore, n: int, *, labels: Any = None, confidence: float = 0.9) -> None:
    """``n`` rows answered 1 by v1 (labels: one per row, None for none)."""
    start = store.count_predictions()
    ids = [f"r{start + i}" for i in range(n)]
    store.insert_predictions([{"request_id": rid, "created_at": T0 + timedelta(seconds=start + i),
                               "model_version": "v1", "features": {"x": 1.0}, "prediction": 1,
                               "confidence": confidence} for i, rid in enumerate(ids)])
    if labels is not None:
        store.insert_feedback([(rid, y) for rid, y in zip(ids, labels) if y is not None])


def gauge(metrics: MonitorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_window_is_ready_when_full_and_labelled_or_waited_for(world: dict[str, Any]) -> None:
    store, windows, clock = world["store"], world["windows"], world["clock"]
    log(store, ROWS - 1, labels=[1] * (ROWS - 1))
    assert windows.ready() is None  # not full
    log(store, 1)
    clock.now = T0.timestamp() + ROWS  # just after its newest row: 90% labelled, 80% needed
    index, frame = windows.ready()
    assert index == 0 and list(frame["id"]) == list(range(1, ROWS + 1))
    log(store, ROWS)  # window 1: no labels
    windows.run(index, frame)
    newest = T0.timestamp() + 2 * ROWS - 1
    clock.now = newest + 59.0
    assert windows.ready() is None  # its labels may still come...
    clock.now = newest + 60.0
    assert windows.ready()[0] == 1  # ...not after label_wait_s
    windows.task = "clustering"
    clock.now = newest
    assert windows.ready()[0] == 1  # nothing to wait for without labels


def test_a_check_is_measured_decided_and_recorded_running_before_any_retrain(world: dict[str, Any]) -> None:
    store, windows, drift = world["store"], world["windows"], world["drift"]
    world["clock"].now = 4e9  # no label wait
    drift.share = 1.0
    checked = []
    for _ in range(2):
        # 1.0: pandas' float labels; same class as 1. 4 labels: fewer than min_labels, so drift counts
        log(store, ROWS, labels=[1.0] * 3 + [0] + [None] * 6)
        checked.append(windows.run(*windows.ready()))
    first, second = (c.check for c in checked)
    assert first.decision == Decision.WATCH and first.outcome is None
    assert second.decision == Decision.RETRAIN and second.outcome == Outcome.RUNNING
    stored = store.last_check()  # recorded as it was returned, before anything acted on it
    assert stored.window == 1 and stored.outcome == Outcome.RUNNING and stored.reason == second.reason
    assert (second.labelled, second.accuracy, second.champion_accuracy) == (4, 3 / 4, 3 / 4)
    assert second.estimated_accuracy == pytest.approx(0.9)
    assert Path(second.report_path).is_file() and second.reference_version == "v1"
    assert [e["kind"] for e in store.events()] == [EventKind.DRIFT_DETECTED]
    windows.export(checked[1])
    metrics = world["metrics"]
    assert gauge(metrics, "driftloop_checks_total", decision="retrain") == 1
    assert gauge(metrics, "driftloop_window_signal", signal="drift") == 1
    assert gauge(metrics, "driftloop_window_accuracy") == 3 / 4
    assert gauge(metrics, "driftloop_label_coverage") == 0.4
    assert gauge(metrics, "driftloop_champion", model_version="v1") == 1
    assert gauge(metrics, "driftloop_expected_accuracy", model_version="v1") == 0.9


def test_a_waiting_window_is_suspected_once_from_confidence(world: dict[str, Any]) -> None:
    store, windows, metrics = world["store"], world["windows"], world["metrics"]
    log(store, ROWS, confidence=0.6)  # estimated 0.6 against validation 0.9
    log(store, ROWS, confidence=0.9)
    assert windows.ready() is None and windows.ready() is None
    (event,) = store.events(EventKind.DECAY_SUSPECTED)  # window 0 only, once; window 1 estimated too
    assert event["window"] == 0 and event["detail"]["estimated_accuracy"] == pytest.approx(0.6)
    assert gauge(metrics, "driftloop_estimated_accuracy", method="confidence") == pytest.approx(0.9)
    assert gauge(metrics, "driftloop_window_signal", signal="suspected") == 0  # the newest one is not
    world["clock"].now = 4e9
    checked = windows.run(*windows.ready())
    assert checked.check.decision == Decision.SUSPECT
    assert len(store.events(EventKind.DECAY_SUSPECTED)) == 1  # recorded already while it waited


def test_restore_replays_the_stored_checks_into_the_policy(world: dict[str, Any]) -> None:
    store, windows, drift = world["store"], world["windows"], world["drift"]
    world["clock"].now = 4e9
    drift.share = 1.0
    for _ in range(2):
        log(store, ROWS)  # no labels: drift alone counts (with labels showing no decay it is held)
        windows.run(*windows.ready())
    store.update_check(1, outcome=Outcome.PROMOTED)
    policy = RetrainPolicy(world["policy"].config)
    restore(policy, world["baselines"], store.checks())
    stats = world["baselines"].stats(2, ROWS, 1.0, "v1", 0, None)
    assert policy.update(stats).action == Decision.COOLDOWN  # retrained at window 1: cooling down


def test_expected_accuracy_pools_the_gates_holdout() -> None:
    assert expected_accuracy({"metrics": {"accuracy": 0.8}, "rows": {"validation": 100}}) == (0.8, 100)
    gate = {"metric": "accuracy", "holdout_rows": 300, "candidate": 0.9}
    assert expected_accuracy({"metrics": {"accuracy": 0.8}, "rows": {"validation": 100}, "gate": gate}) == \
        (pytest.approx(0.875), 400)
    assert expected_accuracy({}) == (None, None)


# -- a regressor's windows: RMSE and MAE against the labels ------------------------------------------
# Validated at RMSE 2 (squared errors: mean 4, std 5 over 1000 rows).
REGRESSION_METADATA = {"metrics": {"mse": 4.0, "rmse": 2.0, "mae": 1.5, "r2": 0.9}, "rows": {"validation": 1000},
                       "squared_errors": {"mean": 4.0, "std": 5.0}, "kind": "fake", "confidence_calibration": None}


class RegressionRegistry(Registry):
    def get(self, version: str) -> Any:
        return SimpleNamespace(version=version, metadata=REGRESSION_METADATA, schema=schema("regression"))


@pytest.fixture
def regression(tmp_path: Path) -> dict[str, Any]:
    store = PredictionStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    config = MonitoringConfig(window_rows=ROWS, min_labels=5, label_wait_s=0.0, reports_dir=tmp_path / "reports")
    baselines, policy, metrics = FakeBaselines(RegressionRegistry()), RetrainPolicy(policy_config(config)), MonitorMetrics()
    windows = WindowCheck(config, "regression", store, RegressionRegistry(), baselines, policy, metrics,
                          clock=lambda: 4e9)
    yield {"store": store, "windows": windows, "metrics": metrics, "policy": policy, "baselines": baselines}
    store.close()


def log_values(store: PredictionStore, predictions: list[float], labels: list[float | None],
               version: str = "v1") -> None:
    """Rows predicted ``predictions`` by ``version``, labelled ``labels`` (None: no label)."""
    start = store.count_predictions()
    ids = [f"r{start + i}" for i in range(len(predictions))]
    store.insert_predictions([{"request_id": rid, "created_at": T0 + timedelta(seconds=start + i),
                               "model_version": version, "features": {"x": 1.0}, "prediction": p, "confidence": None}
                              for i, (rid, p) in enumerate(zip(ids, predictions))])
    store.insert_feedback([(rid, y) for rid, y in zip(ids, labels) if y is not None])


def test_a_regressor_s_window_records_rmse_and_mae(regression: dict[str, Any]) -> None:
    store, windows, metrics = regression["store"], regression["windows"], regression["metrics"]
    rng = np.random.default_rng(0)
    labels = rng.normal(50, 10, ROWS)
    predictions = labels + rng.normal(0, 1.5, ROWS)  # about the validation error
    predictions[:2] = labels[:2] + 9.0  # two rows answered by v0 (before v1's promotion), badly
    log_values(store, predictions[:2].tolist(), labels[:2].tolist(), version="v0")
    log_values(store, predictions[2:].tolist(), [*labels[2:-1].tolist(), None])
    checked = windows.run(*windows.ready())
    check = checked.check
    every, mine = slice(0, ROWS - 1), slice(2, ROWS - 1)  # labelled rows; those v1 answered
    error = predictions - labels
    assert check.labelled == ROWS - 1 and check.champion_labelled == ROWS - 3
    assert check.rmse == pytest.approx(np.sqrt(np.mean(error[every] ** 2)))
    assert check.mae == pytest.approx(np.mean(np.abs(error[every])))
    assert check.champion_rmse == pytest.approx(np.sqrt(np.mean(error[mine] ** 2)))
    assert check.champion_mae == pytest.approx(np.mean(np.abs(error[mine])))
    assert check.champion_squared_error_std == pytest.approx(np.std(error[mine] ** 2))
    assert check.accuracy is None and check.champion_accuracy is None and check.estimated_accuracy is None
    assert check.decision == Decision.NONE  # v1's own rows are as good as validated
    stored = store.last_check()
    assert (stored.rmse, stored.mae, stored.champion_rmse, stored.champion_mae, stored.champion_squared_error_std) \
        == pytest.approx((check.rmse, check.mae, check.champion_rmse, check.champion_mae,
                          check.champion_squared_error_std))
    windows.export(checked)
    assert gauge(metrics, "driftloop_window_error", metric="rmse") == pytest.approx(check.rmse)
    assert gauge(metrics, "driftloop_window_error", metric="mae") == pytest.approx(check.mae)
    assert gauge(metrics, "driftloop_expected_error", model_version="v1", metric="rmse") == pytest.approx(2.0)
    assert gauge(metrics, "driftloop_window_error", metric="error_rate") is None
    assert gauge(metrics, "driftloop_expected_accuracy", model_version="v1") is None


def test_a_regressor_s_decay_is_decided_recorded_and_replayed(regression: dict[str, Any]) -> None:
    store, windows, metrics = regression["store"], regression["windows"], regression["metrics"]
    rng = np.random.default_rng(1)
    for _ in range(2):  # the concept moved: errors of about 6 against a validated 2
        labels = rng.normal(50, 10, ROWS)
        log_values(store, (labels + rng.choice([-6.0, 6.0], ROWS) + rng.normal(0, 0.5, ROWS)).tolist(),
                   labels.tolist())
    first, second = (windows.run(*windows.ready()) for _ in range(2))
    assert (first.check.decision, second.check.decision) == (Decision.WATCH, Decision.RETRAIN)
    assert second.check.outcome == Outcome.RUNNING and second.decision.signals == ("decay",)
    assert f"rmse {second.check.champion_rmse:.4g} > 2 * 1.10 on {ROWS} labels" in second.check.reason
    (event,) = store.events(EventKind.DECAY_DETECTED)
    assert event["detail"]["rmse"] == pytest.approx(second.check.rmse) and event["detail"]["accuracy"] is None
    windows.export(second)
    assert gauge(metrics, "driftloop_window_signal", signal="decay") == 1

    # A restarted monitor's policy makes the same decisions from the stored checks alone.
    policy = RetrainPolicy(regression["policy"].config)
    replayed = [policy.update(regression["baselines"].stats_of(c)) for c in store.checks()]
    assert [(d.action, d.reason) for d in replayed] == [(c.decision, c.reason) for c in store.checks()]


def test_expected_error_pools_the_gates_holdout() -> None:
    validation = {"metrics": {"mse": 4.0}, "rows": {"validation": 100}, "squared_errors": {"mean": 4.0, "std": 6.0}}
    assert expected_error(validation) == (4.0, 6.0, 100)
    gate = {"metric": "rmse", "holdout_rows": 300, "candidate": 3.0}  # MSE 9 on the gate's rows
    mse, std, rows = expected_error(validation | {"gate": gate})
    assert (mse, rows) == (pytest.approx((4.0 * 100 + 9.0 * 300) / 400), 400)
    # the holdout's squared errors spread as the validation's do relative to their mean (std 13.5)
    second = (100 * (6.0 ** 2 + 4.0 ** 2) + 300 * (13.5 ** 2 + 9.0 ** 2)) / 400
    assert std == pytest.approx(np.sqrt(second - mse ** 2))
    older = {"metrics": {"mse": 4.0}, "rows": {"validation": 100}}  # trained before the spread was recorded
    assert expected_error(older | {"gate": gate})[1] is None
    assert expected_error(METADATA) == (None, None, None)  # a classifier


def test_restore_starts_the_cool_down_of_a_promotion_without_a_check(world: dict[str, Any]) -> None:
    """A scheduled retrain's promotion has no check of its own; its event names the window after
    which it came, and a restarted monitor cools down from there as the running one did."""
    store, windows = world["store"], world["windows"]
    world["clock"].now = 4e9
    for _ in range(2):
        log(store, ROWS)
        windows.run(*windows.ready())
    store.record_event(EventKind.RETRAIN_PROMOTED, {"trigger": "schedule", "candidate": "v2"}, 1, "v2")
    drifted = world["baselines"].stats(2, ROWS, 1.0, "v1", 0, None)
    replayed = RetrainPolicy(world["policy"].config)
    restore(replayed, world["baselines"], store.checks(), scheduled_promotions(store))
    assert scheduled_promotions(store) == [1] and replayed.update(drifted).action == Decision.COOLDOWN
    forgetful = RetrainPolicy(world["policy"].config)
    restore(forgetful, world["baselines"], store.checks())
    assert forgetful.update(drifted).action == Decision.WATCH
