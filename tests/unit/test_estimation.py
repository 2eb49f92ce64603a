"""Confidence-based performance estimation: the calibration map learnt on validation rows, and
the monitor suspecting decay from it before labels arrive."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftloop.models.registry import Registry
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.monitor import Monitor
from driftloop.monitoring.store import PredictionStore
from driftloop.training import scenarios
from driftloop.training.evaluate import confidence_calibration, estimate_accuracy

from tests.conftest import make_settings
from tests.unit.test_monitor import serve

WINDOW = 300


def overconfident(n: int, accuracy: float, confidence: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Binary labels and probabilities whose top class has ``confidence`` but is right ``accuracy`` of the time."""
    rng = np.random.default_rng(seed)
    top = rng.integers(0, 2, n)
    right = rng.random(n) < accuracy
    y = np.where(right, top, 1 - top)
    proba = np.where(top[:, None] == np.arange(2)[None, :], confidence, 1 - confidence)
    return y, proba


def test_an_overconfident_model_s_estimate_is_its_real_accuracy_not_its_confidence() -> None:
    y, proba = overconfident(4000, accuracy=0.7, confidence=0.95)
    calibration = confidence_calibration(y[:2000], proba[:2000], [0, 1])
    raw = float(proba[2000:].max(axis=1).mean())
    estimate = estimate_accuracy(calibration, proba[2000:].max(axis=1))
    real = float((proba[2000:].argmax(axis=1) == y[2000:]).mean())
    assert raw == pytest.approx(0.95)
    assert estimate == pytest.approx(real, abs=0.03)


def test_the_estimate_follows_confidence_within_what_validation_saw() -> None:
    """A calibrated model: rows at confidence c are right c of the time; windows of confident and
    unsure rows get estimates near their real accuracies."""
    rng = np.random.default_rng(1)
    c = rng.uniform(0.5, 1.0, 6000)
    right = rng.random(6000) < c
    top = rng.integers(0, 2, 6000)
    y = np.where(right, top, 1 - top)
    proba = np.where(top[:, None] == np.arange(2)[None, :], c[:, None], 1 - c[:, None])
    calibration = confidence_calibration(y[:3000], proba[:3000], [0, 1])
    for lo, hi in ((0.5, 0.7), (0.85, 1.0)):
        rows = np.flatnonzero((c >= lo) & (c < hi))
        rows = rows[rows >= 3000]
        real = float(right[rows].mean())
        assert estimate_accuracy(calibration, c[rows]) == pytest.approx(real, abs=0.04), (lo, hi)


def test_no_rows_no_estimate_and_no_calibration_means_mean_confidence() -> None:
    assert estimate_accuracy({"x": [0.5, 1.0], "y": [0.5, 1.0]}, []) is None
    assert estimate_accuracy(None, [0.6, 0.8]) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="expected"):
        confidence_calibration([0, 1], np.ones((2, 3)) / 3, [0, 1])


@pytest.fixture
def world(champion_home: Path, tmp_path: Path) -> dict[str, Any]:
    home = tmp_path / "bentoml"
    shutil.copytree(champion_home / "bentoml", home)
    settings = make_settings(tmp_path, registry={"home": str(home)},
                             monitoring={"window_rows": WINDOW, "min_labels": 100, "dry_run": True})
    frame = scenarios.generate(scenarios.loans_periods(window=WINDOW, stable=1, covariate=1, concept=0), seed=7)
    return {"settings": settings, "store": PredictionStore(settings.store.url).create(),
            "registry": Registry(settings.registry.home, "loans"), "frame": frame}


def test_the_champion_carries_its_calibration(world: dict[str, Any]) -> None:
    metadata = world["registry"].get("v1").metadata
    calibration = metadata["confidence_calibration"]
    assert calibration["rows"] == metadata["rows"]["validation"]
    assert calibration["x"] == sorted(calibration["x"]) and calibration["y"] == sorted(calibration["y"])


def test_decay_is_suspected_before_labels_under_covariate_shift_and_not_on_stable_traffic(
        world: dict[str, Any]) -> None:
    store, registry, frame = world["store"], world["registry"], world["frame"]
    metrics = MonitorMetrics()
    monitor = Monitor(world["settings"], store, registry, metrics=metrics)
    validation = registry.get("v1").metadata["metrics"]["accuracy"]

    serve(store, registry, frame[frame["period"] == "stable"], label=False)
    assert monitor.run_once() == []  # waits for its labels...
    stable_estimate = metrics.estimated_accuracy.labels("confidence")._value.get()
    assert stable_estimate == pytest.approx(validation, abs=0.04)  # ...but is estimated already
    assert store.events("decay_suspected") == []

    serve(store, registry, frame[frame["period"] == "covariate"], label=False)
    assert monitor.run_once() == []  # window 1 waits too
    (event,) = store.events("decay_suspected")
    assert event["window"] == 1 and event["model_version"] == "v1" and event["detail"]["labelled"] == 0
    assert event["detail"]["estimated_accuracy"] < validation - 0.05
    assert metrics.signal.labels("suspected")._value.get() == 1
    monitor.run_once()
    assert len(store.events("decay_suspected")) == 1  # once per window

    late = Monitor(world["settings"], store, registry, clock=lambda: 4e9)  # the label wait is over
    first, second = late.run_once()
    assert first.decision == "none" and first.estimated_accuracy == pytest.approx(stable_estimate)
    assert second.decision == "watch"  # the inputs drifted too: that is the signal; the suspicion is said
    assert second.estimated_accuracy == pytest.approx(event["detail"]["estimated_accuracy"])
    assert "decay suspected: accuracy estimated from confidence" in second.reason
