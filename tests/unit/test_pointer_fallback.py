"""A worker starting on a champion that cannot load serves the newest loadable version of its
lineage instead, and says so (issue 13: a champion whose checksums matched but whose graph could
not run left every restarted worker answering 503). A worker already serving keeps its model."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from driftloop.models.registry import MODEL_FILE, Registry
from driftloop.service.serving import PointerWatcher

GARBAGE = b"\x08\x07garbage"  # registered through the registry: its checksum matches


@pytest.fixture
def registry(champion_home: Path, tmp_path: Path) -> Registry:
    shutil.copytree(champion_home / "bentoml", tmp_path / "home")
    return Registry(tmp_path / "home", "loans")


def register(registry: Registry, graph: bytes | None = None) -> str:
    v1 = registry.get("v1")
    return registry.register(graph or (v1.path / MODEL_FILE).read_bytes(), v1.schema, registry.reference("v1"), {},
                             trigger="manual", parent="v1").version


def point_at(registry: Registry, version: str, lineage: list[str]) -> None:
    """The champion pointer as a promotion of a version that broke afterwards would leave it."""
    pointer = json.loads(registry.pointer_path.read_text())
    registry.pointer_path.write_text(json.dumps(pointer | {"version": version, "lineage": lineage}))


class Worker:
    def __init__(self, registry: Registry) -> None:
        self.served: list[str] = []
        self.refused: list[str] = []
        self.fallbacks: list[tuple[str, str]] = []
        self.watcher = PointerWatcher(registry, lambda m: self.served.append(m.version),
                                      lambda v, exc: self.refused.append(v), interval_s=60,
                                      on_fallback=lambda refused, served: self.fallbacks.append((refused, served)))


def test_a_starting_worker_falls_back_to_the_newest_loadable_ancestor(registry: Registry,
                                                                      caplog: Any) -> None:
    good, broken_ancestor, broken = register(registry), register(registry, GARBAGE), register(registry, GARBAGE)
    point_at(registry, broken, ["v1", good, broken_ancestor])
    worker = Worker(registry)
    with caplog.at_level(logging.CRITICAL, "driftloop.service"):
        worker.watcher.check()
    assert worker.refused == [broken] and worker.served == [good] and worker.fallbacks == [(broken, good)]
    assert any(f"the champion {broken} cannot be loaded: serving its predecessor {good}" in r.message
               for r in caplog.records)
    worker.watcher.check()  # the pointer did not change: nothing is tried again
    assert worker.served == [good] and worker.refused == [broken]
    registry.promote("v1", actor="operator", reason="back to a known good model")
    worker.watcher.check()
    assert worker.served == [good, "v1"] and worker.fallbacks == [(broken, good)]


def test_nothing_loadable_serves_nothing_and_says_so(registry: Registry, caplog: Any) -> None:
    broken = register(registry, GARBAGE)
    point_at(registry, broken, [])
    worker = Worker(registry)
    with caplog.at_level(logging.CRITICAL, "driftloop.service"):
        worker.watcher.check()
    assert worker.served == [] and worker.fallbacks == [] and worker.refused == [broken]
    assert any("no version of its lineage can" in r.message for r in caplog.records)


def test_a_serving_worker_keeps_its_model_when_the_new_champion_cannot_load(registry: Registry) -> None:
    worker = Worker(registry)
    worker.watcher.check()
    broken = register(registry, GARBAGE)
    point_at(registry, broken, ["v1"])
    worker.watcher.check()
    assert worker.served == ["v1"] and worker.refused == [broken] and worker.fallbacks == []


def test_a_serving_worker_shows_its_fallback_until_a_champion_loads(registry: Registry, tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    from driftloop.monitoring.store import PredictionStore
    from driftloop.service.metrics import serving_metrics
    from driftloop.service.serving import Serving

    from tests.conftest import make_settings

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    broken = register(registry, GARBAGE)
    point_at(registry, broken, ["v1"])
    settings = make_settings(tmp_path)
    fallbacks = sample("driftloop_model_swaps_total", {"outcome": "fallback"})
    serving = Serving(registry, PredictionStore(settings.store.url).create(), serving_metrics(), settings.serving)
    try:
        serving.start()
        assert serving.ready() and serving.model.version == "v1"
        assert sample("driftloop_fallback_workers") == 1
        assert sample("driftloop_model_swaps_total", {"outcome": "fallback"}) == fallbacks + 1
        serving.watcher.check()  # the pointer did not change: still a fallback
        assert sample("driftloop_fallback_workers") == 1
        registry.rollback(actor="operator", reason="back to the version served")  # names the fallback itself
        serving.watcher.check()
        assert serving.model.version == "v1" and sample("driftloop_fallback_workers") == 0
        good = register(registry)
        registry.promote(good, actor="operator", reason="a version that loads")
        serving.reload()
        assert serving.model.version == good and sample("driftloop_fallback_workers") == 0
    finally:
        serving.shutdown()
