"""The PyTorch MLP: one merged ONNX graph (preprocessing + network), string labels, fine-tuning."""

from __future__ import annotations

import numpy as np
import onnx
import pandas as pd
import pytest

from driftloop.models.errors import ConfigError
from driftloop.models.families import fit_model
from driftloop.models.neural import NET_PREFIX, warm_weights
from driftloop.models.onnx_model import check_parity, run, session
from driftloop.models.schema import FeatureSchema
from driftloop.training.scenarios import FEATURES, TARGET

FAST = {"hidden": [16], "epochs": 30, "patience": 5}


@pytest.fixture(scope="module")
def data(loans: pd.DataFrame) -> tuple[FeatureSchema, pd.DataFrame]:
    frame = loans[loans["period"] == "train"].head(1200).reset_index(drop=True)
    return FeatureSchema.infer(frame, FEATURES, "classification", TARGET, (0, 1)), frame


def test_one_graph_takes_raw_features(data: tuple[FeatureSchema, pd.DataFrame]) -> None:
    schema, frame = data
    model = fit_model(schema, "mlp", FAST, 1, frame[schema.names], frame[TARGET])
    graph = model.to_onnx(schema)
    proto = onnx.load_from_string(graph)
    assert [i.name for i in proto.graph.input] == schema.names  # raw features in, no Python preprocessing
    assert [o.name for o in proto.graph.output] == ["label", "probabilities"]
    parity = check_parity(model, graph, schema, frame)
    assert parity.label_agreement == 1.0 and parity.max_abs_diff < 1e-5


def test_string_class_labels(data: tuple[FeatureSchema, pd.DataFrame]) -> None:
    schema, frame = data
    y = frame[TARGET].map({0: "repaid", 1: "defaulted"})
    s = FeatureSchema(schema.features, "classification", TARGET, ("defaulted", "repaid"))
    model = fit_model(s, "mlp", FAST, 1, frame[s.names], y)
    preds, proba = run(session(model.to_onnx(s)), s.feeds(frame.head(50)))
    assert set(preds.tolist()) <= {"defaulted", "repaid"}
    assert (preds == model.predict(frame.head(50))).all()
    # column order of the probabilities is the sorted class order
    assert ((proba[:, 0] > 0.5) == (preds == "defaulted")).all()


def test_warm_start_copies_the_champions_weights(data: tuple[FeatureSchema, pd.DataFrame]) -> None:
    schema, frame = data
    champion = fit_model(schema, "mlp", FAST, 1, frame[schema.names], frame[TARGET]).to_onnx(schema)
    weights = warm_weights(champion)
    assert weights and all(name.startswith(NET_PREFIX) for name in weights)
    # lr=0: training cannot move the weights, so the fine-tuned model is the champion again
    tuned = fit_model(schema, "mlp", FAST | {"lr": 0.0, "epochs": 1}, 2, frame[schema.names], frame[TARGET],
                      warm_start=champion)
    _, p_champion = run(session(champion), schema.feeds(frame.head(100)))
    _, p_tuned = run(session(tuned.to_onnx(schema)), schema.feeds(frame.head(100)))
    assert np.abs(p_champion - p_tuned).max() < 1e-6
    cold = fit_model(schema, "mlp", FAST | {"lr": 0.0, "epochs": 1}, 2, frame[schema.names], frame[TARGET])
    _, p_cold = run(session(cold.to_onnx(schema)), schema.feeds(frame.head(100)))
    assert np.abs(p_champion - p_cold).max() > 1e-3  # without the warm start it is another network


def test_warm_start_is_refused_for_classical_kinds(data: tuple[FeatureSchema, pd.DataFrame]) -> None:
    schema, frame = data
    with pytest.raises(ConfigError, match="cannot fine-tune"):
        fit_model(schema, "random_forest", {}, 1, frame[schema.names], frame[TARGET], warm_start=b"x")


def test_unknown_mlp_parameter_is_named(data: tuple[FeatureSchema, pd.DataFrame]) -> None:
    schema, frame = data
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['layers'\]"):
        fit_model(schema, "mlp", {"layers": 3}, 1, frame[schema.names], frame[TARGET])


def test_training_is_reproducible_by_seed(data: tuple[FeatureSchema, pd.DataFrame]) -> None:
    schema, frame = data
    a = fit_model(schema, "mlp", FAST, 7, frame[schema.names], frame[TARGET]).predict_proba(frame.head(50))
    b = fit_model(schema, "mlp", FAST, 7, frame[schema.names], frame[TARGET]).predict_proba(frame.head(50))
    c = fit_model(schema, "mlp", FAST, 8, frame[schema.names], frame[TARGET]).predict_proba(frame.head(50))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_retraining_fine_tunes_the_champion(tmp_path, loans: pd.DataFrame) -> None:  # noqa: ANN001
    from driftloop.models.registry import Registry
    from tests.conftest import make_settings
    from driftloop.training.retrain import retrain
    from driftloop.training.train import train_version

    settings = make_settings(tmp_path, model={"kind": "mlp", "params": FAST, "warm_start": True},
                             retraining={"min_rows": 200})
    registry = Registry(settings.registry.home, "loans")
    first = train_version(settings, loans[loans["period"] == "train"].head(1200), registry, trigger="initial")
    registry.promote(first.version.version, actor="test", reason="first")
    fresh = loans[loans["period"] == "covariate"].head(800).reset_index(drop=True)
    outcome = retrain(settings, registry, fresh, trigger="drift", reason="test")
    candidate = registry.get(outcome.candidate)
    assert candidate.metadata["warm_start"] is True and candidate.metadata["parent"] == "v1"
    assert candidate.metadata["gate"]["holdout_rows"] == 200
    assert outcome.status in ("promoted", "rejected")
    assert registry.champion().version == (outcome.candidate if outcome.status == "promoted" else "v1")


def test_a_fit_shows_its_progress_with_the_final_epoch(caplog: pytest.LogCaptureFixture) -> None:
    """Epoch, losses and (classes) accuracy every few seconds and always at the end (issue 16)."""
    import numpy as np
    import torch

    from driftloop.models.neural import MLPParams, train_network

    rng = np.random.default_rng(0)
    xs = torch.from_numpy(rng.normal(size=(200, 3)).astype(np.float32))
    ys = (xs[:, 0] > 0).long()
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    caplog.set_level("INFO", logger="driftloop.progress")
    epochs, _ = train_network(net, xs, ys, torch.nn.CrossEntropyLoss(), MLPParams(epochs=5, patience=50), rng)
    lines = [r.getMessage() for r in caplog.records if r.name == "driftloop.progress"]
    assert epochs == 5 and lines and lines[-1].startswith("epoch 5/5: train loss ")
    assert "validation loss" in lines[-1] and ", accuracy " in lines[-1]
