"""The shadow judge (monitoring/shadow.py) on a real SQLite store with a fake registry: the gate's
margin rule (evaluate.beats) on the labelled live rows both versions answered."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.policy import RetrainPolicy
from driftloop.monitoring.shadow import ShadowJudge
from driftloop.monitoring.store import PredictionStore
from driftloop.settings import RetrainingConfig
from driftloop.vocabulary import EventKind, Outcome

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Registry:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self._shadow: Any = SimpleNamespace(version="v2", set_at=T0)

    def champion(self) -> Any:
        return SimpleNamespace(version="v1")

    def candidate(self) -> Any:
        return self._shadow

    def promote(self, version: str, actor: str, reason: str) -> None:
        self.calls.append(("promote", version))
        self._shadow = None

    def clear_shadow(self, actor: str, reason: str) -> None:
        self.calls.append(("clear", reason))
        self._shadow = None


@pytest.fixture
def store(tmp_path: Path) -> PredictionStore:
    s = PredictionStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    yield s
    s.close()


def scored(store: PredictionStore, champion: list[Any], shadow: list[Any], labels: list[Any]) -> None:
    """Rows the champion answered and the shadow scored, with their labels."""
    n = store.count_predictions()
    ids = [f"r{n + i}" for i in range(len(labels))]
    store.insert_predictions([{"request_id": rid, "created_at": T0 + timedelta(seconds=i), "model_version": "v1",
                               "features": {"x": 1.0}, "prediction": p}
                              for i, (rid, p) in enumerate(zip(ids, champion))])
    store.insert_shadow_predictions([{"request_id": rid, "model_version": "v2", "prediction": p}
                                     for rid, p in zip(ids, shadow)])
    store.insert_feedback(list(zip(ids, labels)))


def judge(store: PredictionStore, task: str = "classification", **config: Any) -> tuple[ShadowJudge, Registry]:
    registry = Registry()
    # the margin alone unless a test asks for the paired test (a few rows here: never significant)
    retraining = RetrainingConfig(**({"margin": 0.25, "significance": 1.0,
                                      "shadow": {"enabled": True, "min_labels": 4, "max_windows": 2}} | config))
    return ShadowJudge(retraining, task, store, registry, RetrainPolicy(), MonitorMetrics()), registry


def test_waits_for_min_labels_then_promotes_a_shadow_better_by_the_margin(store: PredictionStore) -> None:
    judged, registry = judge(store)
    scored(store, [1, 0, 1], [1, 1, 1], [1, 1, 1.0])  # labels with gaps arrive as floats: 1.0 is class 1
    assert judged.judge() is None and registry.calls == []
    scored(store, [0], [1], [1])
    verdict = judged.judge()
    assert verdict["verdict"] == Outcome.PROMOTED  # 1.00 against 0.50: better by more than 0.25
    assert (verdict["shadow_score"], verdict["champion_score"], verdict["labelled"]) == (1.0, 0.5, 4)
    assert registry.calls == [("promote", "v2")]
    (event,) = store.events(EventKind.SHADOW_PROMOTED)
    assert event["model_version"] == "v2" and "margin 0.2500" in event["detail"]["reason"]


def test_a_gain_below_the_margin_is_rejected(store: PredictionStore) -> None:
    judged, registry = judge(store)
    scored(store, [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1])  # 1.00 against 0.75: the gain is the margin, not more
    assert judged.judge()["verdict"] == Outcome.PROMOTED  # beats: at least the margin
    judged, registry = judge(store, margin=0.3)
    registry._shadow = SimpleNamespace(version="v2", set_at=T0)
    assert judged.judge()["verdict"] == Outcome.REJECTED and registry.calls[0][0] == "clear"


def test_regression_compares_rmse_lower_is_better(store: PredictionStore) -> None:
    judged, _ = judge(store, "regression", margin=0.1)
    scored(store, [2.0, 2.0, 2.0, 2.0], [1.5, 1.5, 1.5, 1.5], [1.0, 1.0, 1.0, 1.0])
    verdict = judged.judge()
    assert (verdict["champion_score"], verdict["shadow_score"]) == (1.0, 0.5)
    assert verdict["verdict"] == Outcome.PROMOTED and verdict["metric"] == "rmse"


def test_rejected_after_max_windows_without_enough_labels(store: PredictionStore) -> None:
    from tests.servers.test_store import check

    judged, registry = judge(store)
    store.record_check(check(0, created_at=T0 - timedelta(days=1)))  # before the shadow was set: not counted
    store.record_check(check(1, created_at=T0 + timedelta(minutes=1)))
    assert judged.judge() is None
    store.record_check(check(2, created_at=T0 + timedelta(minutes=2)))
    verdict = judged.judge()
    assert verdict["verdict"] == Outcome.REJECTED and registry.calls[0][0] == "clear"
    (event,) = store.events(EventKind.SHADOW_REJECTED)
    assert event["window"] == 2 and "0 of 4 labelled rows after 2 windows" in event["detail"]["reason"]


def test_with_the_paired_test_a_win_on_too_few_discordant_rows_is_rejected(store: PredictionStore) -> None:
    judged, registry = judge(store, significance=0.05)
    scored(store, [0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1])  # better by 0.5 > margin, on 2 discordant rows
    verdict = judged.judge()
    assert verdict["verdict"] == Outcome.REJECTED and registry.calls[0][0] == "clear"
    assert verdict["p_value"] == pytest.approx(0.25) and verdict["test"] == "mcnemar_exact"
    assert "one-sided p 0.2500" in verdict["reason"]
