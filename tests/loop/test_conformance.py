"""Every model family, discovered from FAMILIES, through the whole path on one real service:
train -> ONNX export -> parity -> register -> promote -> the service swaps to it -> predict and
feedback over HTTP -> retrain on fresh data through the gate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from driftloop.launch import free_port
from driftloop.launch import ServiceProcess, write_config
from driftloop.models.families import FAMILIES
from driftloop.models.registry import Registry
from tests.cases import case
from tests.conftest import make_settings
from tests.waiting import wait_until
from driftloop.training.retrain import retrain
from driftloop.training.train import train_version

pytestmark = pytest.mark.slow
CASES = [(kind, task) for kind, family in sorted(FAMILIES.items()) for task in family.tasks]
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("conformance")
    settings = make_settings(root, serving={"port": free_port(), "workers": 2, "poll_interval_s": 0.1})
    # The service needs a champion to start: any family will do.
    registry = Registry(settings.registry.home, "loans")
    train, _, first_settings = case("gradient_boosting", "classification", root)
    first = train_version(first_settings, train, registry, trigger="initial")
    registry.promote(first.version.version, actor="test", reason="start")
    with ServiceProcess(settings, write_config(settings, root / "c.yaml"), log_path=root / "s.log") as service, \
            httpx.Client(base_url=service.url, timeout=30) as client:
        yield {"root": root, "registry": registry, "service": service, "client": client}


def serve_version(world: dict[str, Any], version: str, timeout: float = 20.0) -> None:
    world["registry"].promote(version, actor="test", reason="conformance")
    wait_until(lambda: world["service"].workers_by_version(world["client"]) == {version: 2},
               f"both workers serving {version}", timeout, interval=0.05)


@pytest.mark.parametrize(("kind", "task"), CASES, ids=[f"{k}-{t}" for k, t in CASES])
def test_family_end_to_end(world: dict[str, Any], kind: str, task: str) -> None:
    # no guard set: every case shares one project, whose guard set would be fixed for the first schema only
    train, fresh, settings = case(kind, task, world["root"], retraining={"min_rows": 200, "guard": {"rows": 0}})
    registry: Registry = world["registry"]
    version = train_version(settings, train, registry, trigger="manual").version  # parity checked inside
    serve_version(world, version.version)

    schema = version.schema
    rows = json.loads(fresh[schema.names].head(8).to_json(orient="records"))  # as a client would send them
    resp = world["client"].post("/predict", json={"rows": rows})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_version"] == version.version and len(body["predictions"]) == len(body["request_ids"]) == 8
    local, second = registry.load(version.version).predict_frame(fresh.head(8))
    assert body["predictions"] == local.tolist()  # the service answers what the graph answers
    field = {"classification": "probabilities", "clustering": "distances", "anomaly": "anomaly_scores"}.get(task)
    if field:
        assert np.allclose(np.asarray(body[field]), second, atol=1e-5)
    else:
        assert set(body) == {"model_version", "predictions", "request_ids"}
    if task in ("classification", "regression"):
        target = settings.data.target
        labels = [{"request_id": r, "label": float(y) if task == "regression" else int(y)}
                  for r, y in zip(body["request_ids"], fresh[target].head(8))]
        assert world["client"].post("/feedback", json={"labels": labels}).json()["accepted"] == 8

    outcome = retrain(settings, registry, fresh, trigger="drift", reason="conformance")
    assert outcome.status in ("promoted", "rejected"), outcome
    candidate = registry.get(outcome.candidate)
    assert candidate.metadata["kind"] == kind and candidate.metadata["parent"] == version.version
    assert candidate.metadata["gate"]["holdout_rows"] == round(len(fresh) * 0.25)
