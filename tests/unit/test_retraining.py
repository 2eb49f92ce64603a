"""The retrain runner and the operator's requests (monitoring/retraining.py, monitoring/requests.py),
on a real SQLite store with a fake job, registry and clock: no model is trained."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.policy import PolicyConfig, PolicyDecision, RetrainPolicy, WindowStats
from driftloop.monitoring.requests import NO_DATA, RetrainRequests
from driftloop.monitoring.retraining import FreshRows, RetrainRunner
from driftloop.monitoring.store import PredictionStore
from driftloop.settings import DataConfig, RetryConfig
from driftloop.vocabulary import Check, Decision, EventKind, Outcome, Signal, Trigger

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
ROWS = 10  # per window


@dataclass
class Job:
    """The retraining job: records its calls; raises while ``fails`` > 0, then answers ``status``."""

    status: str = "promoted"
    fails: int = 0
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, fresh: Any, *, trigger: str, reason: str) -> Any:
        self.calls.append({"fresh": fresh, "trigger": trigger, "reason": reason})
        if self.fails:
            self.fails -= 1
            raise MemoryError("killed mid-training")
        return SimpleNamespace(status=self.status, candidate="v2", promising=False,
                               to_dict=lambda: {"status": self.status, "candidate": "v2"})


class Registry:
    def __init__(self, shadow: str | None = None) -> None:
        self._shadow = SimpleNamespace(version=shadow) if shadow else None

    def candidate(self) -> Any:
        return self._shadow


@pytest.fixture
def store(tmp_path: Path) -> PredictionStore:
    s = PredictionStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    s.insert_predictions([{"request_id": f"r{i}", "created_at": T0 + timedelta(seconds=i), "model_version": "v1",
                           "features": {"x": float(i)}, "prediction": i % 2, "confidence": 0.9}
                          for i in range(4 * ROWS)])
    s.insert_feedback([(f"r{i}", i % 2) for i in range(0, 4 * ROWS, 2)])  # every other row labelled
    yield s
    s.close()


def record(store: PredictionStore, window: int, decision: Decision = Decision.WATCH,
           outcome: Outcome | None = None) -> Check:
    check = Check(window=window, first_id=window * ROWS + 1, last_id=(window + 1) * ROWS, rows=ROWS,
                  model_version="v1", reference_version="v1", drift_share=1.0, drifted_features=["x"],
                  feature_scores={}, labelled=ROWS // 2, accuracy=1.0, champion_labelled=ROWS // 2,
                  champion_accuracy=1.0, decision=decision, reason="drift share 1.00 >= 0.50", outcome=outcome)
    store.record_check(check)
    return check


class Clock:
    now = 1_000.0

    def __call__(self) -> float:
        return self.now


def runner(store: PredictionStore, job: Job, registry: Registry | None = None, **retry: Any
           ) -> tuple[RetrainRunner, RetrainPolicy, MonitorMetrics, Clock]:
    policy, metrics, clock = RetrainPolicy(PolicyConfig(cooldown_windows=2)), MonitorMetrics(), Clock()
    fresh = FreshRows(store, "classification", DataConfig(target="y", timestamp="at"))
    config = RetryConfig(**({"attempts": 3, "backoff_s": 60.0, "max_backoff_s": 100.0} | retry))
    return (RetrainRunner(config, store, registry or Registry(), job, fresh, policy, metrics, clock=clock),
            policy, metrics, clock)


def retrain_decision(since: int, *signals: Signal) -> PolicyDecision:
    return PolicyDecision(Decision.RETRAIN, "flagged for 2 windows", signals or (Signal.DRIFT,), since)


def counted(metrics: MonitorMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("driftloop_retrains_total", {"outcome": outcome})


def test_fresh_rows_are_the_streak_since_its_first_window_with_labels_as_target(store: PredictionStore) -> None:
    job = Job()
    run, policy, metrics, _ = runner(store, job)
    record(store, 0)
    record(store, 1)
    check = record(store, 2, Decision.RETRAIN, Outcome.RUNNING)
    assert run.retrain(check, retrain_decision(1, Signal.DRIFT, Signal.DECAY)) == Outcome.PROMOTED

    (call,) = job.calls
    fresh = call["fresh"]
    assert list(fresh["id"]) == list(range(ROWS + 1, 3 * ROWS + 1))  # windows 1 and 2
    assert "label" not in fresh and fresh["y"].notna().sum() == ROWS  # the labels that arrived
    assert (fresh["at"] == fresh["created_at"]).all()  # data.timestamp: the log time
    assert call["trigger"] == Trigger.DECAY and call["reason"] == "window 2: flagged for 2 windows"
    assert check.outcome == Outcome.PROMOTED and store.last_check().outcome == Outcome.PROMOTED
    assert [e["kind"] for e in store.events()] == [EventKind.RETRAIN_STARTED, EventKind.RETRAIN_PROMOTED]
    assert counted(metrics, "promoted") == 1
    assert policy.update(WindowStats(4, ROWS, 1.0)).action == Decision.COOLDOWN  # retrained at 2: cooling down


def test_no_candidate_while_one_is_in_shadow(store: PredictionStore) -> None:
    job = Job()
    run, *_ = runner(store, job, Registry(shadow="v3"))
    check = record(store, 0, Decision.RETRAIN, Outcome.RUNNING)
    assert run.retrain(check, retrain_decision(0)) == Outcome.SHADOW_PENDING
    assert job.calls == [] and store.events() == []
    stored = store.last_check()
    assert stored.outcome == Outcome.SHADOW_PENDING and stored.reason == check.reason
    assert stored.reason.endswith("v3 is in shadow: no new candidate until it is judged")


def test_waiting_keeps_the_streak_and_is_not_timed(store: PredictionStore) -> None:
    run, policy, metrics, _ = runner(store, Job(status="waiting"))
    check = record(store, 0, Decision.RETRAIN, Outcome.RUNNING)
    assert run.retrain(check, retrain_decision(0)) == Outcome.WAITING
    assert counted(metrics, "waiting") == 1
    assert metrics.registry.get_sample_value("driftloop_retrain_duration_seconds_count") == 0
    assert policy.update(WindowStats(1, ROWS, 1.0)).action == Decision.WATCH  # no cool-down: nothing was trained


def test_a_failure_is_retried_after_a_doubling_capped_back_off_then_given_up(store: PredictionStore) -> None:
    job = Job(fails=10)
    run, _, metrics, clock = runner(store, job)
    check = record(store, 0, Decision.RETRAIN, Outcome.RUNNING)
    assert run.retrain(check, retrain_decision(0)) == Outcome.FAILED
    assert store.last_check().outcome == Outcome.FAILED
    waits = []
    while (last := store.events(EventKind.RETRAIN_FAILED)[-1]["detail"])["retry_at"] is not None:
        waits.append(last["retry_in_s"])
        clock.now = last["retry_at"] - 1
        assert run.retry_due() == []  # not before its time
        clock.now = last["retry_at"]
        assert run.retry_due() == [Outcome.FAILED]
    assert waits == [60.0, 100.0]  # 60, then 120 capped at max_backoff_s
    assert [e["detail"]["attempt"] for e in store.events(EventKind.RETRAIN_STARTED)] == [1, 2, 3]
    assert {e["detail"]["episode"] for e in store.events(EventKind.RETRAIN_FAILED)} == \
        {store.events(EventKind.RETRAIN_STARTED)[0]["id"]}  # the retries belong to the first try
    clock.now += 10**6
    assert run.retry_due() == [] and counted(metrics, "failed") == 3


def test_a_newer_retrain_supersedes_a_due_retry(store: PredictionStore) -> None:
    job = Job(fails=1)
    run, _, _, clock = runner(store, job)
    run.retrain(record(store, 0, Decision.RETRAIN, Outcome.RUNNING), retrain_decision(0))
    run.retrain(record(store, 1, Decision.RETRAIN, Outcome.RUNNING), retrain_decision(1))
    clock.now += 10**6
    assert run.retry_due() == [] and len(job.calls) == 2


def test_recover_fails_checks_left_running_by_a_dead_process(store: PredictionStore) -> None:
    run, *_ = runner(store, Job())
    record(store, 0, Decision.RETRAIN, Outcome.RUNNING)  # died before its retrain started
    record(store, 1, Decision.RETRAIN, Outcome.RUNNING)  # died inside it
    started = store.record_event(EventKind.RETRAIN_STARTED, {"first_id": 11, "last_id": 20, "trigger": "drift",
                                                             "reason": "r", "attempt": 1, "episode": None}, 1)
    run.recover()
    assert [c.outcome for c in store.checks()] == [Outcome.FAILED, Outcome.FAILED]
    (failed,) = store.events(EventKind.RETRAIN_FAILED)
    assert failed["window"] == 1 and failed["detail"]["episode"] == started
    assert failed["detail"]["error"].startswith("interrupted") and failed["detail"]["retry_at"] is not None


def test_requests_run_once_on_the_newest_windows(store: PredictionStore) -> None:
    job, metrics = Job(status="rejected"), MonitorMetrics()
    fresh = FreshRows(store, "classification", DataConfig(target="y"))
    requests = RetrainRequests(store, job, fresh, metrics, windows=2)
    first = store.record_event(EventKind.RETRAIN_REQUESTED, {"actor": "ops", "reason": "early"})
    assert requests.handle() == [{"request": first, "outcome": NO_DATA, "reason": "no window has been checked yet"}]
    for window in range(3):
        record(store, window)
    second = store.record_event(EventKind.RETRAIN_REQUESTED, {"actor": "ops", "reason": "new segment"})
    (done,) = requests.handle()
    assert done["request"] == second and done["outcome"] == Outcome.REJECTED
    (call,) = job.calls
    assert call["trigger"] == Trigger.MANUAL and call["reason"] == "requested by ops: new segment"
    assert list(call["fresh"]["id"]) == list(range(ROWS + 1, 3 * ROWS + 1))  # windows 1 and 2
    assert requests.handle() == [] and counted(metrics, "rejected") == 1
    job.fails = 1
    store.record_event(EventKind.RETRAIN_REQUESTED, {"actor": "ops", "reason": "again"})
    (failed,) = requests.handle()
    assert failed["outcome"] == Outcome.FAILED and "killed mid-training" in failed["error"]
    assert len(store.events(EventKind.RETRAIN_REQUEST_DONE)) == 3


def test_a_failed_request_is_retried_like_a_checks_retrain(store: PredictionStore) -> None:
    """Same back-off, same attempts, each try an event (trigger manual, with the request); the rows
    of the newest windows every time; no check's outcome changes and no cool-down starts."""
    job = Job(fails=2)
    run, policy, metrics, clock = runner(store, job)
    requests = RetrainRequests(store, job, run.fresh, metrics, windows=2, retry=run.retry, clock=clock)
    for window in range(3):
        record(store, window)
    request = store.record_event(EventKind.RETRAIN_REQUESTED, {"actor": "ops", "reason": "new segment"})
    (done,) = requests.handle()
    assert done["outcome"] == Outcome.FAILED and "killed mid-training" in done["error"]
    assert (done["attempt"], done["retry_at"], done["retry_in_s"]) == (1, clock.now + 60.0, 60.0)
    assert requests.handle() == []  # the request is handled: its retries are the runner's
    clock.now = done["retry_at"] - 1
    assert run.retry_due() == []  # not before its time
    clock.now = done["retry_at"]
    assert run.retry_due() == [Outcome.FAILED]
    second = store.events(EventKind.RETRAIN_FAILED)[-1]["detail"]
    assert (second["attempt"], second["retry_in_s"]) == (2, 100.0)  # 120 capped at max_backoff_s
    clock.now = second["retry_at"]
    assert run.retry_due() == [Outcome.PROMOTED]
    clock.now += 10**6
    assert run.retry_due() == []  # done

    starts = store.events(EventKind.RETRAIN_STARTED)
    assert [e["detail"]["attempt"] for e in starts] == [1, 2, 3]
    assert {(e["window"], e["detail"]["request"], e["detail"]["trigger"], e["detail"]["first_id"],
             e["detail"]["last_id"], e["detail"]["episode"] or e["id"]) for e in starts} == \
        {(2, request, Trigger.MANUAL, ROWS + 1, 3 * ROWS, starts[0]["id"])}  # windows 1 and 2, one episode
    assert [c["trigger"] for c in job.calls] == [Trigger.MANUAL] * 3
    assert [e["detail"]["request"] for e in store.events(EventKind.RETRAIN_FAILED)] == [request, request]
    (promoted,) = store.events(EventKind.RETRAIN_PROMOTED)
    assert (promoted["detail"]["request"], promoted["detail"]["attempt"]) == (request, 3)
    assert counted(metrics, "failed") == 2 and counted(metrics, "promoted") == 1
    assert [c.outcome for c in store.checks()] == [None, None, None]
    assert policy.update(WindowStats(3, ROWS, 1.0)).action != Decision.COOLDOWN


def test_a_request_whose_process_died_in_its_first_try_is_failed_then_retried(store: PredictionStore) -> None:
    from driftloop.monitoring.lease import RETRAIN, holding

    job = Job()
    run, _, metrics, clock = runner(store, job)
    requests = RetrainRequests(store, job, run.fresh, metrics, windows=2, retry=run.retry, clock=clock)
    for window in range(3):
        record(store, window)
    request = store.record_event(EventKind.RETRAIN_REQUESTED, {"actor": "ops", "reason": "new segment"})
    started = store.record_event(EventKind.RETRAIN_STARTED, {  # its process died inside the job
        "first_id": ROWS + 1, "last_id": 3 * ROWS, "trigger": "manual", "reason": "requested by ops: new segment",
        "attempt": 1, "request": request, "rows": 2 * ROWS, "labelled": ROWS, "episode": None}, 2)
    with holding(store, RETRAIN, 30.0):  # ...or is another process still running it?
        assert requests.handle() == []
    (done,) = requests.handle()
    assert done["outcome"] == Outcome.FAILED and done["error"].startswith("interrupted")
    assert (done["episode"], done["retry_at"]) == (started, clock.now + 60.0) and job.calls == []  # not run afresh
    assert requests.handle() == []
    clock.now = done["retry_at"]
    assert run.retry_due() == [Outcome.PROMOTED]
    (call,) = job.calls
    assert list(call["fresh"]["id"]) == list(range(ROWS + 1, 3 * ROWS + 1))
    assert store.events(EventKind.RETRAIN_STARTED)[-1]["detail"]["attempt"] == 2


def test_recover_takes_a_running_checks_rows_from_its_own_start_not_a_requests(store: PredictionStore) -> None:
    run, *_ = runner(store, Job())
    record(store, 1, Decision.RETRAIN, Outcome.RUNNING)  # its process died inside the retrain
    own = store.record_event(EventKind.RETRAIN_STARTED, {"first_id": 11, "last_id": 20, "trigger": "drift",
                                                         "reason": "r", "attempt": 1, "episode": None}, 1)
    store.record_event(EventKind.RETRAIN_STARTED, {"first_id": 1, "last_id": 20, "trigger": "manual", "reason": "ops",
                                                   "attempt": 1, "episode": None, "request": 7}, 1)  # after a restart
    run.recover()
    (failed,) = store.events(EventKind.RETRAIN_FAILED)
    assert (failed["detail"]["episode"], failed["detail"]["first_id"], failed["detail"]["trigger"]) == (own, 11, "drift")


def test_a_request_whose_process_died_after_its_outcome_is_recorded_with_it(store: PredictionStore) -> None:
    job = Job()
    run, _, metrics, clock = runner(store, job)
    requests = RetrainRequests(store, job, run.fresh, metrics, windows=2, retry=run.retry, clock=clock)
    request = store.record_event(EventKind.RETRAIN_REQUESTED, {"actor": "ops", "reason": "new segment"})
    started = store.record_event(EventKind.RETRAIN_STARTED, {
        "first_id": ROWS + 1, "last_id": 3 * ROWS, "trigger": "manual", "reason": "r", "attempt": 1,
        "request": request, "rows": 2 * ROWS, "labelled": ROWS, "episode": None}, 2)
    store.record_event(EventKind.RETRAIN_PROMOTED, {"status": "promoted", "candidate": "v2", "trigger": "manual",
                                                    "attempt": 1, "episode": started, "request": request}, 2, "v2")
    (done,) = requests.handle()  # died between the outcome and the request's record: not run again
    assert (done["outcome"], done["candidate"], done["first_id"]) == (Outcome.PROMOTED, "v2", ROWS + 1)
    assert job.calls == [] and store.events(EventKind.RETRAIN_FAILED) == []
