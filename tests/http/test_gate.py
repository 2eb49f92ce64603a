"""The request gate in-process: shedding, draining, body limits and the /predict fast path's
errors, driven through the ASGI interface with a real Serving (and its real model) behind it."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from driftloop.models.registry import Registry
from driftloop.monitoring.store import PredictionStore
from driftloop.service.endpoint import Endpoint, EndpointSlot
from driftloop.service.gate import RequestGate
from driftloop.service.metrics import serving_metrics
from driftloop.service.serving import Serving

from tests.conftest import make_settings

ROW = {"income": 52000.0, "age": 41.0, "debt_ratio": 0.31, "credit_lines": 6.0, "region": "north",
       "employment": "salaried"}


@pytest.fixture
def serving(champion_home: Path, tmp_path: Path):  # noqa: ANN201
    shutil.copytree(champion_home / "bentoml", tmp_path / "bentoml")
    settings = make_settings(tmp_path, serving={"max_in_flight": 1, "max_body_bytes": 2048})
    s = Serving(Registry(settings.registry.home, "loans"), PredictionStore(settings.store.url).create(),
                serving_metrics(), settings.serving)
    s.start()
    yield s
    s.shutdown()


class Held:
    """An inner app that answers 200 only when released, so a request can be kept in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.bodies.append((await receive())["body"])
        self.entered.set()
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def gate_for(serving: Serving, inner: Any) -> RequestGate:
    slot = EndpointSlot()
    slot.attach(Endpoint(serving))
    return RequestGate(inner, slot)


async def call(gate: RequestGate, path: str, body: bytes = b"", method: str = "POST",
               headers: dict[str, str] | None = None, chunks: int = 1) -> tuple[int, dict[str, str], Any]:
    hdrs = {"content-type": "application/json"} | (headers or {})
    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()]}
    size = max(1, -(-len(body) // chunks))
    parts = [body[i:i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await gate(scope, receive, send)
    start = sent[0]
    body_out = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body_out or b"null")


def test_before_the_service_attaches_its_endpoint_everything_passes_through() -> None:
    held = Held()
    held.release.set()
    gate = RequestGate(held, EndpointSlot())  # the worker is starting: BentoML answers
    assert asyncio.run(call(gate, "/predict", b'{"rows": []}'))[0] == 200
    assert held.bodies == [b'{"rows": []}']


def shed_count(reason: str) -> float:
    return serving_metrics().shed.labels(reason)._value.get()


def test_a_request_over_max_in_flight_is_refused_at_once(serving: Serving) -> None:
    async def scenario() -> None:
        held = Held()
        gate = gate_for(serving, held)
        first = asyncio.create_task(call(gate, "/feedback", b'{"labels": []}'))
        await held.entered.wait()  # the first request is in flight (max_in_flight is 1)
        before = shed_count("overloaded")
        status, headers, body = await call(gate, "/predict", json.dumps({"rows": [ROW]}).encode())
        assert status == 503 and headers["retry-after"] == "1" and "overloaded" in body["error"]
        assert shed_count("overloaded") == before + 1
        held.release.set()
        assert (await first)[0] == 200
        status, _, body = await call(gate, "/predict", json.dumps({"rows": [ROW]}).encode())  # room again
        assert status == 200 and body["model_version"] == "v1" and len(body["request_ids"]) == 1

    asyncio.run(scenario())


def test_draining_refuses_new_requests_but_not_the_probes(serving: Serving) -> None:
    async def scenario() -> None:
        held = Held()
        held.release.set()
        gate = gate_for(serving, held)
        serving.drain()
        assert not serving.ready()
        status, headers, body = await call(gate, "/predict", json.dumps({"rows": [ROW]}).encode())
        assert status == 503 and headers["connection"] == "close" and headers["retry-after"] == "1"
        assert "shutting down" in body["error"]
        assert (await call(gate, "/readyz", method="GET"))[0] == 200  # passed through to the app
        assert held.bodies == [b""]  # only the probe reached the app

    asyncio.run(scenario())


@pytest.mark.parametrize("chunks", [1, 4])
def test_a_body_over_max_body_bytes_gets_413(serving: Serving, chunks: int) -> None:
    big = json.dumps({"rows": [ROW] * 40}).encode()  # about 5 KiB > 2048
    headers = {"content-length": str(len(big))} if chunks == 1 else {}  # declared, or streamed
    status, _, body = asyncio.run(call(gate_for(serving, Held()), "/predict", big, headers=headers, chunks=chunks))
    assert status == 413 and body["field"] == "body" and "2048" in body["error"]


def test_a_body_is_passed_on_whole_after_reading(serving: Serving) -> None:
    held = Held()
    held.release.set()
    body = json.dumps({"labels": [{"request_id": "x", "label": 1}]}).encode()
    assert asyncio.run(call(gate_for(serving, held), "/feedback", body, chunks=3))[0] == 200
    assert held.bodies == [body]


@pytest.mark.parametrize(("body", "content_type", "status", "field"), [
    (b'{"rows": [', "application/json", 400, "body"),
    (b'[1, 2]', "application/json", 400, "body"),
    (b'{"rowz": []}', "application/json", 400, "rows"),
    (b'{"rows": {"a": 1}}', "application/json", 400, "rows"),
    (b'{"rows": []}', "application/json", 422, "rows"),
    (json.dumps({"rows": [ROW | {"age": None}]}).encode(), "application/json", 422, "rows[0].age"),
    (b"a=1", "application/x-www-form-urlencoded", 415, "Content-Type"),
])
def test_predict_errors_name_the_field(serving: Serving, body: bytes, content_type: str, status: int,
                                       field: str) -> None:
    got, _, answer = asyncio.run(call(gate_for(serving, Held()), "/predict", body,
                                      headers={"content-type": content_type}))
    assert (got, answer["field"]) == (status, field), answer


def test_an_unknown_category_is_answered_and_counted(serving: Serving) -> None:
    counter = serving_metrics().input_repairs.labels("region", "unknown_category")
    before = counter._value.get()
    status, _, body = asyncio.run(call(gate_for(serving, Held()), "/predict",
                                       json.dumps({"rows": [ROW | {"region": "atlantis"}, ROW]}).encode()))
    assert status == 200 and len(body["predictions"]) == 2
    assert counter._value.get() == before + 1
