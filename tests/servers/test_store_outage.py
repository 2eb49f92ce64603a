"""A real service while its store is out: nothing lost, nothing silent, no outage of its own.

Each test starts one ``bentoml serve`` (one worker) on a store of its own, sends steady traffic,
breaks the store (SQLite: another process holds its write lock; PostgreSQL: the server is
stopped), and requires, during the fault, that predictions are still answered, the queue gauge
counts the rows waiting, and feedback for ids whose rows wait is a 503 with Retry-After (never a
404 "unknown"); after it, with no restart, that every answered row is in the store, none is
counted as dropped, and the labels sent again are accepted.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from driftloop.launch import ServiceProcess, free_port, write_config
from driftloop.monitoring.store import PredictionStore
from tests.conftest import PostgresServer, make_settings, postgres_bindir
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
ROW = {"income": 52000.0, "age": 41.0, "debt_ratio": 0.31, "credit_lines": 6.0, "region": "north",
       "employment": "salaried"}


class Traffic:
    """One client sending one-row predictions until stopped; every answer's status and ids kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ids: list[str] = []
        self.statuses: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    resp = client.post("/predict", json={"rows": [ROW]})
                except httpx.HTTPError as exc:
                    self.statuses.append(repr(exc))
                    continue
                self.statuses.append(resp.status_code)
                if resp.status_code == 200:
                    self.ids.extend(resp.json()["request_ids"])
                self._stop.wait(0.005)  # a steady ~150 requests/s, not a synchronisation


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


@pytest.fixture
def service_on(champion_home: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[ServiceProcess] = []

    def start(store_url: str) -> tuple[ServiceProcess, httpx.Client]:
        root = tmp_path / f"s{len(started)}"
        shutil.copytree(champion_home / "bentoml", root / "bentoml")
        settings = make_settings(root, store={"url": store_url},
                                 serving={"port": free_port(), "workers": 1, "log_flush_interval_s": 0.2})
        service = ServiceProcess(settings, write_config(settings, root / "c.yaml"), log_path=root / "service.log")
        started.append(service.start())
        return service, httpx.Client(base_url=service.url, timeout=30)

    yield start
    for service in started:
        service.stop(timeout=30)


def stored(url: str, ids: list[str]) -> set[str]:
    store = PredictionStore(url)
    try:
        return store.known_request_ids(ids)
    except sa.exc.ProgrammingError:  # no table yet: the service creates the schema once the store is back
        return set()
    finally:
        store.close()


def all_stored(url: str, ids: list[str]) -> bool:
    return stored(url, ids) == set(ids)


def during_and_after(service: ServiceProcess, client: httpx.Client, store_url: str, outage: Any,
                     expected_503: str) -> None:
    """Traffic through ``outage`` (a context manager that breaks the store until it exits)."""
    with Traffic(service.url) as traffic:
        wait_until(lambda: len(traffic.ids) >= 20, "20 answers before the fault", 20)
        with outage:
            answered = len(traffic.ids)
            wait_until(lambda: metric(client, "driftloop_prediction_log_queue_rows") >= 20,
                       "the queue gauge to count the rows waiting", 20)
            wait_until(lambda: len(traffic.ids) > answered + 20, "answers during the fault", 20)
            waiting = traffic.ids[-1]
            label = client.post("/feedback", json={"labels": [{"request_id": waiting, "label": 1}]})
            assert label.status_code == 503, label.text
            assert label.headers["retry-after"] and expected_503 in label.json()["error"]
            history = client.get("/history")
            assert history.status_code in (200, 503)  # a read: it may still work (SQLite's WAL)
            assert client.get("/readyz").status_code == 200
        # everything answered up to a moment ago (the newest rows may wait for the next flush)
        wait_until(lambda: all_stored(store_url, traffic.ids[:-50]), "the rows answered during the fault in the store",
                   30)
    assert set(traffic.statuses) == {200}, sorted(set(map(str, traffic.statuses)))
    wait_until(lambda: all_stored(store_url, traffic.ids), "every answered row in the store", 30)
    assert metric(client, 'driftloop_prediction_log_rows_total{outcome="dropped"}') == 0
    assert metric(client, "driftloop_prediction_log_queue_rows") == 0 or wait_until(
        lambda: metric(client, "driftloop_prediction_log_queue_rows") == 0, "the queue gauge back at 0", 10)
    again = client.post("/feedback", json={"labels": [{"request_id": waiting, "label": 1}]})
    assert again.status_code == 200 and again.json()["accepted"] == 1, again.text
    assert metric(client, 'driftloop_feedback_labels_total{outcome="unavailable"}') >= 1


class SqliteLock:
    """Another process's exclusive write lock on the SQLite store (a long transaction)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> SqliteLock:
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


class Stopped:
    def __init__(self, server: PostgresServer) -> None:
        self.server = server

    def __enter__(self) -> Stopped:
        self.server.pause()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.resume()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, to stop and start (not the session's)."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb): run scripts/system-deps.sh")
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


def test_sqlite_write_lock_held_by_another_process(service_on: Any, tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    url = f"sqlite:///{path}"
    service, client = service_on(url)
    with client:
        during_and_after(service, client, url, SqliteLock(path), "not in the prediction log yet")


def test_postgresql_stopped_and_started_again(service_on: Any, private_postgres: PostgresServer) -> None:
    url = private_postgres.create_database()
    service, client = service_on(url)
    with client:
        during_and_after(service, client, url, Stopped(private_postgres), "the prediction store is unavailable")


def test_a_worker_starts_and_serves_while_postgresql_is_down(service_on: Any,
                                                            private_postgres: PostgresServer) -> None:
    """Started during the outage (schema never created): ready and answering from the registry;
    the rows wait, and reach the store once it is back."""
    url = private_postgres.create_database()
    private_postgres.pause()
    try:
        service, client = service_on(url)
    finally:
        private_postgres.resume()
    with client:
        answer = client.post("/predict", json={"rows": [ROW] * 3})
        assert answer.status_code == 200
        ids = answer.json()["request_ids"]
        wait_until(lambda: all_stored(url, ids), "the rows answered during the outage in the store", 30)
        assert metric(client, 'driftloop_prediction_log_rows_total{outcome="dropped"}') == 0


def test_postgresql_copy_of_log_rows_fails_as_an_outage_then_goes_through(private_postgres: PostgresServer) -> None:
    """The log's rows go to PostgreSQL by COPY on the driver's connection: a stopped server is
    still SQLAlchemy's OperationalError (unavailable: the writer keeps the rows and retries), and
    the same rows go in once it is back, on a fresh connection."""
    from datetime import datetime, timezone

    from driftloop.monitoring.store import unavailable

    store = PredictionStore(private_postgres.create_database()).create()
    rows = store.log_rows(["r0", "r1"], datetime.now(timezone.utc), "v1", [{"x": 1.0}, {"x": 2.0}], [0, 1], [0.9, None])
    try:
        with Stopped(private_postgres), pytest.raises(sa.exc.OperationalError) as failed:
            store.insert_logged(rows)
        assert unavailable(failed.value) is not None
        store.insert_logged(rows)
        assert store.count_predictions() == 2
        assert list(store.window(0, 10)["x"]) == [1.0, 2.0]
    finally:
        store.close()
