"""Shadow mode, the serving and storage side: the registry's shadow pointer, a serving worker that
scores its prediction log with the shadow (off the request path), the store's shadow rows (on
SQLite and PostgreSQL) and migration 0003, and ``driftloop shadow``.

v1 (the session's champion, gradient boosting on the train period) answers; v2 (logistic
regression on the concept period, trained once per module) is the shadow, so the two disagree on
some rows and the test can tell whose answer is whose."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.models.errors import IntegrityError, RegistryError, UnknownVersion
from driftloop.models.registry import MODEL_FILE, Registry
from driftloop.models.schema import Feature, FeatureSchema
from driftloop.monitoring import migrations
from driftloop.monitoring.store import PredictionStore
from driftloop.service.metrics import serving_metrics
from driftloop.service.serving import Serving

from driftloop.vocabulary import Outcome
from tests.conftest import make_settings
from tests.servers.test_store import T0, check, pred

FEATURES = ["income", "age", "debt_ratio", "credit_lines", "region", "employment"]
ROW = {"income": 52000.0, "age": 41.0, "debt_ratio": 0.31, "credit_lines": 6.0, "region": "north",
       "employment": "salaried"}


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shadow_home(champion_home: Path, loans: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's registry (v1 champion) plus v2: another family on the concept period."""
    from driftloop.training.train import train_version

    root = tmp_path_factory.mktemp("shadow")
    shutil.copytree(champion_home / "bentoml", root / "bentoml")
    settings = make_settings(root, model={"kind": "logistic_regression"})
    registry = Registry(settings.registry.home, settings.registry.project)
    concept = loans[loans["period"] == "concept"].reset_index(drop=True)
    assert train_version(settings, concept, registry, trigger="manual", parent="v1").version.version == "v2"
    return root


@pytest.fixture
def root(shadow_home: Path, tmp_path: Path) -> Path:
    """A private copy of the module's registry (v1 champion, v2 candidate), free to tamper with."""
    shutil.copytree(shadow_home / "bentoml", tmp_path / "bentoml")
    return tmp_path


@pytest.fixture
def registry(root: Path) -> Registry:
    return Registry(root / "bentoml", "loans")


def like_v1(registry: Registry, schema: FeatureSchema | None = None) -> str:
    """A new version with v1's graph (and, unless given, its schema)."""
    v1 = registry.get("v1")
    return registry.register((v1.path / MODEL_FILE).read_bytes(), schema or v1.schema, registry.reference("v1"),
                             {}, trigger="manual", parent="v1").version


def corrupt(registry: Registry, version: str) -> None:
    path = registry.get(version).path / MODEL_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def point_shadow_at(registry: Registry, version: str) -> None:
    """Write the shadow pointer by hand (around set_shadow's own check), as a tampered file would be."""
    registry.shadow_path.write_text(json.dumps({"version": version, "set_at": "now", "actor": "test",
                                                "reason": "by hand"}))


# -- the registry's shadow pointer --------------------------------------------------------------
def test_set_show_and_clear_the_shadow_with_history(registry: Registry) -> None:
    assert registry.shadow() is None and registry.shadow_stamp() is None
    assert registry.clear_shadow(actor="ops", reason="nothing there") is None  # a no-op, not recorded
    shadow = registry.set_shadow("v2", actor="alice", reason="candidate from window 7")
    assert (shadow.version, shadow.actor, shadow.reason) == ("v2", "alice", "candidate from window 7")
    assert registry.shadow() == shadow and shadow.set_at
    stamp = registry.shadow_stamp()
    assert stamp is not None
    assert registry.set_shadow("v2", actor="bob", reason="again") == shadow  # unchanged, nothing written
    assert registry.shadow_stamp() == stamp
    assert registry.champion().version == "v1"  # the champion is untouched
    v3 = like_v1(registry)
    assert registry.set_shadow(v3, actor="carol", reason="newer").version == v3  # replaces v2
    assert registry.shadow_stamp() != stamp
    cleared = registry.clear_shadow(actor="dave", reason="enough")
    assert cleared is not None and cleared.version == v3
    assert registry.shadow() is None and registry.shadow_stamp() is None
    records = [(h["action"], h["version"], h["actor"], h["reason"]) for h in registry.history()
               if h["action"].startswith("shadow")]
    assert records == [("shadow_set", "v2", "alice", "candidate from window 7"), ("shadow_set", v3, "carol", "newer"),
                       ("shadow_clear", v3, "dave", "enough")]
    assert all(h["at"] for h in registry.history() if h["action"].startswith("shadow"))


def test_the_champion_an_unknown_or_a_corrupt_version_is_refused(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="v1 is the champion"):
        registry.set_shadow("v1", actor="t", reason="r")
    with pytest.raises(UnknownVersion, match="v9"):
        registry.set_shadow("v9", actor="t", reason="r")
    registry.set_shadow("v2", actor="t", reason="good")
    bad = like_v1(registry)
    corrupt(registry, bad)
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        registry.set_shadow(bad, actor="t", reason="r")
    assert registry.shadow().version == "v2"  # a refused version leaves the pointer as it was
    assert [h["version"] for h in registry.history() if h["action"] == "shadow_set"] == ["v2"]


def test_promoting_the_shadow_clears_it_and_promoting_another_keeps_it(registry: Registry) -> None:
    v3 = like_v1(registry)
    registry.set_shadow("v2", actor="t", reason="trial")
    registry.promote(v3, actor="ops", reason="manual")  # another version: the shadow stays
    assert registry.shadow().version == "v2"
    registry.promote("v2", actor="monitor", reason="won its trial")
    assert registry.champion().version == "v2" and registry.shadow() is None
    last = registry.history()[-2:]
    assert [(h["action"], h["version"]) for h in last] == [("promote", "v2"), ("shadow_clear", "v2")]
    assert last[1]["actor"] == "monitor" and "won its trial" in last[1]["reason"]
    # A rollback to a version that is the shadow clears it as well (an earlier champion may be one).
    registry.set_shadow(v3, actor="t", reason="an earlier champion")
    registry.rollback(actor="ops", reason="back")
    assert registry.champion().version == v3 and registry.shadow() is None


def test_retention_keeps_the_shadow(registry: Registry) -> None:
    for _ in range(3):
        like_v1(registry)  # v3, v4, v5
    registry.set_shadow("v2", actor="t", reason="trial")  # the oldest candidate: pruned first otherwise
    plan = registry.retention_plan(keep_ancestors=0, keep_candidates=1)
    assert plan.keep == {"v1": "champion", "v2": "shadow, scored beside the champion",
                         "v5": "candidate, among the 1 most recent"}
    assert registry.prune(0, 0) == ["v3", "v4", "v5"]
    assert [v.version for v in registry.versions()] == ["v1", "v2"]
    registry.load("v2")


# -- a serving worker with a shadow -------------------------------------------------------------
@pytest.fixture
def make_serving(root: Path) -> Iterator[Any]:
    """Serving objects on ``root``'s registry and store (real models, real SQLite), shut down after."""
    made: list[Serving] = []

    def make(**serving: Any) -> Serving:
        settings = make_settings(root, serving=serving)
        s = Serving(Registry(settings.registry.home, "loans"), PredictionStore(settings.store.url).create(),
                    serving_metrics(), settings.serving)
        s.start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.shutdown()


def rows_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (float(v) if k not in ("region", "employment") else v) for k, v in r.items()}
            for r in frame[FEATURES].to_dict("records")]


def shadow_count(outcome: str) -> float:
    return serving_metrics().shadow_rows.labels(outcome)._value.get()


def serve(serving: Serving, rows: list[dict[str, Any]], size: int = 16) -> list[dict[str, Any]]:
    """Every row predicted, ``size`` a request; the answers, once the prediction log is written."""
    answers = [serving.predict(rows[i:i + size]) for i in range(0, len(rows), size)]
    assert serving.writer is not None and serving.writer.flush(timeout=30)
    return answers


@pytest.fixture(scope="module")
def live(loans: pd.DataFrame) -> pd.DataFrame:
    """Rows on which v1 and v2 disagree now and then (the concept period)."""
    return loans[loans["period"] == "concept"].head(120).reset_index(drop=True)


def test_the_champion_answers_and_the_shadow_scores_the_log(make_serving: Any, registry: Registry,
                                                           live: pd.DataFrame) -> None:
    registry.set_shadow("v2", actor="t", reason="trial")
    serving = make_serving()
    assert serving.model.version == "v1" and serving.shadow is not None and serving.shadow.version == "v2"
    assert serving.model_info()["shadow"] == {"model_version": "v2", "role": "candidate", "scoring": True}
    assert serving_metrics().shadow_model.labels("v2")._value.get() == 1
    before = {o: shadow_count(o) for o in ("scored", "refused", "failed")}
    graph_runs = _histogram_count("driftloop_shadow_graph_seconds")

    answers = serve(serving, rows_of(live))
    champion, shadow = registry.load("v1"), registry.load("v2")
    want_v1, _ = champion.predict_frame(live)
    want_v2, probs_v2 = shadow.predict_frame(live)
    assert {a["model_version"] for a in answers} == {"v1"}
    assert [p for a in answers for p in a["predictions"]] == want_v1.tolist()  # the champion's answers
    assert (want_v1 != want_v2).any(), "the test needs versions that disagree somewhere"

    ids = [rid for a in answers for rid in a["request_ids"]]
    frame = serving.store.shadow_rows("v2")
    assert list(frame.columns) == ["id", "request_id", "created_at", "model_version", "prediction",
                                   "shadow_prediction", "shadow_confidence", "label"]
    assert list(frame["request_id"]) == ids and list(frame["id"]) == sorted(frame["id"])
    assert set(frame["model_version"]) == {"v1"}
    assert list(frame["prediction"]) == want_v1.tolist()
    assert list(frame["shadow_prediction"]) == want_v2.tolist()  # the shadow graph on the same inputs
    assert frame["shadow_confidence"].tolist() == pytest.approx(probs_v2.max(axis=1).tolist(), abs=1e-6)
    assert frame["label"].isna().all()
    assert serving.store.count_predictions() == len(live)
    assert shadow_count("scored") - before["scored"] == len(live)
    assert shadow_count("refused") == before["refused"] and shadow_count("failed") == before["failed"]
    assert _histogram_count("driftloop_shadow_graph_seconds") > graph_runs  # one per written batch

    serving.feedback([(ids[0], 1), (ids[5], 0)])  # labels join in as they arrive
    labels = serving.store.shadow_rows("v2").set_index("request_id")["label"]
    assert labels[ids[0]] == 1 and labels[ids[5]] == 0 and labels.isna().sum() == len(live) - 2
    assert list(serving.store.shadow_rows("v2", after_id=int(frame["id"].iloc[-3]))["request_id"]) == ids[-2:]


def _histogram_count(name: str) -> float:
    import prometheus_client as pc

    return pc.REGISTRY.get_sample_value(f"{name}_count") or 0.0


def test_requests_do_not_wait_for_the_shadow(make_serving: Any, registry: Registry, live: pd.DataFrame) -> None:
    """The shadow runs on the prediction-log writer's thread: a stuck shadow graph holds up no
    request, and its rows are scored once it moves again."""
    registry.set_shadow("v2", actor="t", reason="trial")
    serving = make_serving()
    real, release, entered = serving.shadow, threading.Event(), threading.Event()

    class Stuck:
        version, schema = real.version, real.schema

        def predict(self, feeds: dict[str, np.ndarray]) -> Any:
            entered.set()
            assert release.wait(30)
            return real.predict(feeds)

    serving.shadow = Stuck()  # type: ignore[assignment]
    rows = rows_of(live.head(10))
    first = serving.predict(rows[:5])
    assert serving.writer is not None
    assert not serving.writer.flush(timeout=0.05)  # wakes the writer now; it cannot finish
    assert entered.wait(10)  # the shadow holds the writer thread ...
    second = serving.predict(rows[5:])  # ... and requests are answered all the same
    assert first["model_version"] == second["model_version"] == "v1"
    release.set()
    assert serving.writer.flush(timeout=30)
    assert len(serving.store.shadow_rows("v2")) == 10 and serving.store.count_predictions() == 10


def test_a_shadow_whose_schema_refuses_rows_scores_the_others(make_serving: Any, registry: Registry,
                                                              live: pd.DataFrame) -> None:
    """The shadow's schema decides what it can score: here it knows no region "north", and
    serving.unknown_category is reject. Those rows are counted, the others scored, all logged."""
    v1 = registry.get("v1").schema
    feats = tuple(Feature(f.name, f.kind, tuple(c for c in f.categories if c != "north"), f.min, f.max)
                  if f.name == "region" else f for f in v1.features)
    narrow = like_v1(registry, FeatureSchema(feats, v1.task, v1.target, v1.labels))
    registry.set_shadow(narrow, actor="t", reason="another schema")
    serving = make_serving(unknown_category="reject")
    refused_before, scored_before = shadow_count("refused"), shadow_count("scored")
    rows = rows_of(live)
    north = [r["region"] == "north" for r in rows]
    assert 0 < sum(north) < len(rows)
    answers = serve(serving, rows)
    ids = [rid for a in answers for rid in a["request_ids"]]
    assert serving.store.count_predictions() == len(rows)  # every row logged
    scored = serving.store.shadow_rows(narrow)
    assert list(scored["request_id"]) == [rid for rid, n in zip(ids, north) if not n]
    assert list(scored["shadow_prediction"]) == list(scored["prediction"])  # v1's graph: same answers
    assert shadow_count("refused") - refused_before == sum(north)
    assert shadow_count("scored") - scored_before == len(rows) - sum(north)
    serve(serving, [r for r, n in zip(rows, north) if n][:5])  # a batch it refuses whole
    assert shadow_count("refused") - refused_before == sum(north) + 5
    assert serving.store.count_predictions() == len(rows) + 5


@pytest.mark.parametrize("broken", ["graph", "store"])
def test_a_failing_shadow_loses_no_prediction_log_row(make_serving: Any, registry: Registry, live: pd.DataFrame,
                                                      monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    """The shadow's graph or its store insert fails on every batch: the rows are logged all the
    same (once each, none dropped), the failures counted; then it recovers."""
    registry.set_shadow("v2", actor="t", reason="trial")
    serving = make_serving()
    failed_before = shadow_count("failed")

    def boom(*args: Any) -> Any:
        raise RuntimeError(f"the shadow's {broken} broke")

    rows = rows_of(live.head(40))
    with monkeypatch.context() as patch:
        if broken == "graph":
            patch.setattr(serving.shadow, "predict", boom)
        else:
            patch.setattr(serving.store, "insert_shadow_predictions", boom)
        answers = serve(serving, rows, size=8)
    assert serving.store.count_predictions() == 40  # every row logged, once
    logged = serving.store.window(0, 100)
    assert list(logged["request_id"]) == [rid for a in answers for rid in a["request_ids"]]
    assert shadow_count("failed") - failed_before == 40 and len(serving.store.shadow_rows("v2")) == 0
    assert serving.writer is not None and serving.writer.dropped == 0
    serve(serving, rows[:8])  # healthy again: the next rows are scored
    assert len(serving.store.shadow_rows("v2")) == 8 and serving.store.count_predictions() == 48


def test_the_watcher_follows_the_shadow_pointer_and_refuses_a_broken_one(make_serving: Any,
                                                                          registry: Registry) -> None:
    serving = make_serving()
    assert serving.shadow is None and serving.model_info()["shadow"] is None
    registry.set_shadow("v2", actor="t", reason="trial")
    serving.watcher.check()
    assert serving.shadow.version == "v2"
    swaps = serving_metrics().shadow_swaps
    refused_before = swaps.labels("refused")._value.get()
    bad = like_v1(registry)
    corrupt(registry, bad)
    point_shadow_at(registry, bad)
    serving.watcher.check()
    assert serving.shadow is None and serving.model.version == "v1"  # refused: no shadow, same champion
    assert swaps.labels("refused")._value.get() == refused_before + 1
    assert serving_metrics().shadow_model.labels("v2")._value.get() == 0
    info = serving.model_info()["shadow"]
    assert info["model_version"] == bad and info["scoring"] is False and "checksum mismatch" in info["reason"]
    assert serving.predict([ROW])["model_version"] == "v1"
    registry.set_shadow("v2", actor="t", reason="back to a good one")
    serving.watcher.check()
    assert serving.shadow.version == "v2"
    registry.clear_shadow(actor="t", reason="done")
    serving.watcher.check()
    assert serving.shadow is None and serving.model_info()["shadow"] is None
    registry.set_shadow("v2", actor="t", reason="trial")
    registry.promote("v2", actor="t", reason="won")  # the shadow becomes champion: one model, no shadow
    serving.watcher.check()
    assert serving.model.version == "v2" and serving.shadow is None


def test_without_the_prediction_log_nothing_is_scored_and_model_says_so(make_serving: Any,
                                                                        registry: Registry) -> None:
    registry.set_shadow("v2", actor="t", reason="trial")
    serving = make_serving(prediction_log=False)
    assert serving.shadow is None and serving.writer is None
    info = serving.model_info()["shadow"]
    assert info["model_version"] == "v2" and info["scoring"] is False and "prediction_log" in info["reason"]


# -- the store ------------------------------------------------------------------------------------
@pytest.fixture
def store(store_url: str) -> Iterator[PredictionStore]:
    s = PredictionStore(store_url).create()
    yield s
    s.close()


def shadow_row(i: int, version: str = "v2", prediction: Any = None) -> dict[str, Any]:
    return {"request_id": f"req-{i:04d}", "model_version": version,
            "prediction": 1 - i % 2 if prediction is None else prediction, "confidence": 0.6}


def test_shadow_rows_are_joined_with_predictions_and_labels(store: PredictionStore) -> None:
    store.insert_predictions([pred(i, "v1" if i < 6 else "v0") for i in range(8)])  # ids 1..8
    empty = store.shadow_rows("v2")
    assert len(empty) == 0 and list(empty.columns) == ["id", "request_id", "created_at", "model_version",
                                                       "prediction", "shadow_prediction", "shadow_confidence",
                                                       "label"]
    store.insert_shadow_predictions([shadow_row(i) for i in (5, 1, 3, 6)])  # out of id order
    store.insert_shadow_predictions([shadow_row(i, "v3") for i in (0, 1)])  # another shadow
    store.insert_shadow_predictions([shadow_row(1, prediction="late")])  # the first answer is kept
    store.insert_shadow_predictions([])
    store.insert_feedback([("req-0001", 1), ("req-0006", 0), ("req-0000", 1)])
    frame = store.shadow_rows("v2")
    assert list(frame["id"]) == [2, 4, 6, 7]
    assert list(frame["request_id"]) == ["req-0001", "req-0003", "req-0005", "req-0006"]
    assert list(frame["model_version"]) == ["v1", "v1", "v1", "v0"]  # who answered
    assert list(frame["prediction"]) == [1, 1, 1, 0] and list(frame["shadow_prediction"]) == [0, 0, 0, 1]
    assert frame["shadow_confidence"].tolist() == pytest.approx([0.6] * 4)
    assert [None if pd.isna(v) else v for v in frame["label"]] == [1, None, None, 0]
    assert frame["created_at"].notna().all()  # the predictions' (when the champion answered)
    assert list(store.shadow_rows("v2", after_id=4)["id"]) == [6, 7]
    assert list(store.shadow_rows("v3")["request_id"]) == ["req-0000", "req-0001"]
    with store.engine.connect() as conn:  # when the shadow scored it
        assert conn.execute(sa.text("SELECT count(*) FROM shadow_predictions WHERE created_at IS NULL")).scalar() == 0


def test_record_check_with_estimated_accuracy_and_update_check(store: PredictionStore) -> None:
    store.record_check(check(0, estimated_accuracy=0.81, outcome=Outcome.WAITING))
    store.record_check(check(1))  # estimated_accuracy is optional
    got = store.checks()
    assert [c.estimated_accuracy for c in got] == [pytest.approx(0.81), None]
    store.update_check(0, outcome=Outcome.FAILED, reason="retrain failed; retry at window 3")
    store.update_check(1, reason="only the reason")
    got = store.checks()
    assert (got[0].outcome, got[0].reason) == ("failed", "retrain failed; retry at window 3")
    assert (got[1].outcome, got[1].reason) == (None, "only the reason")
    assert got[0].decision == "watch" and got[0].estimated_accuracy == pytest.approx(0.81)
    with pytest.raises(KeyError, match="window 9"):
        store.update_check(9, outcome=Outcome.FAILED)
    with pytest.raises(TypeError, match="outcome and/or reason"):
        store.update_check(0, decision="retrain")
    with pytest.raises(TypeError):
        store.update_check(0)


def test_upgrade_from_0002_keeps_the_rows_and_downgrade_too(store: PredictionStore) -> None:
    migrations.downgrade(store, "0002")
    tables = sa.inspect(store.engine)
    assert migrations.current(store) == "0002" and "shadow_predictions" not in tables.get_table_names()
    assert "estimated_accuracy" not in {c["name"] for c in tables.get_columns("checks")}
    store.insert_predictions([pred(i) for i in range(3)])  # written by the 0002 schema's code paths
    store.insert_feedback([("req-0001", 1)])
    # as the 0002 code wrote a check (record_check now writes every column of a Check)
    row = check(0).to_dict() | {"created_at": T0, "decision": "watch"}
    for added in ("id", "estimated_accuracy", "rmse", "mae", "champion_rmse", "champion_mae",
                  "champion_squared_error_std", "unfamiliar_share"):  # columns this old schema did not have
        del row[added]
    row |= {k: json.dumps(row[k]) for k in ("drifted_features", "feature_scores")}
    with store.engine.begin() as conn:
        conn.execute(sa.table("checks", *map(sa.column, row)).insert(), row)
    store.record_event("start", {"n": 1})

    assert migrations.upgrade(store) == migrations.head() == "0005"
    assert store.count_predictions() == 3 and [e["kind"] for e in store.events()] == ["start"]
    (old,) = store.checks()
    assert old.estimated_accuracy is None and old.feature_scores == check(0).feature_scores
    assert old.drift_share == 0.25 and old.reason == "drift share 0.25"
    assert store.window(0, 10)["label"].tolist()[1] == 1
    store.insert_shadow_predictions([shadow_row(1)])
    assert list(store.shadow_rows("v2")["label"]) == [1]

    store.update_check(0, outcome=Outcome.REJECTED)
    migrations.downgrade(store, "0002")  # and back: the checks keep their rows, shadow rows go
    assert "shadow_predictions" not in sa.inspect(store.engine).get_table_names()
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT outcome FROM checks WHERE \"window\" = 0")).scalar() == "rejected"
    assert store.count_predictions() == 3


def test_a_database_from_before_migrations_without_the_new_column_is_adopted(tmp_path: Path) -> None:
    from driftloop.monitoring.store import metadata

    path = tmp_path / "legacy.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    for name in migrations.LEGACY_TABLES:
        metadata.tables[name].create(engine)
    with engine.begin() as conn:  # checks as revision 0001 made it
        conn.exec_driver_sql("ALTER TABLE checks DROP COLUMN estimated_accuracy")
        conn.exec_driver_sql("INSERT INTO events (created_at, kind, detail) VALUES ('2026-01-01', 'old', '{}')")
    engine.dispose()
    store = PredictionStore(f"sqlite:///{path}")
    try:
        store.create()
        assert migrations.current(store) == migrations.head()
        assert [e["kind"] for e in store.events()] == ["old"]
    finally:
        store.close()


# -- the command line -------------------------------------------------------------------------------
def test_shadow_commands(root: Path, registry: Registry) -> None:
    runner = CliRunner()
    config = root / "driftloop.yaml"
    config.write_text(yaml.safe_dump({"registry": {"home": str(root / "bentoml"), "project": "loans"},
                                      "store": {"url": f"sqlite:///{root / 'driftloop.db'}"}}))

    def cli(*args: str) -> Any:
        return runner.invoke(app, ["shadow", *args, "--config", str(config)], env={"DRIFTLOOP_ACTOR": "erin"})

    for command in ("show", "set", "clear"):
        helped = runner.invoke(app, ["shadow", command, "--help"])
        assert helped.exit_code == 0 and "--config" in helped.output
    assert cli("show").output.strip() == "no shadow"
    result = cli("set", "v2", "--reason", "try it")
    assert result.exit_code == 0 and result.output.strip() == "shadow: v2"
    shown = cli("show")
    assert shown.exit_code == 0 and "shadow: v2" in shown.output and "by erin: try it" in shown.output
    refused = cli("set", "v1")
    assert refused.exit_code == 2 and "v1 is the champion" in refused.output
    assert cli("set", "v9").exit_code == 2
    cleared = cli("clear", "--reason", "enough")
    assert cleared.exit_code == 0 and cleared.output.strip() == "shadow cleared (was v2)"
    assert cli("clear").output.strip() == "no shadow"
    assert [(h["action"], h["actor"], h["reason"]) for h in registry.history() if h["action"].startswith("shadow")] == [
        ("shadow_set", "erin", "try it"), ("shadow_clear", "erin", "enough")]
