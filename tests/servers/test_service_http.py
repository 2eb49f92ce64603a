"""The HTTP contract against a real ``bentoml serve`` (two workers), started once per session."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftloop.launch import free_port
from driftloop.launch import ServiceProcess, write_config
from driftloop.models.registry import MODEL_FILE, Registry
from driftloop.monitoring.store import PredictionStore
from driftloop.vocabulary import Check, Decision

from tests.conftest import make_settings
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
ROW = {"income": 52000.0, "age": 41.0, "debt_ratio": 0.31, "credit_lines": 6.0, "region": "north",
       "employment": "salaried"}


@pytest.fixture(scope="module")
def server(champion_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("http")
    shutil.copytree(champion_home / "bentoml", root / "bentoml")
    settings = make_settings(root, serving={"port": free_port(), "workers": 2, "poll_interval_s": 0.2,
                                            "max_rows": 50, "admin_token": ADMIN_TOKEN})
    service = ServiceProcess(settings, write_config(settings, root / "driftloop.yaml"), log_path=root / "service.log")
    with service, httpx.Client(base_url=service.url, timeout=10) as client:
        yield {"client": client, "settings": settings, "root": root, "service": service,
               "registry": Registry(settings.registry.home, "loans")}


def predict(client: httpx.Client, rows: list[dict[str, Any]]) -> httpx.Response:
    return client.post("/predict", json={"rows": rows})


def test_predict_contract(server: dict[str, Any]) -> None:
    resp = predict(server["client"], [ROW, ROW | {"debt_ratio": 0.9, "employment": "unemployed"}])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_version"] == "v1"
    assert len(body["predictions"]) == len(body["request_ids"]) == len(body["probabilities"]) == 2
    assert len(set(body["request_ids"])) == 2
    assert all(abs(sum(p) - 1.0) < 1e-5 for p in body["probabilities"])
    assert body["probabilities"][1][1] > body["probabilities"][0][1]  # more debt, no job: riskier


def test_feedback_right_after_predict_is_accepted(server: dict[str, Any]) -> None:
    client = server["client"]
    ids = predict(client, [ROW] * 3).json()["request_ids"]
    resp = client.post("/feedback", json={"labels": [{"request_id": i, "label": 1} for i in ids]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"accepted": 3, "duplicates": [], "unknown_request_ids": []}
    again = client.post("/feedback", json={"labels": [{"request_id": ids[0], "label": 0}]}).json()
    assert again["accepted"] == 0 and again["duplicates"] == [ids[0]]


@pytest.mark.parametrize(("body", "status", "names"), [
    ('{"rows": [', 400, "Invalid JSON"),
    ('{"rowz": []}', 400, '"rows"'),
    ('{"rows": "all"}', 400, '"rows"'),
    ('{"rows": []}', 422, "rows"),
    (json.dumps({"rows": [{k: v for k, v in ROW.items() if k != "income"}]}), 422, "rows[0].income"),
    (json.dumps({"rows": [ROW, ROW | {"age": "forty"}]}), 422, "rows[1].age"),
    (json.dumps({"rows": [ROW | {"region": 3}]}), 422, "rows[0].region"),
    (json.dumps({"rows": [ROW | {"colour": "red"}]}), 422, "rows[0].colour"),
    (json.dumps({"rows": [ROW] * 51}), 422, "at most 50"),
])
def test_bad_predict_requests_get_a_4xx_naming_the_problem(server: dict[str, Any], body: str, status: int,
                                                           names: str) -> None:
    client = server["client"]
    resp = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    assert names in resp.text
    assert predict(client, [ROW]).status_code == 200  # and the service keeps serving


@pytest.mark.parametrize(("labels", "status", "names"), [
    ([{"request_id": "00000000-0000-4000-8000-000000000000", "label": 1}], 404, "00000000-0000-4000-8000"),
    ([{"request_id": "x"}], 400, "label"),
    ([], 400, "labels"),
])
def test_bad_feedback_gets_a_4xx_naming_the_problem(server: dict[str, Any], labels: list[Any], status: int,
                                                    names: str) -> None:
    resp = server["client"].post("/feedback", json={"labels": labels})
    assert resp.status_code == status, resp.text
    assert names in resp.text


def test_feedback_label_must_be_a_class(server: dict[str, Any]) -> None:
    client = server["client"]
    (rid,) = predict(client, [ROW]).json()["request_ids"]
    resp = client.post("/feedback", json={"labels": [{"request_id": rid, "label": 7}]})
    assert resp.status_code == 422 and "labels[0].label" in resp.text and "[0, 1]" in resp.text


def test_model_endpoint_and_probes(server: dict[str, Any]) -> None:
    client = server["client"]
    info = client.get("/model").json()
    assert info["model_version"] == "v1" and info["task"] == "classification"
    assert [f["name"] for f in info["schema"]["features"]] == list(ROW)
    assert 0.5 < info["metrics"]["accuracy"] <= 1
    assert info["device"] == "cpu" and info["providers"] == ["CPUExecutionProvider"]  # no GPU here
    assert info["batching"] is False  # auto: a tree model runs inline, one request per graph run
    for probe in ("/readyz", "/livez", "/healthz"):
        assert client.get(probe).status_code == 200
    spec = client.get("/docs.json").json()  # the served project's rows (tests/http/test_service_inprocess.py)
    assert {"/predict", "/feedback", "/model", "/history"} <= set(spec["paths"])
    assert list(spec["components"]["schemas"]["Row"]["properties"]) == list(ROW)


def test_history_endpoint_reads_the_monitors_records(server: dict[str, Any]) -> None:
    """GET /history serves the store's checks and events (here: the retrain request queued by
    the admin test or none yet, and a check written straight into the store), newest last."""
    client = server["client"]
    store = PredictionStore(server["settings"].store.url)
    event = store.record_event("retrain_requested", {"reason": "history test", "actor": "test"})
    events = client.get("/history", params={"kind": "events", "limit": 1})
    assert events.status_code == 200, events.text
    assert [e["id"] for e in events.json()["events"]] == [event]
    assert events.json()["events"][0]["detail"]["reason"] == "history test"
    store.record_check(Check(window=0, first_id=1, last_id=500, rows=500, model_version="v1", reference_version="v1",
                             drift_share=0.5, drifted_features=["age"],
                             feature_scores={"age": {"method": "ks", "score": float("nan"), "drifted": True}},
                             labelled=400, accuracy=0.61, champion_labelled=400, champion_accuracy=0.61,
                             decision=Decision.WATCH, reason="history test", duration_s=0.1))
    checks = client.get("/history").json()["checks"]
    assert [(c["window"], c["decision"], c["reason"], c["drifted_features"]) for c in checks] == \
        [(0, "watch", "history test", ["age"])]
    assert checks[0]["feature_scores"]["age"]["score"] is None  # NaN travels as null
    assert checks[0]["created_at"].startswith(str(store.checks()[0].created_at.date()))
    for params, field in (({"kind": "decisions"}, "kind"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit")):
        bad = client.get("/history", params=params)
        assert bad.status_code == 422 and bad.json()["field"] == field


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The sample of ``name`` whose labels include ``labels`` (in any order); 0 if none."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for line in client.get("/metrics").text.splitlines():
        series, _, value = line.rpartition(" ")
        metric_name, _, label_text = series.partition("{")
        if metric_name == name and want <= set(label_text.rstrip("}").split(",")) - {""}:
            return float(value)
    return 0.0


def test_metrics_count_predictions_across_workers(server: dict[str, Any]) -> None:
    client = server["client"]
    before = metric(client, "driftloop_predictions_total", model_version="v1", predicted_class="0")
    for _ in range(10):
        assert predict(client, [ROW] * 5).status_code == 200  # ROW is a clear 0
    after = metric(client, "driftloop_predictions_total", model_version="v1", predicted_class="0")
    assert after - before == 50
    assert metric(client, "driftloop_model_workers", model_version="v1", device="cpu") == 2
    # one series per metric for the whole service: counters summed, gauges not repeated per worker
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith("driftloop_")]
    assert lines and not [line for line in lines if 'pid="' in line]
    assert metric(client, "driftloop_batch_rows_sum") >= 50


def wait_for_version(client: httpx.Client, version: str, timeout: float = 10.0) -> float:
    """Seconds until every worker serves ``version`` (the livesum gauge counts them)."""
    start = time.monotonic()
    wait_until(lambda: metric(client, "driftloop_model_workers", model_version=version) == 2,
               f"both workers serving {version}", timeout, interval=0.05)
    return time.monotonic() - start


def test_swap_and_rollback_under_traffic(server: dict[str, Any]) -> None:
    client, registry = server["client"], server["registry"]
    v1 = registry.get("v1")
    v2 = registry.register((v1.path / MODEL_FILE).read_bytes(), v1.schema, registry.reference("v1"),
                           dict(v1.metadata), trigger="manual", parent="v1").version
    seen, failures = [], []
    import threading
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=server["service"].url, timeout=10) as c:
            while not stop.is_set():
                r = predict(c, [ROW])
                (seen if r.status_code == 200 else failures).append(r.json().get("model_version", r.text))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        registry.promote(v2, actor="test", reason="swap under load")
        swap_s = wait_for_version(client, v2)
        registry.rollback(actor="test", reason="back")
        back_s = wait_for_version(client, "v1")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert swap_s < 2 and back_s < 2
    assert v2 in seen and seen[-1] == "v1"


def test_a_corrupt_champion_is_refused_and_the_old_model_keeps_serving(server: dict[str, Any]) -> None:
    client, registry = server["client"], server["registry"]
    v1 = registry.get("v1")
    bad = registry.register((v1.path / MODEL_FILE).read_bytes(), v1.schema, registry.reference("v1"),
                            dict(v1.metadata), trigger="manual", parent="v1")
    refused_before = metric(client, "driftloop_model_swaps_total", outcome="refused")
    data = (bad.path / MODEL_FILE).read_bytes()
    (bad.path / MODEL_FILE).write_bytes(data[: len(data) // 2])  # truncated after registration
    pointer = json.loads(registry.pointer_path.read_text())  # written around promote()'s own check
    registry.pointer_path.write_text(json.dumps(pointer | {"version": bad.version, "lineage": ["v1"]}))
    wait_until(lambda: metric(client, "driftloop_model_swaps_total", outcome="refused") >= refused_before + 2,
               "both workers refusing the corrupt champion", 10, interval=0.05)
    assert predict(client, [ROW]).json()["model_version"] == "v1"
    assert client.get("/readyz").status_code == 200
    registry.pointer_path.write_text(json.dumps(pointer))  # restore for later tests


def test_admin_actions_need_the_token(server: dict[str, Any]) -> None:
    client, registry = server["client"], server["registry"]
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": ADMIN_TOKEN}):
        resp = client.post("/admin/promote", json={"version": "v1"}, headers=headers)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer", resp.text
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    missing = client.post("/admin/promote", json={"version": "v99"}, headers=auth)
    assert missing.status_code == 404 and "unknown version 'v99'" in missing.text
    before = registry.champion()
    promoted = client.post("/admin/promote", json={"version": "v1", "reason": "api test"}, headers=auth)
    assert promoted.status_code == 200 and promoted.json()["champion"] == "v1"
    assert registry.history()[-1]["actor"].startswith("http:") or before.version == "v1"
    assert client.post("/admin/reload", json={}, headers=auth).json()["model_version"] == "v1"
    queued = client.post("/admin/retrain", json={"reason": "test"}, headers=auth)
    assert queued.status_code == 200
    events = PredictionStore(server["settings"].store.url).events("retrain_requested")
    assert events[-1]["id"] == queued.json()["request"] and events[-1]["detail"]["reason"] == "test"


def test_sigterm_drains_then_flushes_the_prediction_log(champion_home: Path, tmp_path: Path) -> None:
    """A graceful stop, in order: readiness fails and new requests get 503 (with Retry-After)
    while the worker still listens; requests answered before that complete; then the listener
    closes, the prediction log is flushed and the process exits 0. Every 200 answer's rows are in
    the store, and no request fails any other way. This server also requires a predict token and
    has no admin token (admin endpoints disabled)."""
    import signal
    import threading

    shutil.copytree(champion_home / "bentoml", tmp_path / "bentoml")
    token = "predict-token-for-tests-42"
    settings = make_settings(tmp_path, serving={"port": free_port(), "workers": 1, "log_flush_interval_s": 1.0,
                                                "predict_token": token, "drain_s": 1.5})
    service = ServiceProcess(settings, write_config(settings, tmp_path / "c.yaml"), log_path=tmp_path / "s.log")
    assert token not in (tmp_path / "c.yaml").read_text()  # secrets travel in the environment only
    outcomes: list[tuple[str, int]] = []  # (outcome, rows) per request, both clients
    per_client: dict[int, list[str]] = {0: [], 1: []}
    stop = threading.Event()

    def load(me: int) -> None:
        with httpx.Client(base_url=service.url, timeout=10, headers={"Authorization": f"Bearer {token}"}) as c:
            while not stop.is_set():
                try:
                    resp = predict(c, [ROW] * 5)
                except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    # Past draining (after a 503, which closes the connection): the listener is
                    # closed, or a fresh connection waiting in the arbiter's backlog is reset
                    # unread. Such a request was never processed (the row count below shows it).
                    outcomes.append(("closed" if "503" in per_client[me] else f"failed: {exc!r}", 0))
                    per_client[me].append("closed")
                    return
                except httpx.HTTPError as exc:  # a timeout or a broken answer: a lost request
                    outcomes.append((f"failed: {exc!r}", 0))
                    return
                if resp.status_code == 503:
                    assert resp.headers["retry-after"] and resp.headers["connection"] == "close"
                outcomes.append((str(resp.status_code), len(resp.json().get("request_ids", []))))
                per_client[me].append(str(resp.status_code))

    with service, httpx.Client(base_url=service.url, timeout=10) as client:
        assert predict(client, [ROW]).status_code == 401
        assert client.post("/admin/reload", json={}).status_code == 403
        threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        wait_until(lambda: sum(o == "200" for o, _ in outcomes) >= 20, "20 answers before the signal", 10,
                   interval=0.01)
        service.proc.send_signal(signal.SIGTERM)
        # the signal travels from the arbiter to the worker
        wait_until(lambda: client.get("/readyz").status_code != 200, "readiness failing after SIGTERM", 5)
        ready = [client.get("/readyz").status_code for _ in range(3)]
        live = client.get("/livez").status_code
        assert service.proc.wait(30) == 0
        stop.set()
        for t in threads:
            t.join(10)
    kinds = [o for o, _ in outcomes]
    assert ready == [503, 503, 503] and live == 200  # draining: not ready, still alive
    assert kinds.count("200") >= 20 and not [k for k in kinds if k not in ("200", "503", "closed")], kinds
    for seen in per_client.values():  # 200s, then (draining) only 503s, then the door closes
        assert "503" in seen and seen[-1] == "closed" and "200" not in seen[seen.index("503"):], seen
    answered = sum(rows for o, rows in outcomes if o == "200")
    # every processed request was answered: the log holds exactly the rows of the 200 answers
    assert PredictionStore(settings.store.url).count_predictions() == answered > 0


def test_no_access_log_line_per_request_by_default(server: dict[str, Any]) -> None:
    """BentoML's access log and tracing are off unless asked for (serving.access_log/tracing):
    together they cost more than half a worker's time on one-row requests."""
    from driftloop.launch import bentoml_config

    assert predict(server["client"], [ROW]).status_code == 200
    log = (server["root"] / "service.log").read_text()
    assert "now serves v1" in log and "path=/predict" not in log  # BentoML's access-log format
    on = make_settings(server["root"], serving={"access_log": True, "tracing": True})
    assert bentoml_config(on) == {"workers": 1, "logging": {"access": {"enabled": True}}}


def test_a_body_that_never_arrives_gets_408_and_the_connection_closed(server: dict[str, Any]) -> None:
    """A real socket that declares 1,000 bytes and sends 10: uvicorn hands the gate the first ones,
    then the gate's deadline (serving.body_timeout_s) answers 408 and the server closes the
    connection, while the worker goes on answering everyone else (tests/http/test_gate.py shows
    that no max_in_flight slot is held meanwhile)."""
    import socket

    client, serving = server["client"], server["settings"].serving
    before = metric(client, "driftloop_requests_shed_total", reason="body_timeout")
    reply, answered = b"", 0
    deadline = time.monotonic() + serving.body_timeout_s + 10
    with socket.create_connection((serving.host, serving.port), timeout=0.5) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: driftloop\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b'{"rows": [')
        while time.monotonic() < deadline:  # read until the server closes the connection
            try:
                chunk = sock.recv(65536)
            except TimeoutError:  # nothing yet: the worker answers the others meanwhile
                assert predict(client, [ROW]).status_code == 200
                answered += 1
                continue
            if not chunk:
                break
            reply += chunk
        else:
            pytest.fail(f"the connection was still open {serving.body_timeout_s + 10:g} s later; got {reply!r}")
    assert answered > 0
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), reply
    assert b"connection: close" in head.lower()
    answer = json.loads(body)
    assert answer["field"] == "body" and "10 of 1000 declared bytes came" in answer["error"]
    assert metric(client, "driftloop_requests_shed_total", reason="body_timeout") == before + 1
