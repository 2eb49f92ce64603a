"""Follow-up retrains (monitoring/follow_up.py) on a real SQLite store with a fake job, registry and
checks: the series' steps at 2x and 4x, the cap, its ends, a restart, and what makes it wait."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from driftloop.monitoring.follow_up import FollowUps
from driftloop.monitoring.lease import RETRAIN, holding
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.policy import PolicyConfig, RetrainPolicy, WindowStats
from driftloop.monitoring.requests import RetrainRequests
from driftloop.monitoring.retraining import FreshRows, RetrainRunner
from driftloop.monitoring.store import PredictionStore
from driftloop.settings import DataConfig, RetrainingConfig, RetryConfig
from driftloop.training.retrain import RetrainOutcome
from driftloop.vocabulary import Check, Decision, EventKind, Outcome, Trigger

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
W = 100  # rows per window; every row gets a label
CHANGE = 2 * W + 1  # the change begins with window 2


@dataclass
class Registry:
    """The registry's pointers, as the rooms read them."""

    champion_version: str = "v1"
    shadow_version: str | None = None

    def champion(self) -> Any:
        return type("Champion", (), {"version": self.champion_version})()

    def candidate(self) -> Any:
        """The shadow, always a candidate here (a promotion's watch is monitoring/watch.py's)."""
        return None if self.shadow_version is None else type("Shadow", (), {"version": self.shadow_version})()


@dataclass
class Job:
    """The retraining job: answers the next of ``answers`` (then ``promoted``), promotes as the real one
    does, records what it got; raises for the answer ``raise``."""

    registry: Registry
    answers: list[str] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    made: int = 1

    def __call__(self, fresh: pd.DataFrame, *, trigger: str, reason: str) -> RetrainOutcome:
        self.calls.append({"ids": (int(fresh["id"].iloc[0]), int(fresh["id"].iloc[-1])), "rows": len(fresh),
                           "labelled": int(fresh["y"].notna().sum()), "trigger": trigger, "reason": reason})
        status = self.answers.pop(0) if self.answers else "promoted"
        if status == "raise":
            raise MemoryError("killed mid-training")
        self.made += 1
        candidate, champion = f"v{self.made}", self.registry.champion_version
        if status == "promoted":
            self.registry.champion_version = candidate
        elif status == "shadow":
            self.registry.shadow_version = candidate
        labelled = int(fresh["y"].notna().sum())
        return RetrainOutcome(Outcome(status), f"the gate said {status}", champion, candidate, "accuracy", 0.80,
                              0.82, train_rows=labelled - labelled // 4, holdout_rows=labelled // 4,
                              strategy="window")


@dataclass
class World:
    store: PredictionStore
    registry: Registry
    job: Job
    policy: RetrainPolicy
    metrics: MonitorMetrics
    fresh: FreshRows
    runner: RetrainRunner
    config: RetrainingConfig
    windows: int = 0  # checks recorded so far

    def serve(self, windows: int, labels: bool = True, decision: Decision = Decision.NONE) -> None:
        """Log ``windows`` more windows of rows (labelled), each checked with ``decision``."""
        for _ in range(windows):
            first = self.windows * W + 1
            ids = [f"r{i}" for i in range(first, first + W)]
            self.store.insert_predictions([
                {"request_id": rid, "created_at": T0 + timedelta(seconds=first + k), "model_version": "v1",
                 "features": {"x": float(first + k)}, "prediction": 1, "confidence": 0.9}
                for k, rid in enumerate(ids)])
            if labels:
                self.store.insert_feedback([(rid, 1) for rid in ids])
            self.check(decision)

    def check(self, decision: Decision, outcome: Outcome | None = None) -> Check:
        """The next window's check (its rows are :meth:`serve`'s)."""
        window = self.windows
        check = Check(window=window, first_id=window * W + 1, last_id=(window + 1) * W, rows=W, model_version="v1",
                      reference_version="v1", drift_share=0.0, drifted_features=[], feature_scores={}, labelled=W,
                      accuracy=1.0, champion_labelled=W, champion_accuracy=1.0, decision=decision, reason="r",
                      outcome=outcome)
        self.store.record_check(check)
        self.windows += 1
        return check

    def follow_ups(self, **follow_up: Any) -> FollowUps:
        config = self.config.model_copy(update={"follow_up": self.config.follow_up.model_copy(update=follow_up)}) \
            if follow_up else self.config
        return FollowUps(config, self.store, self.registry, self.job, self.fresh, self.metrics)  # type: ignore[arg-type]

    def answer_change(self, status: str = "promoted", since: int = CHANGE) -> Outcome:
        """A check's retrain on the rows since ``since`` up to the newest check (the policy's)."""
        self.job.answers.insert(0, status)
        last = self.store.last_check()
        return self.runner.attempt(last.window, since, last.last_id, Trigger.DRIFT, "window: drift")

    def follow_up_events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.store.events(kind) if e["detail"].get("trigger") == Trigger.FOLLOW_UP]


@pytest.fixture
def world(tmp_path: Path) -> World:
    store = PredictionStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    registry = Registry()
    job = Job(registry)
    policy, metrics = RetrainPolicy(PolicyConfig(cooldown_windows=2)), MonitorMetrics()
    fresh = FreshRows(store, "classification", DataConfig(target="y"))
    runner = RetrainRunner(RetryConfig(), store, registry, job, fresh, policy, metrics)  # type: ignore[arg-type]
    config = RetrainingConfig(min_rows=100, follow_up={"enabled": True, "factor": 2.0, "max_rows": 1000})
    yield World(store, registry, job, policy, metrics, fresh, runner, config)
    store.close()


def counted(metrics: MonitorMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("driftloop_retrains_total", {"outcome": outcome}) or 0.0


def test_a_series_follows_at_2x_and_4x_then_stops_at_the_cap(world: World) -> None:
    world.serve(4)  # windows 0-3; the change began at window 2
    assert world.answer_change() == Outcome.PROMOTED  # learnt ids 201-400: 200 labelled rows
    promotion = world.store.events(EventKind.RETRAIN_PROMOTED)[-1]["id"]
    follow = world.follow_ups()
    world.serve(1)
    assert follow.run() is None and len(world.job.calls) == 1  # 300 of the 400 needed

    world.serve(1)  # 400 labelled rows since the change: 2x
    assert follow.run() == Outcome.PROMOTED
    call = world.job.calls[-1]
    assert call["trigger"] == Trigger.FOLLOW_UP and call["ids"] == (CHANGE, 600) and call["labelled"] == 400
    assert call["reason"].startswith(f"follow-up 1 of the change since row {CHANGE}: 400 labelled rows")
    start, end = world.follow_up_events()
    assert start["kind"] == EventKind.RETRAIN_STARTED and end["kind"] == EventKind.RETRAIN_PROMOTED
    assert start["detail"] | {"reason": ""} == {
        "trigger": "follow_up", "series": promotion, "step": 1, "first_id": CHANGE, "last_id": 600,
        "change_first_id": CHANGE, "rows": 400, "labelled": 400, "reason": ""}
    assert start["window"] == end["window"] == 5 and end["model_version"] == "v3"
    assert end["detail"]["episode"] == start["id"] and end["detail"]["series_ended"] is None
    assert end["detail"]["candidate"] == "v3" and end["detail"]["train_rows"] == 300
    assert world.registry.champion_version == "v3" and counted(world.metrics, "promoted") == 2
    # no cool-down (no new change was answered): the policy's next flagged windows count at once
    assert world.policy.update(WindowStats(7, W, drift_share=1.0)).action == Decision.WATCH
    assert world.policy.update(WindowStats(8, W, drift_share=1.0)).action == Decision.RETRAIN
    assert follow.run() is None  # the next step waits for 800

    world.serve(3)
    assert follow.run() is None  # 700
    world.serve(1)
    assert follow.run() == Outcome.PROMOTED and world.job.calls[-1]["labelled"] == 800  # 4x
    assert world.follow_up_events()[-1]["detail"]["step"] == 2

    world.serve(3)  # 1100 since the change: over the cap of 1000 (min(1600, 1000) needed)
    assert follow.run() == Outcome.PROMOTED
    call = world.job.calls[-1]
    assert call["ids"] == (CHANGE + 100, 1300) and call["labelled"] == 1000  # the newest max_rows
    assert "(the newest 1000: retraining.follow_up.max_rows)" in call["reason"]
    assert world.follow_up_events()[-1]["detail"]["series_ended"].startswith("its rows reached")
    world.serve(20)
    assert follow.run() is None and len(world.job.calls) == 4  # the series is over


def test_a_rejected_follow_up_does_not_end_the_series_the_next_waits_for_more_rows(world: World) -> None:
    world.serve(4)
    world.answer_change()
    world.job.answers = ["rejected"]
    world.serve(2)
    follow = world.follow_ups()
    assert follow.run() == Outcome.REJECTED
    end = world.follow_up_events()[-1]
    assert end["kind"] == EventKind.RETRAIN_REJECTED and end["detail"]["series_ended"] is None
    rejected = end["detail"]["labelled"]
    assert world.registry.champion_version == "v2" and counted(world.metrics, "rejected") == 1
    world.serve(1)
    assert follow.run() is None and len(world.job.calls) == 2  # waits for 2x the rejected step's rows
    world.serve(4)
    assert follow.run() == Outcome.PROMOTED and world.job.calls[-1]["labelled"] >= 2 * rejected
    assert world.follow_up_events(EventKind.RETRAIN_PROMOTED)[-1]["detail"]["step"] == 2
    assert world.policy.update(WindowStats(17, W, drift_share=1.0)).action == Decision.WATCH  # no cool-down


def test_with_stop_on_reject_the_first_follow_up_that_does_not_win_ends_the_series(world: World) -> None:
    world.serve(4)
    world.answer_change()
    world.job.answers = ["rejected"]
    world.serve(2)
    follow = world.follow_ups(stop_on_reject=True)
    assert follow.run() == Outcome.REJECTED
    end = world.follow_up_events()[-1]
    assert end["detail"]["series_ended"] == "the follow-up was rejected: the gate said rejected"
    world.serve(10)
    assert follow.run() is None and len(world.job.calls) == 2


def test_a_failed_follow_up_ends_the_series_and_is_never_retried_as_a_checks_retrain(world: World) -> None:
    world.serve(4)
    world.answer_change()
    world.job.answers = ["raise"]
    world.serve(2)
    assert world.follow_ups().run() == Outcome.FAILED
    failed = world.follow_up_events(EventKind.RETRAIN_FAILED)[-1]["detail"]
    assert failed["error"] == "MemoryError: killed mid-training" and failed["retry_at"] is None
    assert failed["series_ended"].startswith("the follow-up failed")
    assert world.runner.retry_due() == [] and counted(world.metrics, "failed") == 1
    world.serve(10)
    assert world.follow_ups().run() is None and len(world.job.calls) == 2


def test_a_restarted_monitor_goes_on_with_the_series_and_fails_an_interrupted_step(world: World) -> None:
    world.serve(4)
    world.answer_change()
    world.serve(2)
    assert world.follow_ups().run() == Outcome.PROMOTED  # step 1, in the first monitor
    world.serve(4)
    again = world.follow_ups()  # a new monitor: the series is read from the events
    series = again.series()
    assert (series.first_id, series.labelled, series.version, series.step, series.ended) == (CHANGE, 400, "v3", 1,
                                                                                            None)
    assert again.needed(series) == 800
    assert again.run() == Outcome.PROMOTED and world.follow_up_events()[-1]["detail"]["step"] == 2

    # a monitor that died inside step 3: its start has no outcome
    world.store.record_event(EventKind.RETRAIN_STARTED, {
        "trigger": "follow_up", "series": series.id, "step": 3, "first_id": CHANGE, "last_id": 1600,
        "change_first_id": CHANGE, "rows": 1000, "labelled": 1000, "reason": "r"}, 15)
    with holding(world.store, RETRAIN, 30.0):  # still running elsewhere: left alone
        assert world.follow_ups().run() is None
    assert world.follow_ups().run() == Outcome.FAILED
    failed = world.follow_up_events(EventKind.RETRAIN_FAILED)[-1]
    assert failed["detail"]["error"].startswith("interrupted") and failed["detail"]["step"] == 3
    assert world.follow_ups().series().ended.startswith("the follow-up was interrupted")
    world.serve(20)
    assert world.follow_ups().run() is None and len(world.job.calls) == 3


def test_a_new_change_ends_the_series_and_its_promotion_starts_the_next(world: World) -> None:
    world.serve(4)
    world.answer_change()
    first = world.follow_ups().series()
    world.serve(2)
    world.answer_change("waiting", since=5 * W + 1)  # the policy fired again: a new change from window 5
    world.serve(5)
    follow = world.follow_ups()
    assert follow.series().ended.startswith("a new retrain started") and follow.run() is None
    assert world.answer_change("promoted", since=5 * W + 1) == Outcome.PROMOTED  # learnt 600 rows
    series = follow.series()
    assert series.id != first.id and (series.first_id, series.labelled, series.ended) == (5 * W + 1, 600, None)
    world.serve(4)  # 1000 since the new change (min(1200, max_rows) needed)
    assert follow.run() == Outcome.PROMOTED and world.job.calls[-1]["ids"] == (5 * W + 1, 1500)


def test_an_operators_promoted_request_starts_a_series(world: World) -> None:
    world.serve(4)
    requests = RetrainRequests(world.store, world.job, world.fresh, world.metrics, windows=2)
    world.store.record_event(EventKind.RETRAIN_REQUESTED, {"actor": "ops", "reason": "new segment"})
    (done,) = requests.handle()
    assert done["outcome"] == Outcome.PROMOTED and (done["first_id"], done["labelled"]) == (CHANGE, 200)
    world.serve(2)
    assert world.follow_ups().run() == Outcome.PROMOTED and world.job.calls[-1]["ids"] == (CHANGE, 600)


def test_it_waits_for_a_shadow_a_flagged_window_a_retrain_in_the_same_run_and_the_lease(world: World) -> None:
    world.serve(4)
    world.answer_change()
    world.serve(2)
    follow = world.follow_ups()
    world.registry.shadow_version = "v9"  # a candidate awaiting its verdict
    assert follow.run() is None
    world.registry.shadow_version = None
    assert follow.run(retrained=True) is None  # a check's retrain, a retry or a request ran in this run
    with holding(world.store, RETRAIN, 30.0):  # another process retrains
        assert follow.run() is None
    world.serve(1, decision=Decision.WATCH)  # the newest window was flagged: maybe a new change
    assert follow.run() is None and len(world.job.calls) == 1
    world.serve(1)
    assert follow.run() == Outcome.PROMOTED
    assert world.job.calls[-1]["ids"] == (CHANGE, 800)  # the flagged window's rows, checked quiet since


def test_it_ends_when_the_champion_is_no_longer_the_series_promotion(world: World) -> None:
    world.serve(4)
    world.answer_change()
    world.registry.champion_version = "v1"  # a watch rolled it back
    world.serve(4)
    assert world.follow_ups().run() is None and len(world.job.calls) == 1


def test_a_follow_up_in_shadow_goes_on_after_its_promotion_and_ends_at_its_rejection(world: World) -> None:
    world.serve(4)
    world.answer_change()
    world.job.answers = ["shadow"]
    world.serve(2)
    follow = world.follow_ups()
    assert follow.run() == Outcome.SHADOW and follow.series().shadow == "v3"
    assert follow.series().ended is None
    world.serve(2)
    assert follow.run() is None  # its verdict first
    world.registry.champion_version, world.registry.shadow_version = "v3", None  # the shadow judge promoted it
    world.store.record_event(EventKind.SHADOW_PROMOTED, {"shadow": "v3", "champion": "v2"}, 7, "v3")
    assert (follow.series().labelled, follow.series().version) == (400, "v3")
    world.job.answers = ["shadow"]
    world.serve(2)
    assert follow.run() == Outcome.SHADOW
    world.registry.shadow_version = None
    world.store.record_event(EventKind.SHADOW_REJECTED, {"shadow": "v4", "champion": "v3"}, 9, "v4")
    assert follow.series().ended == "its candidate v4 was rejected in shadow"
    world.serve(10)
    assert follow.run() is None and len(world.job.calls) == 3


def test_switched_off_or_with_the_reweighted_strategy_there_are_none(world: World) -> None:
    world.serve(4)
    world.answer_change()
    world.serve(10)
    assert world.follow_ups(enabled=False).run() is None
    world.config = world.config.model_copy(update={"strategy": "reweighted"})
    assert world.follow_ups().run() is None and len(world.job.calls) == 1


def test_without_labels_nothing_counts(world: World) -> None:
    world.serve(4)
    world.answer_change()
    world.serve(10, labels=False)
    assert world.follow_ups().run() is None


def test_follow_up_events_never_hide_a_due_retry_of_a_checks_retrain(world: World) -> None:
    world.serve(4)
    world.job.answers = ["raise"]
    last = world.store.last_check()
    assert world.runner.attempt(last.window, CHANGE, last.last_id, Trigger.DRIFT, "drift") == Outcome.FAILED
    world.store.record_event(EventKind.RETRAIN_STARTED, {"trigger": "follow_up", "series": 1, "step": 1}, 3)
    world.store.record_event(EventKind.RETRAIN_FAILED, {"trigger": "follow_up", "retry_at": None}, 3)
    world.runner.clock = lambda: 1e12
    assert world.runner.retry_due() == [Outcome.PROMOTED]
