"""The service's own PostgreSQL role (``driftloop db grants``): it starts on a store the owner has
migrated, logs predictions and feedback and reads the history, and cannot write the scheduler's
tables. On the session's private server (``postgres`` in conftest), a fresh database per test;
the grants go through psql as an operator applies them."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.launch import ServiceProcess, free_port, write_config
from driftloop.monitoring import migrations
from driftloop.monitoring.store import PredictionStore, StoreError, leases
from driftloop.training import scenarios
from driftloop.vocabulary import Check, Decision, EventKind

from tests.conftest import PostgresServer, make_settings
from tests.servers.test_store import pred
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def as_role(url: str, role: str) -> str:
    """``url`` (the fixture's superuser, ``driftloop``, trusted) for another role."""
    return url.replace("://driftloop@", f"://{role}@", 1)


@pytest.fixture
def owner(pg_url: str) -> Iterator[PredictionStore]:
    """The monitor's store: the tables' owner, migrated to the newest revision."""
    store = PredictionStore(pg_url).create()
    yield store
    store.close()


@pytest.fixture
def role(owner: PredictionStore) -> Iterator[str]:
    """A login role with no privilege yet (roles belong to the cluster: a fresh name per test)."""
    name = f"svc_{uuid.uuid4().hex[:8]}"
    with owner.engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{name}" LOGIN')
    yield name
    with owner.engine.begin() as conn:
        conn.exec_driver_sql(f'DROP OWNED BY "{name}"')
        conn.exec_driver_sql(f'DROP ROLE "{name}"')


def grant(postgres: PostgresServer, url: str, role: str) -> None:
    """``driftloop db grants --service-role ROLE | psql OWNER_URL``, stopping at the first error."""
    printed = CliRunner().invoke(app, ["db", "grants", "--service-role", role])
    assert printed.exit_code == 0, printed.output
    psql_url = url.replace("postgresql+psycopg://", "postgresql://", 1)
    done = subprocess.run([str(postgres.bindir / "psql"), psql_url, "-v", "ON_ERROR_STOP=1", "-q", "-f", "-"],
                          input=printed.output, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def denied(store: PredictionStore, statement: sa.Executable | str) -> str:
    """Run ``statement`` as ``store``'s role; returns PostgreSQL's error (it must be a permission error)."""
    with pytest.raises(sa.exc.ProgrammingError) as caught, store.engine.begin() as conn:
        conn.execute(sa.text(statement) if isinstance(statement, str) else statement)
    assert caught.value.orig.sqlstate == migrations.INSUFFICIENT_PRIVILEGE, caught.value
    return str(caught.value.orig)


def test_the_service_role_logs_and_reads_but_cannot_write_the_schedulers_tables(
        postgres: PostgresServer, pg_url: str, owner: PredictionStore, role: str) -> None:
    # every table of the newest revision has its say in the grants: a new one must be decided on
    with owner.engine.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) == set(migrations.SERVICE_PRIVILEGES)
    grant(postgres, pg_url, role)
    grant(postgres, pg_url, role)  # again (after an upgrade): the same privileges

    service = PredictionStore(as_role(pg_url, role)).create()  # at head: no DDL, no lock
    try:
        service.insert_predictions([pred(i) for i in range(3)])
        result = service.insert_feedback([("req-0000", 1), ("req-0001", 0), ("req-0000", 0), ("nope", 1)])
        assert (result.accepted, result.duplicates, result.unknown) == (2, ["req-0000"], ["nope"])
        service.insert_shadow_predictions([{"request_id": "req-0000", "model_version": "v2", "prediction": 1}])
        request = service.record_event(EventKind.RETRAIN_REQUESTED, {"reason": "new segment", "actor": "ops"})
        assert service.count_predictions() == 3

        owner.record_check(Check(window=0, first_id=1, last_id=3, rows=3, model_version="v1",
                                 reference_version="v1", drift_share=0.0, drifted_features=[], feature_scores={},
                                 labelled=2, accuracy=1.0, champion_labelled=2, champion_accuracy=1.0,
                                 decision=Decision.NONE, reason="quiet", duration_s=0.1))
        # GET /history: the checks and the events
        assert [c.window for c in service.checks()] == [0]
        assert [e["id"] for e in service.events()] == [request]
        assert owner.window(0, 10)["label"].tolist()[:2] == [1, 0]  # what the monitor reads: written

        # the scheduler's tables: neither written nor read
        now = datetime.now(timezone.utc).timestamp()
        for statement in ["INSERT INTO apscheduler_jobs (id, next_run_time, job_state) VALUES ('check', 0, '\\x00')",
                          "UPDATE apscheduler_jobs SET next_run_time = 0",
                          "DELETE FROM apscheduler_jobs",
                          "SELECT * FROM apscheduler_jobs",
                          leases.insert().values(name="scheduler", owner="mallory", epoch=99, expires_at=now + 3600),
                          leases.update().values(owner="mallory", epoch=99),
                          "SELECT * FROM leases"]:
            assert "permission denied" in denied(service, statement)
        # ...nor the monitor's checks, nor what is logged; no DDL
        denied(service, "UPDATE checks SET outcome = 'promoted'")
        denied(service, "DELETE FROM predictions")
        denied(service, "UPDATE feedback SET label = '0'")
        denied(service, "CREATE TABLE mine (x int)")
        denied(service, "DROP TABLE leases")
    finally:
        service.close()


def test_a_service_role_on_a_store_behind_or_without_grants_is_refused_with_what_to_do(
        postgres: PostgresServer, pg_url: str, owner: PredictionStore, role: str) -> None:
    bare = PredictionStore(as_role(pg_url, role))  # no grants yet
    with pytest.raises(StoreError, match=r"cannot read the store's schema revision .*driftloop db grants"):
        bare.create()
    bare.close()

    grant(postgres, pg_url, role)
    migrations.downgrade(owner, "0004")  # a driftloop upgrade the owner has not migrated for yet
    behind = PredictionStore(as_role(pg_url, role))
    with pytest.raises(StoreError, match=r"cannot migrate the store from revision 0004 to 0005 .*driftloop db upgrade"):
        behind.create()
    behind.close()
    assert migrations.current(owner) == "0004"  # nothing half done

    migrations.upgrade(owner)
    grant(postgres, pg_url, role)
    PredictionStore(as_role(pg_url, role)).create().close()


def test_grants_apply_through_the_cli_on_the_owners_store(pg_url: str, owner: PredictionStore, role: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_STORE__URL", pg_url)
    applied = CliRunner().invoke(app, ["db", "grants", "--service-role", role, "--apply"])
    assert applied.exit_code == 0, applied.output
    service = PredictionStore(as_role(pg_url, role)).create()
    try:
        service.insert_predictions([pred(0)])
        denied(service, leases.update().values(owner="mallory"))
    finally:
        service.close()
    refused = CliRunner().invoke(app, ["db", "grants", "--service-role", "Robert'); DROP", "--apply"])
    assert refused.exit_code == 2 and "role name" in refused.output
    missing = CliRunner().invoke(app, ["db", "grants", "--service-role", "nobody_here", "--apply"])
    assert missing.exit_code == 2 and 'cannot grant nobody_here its privileges: role "nobody_here" does not exist' \
        in missing.output


def test_a_real_service_on_the_restricted_role_starts_logs_and_serves_the_history(
        postgres: PostgresServer, pg_url: str, owner: PredictionStore, role: str, champion_home: Path,
        loans: pd.DataFrame, tmp_path: Path) -> None:
    """``bentoml serve`` with ``DRIFTLOOP_STORE__URL`` the service's role on a store the owner migrated."""
    grant(postgres, pg_url, role)
    shutil.copytree(champion_home / "bentoml", tmp_path / "bentoml")
    settings = make_settings(tmp_path, registry={"home": str(tmp_path / "bentoml")},
                             store={"url": as_role(pg_url, role)}, serving={"port": free_port(), "workers": 1})
    service = ServiceProcess(settings, write_config(settings, tmp_path / "service.yaml"),
                             log_path=tmp_path / "service.log")
    rows = loans[loans["period"] == "stable"][list(scenarios.FEATURES)].head(20).to_dict(orient="records")
    try:
        service.start(ready_timeout=120)
        with httpx.Client(base_url=service.url, timeout=30) as client:
            answer = client.post("/predict", json={"rows": rows})
            assert answer.status_code == 200, answer.text
            ids = answer.json()["request_ids"]
            wait_until(lambda: owner.count_predictions() == 20, what="the prediction log flushed")
            labelled = client.post("/feedback", json={"labels": [{"request_id": i, "label": 1} for i in ids[:5]]})
            assert labelled.status_code == 200, labelled.text
            for kind in ("checks", "events"):
                history = client.get("/history", params={"kind": kind})
                assert history.status_code == 200, history.text
    finally:
        service.stop()  # graceful: the prediction log is flushed
    assert len(owner.rows_between(0, 10**9)) == 20 and len(owner.labelled_rows(0, 10**9)) == 5
    assert b"permission denied" not in (tmp_path / "service.log").read_bytes()
