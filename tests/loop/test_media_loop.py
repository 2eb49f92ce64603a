"""Image and sequence models in the monitoring loop: drift on the arrays' summaries and decay on
labels trigger a retrain of the CNN / GRU on fresh rows, in process (no HTTP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from driftloop.models.registry import Registry
from driftloop.monitoring.monitor import Monitor
from driftloop.monitoring.store import PredictionStore, utcnow
from driftloop.service.serving import new_request_id
from tests.cases import QUICK
from tests.conftest import make_settings
from driftloop.training import scenarios
from driftloop.training.train import train_version
from driftloop.vocabulary import Decision

pytestmark = pytest.mark.slow
WINDOW = 200


@pytest.mark.parametrize(("scenario", "kind", "drift"), [("digits", "cnn", "rotation"), ("sensors", "gru", "regime")])
def test_array_model_loop(scenario: str, kind: str, drift: str, tmp_path: Path) -> None:
    sc = scenarios.SCENARIOS[scenario]
    settings = make_settings(tmp_path, data={"scenario": scenario}, model={"kind": kind, "params": QUICK[kind]},
                             monitoring={"window_rows": WINDOW, "min_labels": 100},
                             # no guard set: pre-drift rows would reject the adapted candidate (test_guard.py)
                             retraining={"min_rows": 250, "guard": {"rows": 0}})
    registry = Registry(settings.registry.home, scenario)
    frame = sc.frame(seed=5)
    live = frame[frame["period"].isin(["stable", drift])].reset_index(drop=True)
    first = train_version(settings, frame[frame["period"] == "train"], registry, trigger="initial")
    registry.promote(first.version.version, actor="test", reason="first")
    store = PredictionStore(settings.store.url).create()
    monitor = Monitor(settings, store, registry)
    checks = []
    for start in range(0, len(live), WINDOW):
        rows = live.iloc[start:start + WINDOW]
        model = registry.load(registry.champion().version)
        preds, _ = model.predict_frame(rows)
        ids = [new_request_id() for _ in range(len(rows))]
        features = json.loads(rows[model.schema.names].to_json(orient="records"))  # what a client sends
        store.insert_predictions([{"request_id": i, "created_at": utcnow(), "model_version": model.version,
                                   "features": f, "prediction": p, "confidence": None}
                                  for i, f, p in zip(ids, features, preds.tolist())])
        store.insert_feedback(list(zip(ids, rows[sc.target].astype(int).tolist())))
        checks += monitor.run_once()

    stable_windows = (frame["period"] == "stable").sum() // WINDOW
    # No retrain, no alert while nothing changed. A single flagged window may happen: the default
    # embeddings test (a classifier told to separate 200 window rows from the reference,
    # bootstrapped) has a ~5% false-alarm rate per window by construction, which is why a retrain
    # needs `consecutive` flagged windows. Which stable window it hits depends on the CNN's
    # floating-point result on this CPU (digits-cnn flagged its second stable window here, at a
    # ROC AUC of 0.58, where the CI machine of an earlier stop had not).
    quiet = (Decision.NONE, Decision.WATCH, Decision.SUSPECT)
    assert all(c.decision in quiet for c in checks[:stable_windows]), [c.reason for c in checks]
    assert sum(c.decision == Decision.WATCH for c in checks[:stable_windows]) <= 1, [c.reason for c in checks]
    flagged = [c for c in checks if c.decision == "retrain"]
    assert flagged and flagged[0].window <= stable_windows + 1
    assert any(name.startswith(next(iter(sc.features))) for name in flagged[0].drifted_features) or \
        "accuracy" in flagged[0].reason
    assert flagged[0].outcome == "promoted", flagged[0]
    assert registry.champion().version != "v1"
