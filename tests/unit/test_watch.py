"""The promotion watch (monitoring/watch.py) on a real SQLite store and a real registry: after a
promotion the predecessor scores beside the new champion (the shadow pointer in the ``watch``
role), and looks at ``min_labels``, 2x, 4x, ... labelled rows keep or roll back the promotion
(most tests here take one look, ``looks=1``; the multi-look tests say so).

What the serving workers would score is written directly, as in tests/unit/test_shadow_judge.py
(tests/servers/test_shadow.py checks that a worker scores with whatever the shadow pointer names).
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from driftloop.models.errors import RegistryError
from driftloop.models.registry import MODEL_FILE, Registry, ShadowRole
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.policy import PolicyConfig, PolicyDecision, RetrainPolicy
from driftloop.monitoring.retraining import FreshRows, RetrainRunner
from driftloop.monitoring.shadow import ShadowJudge
from driftloop.monitoring.store import PredictionStore, utcnow
from driftloop.monitoring.watch import PromotionWatch
from driftloop.settings import DataConfig, RetrainingConfig, RetryConfig, WatchConfig
from driftloop.vocabulary import Decision, EventKind, Outcome, Signal

from tests.conftest import make_settings
from tests.servers.test_store import check

MIN_LABELS = 20


@pytest.fixture
def registry(champion_home: Path, tmp_path: Path) -> Registry:
    """v1 champion, v2 and v3 registered (copies of v1's graph: the rows below say what each answered)."""
    home = tmp_path / "home"
    shutil.copytree(champion_home / "bentoml", home)
    registry = Registry(home, "loans")
    v1 = registry.get("v1")
    for _ in range(2):
        registry.register((v1.path / MODEL_FILE).read_bytes(), v1.schema, registry.reference("v1"),
                          {"metrics": v1.metrics}, trigger="manual", parent="v1")
    return registry


@pytest.fixture
def store(tmp_path: Path) -> PredictionStore:
    s = PredictionStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    yield s
    s.close()


class World:
    def __init__(self, store: PredictionStore, registry: Registry, **config: Any) -> None:
        self.store, self.registry = store, registry
        self.policy, self.metrics = RetrainPolicy(PolicyConfig(cooldown_windows=2)), MonitorMetrics()
        self.config = WatchConfig(**({"enabled": True, "min_labels": MIN_LABELS, "looks": 1, "max_windows": 3} | config))
        self.watch = self.restarted()
        self.windows = 0

    def restarted(self) -> PromotionWatch:
        """A watch as a (re)started monitor builds it: no state but the registry and the store."""
        return PromotionWatch(self.config, "classification", self.store, self.registry, self.metrics)

    def served(self, champion: list[Any], predecessor: list[Any], labels: list[Any] | None) -> None:
        """Rows the champion answered and the watch shadow scored (labelled unless ``labels`` is None)."""
        shadow, version = self.registry.shadow(), self.registry.champion().version
        scorer = shadow.version if shadow else "v1"  # rows a cleared watch shadow would have scored
        n = self.store.count_predictions()
        ids = [f"r{n + i}" for i in range(len(champion))]
        now = utcnow()
        self.store.insert_predictions([{"request_id": rid, "created_at": now, "model_version": version,
                                        "features": {"x": 1.0}, "prediction": p} for rid, p in zip(ids, champion)])
        self.store.insert_shadow_predictions([{"request_id": rid, "model_version": scorer, "prediction": p}
                                              for rid, p in zip(ids, predecessor)])
        if labels is not None:
            self.store.insert_feedback(list(zip(ids, labels)))

    def checked(self, n: int = 1, **kw: Any) -> None:
        """``n`` more monitoring windows checked (now)."""
        for _ in range(n):
            self.store.record_check(check(self.windows, created_at=utcnow(), **kw))
            self.windows += 1

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.store.events() if e["kind"].startswith("watch_")]

    def rollbacks(self) -> float:
        return self.metrics.registry.get_sample_value("driftloop_rollbacks_total", {"reason": "watch"})


@pytest.fixture
def world(store: PredictionStore, registry: Registry) -> World:
    return World(store, registry)


def test_a_promotion_starts_a_watch_with_its_predecessor_as_shadow(world: World) -> None:
    assert world.watch.run() is None  # v1 was never promoted over anything
    world.registry.promote("v2", actor="test", reason="better")
    started = world.watch.run()
    assert started["kind"] == EventKind.WATCH_STARTED and (started["champion"], started["predecessor"]) == ("v2", "v1")
    shadow = world.registry.shadow()
    assert (shadow.version, shadow.role) == ("v1", ShadowRole.WATCH) and world.registry.candidate() is None
    last = world.registry.history()[-1]
    assert (last["action"], last["version"], last["actor"], last["role"]) == ("shadow_set", "v1", "monitor", "watch")
    assert world.watch.run() is None and world.kinds() == [EventKind.WATCH_STARTED]  # waiting for labels
    assert world.rollbacks() == 0  # exported at 0 from the start


def test_a_significantly_worse_champion_is_rolled_back_recorded_and_counted(world: World) -> None:
    world.checked()
    world.registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    world.served([0] * 10, [1] * 10, [1] * 10)
    world.checked()
    assert world.watch.run() is None  # 10 of 20 labels: no look yet
    world.served([0] * 8 + [1] * 4, [1] * 12, [1] * 12)

    ended = world.watch.run()
    assert ended["kind"] == EventKind.WATCH_ROLLED_BACK
    assert (ended["champion_score"], ended["predecessor_score"], ended["labelled"]) == (4 / 22, 1.0, 22)
    assert ended["predecessor_only"] == 18 and ended["champion_only"] == 0 and ended["p_value"] < 1e-5
    assert "significantly worse" in ended["reason"] and "18 rows only the predecessor got right" in ended["reason"]
    champion = world.registry.champion()
    assert (champion.version, champion.action, champion.lineage) == ("v1", "rollback", ())
    assert champion.actor == "monitor" and champion.reason.startswith("watch: significantly worse than v1")
    assert world.registry.shadow() is None  # the predecessor is the champion again
    (event,) = world.store.events(EventKind.WATCH_ROLLED_BACK)
    assert event["model_version"] == "v2" and event["window"] == 1 and event["detail"]["test"] == "mcnemar_exact"
    assert world.rollbacks() == 1
    assert world.watch.run() is None  # a rollback is not a promotion: nothing more to watch
    assert world.kinds() == [EventKind.WATCH_STARTED, EventKind.WATCH_ROLLED_BACK]


def test_a_champion_not_significantly_worse_is_kept_after_one_look(world: World) -> None:
    world.registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    # worse on 3 rows, better on 1: not significant on so few discordant rows
    world.served([0, 0, 0, 1] + [1] * 16, [1, 1, 1, 0] + [1] * 16, [1] * 20)
    ended = world.watch.run()
    assert ended["kind"] == EventKind.WATCH_KEPT and 0.05 < ended["p_value"] < 1
    assert "not significantly worse" in ended["reason"]
    assert world.registry.champion().version == "v2" and world.registry.shadow() is None
    assert world.rollbacks() == 0
    world.served([0] * 30, [1] * 30, [1] * 30)  # evidence after the look changes nothing: one look only
    assert world.watch.run() is None and world.restarted().run() is None
    assert world.kinds() == [EventKind.WATCH_STARTED, EventKind.WATCH_KEPT]


def test_regression_compares_squared_errors(store: PredictionStore, registry: Registry) -> None:
    world = World(store, registry)
    world.watch = PromotionWatch(world.config, "regression", store, registry, world.metrics)
    registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    world.served([2.0 + 0.01 * i for i in range(20)], [1.0] * 20, [1.0] * 20)
    ended = world.watch.run()
    assert ended["kind"] == EventKind.WATCH_ROLLED_BACK and ended["metric"] == "rmse"
    assert ended["predecessor_score"] == 0.0 and ended["champion_score"] > 1.0


def test_a_watch_without_enough_labels_expires_after_max_windows(world: World) -> None:
    world.checked()  # before the promotion: not counted
    world.registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    world.served([0] * 50, [1] * 50, None)
    world.checked(2)
    assert world.watch.run() is None
    world.checked()
    ended = world.watch.run()
    assert ended["kind"] == EventKind.WATCH_EXPIRED and "0 of 20 labelled rows after 3 windows" in ended["reason"]
    assert world.registry.champion().version == "v2" and world.registry.shadow() is None
    assert world.store.events(EventKind.WATCH_EXPIRED)[0]["window"] == 3


def test_a_restarted_monitor_resumes_an_open_watch_and_never_rewatches_an_old_promotion(world: World) -> None:
    world.registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    world.served([0] * 10, [1] * 10, [1] * 10)
    again = world.restarted()
    assert again.run() is None and world.kinds() == [EventKind.WATCH_STARTED]  # resumed, not restarted
    world.served([0] * 10, [1] * 10, [1] * 10)
    assert again.run()["kind"] == EventKind.WATCH_ROLLED_BACK
    world.registry.promote("v2", actor="test", reason="once more")  # a new promotion of the same pair...
    assert world.restarted().run()["kind"] == EventKind.WATCH_STARTED
    world.served([0] * 5, [1] * 5, [1] * 5)
    assert world.restarted().run() is None  # ...judged on its own rows only (5 of 20), not the last watch's


def test_a_promotion_older_than_max_windows_is_not_watched(world: World) -> None:
    world.registry.promote("v2", actor="test", reason="long ago")  # e.g. before the monitor was upgraded
    world.checked(3)
    assert world.watch.run() is None and world.kinds() == [] and world.registry.shadow() is None


def test_a_new_promotion_during_a_watch_watches_the_new_pair(world: World) -> None:
    world.registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    world.served([0] * 10, [1] * 10, [1] * 10)
    world.registry.promote("v3", actor="test", reason="better still")
    started = world.watch.run()
    assert started["kind"] == EventKind.WATCH_STARTED and (started["champion"], started["predecessor"]) == ("v3", "v2")
    assert (world.registry.shadow().version, world.registry.shadow().role) == ("v2", ShadowRole.WATCH)
    (expired,) = world.store.events(EventKind.WATCH_EXPIRED)
    assert expired["model_version"] == "v2" and "the champion changed before a verdict: now v3" in \
        expired["detail"]["reason"]
    assert world.kinds() == [EventKind.WATCH_STARTED, EventKind.WATCH_EXPIRED, EventKind.WATCH_STARTED]


def test_an_operator_rollback_during_a_watch_ends_it(world: World) -> None:
    world.registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    world.registry.rollback(actor="alice", reason="by hand")
    ended = world.watch.run()
    assert ended["kind"] == EventKind.WATCH_EXPIRED and "rollback by alice" in ended["reason"]
    assert world.registry.champion().version == "v1" and world.registry.shadow() is None
    assert world.rollbacks() == 0  # counted: the monitor's rollbacks only


def test_a_rollback_never_undoes_a_newer_change(world: World) -> None:
    world.registry.promote("v2", actor="test", reason="better")
    watched = world.registry.champion()
    world.registry.promote("v3", actor="test", reason="meanwhile")
    with pytest.raises(RegistryError, match="the champion moved on: expected v2"):
        world.registry.rollback(actor="monitor", reason="stale evidence", expect=watched)
    assert world.registry.champion().version == "v3"


def test_switched_off_nothing_is_watched_and_an_open_watch_ends(store: PredictionStore, registry: Registry) -> None:
    world = World(store, registry)
    registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    world.config = WatchConfig(enabled=False, min_labels=MIN_LABELS)
    off = world.restarted()
    ended = off.run()
    assert ended["kind"] == EventKind.WATCH_EXPIRED and "retraining.watch.enabled is false" in ended["reason"]
    assert registry.shadow() is None
    registry.promote("v3", actor="test", reason="better still")
    assert off.run() is None and registry.shadow() is None
    assert world.kinds() == [EventKind.WATCH_STARTED, EventKind.WATCH_EXPIRED]


def test_a_candidate_in_shadow_is_never_overwritten_and_its_promotion_is_watched(world: World) -> None:
    world.registry.set_shadow("v3", actor="test", reason="candidate")
    world.registry.promote("v2", actor="alice", reason="by hand")
    assert world.watch.run() is None
    assert (world.registry.shadow().version, world.registry.shadow().role) == ("v3", ShadowRole.CANDIDATE)
    world.registry.clear_shadow(actor="monitor", reason="shadow rejected")
    assert world.watch.run()["kind"] == EventKind.WATCH_STARTED  # still recent: watched now
    assert world.registry.shadow().version == "v1"


def test_a_candidate_taking_the_shadow_ends_the_watch(world: World) -> None:
    world.registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    world.registry.set_shadow("v3", actor="retrain", reason="a new candidate")  # shadow mode, after a retrain
    ended = world.watch.run()
    assert ended["kind"] == EventKind.WATCH_EXPIRED and "no longer names v1 as a watch: now candidate v3" in \
        ended["reason"]
    assert world.registry.candidate().version == "v3"
    assert world.watch.run() is None  # the promotion was watched already


def test_the_shadow_judge_ignores_a_watch(world: World) -> None:
    world.registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    world.served([1] * 30, [0] * 30, [1] * 30)  # the predecessor is far worse: a candidate this bad is rejected
    config = RetrainingConfig(shadow={"enabled": True, "min_labels": 1, "max_windows": 1})
    judge = ShadowJudge(config, "classification", world.store, world.registry, world.policy, world.metrics)
    assert judge.judge() is None and world.registry.shadow().version == "v1"


def test_a_watch_never_blocks_a_retrain(world: World) -> None:
    world.registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    calls = []

    def job(fresh: Any, *, trigger: str, reason: str) -> Any:
        calls.append(reason)
        return SimpleNamespace(status="rejected", candidate="v4", promising=False,
                               to_dict=lambda: {"status": "rejected"})

    runner = RetrainRunner(RetryConfig(), world.store, world.registry, job,
                           FreshRows(world.store, "classification", DataConfig(target="y")), world.policy,
                           world.metrics)
    world.checked(decision=Decision.RETRAIN, outcome=Outcome.RUNNING)
    (check_,) = world.store.checks()
    decision = PolicyDecision(Decision.RETRAIN, "flagged", (Signal.DRIFT,), 0)
    assert runner.retrain(check_, decision) == Outcome.REJECTED and len(calls) == 1
    world.registry.set_shadow("v3", actor="retrain", reason="candidate")
    assert runner.retrain(check_, decision) == Outcome.SHADOW_PENDING and len(calls) == 1  # a candidate does


def test_the_monitor_runs_the_watch(tmp_path: Path, store: PredictionStore, registry: Registry) -> None:
    from driftloop.monitoring.monitor import Monitor

    settings = make_settings(tmp_path, registry={"home": str(registry.home)})
    assert settings.retraining.watch.enabled  # on by default
    registry.promote("v2", actor="test", reason="better")
    Monitor(settings, store, registry).run_once()
    assert [e["kind"] for e in store.events()] == [EventKind.WATCH_STARTED]
    off = make_settings(tmp_path, registry={"home": str(registry.home)}, retraining={"watch": {"enabled": False}})
    registry.promote("v3", actor="test", reason="better still")
    Monitor(off, store, registry).run_once()
    assert registry.shadow() is None and store.events()[-1]["kind"] == EventKind.WATCH_EXPIRED


def test_old_pointers_read_as_before(registry: Registry) -> None:
    import json

    registry.promote("v2", actor="test", reason="better")
    registry.set_shadow("v3", actor="test", reason="candidate")
    for path, key in ((registry.pointer_path, "action"), (registry.shadow_path, "role")):
        record = json.loads(path.read_text())
        del record[key]
        path.write_text(json.dumps(record))
    assert registry.champion().action == "promote" and registry.shadow().role == ShadowRole.CANDIDATE
    assert registry.candidate().version == "v3"


def test_setting_the_same_shadow_in_another_role_rewrites_it(registry: Registry) -> None:
    first = registry.set_shadow("v2", actor="test", reason="candidate")
    assert registry.set_shadow("v2", actor="test", reason="again") == first  # same role: unchanged
    watch = registry.set_shadow("v2", actor="test", reason="watch", role=ShadowRole.WATCH)
    assert watch.role == ShadowRole.WATCH and registry.shadow() == watch and registry.candidate() is None
    assert [h.get("role") for h in registry.history() if h["action"] == "shadow_set"] == ["candidate", "watch"]


def test_timestamps_before_the_watch_do_not_count(world: World) -> None:
    """Rows this pair answered before the watch began (an earlier watch of the same pair) are not its evidence."""
    world.registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    shadow = world.registry.shadow()
    early = utcnow() - timedelta(hours=1)
    world.store.insert_predictions([{"request_id": f"old{i}", "created_at": early, "model_version": "v2",
                                     "features": {"x": 1.0}, "prediction": 0} for i in range(30)])
    world.store.insert_shadow_predictions([{"request_id": f"old{i}", "model_version": shadow.version,
                                            "prediction": 1} for i in range(30)])
    world.store.insert_feedback([(f"old{i}", 1) for i in range(30)])
    assert world.watch.run() is None


def test_a_rollback_that_cannot_be_done_ends_the_watch_loudly(world: World) -> None:
    world.registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    world.served([0] * 20, [1] * 20, [1] * 20)
    with open(world.registry.get("v1").path / MODEL_FILE, "ab") as fh:  # the predecessor's graph damaged since
        fh.write(b"\0")
    ended = world.watch.run()
    assert ended["kind"] == EventKind.WATCH_EXPIRED and "significantly worse, but the rollback to v1 failed" in \
        ended["reason"] and "checksum mismatch" in ended["reason"]
    assert world.registry.champion().version == "v2" and world.registry.shadow() is None and world.rollbacks() == 0


# -- several looks ---------------------------------------------------------------------------------
def test_a_promotion_worse_on_later_rows_is_rolled_back_at_a_later_look(store: PredictionStore,
                                                                         registry: Registry) -> None:
    """Grouped arrival: the new champion wins on the stretch it was trained for, loses on the next."""
    world = World(store, registry, looks=3, max_windows=10)
    world.registry.promote("v2", actor="test", reason="better")
    started = world.watch.run()
    assert started["looks"] == 3 and "looks at 20, 40, 80 labelled rows" in started["reason"]
    world.served([1] * 20, [1] * 16 + [0] * 4, [1] * 20)  # first stretch: v2 slightly better
    looked = world.watch.run()
    assert looked["kind"] == EventKind.WATCH_LOOKED and (looked["look"], looked["looks"]) == (1, 3)
    assert looked["significance"] == pytest.approx(0.05 / 3) and looked["labelled"] == 20
    assert world.registry.champion().version == "v2" and world.registry.shadow().role == ShadowRole.WATCH
    world.served([0] * 10, [1] * 10, [1] * 10)  # 30 labelled: the second look (40) is not due
    assert world.watch.run() is None and world.restarted().run() is None
    world.served([0] * 10, [1] * 10, [1] * 10)  # the next stretch: v1 right where v2 is wrong
    ended = world.restarted().run()  # a restarted monitor counts the recorded look: this is look 2
    assert ended["kind"] == EventKind.WATCH_ROLLED_BACK and (ended["look"], ended["labelled"]) == (2, 40)
    assert ended["predecessor_only"] == 20 and ended["champion_only"] == 4
    assert "look 2 of 3" in ended["reason"] and world.registry.champion().version == "v1"
    assert world.kinds() == [EventKind.WATCH_STARTED, EventKind.WATCH_LOOKED, EventKind.WATCH_ROLLED_BACK]
    assert world.rollbacks() == 1


def test_a_champion_as_good_at_every_look_is_kept_after_the_last(store: PredictionStore,
                                                                  registry: Registry) -> None:
    world = World(store, registry, looks=2, max_windows=10)
    world.registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    # worse on 3 rows, better on 2 of every 20: never significant
    for _ in range(2):
        world.served([0, 0, 0, 1, 1] + [1] * 15, [1, 1, 1, 0, 0] + [1] * 15, [1] * 20)
    world.served([1] * 10, [1] * 10, [1] * 10)
    ended = world.watch.run()  # 50 labelled rows: past both points, so the last look (not two on the same rows)
    assert ended["kind"] == EventKind.WATCH_KEPT and ended["look"] == 2 and "look 2 of 2" in ended["reason"]
    assert ended["labelled"] == 50 and world.kinds() == [EventKind.WATCH_STARTED, EventKind.WATCH_KEPT]
    assert world.registry.champion().version == "v2" and world.registry.shadow() is None
    assert world.watch.run() is None


def test_at_max_windows_the_last_look_uses_the_rows_there_are(store: PredictionStore, registry: Registry) -> None:
    world = World(store, registry, looks=4, max_windows=2)
    world.registry.promote("v2", actor="test", reason="better")
    world.watch.run()
    world.served([1] * 20, [1] * 20, [1] * 20)
    assert world.watch.run()["kind"] == EventKind.WATCH_LOOKED
    world.served([0] * 12 + [1] * 3, [1] * 15, [1] * 15)  # 35 labelled: look 2 (40) not due yet
    assert world.watch.run() is None
    world.checked(2)  # max_windows: the last look, on the 35 rows there are
    ended = world.watch.run()
    assert ended["kind"] == EventKind.WATCH_ROLLED_BACK and (ended["look"], ended["looks"]) == (2, 4)
    assert ended["labelled"] == 35 and ended["significance"] == pytest.approx(0.05 / 4)


def test_a_watch_started_before_looks_existed_takes_one_look(world: World) -> None:
    world.registry.promote("v2", actor="test", reason="better")
    started = world.watch.run()
    (event,) = world.store.events(EventKind.WATCH_STARTED)
    detail = {k: v for k, v in event["detail"].items() if k != "looks"}  # as an earlier driftloop wrote it
    with world.store.engine.begin() as conn:
        from driftloop.monitoring.store import events
        conn.execute(events.update().where(events.c.id == event["id"]).values(detail=json.dumps(detail)))
    world.config = WatchConfig(enabled=True, min_labels=MIN_LABELS, looks=4, max_windows=3)
    world.served([0, 0, 0, 1] + [1] * 16, [1, 1, 1, 0] + [1] * 16, [1] * 20)
    ended = world.restarted().run()
    assert started["looks"] == 1 and ended["kind"] == EventKind.WATCH_KEPT and ended["looks"] == 1
