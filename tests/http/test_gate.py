"""The request gate in-process: shedding, draining, body limits and the /predict fast path's
errors, driven through the ASGI interface with a real Serving (and its real model) behind it."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftloop.models.registry import Registry
from driftloop.monitoring.store import PredictionStore
from driftloop.service.endpoint import Endpoint, EndpointSlot, HttpError
from driftloop.service.gate import RequestGate
from driftloop.service.metrics import serving_metrics
from driftloop.service.serving import Serving

from tests.conftest import make_settings

ROW = {"income": 52000.0, "age": 41.0, "debt_ratio": 0.31, "credit_lines": 6.0, "region": "north",
       "employment": "salaried"}


def started(champion_home: Path, tmp_path: Path, **config: Any) -> Iterator[Serving]:
    shutil.copytree(champion_home / "bentoml", tmp_path / "bentoml")
    settings = make_settings(tmp_path, serving={"max_in_flight": 1, "max_body_bytes": 2048, "body_timeout_s": 0.5}
                             | config)
    s = Serving(Registry(settings.registry.home, "loans"), PredictionStore(settings.store.url).create(),
                serving_metrics(), settings.serving)
    s.start()
    yield s
    s.shutdown()


@pytest.fixture
def serving(champion_home: Path, tmp_path: Path) -> Iterator[Serving]:
    yield from started(champion_home, tmp_path)


@pytest.fixture
def roomy(champion_home: Path, tmp_path: Path) -> Iterator[Serving]:
    """Room for a megabyte of body: the hostile bodies are large."""
    yield from started(champion_home, tmp_path, max_body_bytes=1 << 20)


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



# -- hostile bodies: answered at once, naming the field, never an exception -----------------------
def with_row(**values: str) -> bytes:
    """A /predict body of one row, with raw JSON text in place of some values."""
    text = json.dumps({"rows": [ROW]})
    for name, raw in values.items():
        text = text.replace(json.dumps({name: ROW[name]})[1:-1], f'"{name}": {raw}')
    return text.encode()


@pytest.mark.parametrize(("body", "content_type", "status", "field", "words"), [
    (b'{"rows": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json", 400, "body", "nested too deeply"),
    (b'{"rows": [' + b'{"a": ' * 3_000 + b"1" + b"}" * 3_000 + b"]}", "application/json", 400, "body", "nested"),
    (with_row(age="[" * 100 + "1" + "]" * 100), "application/json", 422, "rows[0].age", "must be a number, got list"),
    # within orjson's depth limit (1,024): parsed by it, refused by the schema
    (with_row(age="[" * 1_015 + "1" + "]" * 1_015), "application/json", 422, "rows[0].age", "must be a number"),
    (with_row(age="9" * 401), "application/json", 422, "rows[0].age", "an integer of 401 digits"),
    (with_row(age="1" + "0" * 40), "application/json", 422, "rows[0].age", "outside the range"),  # orjson: a float
    (with_row(age="NaN"), "application/json", 422, "rows[0].age", "finite number"),  # orjson refuses, Python takes
    (with_row(age="-1e400"), "application/json", 422, "rows[0].age", "finite number"),
    (with_row(age="9" * 5_000), "application/json", 400, "body", "4300 digits"),
    (with_row(income="1e39"), "application/json", 422, "rows[0].income", "outside the range"),
    (with_row(income="-3.5e38"), "application/json", 422, "rows[0].income", "32-bit"),
    (with_row(region='"\\ud800"'), "application/json", 422, "rows[0].region", "lone surrogate"),
    (with_row(region='"north\\udfff"'), "application/json", 422, "rows[0].region", "lone surrogate"),
    (with_row(region=json.dumps("n" * 1_001)), "application/json", 422, "rows[0].region", "1001 characters"),
    (json.dumps({"rows": [ROW]}).encode(), "text/plain", 415, "Content-Type", "text/plain"),
    (json.dumps({"rows": [ROW]}).encode(), "text/plain; charset=utf-8", 415, "Content-Type", "application/json"),
])
def test_hostile_bodies_get_a_4xx_naming_the_field(roomy: Serving, body: bytes, content_type: str, status: int,
                                                   field: str, words: str) -> None:
    got, _, answer = asyncio.run(call(gate_for(roomy, Held()), "/predict", body,
                                      headers={"content-type": content_type}))
    assert (got, answer["field"]) == (status, field), answer
    assert words in answer["error"]


def test_a_field_name_utf8_cannot_encode_is_still_answered(serving: Serving) -> None:
    body = json.dumps({"rows": [ROW | {"\ud800": 1}]}).encode()  # json escapes it: \ud800
    status, headers, answer = asyncio.run(call(gate_for(serving, Held()), "/predict", body))
    assert (status, answer["field"]) == (422, "rows[0].\ud800") and "unknown field" in answer["error"]
    assert headers["content-type"] == "application/json"


def test_what_fits_is_answered(serving: Serving) -> None:
    longest = "n" * make_settings(Path("unused")).serving.max_string_chars  # the default cap itself
    body = json.dumps({"rows": [ROW | {"region": longest, "income": 3.4e38}, ROW | {"region": "São Paulo"}]})
    status, _, answer = asyncio.run(call(gate_for(serving, Held()), "/predict", body.encode(),
                                         headers={"content-type": "application/vnd.api+json"}))
    assert status == 200 and len(answer["predictions"]) == 2, answer


def test_feedback_refuses_what_no_label_can_be(serving: Serving) -> None:
    endpoint = Endpoint(serving)
    for label, words in ((True, "a boolean is not a class label; classes are [0, 1]"), (False, "boolean"),
                         (10 ** 401, "float32"), (float("nan"), "finite"), (-math.inf, "finite"),
                         ("x" * 1_001, "1001 characters"), ("\udc80", "lone surrogate")):
        with pytest.raises(HttpError) as caught:
            endpoint.feedback([("00000000-0000-4000-8000-000000000000", 0), ("any", label)])
        assert (caught.value.status, caught.value.field) == (422, "labels[1].label"), label
        assert words in str(caught.value)


def test_a_boolean_label_is_taken_when_the_classes_are_booleans() -> None:
    from types import SimpleNamespace

    from driftloop.models.errors import SchemaError
    from driftloop.models.schema import Feature, FeatureSchema
    from driftloop.service.serving import _check_labels

    def model(labels: tuple[Any, ...]) -> Any:
        return SimpleNamespace(schema=FeatureSchema((Feature("x", "numeric"),), task="classification", labels=labels))

    _check_labels([("a", True), ("b", False)], model((False, True)), 1_000)
    with pytest.raises(SchemaError, match="boolean"):
        _check_labels([("a", 1), ("b", True)], model((0, 1)), 1_000)
    with pytest.raises(SchemaError, match="boolean"):  # no model loaded: still not a label
        _check_labels([("a", True)], None, 1_000)


# -- an exception on the request path: a counted 500 at once ----------------------------------------
class Raising:
    """An inner app that fails, before or after it starts its answer."""

    def __init__(self, after_start: bool = False) -> None:
        self.after_start = after_start

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if self.after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise LookupError("a bug")


def internal_errors(exception: str) -> float:
    return serving_metrics().internal_errors.labels(exception)._value.get()


def test_an_exception_behind_the_gate_is_answered_500_and_counted(serving: Serving) -> None:
    before = internal_errors("LookupError")
    status, headers, body = asyncio.run(call(gate_for(serving, Raising()), "/feedback", b'{"labels": []}'))
    assert status == 500 and headers["content-type"] == "application/json"
    assert body == {"error": "internal error (LookupError); the service log has the details", "field": None}
    assert internal_errors("LookupError") == before + 1
    with pytest.raises(LookupError):  # the answer had started: the server must end the connection
        asyncio.run(call(gate_for(serving, Raising(after_start=True)), "/feedback", b'{"labels": []}'))
    assert internal_errors("LookupError") == before + 2


def test_an_exception_in_predict_is_answered_500_and_counted(serving: Serving,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(rows: Any) -> Any:
        raise ZeroDivisionError("a bug in validation")

    monkeypatch.setattr(serving, "prepare", broken)
    before = internal_errors("ZeroDivisionError")
    gate = gate_for(serving, Held())
    status, _, body = asyncio.run(call(gate, "/predict", json.dumps({"rows": [ROW]}).encode()))
    assert status == 500 and "ZeroDivisionError" in body["error"] and "a bug" not in body["error"]
    assert internal_errors("ZeroDivisionError") == before + 1 and gate.in_flight == 0


# -- slow bodies: 408 within serving.body_timeout_s, holding no slot meanwhile ----------------------
async def upload(gate: RequestGate, receive: Any, declared: int) -> tuple[int, dict[str, str], Any]:
    """A /predict whose body comes as ``receive`` hands it out."""
    scope = {"type": "http", "method": "POST", "path": "/predict",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(declared).encode())]}
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await gate(scope, receive, send)
    return (sent[0]["status"], {k.decode(): v.decode() for k, v in sent[0]["headers"]},
            json.loads(b"".join(m.get("body", b"") for m in sent[1:])))


def idle(started: asyncio.Event) -> Any:
    """A client that sends the first bytes of its body, then nothing (it declared more)."""
    parts = [{"type": "http.request", "body": b'{"rows": [', "more_body": True}]

    async def receive() -> dict[str, Any]:
        if parts:
            return parts.pop()
        started.set()
        await asyncio.Event().wait()  # never comes
        raise AssertionError("unreachable")  # pragma: no cover

    return receive


def test_idle_uploads_get_408_and_hold_no_slot(serving: Serving) -> None:
    async def scenario() -> None:
        gate = gate_for(serving, Held())
        before = shed_count("body_timeout")
        started = [asyncio.Event() for _ in range(3)]  # three idle uploads; max_in_flight is 1
        uploads = [asyncio.create_task(upload(gate, idle(event), 2000)) for event in started]
        for event in started:
            await event.wait()
        assert gate.in_flight == 0  # reading a body holds no slot
        status, _, body = await call(gate, "/predict", json.dumps({"rows": [ROW]}).encode())
        assert status == 200 and len(body["predictions"]) == 1  # the idle uploads starve no one
        for status, headers, body in await asyncio.gather(*uploads):
            assert (status, headers["connection"], body["field"]) == (408, "close", "body")
            assert "within 0.5 s (serving.body_timeout_s): 10 of 2000 declared bytes came" in body["error"]
        assert shed_count("body_timeout") == before + 3 and gate.in_flight == 0

    asyncio.run(scenario())


def test_a_trickling_upload_gets_408_when_the_whole_body_is_late(serving: Serving) -> None:
    async def trickle() -> dict[str, Any]:  # a byte every 50 ms, forever: each chunk is prompt
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b" ", "more_body": True}

    status, headers, body = asyncio.run(upload(gate_for(serving, Held()), trickle, 2000))
    assert (status, headers["connection"]) == (408, "close") and "of 2000 declared bytes came" in body["error"]


# -- JSON in and out: orjson, with Python's parser and encoder where orjson differs ----------------
@pytest.mark.parametrize("body", [
    b'{"rows": [{"a": 1.5, "b": "x", "c": null, "d": true}]}', b'[1, 2.25e-3, -0.0, "\\u00e9"]',
    b'{"a": 1, "a": 2}', b'"\\ud800"', b"NaN", b"[Infinity, -Infinity]", b"1" + b"0" * 400, b"  {}  ",
    b"\xef\xbb\xbf{}",  # a UTF-8 byte-order mark: orjson refuses it, Python skips it
    b'"\xed\xa0\x80"',  # a surrogate encoded in UTF-8: orjson refuses it, Python reads a lone surrogate
])
def test_bodies_parse_as_pythons_parser_parses_them(body: bytes) -> None:
    from driftloop.service.gate import load_json

    parsed, expected = load_json(body), json.loads(body)
    assert json.dumps(parsed) == json.dumps(expected)


@pytest.mark.parametrize(("body", "words"), [
    (b"[" * 5_000 + b"]" * 5_000, "nested too deeply"), (b"9" * 5_000, "4300 digits"), (b"{", "Expecting"),
    (b'"\xff"', "utf-8"),
])
def test_bodies_neither_parser_takes_are_400s(body: bytes, words: str) -> None:
    from driftloop.service.gate import load_json

    with pytest.raises(HttpError) as refused:
        load_json(body)
    assert (refused.value.status, refused.value.field) == (400, "body") and words in str(refused.value)


def test_answers_are_compact_utf8_json_and_never_nan() -> None:
    from driftloop.service.endpoint import dumps

    answer = {"model_version": "v1", "predictions": [0, 1.5], "probabilities": [[0.25, 0.75]], "region": "São"}
    assert dumps(answer) == json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
    assert json.loads(dumps({"error": "x", "field": "rows[0].\ud800"}))["field"] == "rows[0].\ud800"
    assert dumps({"error": "x", "field": None}) == b'{"error":"x","field":null}'
    with pytest.raises(ValueError, match="not JSON compliant"):  # a bug: the gate's counted 500
        dumps({"predictions": [float("nan")]})


def test_a_prediction_that_waits_past_the_timeout_is_a_504() -> None:
    class Stuck:
        """A serving whose batcher never answers."""
        metrics = serving_metrics()

        def prepare(self, rows: Any) -> tuple[str, dict[str, Any]]:
            return "model", {}

        def batched(self, model: Any) -> bool:
            return True

        class batcher:  # noqa: N801
            @staticmethod
            async def run(model: Any, feeds: Any, n: int) -> Any:
                await asyncio.Event().wait()

    with pytest.raises(HttpError) as late:
        asyncio.run(Endpoint(Stuck(), timeout_s=0.05).predict([ROW]))  # type: ignore[arg-type]
    assert late.value.status == 504 and "0.05 seconds" in str(late.value)
