"""A schemathesis run against the running service's own OpenAPI document finds no 5xx.

The server is a real ``bentoml serve`` (one worker) over a copy of the session's champion
registry, with an admin token that every generated request carries, so the admin endpoints get
past the bearer check and their handlers run too. The run is what ``schemathesis run`` does (its
engine, in process) on ``/docs.json``: the examples, coverage (boundary values, wrong types,
undeclared methods and content types, ...) and fuzzing phases for every operation, positive and
negative data, with the ``not_a_server_error`` check only. The conformance checks are left out:
the document is BentoML's, and its declared error bodies and status codes are not the project's
contract (400 carries pydantic's ``detail``; 401, 409, 415 and 422 are not declared), so they
fail on correct answers. Generation is seeded and derandomized, fuzzing is bounded to
``MAX_EXAMPLES`` cases per operation and there is no deadline, so CI replays the same cases.

``schemathesis.pytest.from_fixture`` (the lazy pytest integration) is not used: it writes
``request.node._nodeid``, which pytest 9.2 no longer has.
"""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.engine import Status, events, from_schema

from driftloop.launch import free_port
from driftloop.launch import ServiceProcess, write_config

from tests.conftest import make_settings

pytestmark = pytest.mark.slow
ADMIN_TOKEN = "schemathesis-admin-token-0001"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MAX_EXAMPLES = 50  # fuzzing cases per operation; the examples and coverage phases add their own
SEED = 20260101
CHECKS = ["not_a_server_error"]
API = {"POST /predict", "POST /feedback", "POST /admin/promote", "POST /admin/rollback", "POST /admin/reload",
       "POST /admin/retrain"}


@pytest.fixture(scope="module")
def service(champion_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("schemathesis")
    shutil.copytree(champion_home / "bentoml", root / "bentoml")
    conf = make_settings(root, serving={"port": free_port(), "workers": 1, "max_rows": 50,
                                        "admin_token": ADMIN_TOKEN})
    with ServiceProcess(conf, write_config(conf, root / "driftloop.yaml"), log_path=root / "service.log") as proc:
        yield proc


def schemathesis_config(url: str) -> schemathesis.Config:
    """What a ``schemathesis.toml`` would say.

    No on-disk cache (``.schemathesis/``, which replays and learns from earlier runs): every run
    starts from the same state and nothing is written into the work tree. No error feedback in
    fuzzing: it steers generation by earlier answers, Hypothesis then sees the strategy change
    between runs (``FlakyStrategyDefinition``) and schemathesis quietly ends that operation's
    fuzzing after a handful of cases (/predict and /feedback got 6 or 7 instead of 50).
    """
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "cache": {"enabled": False},
        "base-url": url,
        "headers": AUTH,
        "workers": 1,
        "request-timeout": 30,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True, "error-feedback": {"enabled": False}},
            "stateful": {"enabled": False},  # the document declares no links between operations
        },
        "checks": {"enabled": False} | {name: {"enabled": True} for name in CHECKS},
    })


def run_schemathesis(url: str) -> dict[str, Any]:
    """Run every phase on ``url``'s OpenAPI document: per operation the cases by phase and the
    answers by status; the failures (with a curl command each), errors and checks run."""
    schema = schemathesis.openapi.from_url(f"{url}/docs.json", config=schemathesis_config(url), timeout=10)
    operations, errors = [], []
    for result in schema.get_all_operations():
        try:
            operations.append(result.ok().label)
        except Exception:  # an operation the document defines badly: schemathesis cannot test it
            errors.append(f"invalid operation in /docs.json: {result.err()}")
    cases: dict[str, Counter[str]] = defaultdict(Counter)
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    checks_run: set[str] = set()
    failures: list[str] = []
    stop = None
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.label:
            recorder = event.recorder
            cases[event.label][event.phase.value] += len(recorder.cases)
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    statuses[event.label][interaction.response.status_code] += 1
            for check in (check for checks in recorder.checks.values() for check in checks):
                checks_run.add(check.name)
                if check.status == Status.FAILURE and check.failure_info is not None:
                    failure = check.failure_info.failure
                    failures.append(f"{event.label} ({event.phase.value}): {failure.title}: {failure.message}\n"
                                    f"    {check.failure_info.code_sample}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            errors.append(f"{getattr(event, 'label', '')}: {event.info.format()}")
        elif isinstance(event, events.EngineFinished):
            stop = event.stop_reason.value
    return {"operations": sorted(operations), "cases": cases, "statuses": statuses, "checks": checks_run,
            "failures": list(dict.fromkeys(failures)), "errors": errors, "stop": stop}


def test_schemathesis_finds_no_server_error(service: ServiceProcess) -> None:
    result = run_schemathesis(service.url)
    print("\n".join(f"{label}: cases {dict(result['cases'][label])}, statuses {dict(result['statuses'][label])}"
                    for label in result["operations"]))
    assert not result["failures"], "\n".join(result["failures"])
    assert not result["errors"], "\n".join(result["errors"])
    assert result["stop"] == "completed"
    assert result["checks"] == set(CHECKS)
    assert API <= set(result["operations"])
    for label in result["operations"]:
        assert sum(result["cases"][label].values()) > 0, f"{label} was not tested"
    for label in API:  # fuzzing ran to its bound (not cut short, see schemathesis_config)
        assert result["cases"][label]["fuzzing"] == MAX_EXAMPLES, (label, dict(result["cases"][label]))
    for label in API - {"POST /predict", "POST /feedback"}:  # the bearer header got them past auth
        past_auth = set(result["statuses"][label]) - {401, 403}
        assert past_auth, f"{label}: every answer was {dict(result['statuses'][label])}"


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=x",
                                          "application/x-www-form-urlencoded"])
def test_form_bodies_get_415_naming_the_header(service: ServiceProcess, content_type: str) -> None:
    """What the coverage phase found: BentoML parses form bodies itself and a malformed one (no
    boundary) was a 500. Any other declared type (text/plain) is 415 too; JSON sent with no
    Content-Type at all is still read as JSON."""
    with httpx.Client(base_url=service.url, timeout=10) as client:
        for path in ("/predict", "/feedback", "/admin/reload"):
            resp = client.post(path, content=b'{"rows": []}', headers={"content-type": content_type} | AUTH)
            assert resp.status_code == 415, resp.text
            assert resp.json()["field"] == "Content-Type" and "application/json" in resp.json()["error"]
        resp = client.post("/predict", content=b'{"rows": []}', headers={"content-type": "text/plain"})
        assert resp.status_code == 415 and resp.json()["field"] == "Content-Type"
        resp = client.post("/predict", content=b'{"rows": []}')  # httpx sends no Content-Type for raw bytes
        assert resp.status_code == 422 and resp.json()["field"] == "rows"
