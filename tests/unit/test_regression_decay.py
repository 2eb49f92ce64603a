"""A regressor's decay, end to end in process: a ridge champion serves a synthetic stream whose
inputs never move while the rule from inputs to target changes; only the labels show it. The
monitor measures each window's RMSE against the champion's calibrated baseline, decides decay,
retrains through the gate and promotes a model of the new rule, after which it is quiet again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop.models.registry import Registry
from driftloop.monitoring.monitor import Monitor
from driftloop.monitoring.store import PredictionStore, utcnow
from driftloop.service.serving import new_request_id
from driftloop.training.train import train_version
from driftloop.vocabulary import Check, Decision, Outcome

from tests.conftest import make_settings

WINDOW = 200
FEATURES = ("a", "b", "c", "d")
BEFORE, AFTER = (3.0, 2.0, -1.0, 0.5, 0.0), (3.0, -2.0, -1.0, 0.5, 4.0)  # weights of a..d, then the intercept


def stream(rows: int, rule: tuple[float, ...], seed: int) -> pd.DataFrame:
    """Inputs from one fixed distribution; the target by ``rule`` plus noise of standard deviation 1."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(0.0, 1.0, (rows, len(FEATURES))), columns=list(FEATURES))
    frame["y"] = frame[list(FEATURES)].to_numpy() @ np.array(rule[:-1]) + rule[-1] + rng.normal(0.0, 1.0, rows)
    return frame


def serve(store: PredictionStore, registry: Registry, rows: pd.DataFrame) -> None:
    """What the service does for ``rows`` (the champion predicts, the log keeps it), then their labels."""
    model = registry.load(registry.champion().version)
    predictions, _ = model.predict_frame(rows)
    ids = [new_request_id() for _ in range(len(rows))]
    store.insert_predictions([
        {"request_id": rid, "created_at": utcnow(), "model_version": model.version, "features": features,
         "prediction": float(p), "confidence": None}
        for rid, features, p in zip(ids, rows[list(FEATURES)].to_dict(orient="records"), predictions.tolist())])
    store.insert_feedback(list(zip(ids, rows["y"].astype(float).tolist())))


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    initial = stream(1000, BEFORE, seed=1)
    initial.to_csv(tmp_path / "initial.csv", index=False)
    settings = make_settings(tmp_path, task="regression", model={"kind": "ridge", "params": {}},
                             features={f: "numeric" for f in FEATURES},
                             data={"path": str(tmp_path / "initial.csv"), "target": "y"},
                             monitoring={"window_rows": WINDOW, "min_labels": 100},
                             retraining={"min_rows": 300})
    registry = Registry(settings.registry.home, settings.registry.project)
    v1 = train_version(settings, initial, registry, trigger="initial").version
    registry.promote(v1.version, actor="test", reason="fixture")
    store = PredictionStore(settings.store.url).create()
    yield {"settings": settings, "registry": registry, "store": store, "v1": v1}
    store.close()


def test_a_concept_change_with_steady_inputs_is_seen_by_its_error_and_retrained(world: dict[str, Any]) -> None:
    v1 = world["v1"].metadata
    assert v1["squared_errors"]["mean"] == pytest.approx(v1["metrics"]["mse"]) and v1["squared_errors"]["std"] > 0

    monitor = Monitor(world["settings"], world["store"], world["registry"])
    live = pd.concat([stream(2 * WINDOW, BEFORE, seed=2), stream(4 * WINDOW, AFTER, seed=3)], ignore_index=True)
    checks: list[Check] = []
    for start in range(0, len(live), WINDOW):
        serve(world["store"], world["registry"], live.iloc[start:start + WINDOW])
        checks += monitor.run_once()
    history = [(c.window, c.decision, c.outcome, c.champion_rmse, c.reason) for c in checks]
    assert [c.window for c in checks] == list(range(6)), history
    assert all(c.drift_share < world["settings"].monitoring.drift_share for c in checks), history  # steady inputs

    before, change, retrained, after = checks[:2], checks[2], checks[3], checks[4:]
    assert all(c.decision == Decision.NONE and c.champion_rmse < 1.3 for c in before), history
    assert change.decision == Decision.WATCH and change.champion_rmse > 3.0, history  # the rule moved by ~4.5
    assert "drift share" not in change.reason and f"on {change.champion_labelled} labels" in change.reason
    assert retrained.decision == Decision.RETRAIN and retrained.outcome == Outcome.PROMOTED, history
    champion = world["registry"].get(world["registry"].champion().version)
    assert champion.version != world["v1"].version and champion.metadata["trigger"] == "decay"
    # The new champion learnt the new rule: its windows are quiet and as good as the old one was before.
    assert all(c.reference_version == champion.version and c.decision == Decision.NONE for c in after), history
    assert all(c.champion_rmse < 1.3 for c in after), history
    assert [e["kind"] for e in world["store"].events() if e["kind"].endswith("_detected")] == ["decay_detected"]


def test_the_error_columns_come_with_revision_0004_and_go_with_its_downgrade(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from driftloop.monitoring import migrations

    def columns() -> set[str]:
        return {c["name"] for c in sa.inspect(store.engine).get_columns("checks")}

    def check(window: int, **figures: float) -> Check:
        return Check(window=window, first_id=1, last_id=10, rows=10, model_version="v1", reference_version="v1",
                     drift_share=0.0, drifted_features=[], feature_scores={}, labelled=10, accuracy=None,
                     champion_labelled=10, champion_accuracy=None, decision=Decision.NONE, reason="quiet", **figures)

    errors = {"rmse", "mae", "champion_rmse", "champion_mae", "champion_squared_error_std"}
    store = PredictionStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    try:
        assert migrations.current(store) == migrations.head() and errors <= columns()
        migrations.downgrade(store, "0003")
        assert not errors & columns()
        store.record_check(check(0))  # a check without errors still goes into the older schema
        assert migrations.upgrade(store) == migrations.head() and errors <= columns()
        store.record_check(check(1, rmse=2.5, mae=2.0, champion_rmse=2.25, champion_mae=1.75,
                                 champion_squared_error_std=3.0))
        old, new = store.checks()
        assert (old.rmse, old.champion_squared_error_std) == (None, None)
        assert (new.rmse, new.mae, new.champion_rmse, new.champion_mae, new.champion_squared_error_std) == \
            (2.5, 2.0, 2.25, 1.75, 3.0)
        migrations.downgrade(store, "0003")  # and back: the checks keep their rows (read as 0003's code would)
        with store.engine.connect() as conn:
            kept = conn.execute(sa.text('SELECT "window" FROM checks ORDER BY "window"')).scalars().all()
        assert not errors & columns() and kept == [0, 1]
    finally:
        store.close()
