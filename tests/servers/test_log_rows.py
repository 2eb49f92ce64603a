"""The prediction log's insert path (``PredictionStore.log_rows`` + ``insert_logged``: the rows
encoded once on the request path, then SQLite's executemany or PostgreSQL's COPY on the driver's
connection) stores exactly what SQLAlchemy's own insert of the same rows stores, on both
backends, and ``insert_predictions`` (dict rows, the other callers' API) goes the same way."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from driftloop.monitoring.store import PredictionStore, predictions

WHEN = [datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc),
        datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc),  # no microseconds: still written with them
        datetime(2023, 1, 2, 3, 4, 5, 6)]  # naive, as some callers pass
FEATURES = [{"x": 1.5, "region": "north", "tags": ["a", "b"]},
            {"x": -0.0, "region": "Zürich ✓", "tags": []},  # non-ASCII text
            {"x": 1e-300, "region": None, "tags": ["\"quoted\", comma"]}]
PREDICTIONS: list[Any] = [1, "class, with comma", 0.25]
CONFIDENCES = [0.875, None, 1]  # an int: SQLite's Float turns it into a float, as before


def _raw(store: PredictionStore, prefix: str) -> list[tuple[Any, ...]]:
    """The stored values as the driver returns them (no SQLAlchemy type processing), in id order."""
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT request_id, created_at, model_version, features, prediction, confidence "
                                    "FROM predictions ORDER BY id").all()
    return [tuple(r[1:]) for r in rows if r[0].startswith(prefix)]


def test_logged_rows_are_stored_as_sqlalchemy_stores_them(store_url: str) -> None:
    store = PredictionStore(store_url).create()
    try:
        # The reference: SQLAlchemy Core's insert of the payload the store used to build.
        import json
        with store.engine.begin() as conn:
            conn.execute(predictions.insert(), [
                {"request_id": f"sa{i}", "created_at": WHEN[i], "model_version": "v1",
                 "features": json.dumps(FEATURES[i], separators=(",", ":")), "prediction": json.dumps(PREDICTIONS[i]),
                 "confidence": CONFIDENCES[i]} for i in range(3)])
        for i in range(3):  # one request each (log_rows takes one time per request)
            store.insert_logged(store.log_rows([f"log{i}"], WHEN[i], "v1", [FEATURES[i]], [PREDICTIONS[i]],
                                               [CONFIDENCES[i]]))
        store.insert_predictions([{"request_id": f"dict{i}", "created_at": WHEN[i], "model_version": "v1",
                                   "features": FEATURES[i], "prediction": PREDICTIONS[i],
                                   "confidence": CONFIDENCES[i]} for i in range(3)])
        reference = _raw(store, "sa")
        assert len(reference) == 3
        assert _raw(store, "log") == reference
        assert _raw(store, "dict") == reference
        frame = store.window(0, 100)
        assert list(frame["request_id"]) == [f"{p}{i}" for p in ("sa", "log", "dict") for i in range(3)]
        assert list(frame["region"])[3:5] == ["north", "Zürich ✓"] and frame["region"].isna().iloc[5]
        assert list(frame["prediction"])[3:6] == PREDICTIONS
    finally:
        store.close()


def test_a_batch_keeps_its_order_and_joins_a_callers_transaction(store_url: str) -> None:
    """Ids follow the batch's order; in ``conn`` the rows are visible only at its commit, and a
    rollback leaves none (what the log-order lock on PostgreSQL relies on)."""
    store = PredictionStore(store_url).create()
    now = datetime.now(timezone.utc)
    rows = [r for i in range(300) for r in store.log_rows([f"r{i:03d}"], now + timedelta(microseconds=i), "v2",
                                                           [{"i": i}], [i % 3], [i / 300])]
    try:
        with store.engine.connect() as conn:
            with conn.begin() as tx:
                store.insert_logged(rows[:100], conn=conn)
                tx.rollback()
            assert store.count_predictions() == 0
            with conn.begin():
                store.insert_logged(rows, conn=conn)
        frame = store.window(0, 1000)
        assert list(frame["request_id"]) == [f"r{i:03d}" for i in range(300)]
        assert list(frame["i"]) == list(range(300)) and frame["id"].is_monotonic_increasing
        store.insert_logged([])  # nothing to write: no transaction, no error
        assert store.count_predictions() == 300
    finally:
        store.close()


def test_a_duplicate_request_id_is_not_an_outage(store_url: str) -> None:
    """A constraint violation stays what it is (not ``unavailable``), on the COPY path too."""
    from driftloop.monitoring.store import unavailable

    store = PredictionStore(store_url).create()
    rows = store.log_rows(["same"], datetime.now(timezone.utc), "v1", [{"x": 1}], [0], [0.5])
    try:
        store.insert_logged(rows)
        try:
            store.insert_logged(rows)
        except sa.exc.IntegrityError as exc:
            assert unavailable(exc) is None
        else:
            raise AssertionError("a second row with the same request_id was accepted")
        assert store.count_predictions() == 1
    finally:
        store.close()
