"""The service in process, without a server: the one error mapping and the bearer check against
:class:`Endpoint` over a real Serving, then /feedback, /model, /history, /docs.json and the admin
routes through the ASGI app BentoML builds (``Driftloop.to_asgi()`` configured as ``driftloop
serve`` configures it, RequestGate in front of BentoML's middlewares, the
service's ``__init__`` run by the app's lifespan) with Starlette's TestClient, over a copy of
the session's champion registry. The same routes against a real ``bentoml serve``, with several
workers, are tests/servers/test_service_http.py."""

from __future__ import annotations

import asyncio
import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from driftloop.launch import bentoml_config, write_config
from driftloop.models.errors import (ConfigError, DriftloopError, ExportError, IntegrityError, RegistryError,
                                     SchemaError, UnknownVersion)
from driftloop.models.registry import MODEL_FILE, Registry
from driftloop.models.schema import Feature, FeatureSchema
from driftloop.monitoring.store import PredictionStore
from driftloop.service.endpoint import Endpoint, HttpError, http_error
from driftloop.service.metrics import serving_metrics
from driftloop.service.openapi import example_row, served_spec
from driftloop.service.serving import NotReady, Serving
from driftloop.vocabulary import Check, Decision

from tests.conftest import make_settings

# BentoML's request path reads a pydantic attribute pydantic 2.11 deprecates (in a server
# process a warning, here an error under filterwarnings = error): named, for this module only.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Accessing the 'model_fields' attribute on the instance:pydantic.warnings.PydanticDeprecatedSince211")
ADMIN_TOKEN = "admin-token-for-inprocess-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROW = {"income": 52000.0, "age": 41.0, "debt_ratio": 0.31, "credit_lines": 6.0, "region": "north",
       "employment": "salaried"}


# -- the one error mapping -----------------------------------------------------------------------
@pytest.mark.parametrize(("error", "status", "field", "headers"), [
    (SchemaError("rows[0].age must be a number", field="rows[0].age"), 422, "rows[0].age", {}),
    (NotReady("no champion model is loaded yet"), 503, None, {"retry-after": "1"}),
    (UnknownVersion("unknown version 'v9'"), 404, None, {}),
    (RegistryError("nothing to roll back to"), 409, None, {}),
    (IntegrityError("checksum mismatch"), 409, None, {}),  # a RegistryError
    (ExportError("parity"), 422, None, {}),
    (ConfigError("bad key"), 422, None, {}),
    (DriftloopError("anything else"), 422, None, {}),
])
def test_every_driftloop_error_has_one_status(error: DriftloopError, status: int, field: str | None,
                                              headers: dict[str, str]) -> None:
    answer = http_error(error)
    assert (answer.status, answer.field, answer.headers) == (status, field, headers)
    assert answer.body() == {"error": str(error), "field": field}


@pytest.fixture
def unstarted(champion_home: Path, tmp_path: Path) -> Iterator[Serving]:
    """A real Serving that has loaded no model yet (not started)."""
    shutil.copytree(champion_home / "bentoml", tmp_path / "bentoml")
    settings = make_settings(tmp_path)
    serving = Serving(Registry(settings.registry.home, "loans"), PredictionStore(settings.store.url).create(),
                      serving_metrics(), settings.serving)
    yield serving
    serving.shutdown()


def answer_of(call: Any) -> HttpError:
    with pytest.raises(HttpError) as caught:
        call()
    return caught.value


def test_the_bearer_check(unstarted: Serving) -> None:
    open_ = Endpoint(unstarted)  # no tokens: /predict and /feedback open, admin disabled
    open_.authorize(None)
    denied = answer_of(lambda: open_.authorize(f"Bearer {ADMIN_TOKEN}", admin=True))
    assert denied.status == 403 and "serving.admin_token" in str(denied)
    guarded = Endpoint(unstarted, predict_token=SecretStr("predict-token-0123456789"),
                       admin_token=SecretStr(ADMIN_TOKEN))
    for header in (None, "", "Bearer wrong", ADMIN_TOKEN, f"Basic {ADMIN_TOKEN}", "Bearer predict-token-0123456789"):
        wrong = answer_of(lambda: guarded.authorize(header, admin=True))
        assert (wrong.status, wrong.field, wrong.headers) == (401, "Authorization", {"www-authenticate": "Bearer"})
    # the admin's token is not the predict token
    assert answer_of(lambda: guarded.authorize(AUTH["Authorization"])).status == 401
    guarded.authorize(AUTH["Authorization"], admin=True)
    guarded.authorize("bearer predict-token-0123456789")


def test_before_a_model_is_loaded_the_answer_is_503_with_retry_after(unstarted: Serving) -> None:
    endpoint = Endpoint(unstarted)
    for call in (endpoint.model, lambda: asyncio.run(endpoint.predict([ROW]))):
        answer = answer_of(call)
        assert (answer.status, answer.headers) == (503, {"retry-after": "1"}) and "no champion" in str(answer)
    spec = endpoint.openapi({"paths": {}})  # no schema yet: the info routes are there, nothing else
    assert set(spec["paths"]) == {"/model", "/history"}


# -- the routes through the ASGI app ----------------------------------------------------------------
@pytest.fixture(scope="module")
def service(champion_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with warnings.catch_warnings():  # third-party deprecations at import, named one by one
        # bentoml's SDK overrides a pydantic hook pydantic 2.11 deprecates
        warnings.filterwarnings("ignore", "The `__get_pydantic_core_schema__` method of the `BaseModel` class")
        # starlette 1.x asks for httpx2 and works with httpx
        warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient` is deprecated")
        from starlette.testclient import TestClient

        from driftloop.service.app import Driftloop

    root = tmp_path_factory.mktemp("inprocess")
    shutil.copytree(champion_home / "bentoml", root / "bentoml")
    settings = make_settings(root, serving={"max_rows": 50, "log_flush_interval_s": 0.2})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DRIFTLOOP_CONFIG", str(write_config(settings, root / "driftloop.yaml")))
        env.setenv("DRIFTLOOP_SERVING__ADMIN_TOKEN", ADMIN_TOKEN)  # as driftloop.launch passes it
        env.setenv("BENTOML_HOME", str(root / "bentoml-home"))
        # BentoML's configuration as `driftloop serve` gives it (no access log, no tracing): the
        # gate in front of BentoML's middlewares, as served
        env.setenv("BENTOML_CONFIG_OVERRIDES", json.dumps({"services": {"driftloop": bentoml_config(settings)}}))
        with TestClient(Driftloop.to_asgi(), raise_server_exceptions=False) as client:
            yield {"client": client, "settings": settings, "registry": Registry(settings.registry.home, "loans"),
                   "store": PredictionStore(settings.store.url)}


def predict(client: Any, rows: list[dict[str, Any]]) -> Any:
    return client.post("/predict", json={"rows": rows})


def test_feedback_and_its_errors(service: dict[str, Any]) -> None:
    client = service["client"]
    ids = predict(client, [ROW, ROW]).json()["request_ids"]
    ok = client.post("/feedback", json={"labels": [{"request_id": i, "label": 1} for i in ids]})
    assert ok.status_code == 200 and ok.json() == {"accepted": 2, "duplicates": [], "unknown_request_ids": []}
    again = client.post("/feedback", json={"labels": [{"request_id": ids[0], "label": 0}]})
    assert again.status_code == 200 and again.json()["duplicates"] == [ids[0]]
    unknown = "00000000-0000-4000-8000-000000000000"
    missing = client.post("/feedback", json={"labels": [{"request_id": unknown, "label": 1}]})
    assert missing.status_code == 404 and missing.json() == {
        "accepted": 0, "duplicates": [], "unknown_request_ids": [unknown],
        "error": f"unknown request_id(s): {unknown}", "field": "labels[].request_id"}
    not_a_class = client.post("/feedback", json={"labels": [{"request_id": ids[1], "label": 7}]})
    assert not_a_class.status_code == 422 and not_a_class.json()["field"] == "labels[0].label"
    assert client.post("/feedback", json={"labels": []}).status_code == 400  # BentoML's validation


def test_model(service: dict[str, Any]) -> None:
    info = service["client"].get("/model")
    assert info.status_code == 200, info.text
    body = info.json()
    assert (body["model_version"], body["project"], body["task"], body["shadow"], body["source"]) == (
        "v1", "loans", "classification", None, "registry")
    assert [f["name"] for f in body["schema"]["features"]] == list(ROW)


def test_history(service: dict[str, Any]) -> None:
    client, store = service["client"], service["store"]
    event = store.record_event("retrain_requested", {"reason": "history test", "actor": "test"})
    events = client.get("/history", params={"kind": "events", "limit": 1}).json()["events"]
    assert [(e["id"], e["detail"]["reason"]) for e in events] == [(event, "history test")]
    store.record_check(Check(window=0, first_id=1, last_id=50, rows=50, model_version="v1", reference_version="v1",
                             drift_share=0.5, drifted_features=["age"],
                             feature_scores={"age": {"method": "ks", "score": float("nan"), "drifted": True}},
                             labelled=40, accuracy=0.6, champion_labelled=40, champion_accuracy=0.6,
                             decision=Decision.WATCH, reason="history test"))
    (check,) = client.get("/history").json()["checks"]
    assert (check["window"], check["decision"], check["outcome"], check["drifted_features"]) == (0, "watch", None,
                                                                                                 ["age"])
    assert check["feature_scores"]["age"]["score"] is None  # NaN travels as null
    assert check["created_at"].startswith(str(store.checks()[0].created_at.date()))
    for params, field in (({"kind": "decisions"}, "kind"), ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"),
                          ({"limit": "x"}, "limit")):
        bad = client.get("/history", params=params)
        assert (bad.status_code, bad.json()["field"]) == (422, field), bad.text


def refused_swaps() -> float:
    """This process's driftloop_model_swaps_total{outcome="refused"} (the worker's default registry)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("driftloop_model_swaps_total", {"outcome": "refused"}) or 0.0


def test_admin_routes(service: dict[str, Any]) -> None:
    client, registry = service["client"], service["registry"]
    for headers in ({}, {"Authorization": "Bearer not-the-token-not-the-token"}):
        denied = client.post("/admin/promote", json={"version": "v1"}, headers=headers)
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer", denied.text
    refusals = refused_swaps()
    unknown = client.post("/admin/promote", json={"version": "v99"}, headers=AUTH)
    assert unknown.status_code == 404 and "unknown version 'v99'" in unknown.json()["error"]
    other_case = client.post("/admin/promote", json={"version": "V1"}, headers=AUTH)
    assert other_case.status_code == 404 and "versions are named v1, v2" in other_case.json()["error"]
    v1 = registry.get("v1")
    broken = registry.register(b"\x08\x07garbage", v1.schema, registry.reference("v1"), dict(v1.metadata),
                               trigger="manual", parent="v1").version  # its checksums match: only a load tells
    refused = client.post("/admin/promote", json={"version": broken}, headers=AUTH)
    assert refused.status_code == 422 and "not a readable ONNX graph" in refused.json()["error"], refused.text
    assert registry.champion().version == "v1"
    events = service["store"].events("promotion_refused")
    assert [(e["detail"]["version"], e["detail"]["actor"]) for e in events] == [
        ("v99", "http:testclient"), ("V1", "http:testclient"), (broken, "http:testclient")]
    assert refused_swaps() == refusals + 3  # driftloop_model_swaps_total{outcome="refused"}
    nothing_before = client.post("/admin/rollback", json={}, headers=AUTH)
    assert nothing_before.status_code == 409 and "nothing to roll back to" in nothing_before.json()["error"]

    v2 = registry.register((v1.path / MODEL_FILE).read_bytes(), v1.schema, registry.reference("v1"),
                           dict(v1.metadata), trigger="manual", parent="v1").version
    promoted = client.post("/admin/promote", json={"version": v2, "reason": "in-process test"}, headers=AUTH)
    assert promoted.status_code == 200 and promoted.json()["champion"] == v2
    assert registry.history()[-1]["actor"].startswith("http:")
    assert predict(client, [ROW]).json()["model_version"] == v2  # this worker swapped at once
    back = client.post("/admin/rollback", json={"reason": "back"}, headers=AUTH)
    assert back.status_code == 200 and back.json()["champion"] == "v1"
    assert client.post("/admin/reload", json={}, headers=AUTH).json()["model_version"] == "v1"

    queued = client.post("/admin/retrain", json={"reason": "in-process"}, headers=AUTH)
    assert queued.status_code == 200, queued.text
    (event,) = [e for e in service["store"].events("retrain_requested") if e["id"] == queued.json()["request"]]
    assert event["detail"] == {"reason": "in-process", "actor": "http:testclient"}


def test_docs_json_describes_the_served_project(service: dict[str, Any]) -> None:
    client = service["client"]
    spec = client.get("/docs.json").json()
    assert {"/predict", "/feedback", "/model", "/history", "/admin/promote"} <= set(spec["paths"])
    assert spec["paths"]["/history"]["get"]["parameters"][0]["schema"]["enum"] == ["checks", "events"]
    row = spec["components"]["schemas"]["Row"]
    assert list(row["properties"]) == list(ROW) and row["required"] == list(ROW)
    assert row["additionalProperties"] is False
    assert row["properties"]["income"]["type"] == "number"
    assert row["properties"]["region"]["type"] == "string" and "north" in row["properties"]["region"]["description"]
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    rows = body["properties"]["rows"]
    assert rows["items"] == {"$ref": "#/components/schemas/Row"} and rows["maxItems"] == 50
    answer = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert "probabilities" in answer["properties"]
    assert not {"distances", "anomaly_scores"} & set(answer["properties"])  # not this task's
    example = predict(client, rows["example"])  # the document's own example is answered
    assert example.status_code == 200 and len(example.json()["predictions"]) == 1


# -- /docs.json for other schemas (no model needed) ------------------------------------------------
def image_schema() -> FeatureSchema:
    return FeatureSchema((Feature("pixels", "image", min=0.0, max=16.0, shape=(8, 8)),), task="classification",
                         labels=tuple(range(10)))


@pytest.mark.parametrize("policies", [{}, {"missing_values": "impute", "unknown_category": "reject"}])
def test_the_row_schema_follows_the_feature_schema_and_the_input_policies(tmp_path: Path,
                                                                          policies: dict[str, str]) -> None:
    config = make_settings(tmp_path, serving=policies).serving
    mixed = FeatureSchema((Feature("size", "numeric", min=1.0, max=9.0, median=4.0),
                           Feature("colour", "categorical", categories=("blue", "red")),
                           Feature("trace", "sequence", min=-1.0, max=1.0, shape=(5, 2))), task="anomaly")
    base = {"paths": {"/predict": {"post": {
        "requestBody": {"content": {"application/json": {"schema": {"properties": {"rows": {"type": "array"}}}}}},
        "responses": {200: {"content": {"application/json": {"schema": {"properties": {
            "predictions": {}, "probabilities": {}, "distances": {}, "anomaly_scores": {}}}}}}}}}}}
    spec = served_spec(base, mixed, config, project="sensors")
    props = spec["components"]["schemas"]["Row"]["properties"]
    assert props["size"].get("nullable", False) is (policies.get("missing_values") == "impute")
    assert ("enum" in props["colour"]) is (policies.get("unknown_category") == "reject")
    assert (props["trace"]["minItems"], props["trace"]["items"]["maxItems"]) == (5, 2)
    assert set(spec["paths"]["/predict"]["post"]["responses"][200]["content"]["application/json"]["schema"]
               ["properties"]) == {"predictions", "anomaly_scores"}
    assert base["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"]["rows"] == {"type": "array"}  # BentoML's document is left as it is


@pytest.mark.parametrize("schema", [image_schema(), FeatureSchema(
    (Feature("age", "numeric", min=18.0, max=90.0, median=41.0), Feature("plan", "categorical", categories=("a", "b"))),
    task="regression")])
def test_the_example_row_is_one_the_model_takes(schema: FeatureSchema) -> None:
    row = example_row(schema)
    feeds = schema.validate_rows([row], unknown_category="reject")
    assert set(feeds) == set(schema.names)


# -- hostile bodies through BentoML's middleware stack ---------------------------------------------
def request_count(path: str, status: int) -> float:
    """BentoML's bentoml_service_request_total{endpoint, http_response_code} in this process."""
    from prometheus_client import REGISTRY

    return sum(sample.value for metric in REGISTRY.collect() if metric.name == "bentoml_service_request"
               for sample in metric.samples if sample.name.endswith("_total")
               and sample.labels.get("endpoint") == path and sample.labels.get("http_response_code") == str(status))


@pytest.mark.parametrize(("path", "body", "content_type", "status", "field"), [
    ("/predict", b'{"rows": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json", 400, "body"),
    ("/predict", json.dumps({"rows": [ROW]}).replace("41.0", "9" * 401).encode(), "application/json", 422,
     "rows[0].age"),
    ("/predict", json.dumps({"rows": [ROW]}).replace('"north"', '"\\ud800"').encode(), "application/json", 422,
     "rows[0].region"),
    ("/predict", json.dumps({"rows": [ROW]}).encode(), "text/plain", 415, "Content-Type"),
    ("/feedback", json.dumps({"labels": [{"request_id": "x", "label": 1}]}).encode(), "text/plain", 415,
     "Content-Type"),
])
def test_hostile_bodies_are_answered_with_the_field_not_a_timeout(service: dict[str, Any], path: str, body: bytes,
                                                                   content_type: str, status: int, field: str) -> None:
    # Before the gate answered them, each of these raised past it and BentoML's TimeoutMiddleware
    # held the request 30 s before uvicorn's bare 500 with no body.
    answer = service["client"].post(path, content=body, headers={"content-type": content_type})
    assert (answer.status_code, answer.json()["field"]) == (status, field), answer.text


def test_an_exception_on_the_request_path_is_a_counted_500(service: dict[str, Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from driftloop.service.app import ENDPOINT

    def broken(rows: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(ENDPOINT.endpoint.serving, "prepare", broken)
    errors = serving_metrics().internal_errors.labels("KeyError")
    before, counted = errors._value.get(), request_count("/predict", 500)
    answer = predict(service["client"], [ROW])
    assert answer.status_code == 500 and answer.json()["error"].startswith("internal error (KeyError)")
    assert errors._value.get() == before + 1  # driftloop_internal_errors_total{exception="KeyError"}
    assert request_count("/predict", 500) == counted + 1  # and the status in BentoML's count, as every answer
    monkeypatch.undo()
    assert predict(service["client"], [ROW]).status_code == 200


# -- the gate in front of BentoML's middlewares (issue 15) -------------------------------------------
def bentoml_series(name: str, path: str, status: int | None = None) -> float:
    """A sample of BentoML's ``bentoml_service_request_<name>`` for ``endpoint=path`` (and ``status``)."""
    from prometheus_client import REGISTRY

    return sum(sample.value for metric in REGISTRY.collect() for sample in metric.samples
               if sample.name == f"bentoml_service_request_{name}" and sample.labels.get("endpoint") == path
               and (status is None or sample.labels.get("http_response_code") == str(status)))


def test_the_gate_stands_in_front_of_bentomls_middlewares(service: dict[str, Any]) -> None:
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from driftloop.service.gate import RequestGate

    stack = [m.cls for m in service["client"].app.user_middleware]
    assert stack[0] is RequestGate  # then BentoML's: metrics, tracing, timeout, context
    assert stack.index(RunnerTrafficMetricsMiddleware) > 0 and stack.index(TimeoutMiddleware) > 0


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/predict", {"rows": [ROW]}, 200),  # answered by the gate: it counts
    ("/predict", {"rows": [ROW | {"age": "old"}]}, 422),
    ("/predict", {"nothing": 1}, 400),
    ("/feedback", {"labels": [{"request_id": "00000000-0000-4000-8000-000000000000", "label": 1}]}, 404),  # BentoML's
])
def test_every_answer_is_counted_once_under_bentomls_names(service: dict[str, Any], path: str, body: dict[str, Any],
                                                           status: int) -> None:
    before = (bentoml_series("total", path, status), bentoml_series("duration_seconds_count", path, status))
    answer = service["client"].post(path, json=body)
    assert answer.status_code == status, answer.text
    assert bentoml_series("total", path, status) == before[0] + 1
    assert bentoml_series("duration_seconds_count", path, status) == before[1] + 1
    assert bentoml_series("in_progress", path) == 0  # raised and lowered once each


def test_the_overload_refusal_is_counted_as_a_503(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from driftloop.service.app import ENDPOINT

    serving = ENDPOINT.endpoint.serving
    monkeypatch.setattr(serving, "config", serving.config.model_copy(update={"max_in_flight": 0}))  # all refused
    before = bentoml_series("total", "/predict", 503)
    answer = predict(service["client"], [ROW])
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert bentoml_series("total", "/predict", 503) == before + 1
