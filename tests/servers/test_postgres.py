"""The store on PostgreSQL with several writers: ids in commit order (so the monitor's scan by id
never skips a row), and feedback races between processes. Each test gets a fresh database on the
session's private server (``postgres`` in conftest)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from driftloop.monitoring.store import PredictionStore, predictions

from tests.servers.test_store import pred
from tests.waiting import wait_until


@pytest.fixture
def pg(pg_url: str) -> Iterator[PredictionStore]:
    s = PredictionStore(pg_url).create()
    yield s
    s.close()


def lock_waiters(store: PredictionStore) -> int:
    """Backends of this database blocked on a lock (an advisory lock, a row)."""
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND wait_event_type = 'Lock'")).scalar_one())


def test_a_plain_autoincrement_insert_can_commit_behind_a_higher_id(pg: PredictionStore) -> None:
    """The hazard the store guards against, shown with a plain insert (no ordering lock)."""
    with pg.engine.connect() as slow:
        tx = slow.begin()
        slow.execute(predictions.insert(), [{**pred(0), "features": "{}", "prediction": "0"}])  # takes id 1
        pg.insert_predictions([pred(1)])  # id 2, committed first
        seen = pg.window(after_id=0, limit=10)
        assert list(seen["id"]) == [2]  # a scan that moves past 2 now would never see id 1
        tx.commit()
    assert list(pg.window(after_id=2, limit=10)["id"]) == []  # ... and it does not: id 1 is behind
    assert list(pg.window(after_id=0, limit=10)["id"]) == [1, 2]


def test_store_inserts_take_ids_in_commit_order(pg: PredictionStore, pg_url: str) -> None:
    other = PredictionStore(pg_url)  # another service process
    try:
        with pg.engine.connect() as slow:
            tx = slow.begin()
            pg.insert_predictions([pred(0), pred(1)], conn=slow)  # holds the log-order lock until commit
            done = threading.Event()
            writer = threading.Thread(target=lambda: (other.insert_predictions([pred(2)]), done.set()))
            writer.start()
            wait_until(lambda: lock_waiters(pg) >= 1, what="the second writer waiting for the first")
            assert not done.is_set()
            assert len(pg.window(0, 10)) == 0  # nothing visible yet: no row can be skipped
            tx.commit()
        writer.join(10)
        assert done.is_set()
        frame = pg.window(0, 10)
        assert list(frame["request_id"]) == ["req-0000", "req-0001", "req-0002"]  # id order == commit order
        assert frame["id"].is_monotonic_increasing
    finally:
        other.close()


def test_concurrent_writers_and_a_scanning_reader_see_every_row_once(pg: PredictionStore, pg_url: str) -> None:
    """Four writers (own engines, as separate processes) insert batches while a reader consumes
    the log the monitor's way: the next rows after the last id it saw. Each writer's transaction
    lasts a few milliseconds after its insert (a remote database's round trip before COMMIT):
    without the store's ordering lock the reader skips rows in most runs."""
    writers, batches, rows_per_batch = 4, 25, 20
    stores = [PredictionStore(pg_url) for _ in range(writers)]
    failures: list[BaseException] = []

    def write(k: int) -> None:
        try:
            for b in range(batches):
                base = (k * batches + b) * rows_per_batch
                with stores[k].engine.begin() as conn:
                    stores[k].insert_predictions([pred(base + i) for i in range(rows_per_batch)], conn=conn)
                    conn.exec_driver_sql("SELECT pg_sleep(0.005)")  # the round trip before COMMIT
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    seen: list[str] = []
    after = 0
    while True:
        writing = any(t.is_alive() for t in threads)
        chunk = pg.window(after, 50)
        if len(chunk):
            seen += list(chunk["request_id"])
            after = int(chunk["id"].iloc[-1])
        elif not writing:
            break
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert not failures, failures
    total = writers * batches * rows_per_batch
    assert pg.count_predictions() == total
    assert len(seen) == len(set(seen)) == total, f"{total - len(set(seen))} rows skipped by the scan"


def test_a_feedback_race_between_two_services_keeps_the_first_label(pg: PredictionStore, pg_url: str) -> None:
    pg.insert_predictions([pred(0), pred(1)])
    other = PredictionStore(pg_url)
    try:
        with pg.engine.connect() as first:
            tx = first.begin()  # service 1 is inserting the label of req-0000, not committed yet
            first.execute(sa.text("INSERT INTO feedback (request_id, label, received_at) "
                                  "VALUES ('req-0000', '1', now())"))
            result: list = []
            racer = threading.Thread(target=lambda: result.append(
                other.insert_feedback([("req-0000", 0), ("req-0001", 1)])))
            racer.start()  # service 2 read "no label yet" and now waits on the row service 1 holds
            wait_until(lambda: lock_waiters(pg) >= 1, what="the second label waiting for the first")
            tx.commit()
        racer.join(10)
        assert result and result[0].accepted == 1 and result[0].duplicates == ["req-0000"]
        labels = pg.window(0, 10).set_index("request_id")["label"].to_dict()
        assert labels == {"req-0000": 1, "req-0001": 1}  # the first label of req-0000 won
    finally:
        other.close()
