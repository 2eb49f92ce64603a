"""Scheduled retrains (monitoring/scheduled.py): through the real job and gate from the monitor's
``retrain`` job, and, with a fake job on a real SQLite store, which rows it gets, when it waits,
what it records and what it leaves alone (the policy's cool-down, retries, follow-up series)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from driftloop.models.registry import Registry
from driftloop.monitoring.follow_up import FollowUps
from driftloop.monitoring.lease import RETRAIN, holding
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.monitor import Monitor
from driftloop.monitoring.policy import PolicyConfig, RetrainPolicy, WindowStats
from driftloop.monitoring.retraining import FreshRows, RetrainRunner
from driftloop.monitoring.scheduled import ScheduledRetrain
from driftloop.monitoring.scheduler import exclusive_retrainer
from driftloop.monitoring.store import PredictionStore, as_utc
from driftloop.service.serving import new_request_id
from driftloop.settings import DataConfig, RetrainingConfig, RetryConfig, ScheduleConfig
from driftloop.training import scenarios
from driftloop.training.retrain import RetrainOutcome, retrain
from driftloop.vocabulary import Check, Decision, EventKind, Outcome, Trigger

from tests.conftest import make_settings


def scheduled_events(store: PredictionStore) -> list[dict[str, Any]]:
    return [e for e in store.events() if e["detail"].get("trigger") == Trigger.SCHEDULE]


# -- through the real job and gate ----------------------------------------------------------------
def log_rows(store: PredictionStore, registry: Registry, rows: pd.DataFrame, at: datetime) -> None:
    """What the service does: the champion's predictions logged at ``at``, then their labels."""
    model = registry.load(registry.champion().version)
    preds, proba = model.predict_frame(rows)
    ids = [new_request_id() for _ in range(len(rows))]
    features = rows[model.schema.names].to_dict(orient="records")
    store.insert_predictions([
        {"request_id": rid, "created_at": at, "model_version": model.version, "features": f, "prediction": p,
         "confidence": float(c)} for rid, f, p, c in zip(ids, features, preds.tolist(), proba.max(axis=1))])
    store.insert_feedback(list(zip(ids, rows[scenarios.TARGET].astype(int).tolist())))


@pytest.fixture
def loop(champion_home: Path, tmp_path: Path) -> dict[str, Any]:
    home = tmp_path / "bentoml"
    shutil.copytree(champion_home / "bentoml", home)
    settings = make_settings(tmp_path, registry={"home": str(home)},
                             retraining={"min_rows": 300, "guard": {"rows": 0},  # as tests/unit/test_monitor.py
                                         "schedule": {"enabled": True, "cron": "0 3 * * sun", "rows": 800}})
    store = PredictionStore(settings.store.url).create()
    registry = Registry(settings.registry.home, "loans")
    # The CLI's monitor: the retraining job under the retrain lease.
    monitor = Monitor(settings, store, registry, retrainer=exclusive_retrainer(retrain, store, 60.0))
    yield {"settings": settings, "store": store, "registry": registry, "monitor": monitor}
    store.close()


def test_a_scheduled_retrain_learns_the_newest_rows_since_the_promotion_and_promotes_through_the_gate(
        loop: dict[str, Any]) -> None:
    store, registry, monitor = loop["store"], loop["registry"], loop["monitor"]
    promoted_at = datetime.fromisoformat(registry.champion().promoted_at)
    concept = scenarios.generate([scenarios.Period("concept", 1200, scenarios.SEGMENT, scenarios.RATE_RISE)], seed=5)
    stable = scenarios.generate([scenarios.Period("stable", 300)], seed=6)
    log_rows(store, registry, stable, promoted_at - timedelta(hours=1))  # before v1 became champion: not learnt
    log_rows(store, registry, concept, promoted_at + timedelta(minutes=1))

    assert monitor.retrain_on_schedule() == Outcome.PROMOTED
    (event,) = scheduled_events(store)
    d = event["detail"]
    assert event["kind"] == EventKind.RETRAIN_PROMOTED and event["window"] is None
    assert d["first_id"] == 300 + 1200 - 800 + 1 and d["last_id"] == 1500  # the newest `rows` labelled rows
    assert d["labelled"] == d["rows"] == 800 and d["train_rows"] + d["holdout_rows"] == 800
    assert d["since"] == promoted_at.isoformat() and d["schedule"] == "cron '0 3 * * sun' UTC"
    assert d["retrain_reason"].startswith("scheduled (cron '0 3 * * sun' UTC): the newest 800 "
                                          "(retraining.schedule.rows) labelled rows logged since v1 became champion")
    champion = registry.champion()
    assert champion.version == d["candidate"] == event["model_version"] != "v1"
    metadata = registry.get(champion.version).metadata
    assert metadata["trigger"] == Trigger.SCHEDULE and metadata["retrain_reason"] == d["retrain_reason"]
    assert metadata["gate"]["passed"] and d["candidate_score"] > d["champion_score"]


def test_a_scheduled_retrain_with_too_few_labelled_rows_waits_and_says_why(loop: dict[str, Any]) -> None:
    store, registry, monitor = loop["store"], loop["registry"], loop["monitor"]
    assert monitor.retrain_on_schedule() == Outcome.WAITING  # nothing logged yet
    concept = scenarios.generate([scenarios.Period("concept", 120, scenarios.SEGMENT, scenarios.RATE_RISE)], seed=5)
    log_rows(store, registry, concept, datetime.now(timezone.utc))
    assert monitor.retrain_on_schedule() == Outcome.WAITING  # 120 of the 300 labelled rows the strategy needs
    first, second = scheduled_events(store)
    assert [first["kind"], second["kind"]] == [EventKind.RETRAIN_WAITING] * 2
    assert first["detail"]["reason"] == "no row logged since v1 became champion"
    assert second["detail"]["labelled"] == 120 and "120 labelled rows" in second["detail"]["reason"]
    assert "300 needed" in second["detail"]["reason"]
    assert registry.champion().version == "v1" and [v.version for v in registry.versions()] == ["v1"]
    assert store.events(EventKind.RETRAIN_FAILED) == []


# -- with a fake job --------------------------------------------------------------------------------
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class FakeRegistry:
    """The registry's pointers, as the room reads them."""

    version: str = "v1"
    promoted_at: datetime = T0
    shadow: str | None = None

    def champion(self) -> Any:
        return type("Champion", (), {"version": self.version, "promoted_at": self.promoted_at.isoformat()})()

    def candidate(self) -> Any:
        return None if self.shadow is None else type("Shadow", (), {"version": self.shadow})()


@dataclass
class FakeJob:
    """The retraining job: answers ``answer`` (promoting as the real one does: the pointer's time is
    just after the newest row it got) or raises."""

    registry: FakeRegistry
    answer: str = "promoted"
    calls: list[pd.DataFrame] = field(default_factory=list)
    triggers: list[str] = field(default_factory=list)

    def __call__(self, fresh: pd.DataFrame, *, trigger: str, reason: str) -> RetrainOutcome:
        self.calls.append(fresh)
        self.triggers.append(trigger)
        if self.answer == "raise":
            raise MemoryError("killed mid-training")
        champion, candidate = self.registry.version, f"v{len(self.calls) + 1}"
        if self.answer == "promoted":
            self.registry.version = candidate
            self.registry.promoted_at = as_utc(fresh["created_at"].max()) + timedelta(seconds=1)
        return RetrainOutcome(Outcome(self.answer), f"the gate said {self.answer}", champion,
                              None if self.answer == "waiting" else candidate, "accuracy", 0.8, 0.85,
                              train_rows=10, holdout_rows=5)


@dataclass
class World:
    store: PredictionStore
    registry: FakeRegistry
    job: FakeJob
    policy: RetrainPolicy
    metrics: MonitorMetrics
    fresh: FreshRows
    logged: int = 0

    def log(self, n: int, at: datetime, labelled: bool | list[bool] = True) -> None:
        """``n`` rows logged at ``at`` (one second apart), labelled as ``labelled`` says, row by row."""
        first = self.logged + 1
        ids = [f"r{i}" for i in range(first, first + n)]
        self.store.insert_predictions([
            {"request_id": rid, "created_at": at + timedelta(seconds=k), "model_version": self.registry.version,
             "features": {"x": float(k)}, "prediction": 1, "confidence": 0.9} for k, rid in enumerate(ids)])
        flags = labelled if isinstance(labelled, list) else [labelled] * n
        self.store.insert_feedback([(rid, 1) for rid, flag in zip(ids, flags) if flag])
        self.logged += n

    def check(self, decision: Decision = Decision.NONE) -> Check:
        window = len(self.store.checks())
        check = Check(window=window, first_id=1, last_id=self.logged, rows=self.logged, model_version="v1",
                      reference_version="v1", drift_share=0.0, drifted_features=[], feature_scores={},
                      labelled=self.logged, accuracy=1.0, champion_labelled=self.logged, champion_accuracy=1.0,
                      decision=decision, reason="r")
        self.store.record_check(check)
        return check

    def scheduled(self, **config: Any) -> ScheduledRetrain:
        schedule = ScheduleConfig(**({"enabled": True, "interval_s": 3600.0, "rows": 50} | config))
        return ScheduledRetrain(schedule, self.store, self.registry, self.job, self.fresh,  # type: ignore[arg-type]
                                self.policy, self.metrics)


@pytest.fixture
def world(tmp_path: Path) -> World:
    store = PredictionStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    registry = FakeRegistry(promoted_at=T0 + timedelta(hours=1))
    yield World(store, registry, FakeJob(registry), RetrainPolicy(PolicyConfig(cooldown_windows=2)), MonitorMetrics(),
                FreshRows(store, "classification", DataConfig(target="y")))
    store.close()


def counted(metrics: MonitorMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("driftloop_retrains_total", {"outcome": outcome}) or 0.0


def test_it_gets_the_newest_labelled_rows_since_the_promotion_with_the_unlabelled_ones_between(world: World) -> None:
    world.log(30, T0)  # before the promotion (T0 + 1h)
    world.log(100, T0 + timedelta(hours=2), labelled=[i % 2 == 0 for i in range(100)])  # ids 31-130, 50 labelled
    world.log(10, T0 + timedelta(hours=3), labelled=False)  # ids 131-140
    scheduled = world.scheduled(rows=20)
    assert scheduled.run() == Outcome.PROMOTED
    fresh = world.job.calls[-1]
    labelled = fresh[fresh["y"].notna()]
    assert fresh["id"].tolist() == list(range(91, 141))  # from the first of the newest 20 labelled rows on
    assert len(labelled) == 20 and labelled["id"].tolist() == list(range(91, 131, 2))
    assert world.job.triggers == [Trigger.SCHEDULE]
    (event,) = scheduled_events(world.store)
    assert {k: event["detail"][k] for k in ("first_id", "last_id", "rows", "labelled")} == \
        {"first_id": 91, "last_id": 140, "rows": 50, "labelled": 20}

    world.log(5, world.registry.promoted_at + timedelta(seconds=1))  # since the new champion: 5 rows only
    world.job.answer = "rejected"
    assert world.scheduled(rows=1000).run() == Outcome.REJECTED
    assert world.job.calls[-1]["id"].tolist() == list(range(141, 146))  # not the rows v2 was promoted over
    reason = scheduled_events(world.store)[-1]["detail"]["retrain_reason"]
    assert reason.startswith("scheduled (every 3600s): 5 labelled rows logged since v2 became champion at 2026-01-01")


def test_a_promotion_it_made_cools_the_policy_down_and_a_rejection_does_not(world: World) -> None:
    world.log(60, T0 + timedelta(hours=2))
    world.check()  # window 0
    world.job.answer = "rejected"
    assert world.scheduled().run() == Outcome.REJECTED
    assert world.policy.update(WindowStats(1, 100, drift_share=1.0)).action == Decision.WATCH  # 1 of 2 in a row
    world.check()  # window 1
    world.job.answer = "promoted"
    assert world.scheduled().run() == Outcome.PROMOTED
    # the streak restarts, and windows 2 and 3 cool down (cooldown_windows=2)
    assert world.policy.update(WindowStats(2, 100, drift_share=1.0)).action == Decision.COOLDOWN
    assert world.policy.update(WindowStats(3, 100, drift_share=1.0)).action == Decision.COOLDOWN
    assert world.policy.update(WindowStats(4, 100, drift_share=1.0)).action == Decision.RETRAIN  # 3 in a row
    assert counted(world.metrics, "promoted") == counted(world.metrics, "rejected") == 1


def test_it_waits_without_training_and_records_why(world: World) -> None:
    world.log(60, T0 + timedelta(hours=2))
    world.registry.shadow = "v9"
    assert world.scheduled().run() == Outcome.WAITING  # a candidate awaits the shadow judge
    world.registry.shadow = None
    job = world.job
    world.job = exclusive_retrainer(job, world.store, 30.0)  # type: ignore[assignment]
    with holding(world.store, RETRAIN, 30.0):  # another process is retraining
        assert world.scheduled().run() == Outcome.WAITING
    assert job.calls == []
    reasons = [e["detail"]["reason"] for e in scheduled_events(world.store)]
    assert reasons[0] == "v9 is in shadow: no new candidate until it is judged"
    assert reasons[1].startswith("another retrain is running: ")
    assert [e["kind"] for e in scheduled_events(world.store)] == [EventKind.RETRAIN_WAITING] * 2
    assert counted(world.metrics, "waiting") == 2 and world.registry.version == "v1"


def test_a_failure_is_recorded_not_retried_and_a_follow_up_series_goes_on(world: World) -> None:
    """No retrain_started: a scheduled retrain answers no change, so the series of the last one goes on."""
    world.log(100, T0 + timedelta(hours=2))
    world.check(Decision.RETRAIN)
    runner = RetrainRunner(RetryConfig(backoff_s=0.0), world.store, world.registry, world.job,  # type: ignore[arg-type]
                           world.fresh, world.policy, world.metrics, clock=lambda: 1e12)
    assert runner.attempt(0, 1, 100, Trigger.DRIFT, "drift") == Outcome.PROMOTED  # starts a follow-up series
    config = RetrainingConfig(min_rows=20, follow_up={"enabled": True})
    follow = FollowUps(config, world.store, world.registry,  # type: ignore[arg-type]
                       world.job, world.fresh, world.metrics)  # type: ignore[arg-type]
    series = follow.series()
    assert series is not None and series.ended is None
    world.log(40, T0 + timedelta(days=1))
    for answer in ("rejected", "waiting", "raise"):
        world.job.answer = answer
        world.scheduled().run()
    failed = world.store.events(EventKind.RETRAIN_FAILED)[-1]
    assert failed["detail"]["error"] == "MemoryError: killed mid-training" and failed["detail"]["retry_at"] is None
    assert failed["detail"]["trigger"] == Trigger.SCHEDULE and counted(world.metrics, "failed") == 1
    assert [e for e in scheduled_events(world.store) if e["kind"] == EventKind.RETRAIN_STARTED] == []
    assert follow.series() == series
    assert world.registry.version == "v2"  # the champion the check's retrain made
    assert runner.retry_due() == []  # nothing to retry: the calendar is a scheduled retrain's retry
