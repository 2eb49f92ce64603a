"""A retrain that crashes, or dies with its process, is recorded as failed, leaves the champion
serving and is tried again with back-off (``retraining.retry``), in process on a real store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from driftloop.models.registry import Registry
from driftloop.monitoring.monitor import Monitor
from driftloop.training.retrain import retrain
from driftloop.vocabulary import Check

from tests.unit.test_monitor import WINDOW, serve, world  # noqa: F401  (world: the fixture)
from tests.waiting import wait_until


class Clock:
    def __init__(self, now: float = 2_000_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def flaky(fails: int) -> Any:
    """A retrainer whose first ``fails`` calls raise, then the real job."""
    calls = {"n": 0}

    def run(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= fails:
            raise MemoryError(f"killed mid-training (call {calls['n']})")
        return retrain(*args, **kwargs)
    run.calls = calls  # type: ignore[attr-defined]
    return run


def attempts(store: Any, kind: str) -> list[int]:
    return [e["detail"]["attempt"] for e in store.events(kind)]


def serve_until_a_retrain_fails(world: dict[str, Any], monitor: Monitor) -> list[Check]:
    live = world["frame"][world["frame"]["period"] != "train"].reset_index(drop=True)
    checks: list[Check] = []
    for start in range(0, len(live), WINDOW):
        serve(world["store"], world["registry"], live.iloc[start:start + WINDOW])
        checks += monitor.run_once()
        if world["store"].events("retrain_failed"):
            return checks
    raise AssertionError(f"no retrain failed: {[(c.window, c.decision, c.outcome) for c in checks]}")


def test_a_failed_retrain_is_retried_after_its_back_off_and_then_promotes(world: dict[str, Any]) -> None:
    clock = Clock()
    retrainer = flaky(1)
    monitor = Monitor(world["settings"], world["store"], world["registry"], retrainer=retrainer, clock=clock)
    checks = serve_until_a_retrain_fails(world, monitor)
    store = world["store"]
    (failure,) = store.events("retrain_failed")
    window = failure["window"]
    assert failure["detail"]["attempt"] == 1 and "killed mid-training" in failure["detail"]["error"]
    assert failure["detail"]["retry_at"] == pytest.approx(clock.now + 60.0)  # retraining.retry.backoff_s
    assert world["registry"].champion().version == "v1"
    assert checks[-1].window == window and checks[-1].outcome == "failed"

    starts = len(store.events("retrain_started"))
    clock.now = failure["detail"]["retry_at"] - 1
    monitor.run_once()
    assert len(store.events("retrain_started")) == starts  # not before its time

    clock.now = failure["detail"]["retry_at"]
    retried = Monitor(world["settings"], store, world["registry"], retrainer=retrainer, clock=clock)
    retried.run_once()  # a restarted monitor retries too: the schedule is in the store
    retry = store.events("retrain_started")[-1]["detail"]
    assert retry["attempt"] == 2 and retry["episode"] == failure["detail"]["episode"]
    assert (retry["first_id"], retry["last_id"]) == (failure["detail"]["first_id"], failure["detail"]["last_id"])
    outcome = {c.window: c for c in store.checks()}[window].outcome
    assert outcome in ("promoted", "rejected")
    assert [e["detail"]["attempt"] for e in store.events(f"retrain_{outcome}") if e["window"] == window] == [2]
    clock.now += 10_000
    retried.run_once()
    assert store.events("retrain_started")[-1]["detail"] == retry  # done: never retried again


def test_retries_stop_after_the_configured_attempts_with_doubling_back_off(world: dict[str, Any]) -> None:
    clock = Clock()
    retrainer = flaky(10**6)
    monitor = Monitor(world["settings"], world["store"], world["registry"], retrainer=retrainer, clock=clock)
    serve_until_a_retrain_fails(world, monitor)
    store = world["store"]
    delays = []
    for _ in range(5):
        last = store.events("retrain_failed")[-1]["detail"]
        if last["retry_at"] is None:
            break
        delays.append(last["retry_in_s"])
        clock.now = last["retry_at"]
        monitor.run_once()
    assert attempts(store, "retrain_failed") == [1, 2, 3]  # retraining.retry.attempts
    assert delays == [60.0, 120.0]
    assert store.events("retrain_failed")[-1]["detail"]["retry_at"] is None  # given up
    assert world["registry"].champion().version == "v1"
    clock.now += 10**6
    monitor.run_once()
    assert attempts(store, "retrain_started") == [1, 2, 3]


def test_a_failed_requested_retrain_is_retried_by_the_monitor_after_its_back_off(world: dict[str, Any]) -> None:
    """``POST /admin/retrain``'s request, run by the monitor, fails once: retried after
    ``retraining.retry.backoff_s`` on the same rows, by a restarted monitor too, as a check's retrain is."""
    clock = Clock()
    retrainer = flaky(1)
    monitor = Monitor(world["settings"], world["store"], world["registry"], retrainer=retrainer, clock=clock)
    store = world["store"]
    stable = world["frame"][world["frame"]["period"] == "stable"].reset_index(drop=True)
    for start in range(0, 2 * WINDOW, WINDOW):
        serve(store, world["registry"], stable.iloc[start:start + WINDOW])
    assert [c.decision for c in monitor.run_once()] == ["none", "none"]  # quiet: nothing retrains by itself
    request = store.record_event("retrain_requested", {"reason": "new segment", "actor": "test"})
    monitor.run_once()
    (done,) = store.events("retrain_request_done")
    assert done["detail"]["request"] == request and done["detail"]["outcome"] == "failed"
    assert done["detail"]["retry_at"] == pytest.approx(clock.now + 60.0)  # retraining.retry.backoff_s
    (failure,) = store.events("retrain_failed")
    assert failure["detail"]["request"] == request and failure["detail"]["trigger"] == "manual"

    clock.now = done["detail"]["retry_at"] - 1
    monitor.run_once()
    assert len(store.events("retrain_started")) == 1  # not before its time
    clock.now = done["detail"]["retry_at"]
    Monitor(world["settings"], store, world["registry"], retrainer=retrainer, clock=clock).run_once()
    retry = store.events("retrain_started")[-1]["detail"]
    assert (retry["attempt"], retry["request"], retry["episode"]) == (2, request, failure["detail"]["episode"])
    assert (retry["first_id"], retry["last_id"]) == (failure["detail"]["first_id"], failure["detail"]["last_id"])
    (end,) = store.events(["retrain_promoted", "retrain_rejected"])
    assert end["detail"]["request"] == request and end["detail"]["attempt"] == 2
    assert retrainer.calls["n"] == 2 and [c.outcome for c in store.checks()] == [None, None]


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from tests.conftest import make_settings
    from tests.unit.test_monitor import WINDOW, serve
    from driftloop.models.registry import Registry
    from driftloop.monitoring.monitor import Monitor
    from driftloop.monitoring.store import PredictionStore
    from driftloop.training import scenarios

    settings = make_settings(Path({tmp!r}), registry={{"home": {home!r}}},
                             monitoring={{"window_rows": WINDOW, "min_labels": 100}}, retraining={{"min_rows": 300}})
    store = PredictionStore(settings.store.url).create()
    registry = Registry(settings.registry.home, "loans")
    frame = scenarios.generate(scenarios.loans_periods(window=WINDOW, stable=3, covariate=4, concept=4), seed=7)

    def hang(*args, **kwargs):
        Path({marker!r}).write_text("training")
        time.sleep(600)

    monitor = Monitor(settings, store, registry, retrainer=hang)
    live = frame[frame["period"] != "train"].reset_index(drop=True)
    for start in range(0, len(live), WINDOW):
        serve(store, registry, live.iloc[start:start + WINDOW])
        monitor.run_once()
""")


@pytest.mark.slow
def test_a_retrain_killed_with_its_process_is_recorded_failed_and_retried(world: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    settings = world["settings"]
    marker = tmp_path / "retraining"
    script = CHILD.format(root=str(Path(__file__).parents[2]), tmp=str(tmp_path), home=str(settings.registry.home),
                          marker=str(marker))
    log = tmp_path / "child.log"
    with open(log, "wb") as err:
        child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=err)
    try:
        def alive() -> None:
            assert child.poll() is None, log.read_text()[-3000:]

        wait_until(marker.exists, "the child starting a retrain", 300, interval=0.1, alive=alive)
        os.killpg(child.pid, signal.SIGKILL)  # killed inside the retrain
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)

    store = world["store"]
    (running,) = [c for c in store.checks() if c.outcome == "running"]
    assert store.events("retrain_failed") == []
    clock = Clock()
    registry = Registry(settings.registry.home, "loans")
    monitor = Monitor(settings, store, registry, retrainer=retrain, clock=clock)
    monitor.run_once()
    (failed,) = store.events("retrain_failed")
    assert failed["window"] == running.window and failed["detail"]["error"].startswith("interrupted")
    assert {c.window: c for c in store.checks()}[running.window].outcome == "failed"
    assert registry.champion().version == "v1"  # the champion never moved

    clock.now = failed["detail"]["retry_at"]
    monitor.run_once()
    outcome = {c.window: c for c in store.checks()}[running.window].outcome
    assert outcome in ("promoted", "rejected")
    assert attempts(store, "retrain_started") == [1, 2]
