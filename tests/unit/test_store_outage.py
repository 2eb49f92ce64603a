"""The store under faults (SQLite, in process): a connection spoiled by the fault is thrown away
when the fault is gone, a file moved away is an outage rather than a fresh empty database, and
every such failure is recognised as the store being unavailable (503 and retry, not a 500)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from driftloop.monitoring.store import PredictionStore, unavailable


def row(i: int) -> dict:
    return {"request_id": f"r{i}", "created_at": datetime.now(timezone.utc), "model_version": "v1",
            "features": {"x": i}, "prediction": 0, "confidence": 0.9}


def test_a_connection_left_read_only_is_replaced_once_the_store_is_writable(tmp_path: Path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path / 'log.db'}").create()
    store.insert_predictions([row(0)])
    # What a file made unwritable leaves behind: a pooled connection that cannot write any more.
    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA query_only = ON")
    with pytest.raises(sa.exc.OperationalError) as failed:
        store.insert_predictions([row(1)])
    assert "readonly" in unavailable(failed.value)
    store.insert_predictions([row(1)])  # a fresh connection: no restart needed
    assert store.count_predictions() == 2
    store.close()


def test_a_store_file_moved_away_is_unavailable_and_never_recreated_empty(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    store = PredictionStore(f"sqlite:///{path}").create()
    store.insert_predictions([row(0)])
    store.close()  # no pooled connection keeps the old file open
    path.rename(tmp_path / "away.db")
    with pytest.raises(sa.exc.OperationalError) as failed:
        store.insert_predictions([row(1)])
    assert unavailable(failed.value) == "unable to open database file"
    assert not path.exists()  # no empty database took its place (its rows would be lost at the move back)
    (tmp_path / "away.db").rename(path)
    store.insert_predictions([row(1)])
    assert store.count_predictions() == 2
    store.close()


def test_only_outages_count_as_unavailable() -> None:
    assert unavailable(ValueError("bad")) is None
    assert unavailable(sa.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))) is None
    assert unavailable(sa.exc.OperationalError("INSERT", {}, Exception("database is locked\nmore"))) == "database is locked"
