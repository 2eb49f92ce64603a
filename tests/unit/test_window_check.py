"""The window check and its early warning (monitoring/check.py, monitoring/early_warning.py), and a
restarted monitor's policy (monitoring/monitor.py ``restore``), on a real SQLite store with a fake
registry and drift test: no model, no Evidently."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from driftloop.monitoring.baselines import Baselines, expected_accuracy
from driftloop.monitoring.check import WindowCheck
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.monitor import policy_config, restore
from driftloop.monitoring.policy import RetrainPolicy
from driftloop.monitoring.store import PredictionStore
from driftloop.settings import MonitoringConfig
from driftloop.vocabulary import Decision, EventKind, Outcome

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
ROWS = 10
METADATA = {"metrics": {"accuracy": 0.9}, "rows": {"validation": 1000}, "kind": "fake",
            "confidence_calibration": {"x": [0.0, 1.0], "y": [0.0, 1.0]}}


class Registry:
    def champion(self) -> Any:
        return SimpleNamespace(version="v1")

    def get(self, version: str) -> Any:
        return SimpleNamespace(version=version, metadata=METADATA, schema=SimpleNamespace(task="classification"))


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
    def __init__(self) -> None:
        super().__init__(Registry(), None)  # type: ignore[arg-type]
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
        log(store, ROWS, labels=[1.0] * 5 + [0] * 3 + [None] * 2)  # 1.0: pandas' float labels; same class as 1
        checked.append(windows.run(*windows.ready()))
    first, second = (c.check for c in checked)
    assert first.decision == Decision.WATCH and first.outcome is None
    assert second.decision == Decision.RETRAIN and second.outcome == Outcome.RUNNING
    stored = store.last_check()  # recorded as it was returned, before anything acted on it
    assert stored.window == 1 and stored.outcome == Outcome.RUNNING and stored.reason == second.reason
    assert (second.labelled, second.accuracy, second.champion_accuracy) == (8, 5 / 8, 5 / 8)
    assert second.estimated_accuracy == pytest.approx(0.9)
    assert Path(second.report_path).is_file() and second.reference_version == "v1"
    assert [e["kind"] for e in store.events()] == [EventKind.DRIFT_DETECTED]
    windows.export(checked[1])
    metrics = world["metrics"]
    assert gauge(metrics, "driftloop_checks_total", decision="retrain") == 1
    assert gauge(metrics, "driftloop_window_signal", signal="drift") == 1
    assert gauge(metrics, "driftloop_window_accuracy") == 5 / 8
    assert gauge(metrics, "driftloop_label_coverage") == 0.8
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
        log(store, ROWS, labels=[1] * ROWS)
        windows.run(*windows.ready())
    store.update_check(1, outcome=Outcome.PROMOTED)
    policy = RetrainPolicy(world["policy"].config)
    restore(policy, world["baselines"], store.checks())
    stats = world["baselines"].stats(2, ROWS, 1.0, "v1", ROWS, 1.0)
    assert policy.update(stats).action == Decision.COOLDOWN  # retrained at window 1: cooling down


def test_expected_accuracy_pools_the_gates_holdout() -> None:
    assert expected_accuracy({"metrics": {"accuracy": 0.8}, "rows": {"validation": 100}}) == (0.8, 100)
    gate = {"metric": "accuracy", "holdout_rows": 300, "candidate": 0.9}
    assert expected_accuracy({"metrics": {"accuracy": 0.8}, "rows": {"validation": 100}, "gate": gate}) == \
        (pytest.approx(0.875), 400)
    assert expected_accuracy({}) == (None, None)
