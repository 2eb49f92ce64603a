"""The prediction store, on a SQLite file under tmp_path and on a fresh PostgreSQL database
(``store_url`` in conftest: every test that takes ``store`` runs on both)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from driftloop.monitoring.store import FeedbackResult, PredictionStore
from driftloop.vocabulary import Check, Decision, Outcome

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def store(store_url: str):
    s = PredictionStore(store_url).create()
    yield s
    s.close()


def pred(i: int, version: str = "v1") -> dict:
    return {
        "request_id": f"req-{i:04d}",
        "created_at": T0 + timedelta(seconds=i),
        "model_version": version,
        "features": {"income": 1000.0 + i, "age": 20 + i % 50, "region": ["north", "east"][i % 2]},
        "prediction": i % 2,
        "confidence": 0.5 + (i % 5) / 10,
    }


def fill(store: PredictionStore, n: int, start: int = 0) -> list[dict]:
    rows = [pred(i) for i in range(start, start + n)]
    store.insert_predictions(rows)
    return rows


def check(window: int, **kw) -> Check:
    base = {
        "window": window, "first_id": window * 10 + 1, "last_id": window * 10 + 10, "rows": 10,
        "model_version": "v1", "reference_version": "v1", "drift_share": 0.25,
        "drifted_features": ["income"],
        "feature_scores": {"income": {"method": "ks", "score": 0.001, "threshold": 0.05, "drifted": True}},
        "labelled": 8, "accuracy": 0.75, "champion_labelled": 8, "champion_accuracy": 0.75,
        "decision": Decision.WATCH, "reason": "drift share 0.25", "outcome": None, "report_path": None,
        "duration_s": 0.5,
    }
    return Check(**(base | kw))


def test_create_makes_the_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.db"
    PredictionStore(url(path)).create().close()
    assert path.is_file()


def test_window_returns_rows_in_id_order_with_feature_columns(store: PredictionStore) -> None:
    rows = fill(store, 6)
    frame = store.window(after_id=0, limit=100)
    assert list(frame["id"]) == [1, 2, 3, 4, 5, 6]
    assert list(frame["request_id"]) == [r["request_id"] for r in rows]
    for column in ["id", "request_id", "created_at", "model_version", "prediction", "confidence", "label",
                   "income", "age", "region"]:
        assert column in frame.columns, column
    assert list(frame["income"]) == [r["features"]["income"] for r in rows]
    assert list(frame["region"]) == [r["features"]["region"] for r in rows]
    assert list(frame["prediction"]) == [r["prediction"] for r in rows]
    assert frame["confidence"].tolist() == pytest.approx([r["confidence"] for r in rows])
    assert frame["label"].isna().all()
    assert all(v is None for v in frame["label"])


def test_window_after_id_and_limit(store: PredictionStore) -> None:
    fill(store, 10)
    assert list(store.window(after_id=3, limit=4)["id"]) == [4, 5, 6, 7]
    assert list(store.window(after_id=8, limit=4)["id"]) == [9, 10]
    empty = store.window(after_id=10, limit=4)
    assert len(empty) == 0
    assert {"id", "request_id", "label"} <= set(empty.columns)


def test_window_is_in_id_order_across_inserts(store: PredictionStore) -> None:
    store.insert_predictions([pred(5), pred(3)])
    store.insert_predictions([pred(1)])
    frame = store.window(0, 10)
    assert list(frame["id"]) == [1, 2, 3]
    assert list(frame["request_id"]) == ["req-0005", "req-0003", "req-0001"]


def test_label_appears_once_feedback_arrives(store: PredictionStore) -> None:
    fill(store, 4)
    assert store.window(0, 10)["label"].isna().all()
    result = store.insert_feedback([("req-0001", 1), ("req-0003", 0)])
    assert result == FeedbackResult(accepted=2, duplicates=[], unknown=[])
    frame = store.window(0, 10).set_index("request_id")
    assert frame.loc["req-0001", "label"] == 1
    assert frame.loc["req-0003", "label"] == 0
    assert pd.isna(frame.loc["req-0000", "label"]) and pd.isna(frame.loc["req-0002", "label"])


def test_feedback_lists_unknown_ids(store: PredictionStore) -> None:
    fill(store, 2)
    result = store.insert_feedback([("req-0000", "yes"), ("nope-1", "no"), ("req-0001", "no"), ("nope-2", "yes")])
    assert result.accepted == 2
    assert result.unknown == ["nope-1", "nope-2"]
    assert result.duplicates == []
    labels = store.window(0, 10).set_index("request_id")["label"].to_dict()
    assert labels == {"req-0000": "yes", "req-0001": "no"}


def test_second_label_is_a_duplicate_and_the_first_wins(store: PredictionStore) -> None:
    fill(store, 3)
    assert store.insert_feedback([("req-0000", "first")]).accepted == 1
    later = store.insert_feedback([("req-0000", "second"), ("req-0001", "a")])
    assert later.accepted == 1
    assert later.duplicates == ["req-0000"]
    same_batch = store.insert_feedback([("req-0002", "b1"), ("req-0002", "b2")])
    assert same_batch.accepted == 1 and same_batch.duplicates == ["req-0002"]
    labels = store.window(0, 10).set_index("request_id")["label"].to_dict()
    assert labels == {"req-0000": "first", "req-0001": "a", "req-0002": "b1"}


def test_labelled_rows_only_labelled_and_within_range(store: PredictionStore) -> None:
    fill(store, 10)  # ids 1..10 are req-0000..req-0009
    store.insert_feedback([(f"req-{i:04d}", i % 2) for i in (0, 2, 3, 6, 9)])  # ids 1, 3, 4, 7, 10
    frame = store.labelled_rows(2, 7)
    assert list(frame["id"]) == [3, 4, 7]
    assert list(frame["label"]) == [0, 1, 0]
    assert list(frame["income"]) == [1002.0, 1003.0, 1006.0]
    assert list(store.labelled_rows(1, 10)["id"]) == [1, 3, 4, 7, 10]
    assert len(store.labelled_rows(8, 9)) == 0


def test_count_rows_labelled_or_all_and_the_highest_id(store: PredictionStore) -> None:
    assert store.count_rows(1, 100) == (0, None)
    fill(store, 10)  # ids 1..10
    store.insert_feedback([(f"req-{i:04d}", i % 2) for i in (0, 2, 3, 6)])  # ids 1, 3, 4, 7
    assert store.count_rows(2, 10) == (3, 7)
    assert store.count_rows(2, 6) == (2, 4)
    assert store.count_rows(8, 10) == (0, None)
    assert store.count_rows(2, 9, labelled=False) == (8, 9)


def test_count_predictions(store: PredictionStore) -> None:
    assert store.count_predictions() == 0
    fill(store, 3)
    fill(store, 4, start=3)
    store.insert_predictions([])
    assert store.count_predictions() == 7


def test_checks_round_trip(store: PredictionStore) -> None:
    assert store.last_check() is None
    assert store.checks() == []
    for w in (0, 2, 1):
        decision = [Decision.NONE, Decision.WATCH, Decision.RETRAIN][w]
        store.record_check(check(w, decision=decision, drifted_features=[f"f{w}"],
                                 outcome=Outcome.PROMOTED if w == 2 else None))
    got = store.checks()
    assert [c.window for c in got] == [0, 1, 2]
    assert got[1].drifted_features == ["f1"]
    assert got[1].feature_scores == check(1).feature_scores
    assert got[1].decision is Decision.WATCH and got[1].accuracy == 0.75 and got[1].outcome is None
    assert isinstance(got[1].created_at, datetime) and isinstance(got[1].id, int)
    assert got[1] == check(1, decision=Decision.WATCH, drifted_features=["f1"], created_at=got[1].created_at,
                           id=got[1].id)  # every field round-trips
    last = store.last_check()
    assert last is not None and last.window == 2 and last.outcome is Outcome.PROMOTED
    assert last.decision is Decision.RETRAIN and last.drifted_features == ["f2"]
    assert [c.window for c in store.checks(since_window=0)] == [1, 2]
    assert [c.window for c in store.checks(outcome=Outcome.PROMOTED)] == [2]
    assert store.checks(since_window=2, outcome=Outcome.PROMOTED) == []


def test_record_check_keeps_a_given_created_at(store: PredictionStore) -> None:
    store.record_check(check(0, created_at=T0))
    got = store.last_check().created_at
    assert got.replace(tzinfo=None) == T0.replace(tzinfo=None)


def test_events_round_trip_and_kind_filter(store: PredictionStore) -> None:
    assert store.events() == []
    store.record_event("drift", {"share": 0.75, "features": ["age"]}, window=3, model_version="v1")
    store.record_event("promoted", {"from": "v1", "to": "v2"}, model_version="v2")
    store.record_event("drift", {"when": T0})  # not JSON-native: stored as its str()
    all_events = store.events()
    assert [e["kind"] for e in all_events] == ["drift", "promoted", "drift"]
    assert all_events[0]["detail"] == {"share": 0.75, "features": ["age"]}
    assert all_events[0]["window"] == 3 and all_events[0]["model_version"] == "v1"
    assert all_events[1]["window"] is None
    assert all_events[2]["detail"] == {"when": str(T0)}
    drift = store.events(kind="drift")
    assert [e["id"] for e in drift] == [all_events[0]["id"], all_events[2]["id"]]
    assert store.events(kind="rejected") == []
    assert [e["kind"] for e in store.events(("promoted", "rejected", "drift"))] == ["drift", "promoted", "drift"]
    assert store.events(()) == [] and len(store.events("")) == 3


def test_create_twice_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "twice.db"
    first = PredictionStore(url(path)).create()
    fill(first, 3)
    first.record_event("start", {})
    first.create()  # again on the same object
    first.close()
    second = PredictionStore(url(path)).create()  # and from a new one
    try:
        assert second.count_predictions() == 3
        assert [e["kind"] for e in second.events()] == ["start"]
        fill(second, 2, start=3)
        assert list(second.window(0, 10)["id"]) == [1, 2, 3, 4, 5]
    finally:
        second.close()


# -- migrations ---------------------------------------------------------------------------------
def test_a_fresh_database_is_migrated_to_the_newest_revision(store: PredictionStore) -> None:
    import sqlalchemy as sa

    from driftloop.monitoring import migrations

    assert migrations.current(store) == migrations.head() == "0005"
    assert {"predictions", "feedback", "checks", "events", "leases", "apscheduler_jobs",
            "shadow_predictions"} <= set(sa.inspect(store.engine).get_table_names())


def test_a_database_made_before_migrations_is_adopted_with_its_rows(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from driftloop.monitoring import migrations
    from driftloop.monitoring.store import metadata

    path = tmp_path / "old.db"
    engine = sa.create_engine(url(path))
    for name in migrations.LEGACY_TABLES:  # what metadata.create_all made before Alembic
        metadata.tables[name].create(engine)
    engine.dispose()
    old = PredictionStore(url(path))
    old._created = True  # skip migrations: write as the old code did
    fill(old, 3)
    old.close()
    store = PredictionStore(url(path)).create()
    try:
        assert migrations.current(store) == migrations.head()
        assert store.count_predictions() == 3 and "leases" in sa.inspect(store.engine).get_table_names()
    finally:
        store.close()


def test_a_foreign_database_is_refused_with_the_differences_named(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from driftloop.monitoring.store import StoreError

    path = tmp_path / "foreign.db"
    engine = sa.create_engine(url(path))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE predictions (id INTEGER PRIMARY KEY, payload TEXT)")
    engine.dispose()
    with pytest.raises(StoreError, match="predictions lacks .*request_id.*unknown columns payload.*feedback is missing"):
        PredictionStore(url(path)).create()


def test_a_database_from_a_newer_driftloop_is_refused(store: PredictionStore, store_url: str) -> None:
    import sqlalchemy as sa

    from driftloop.monitoring.store import StoreError

    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    newer = PredictionStore(store_url)
    try:
        with pytest.raises(StoreError, match="0099"):
            newer.create()
    finally:
        newer.close()


def test_downgrade_to_the_baseline_and_upgrade_again(store: PredictionStore) -> None:
    import sqlalchemy as sa

    from driftloop.monitoring import migrations

    fill(store, 2)
    migrations.downgrade(store, "0001")
    assert migrations.current(store) == "0001"
    assert "leases" not in sa.inspect(store.engine).get_table_names()
    assert migrations.upgrade(store) == migrations.head() == "0005"
    assert "leases" in sa.inspect(store.engine).get_table_names() and store.count_predictions() == 2


def test_processes_starting_together_on_a_fresh_database_migrate_it_once(store_url: str) -> None:
    import threading

    from driftloop.monitoring import migrations

    stores = [PredictionStore(store_url) for _ in range(4)]  # one engine each, as separate processes
    errors: list[BaseException] = []
    go = threading.Barrier(len(stores))

    def start(s: PredictionStore) -> None:
        try:
            go.wait()
            s.create()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert migrations.current(stores[0]) == migrations.head()
        fill(stores[1], 2)
        assert stores[2].count_predictions() == 2
    finally:
        for s in stores:
            s.close()
