"""Image and sequence drift on a network's embeddings: the graphs' extra ``embedding`` output
(never served), and the drift check's use of it with Evidently's embeddings drift methods."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop.settings import DriftConfig, EmbeddingsMethod
from driftloop.models.schema import FeatureSchema, as_array
from driftloop.monitoring.drift import PREDICTION, DriftBaseline, preset_columns

SHAPE = (6, 6)


def images(n: int, seed: int, brightness: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.uniform(0.0, 1.0, (n, *SHAPE)) + brightness, 0.0, 1.5)
    return pd.DataFrame({"img": list(pixels), "size": rng.normal(0.0, 1.0, n)})


class Projector:
    """A stand-in for an image network's graph: its embedding is a fixed projection of the pixels,
    its class the sign of the first dimension."""

    has_embedding = True

    def __init__(self, seed: int = 0) -> None:
        self.weights = np.random.default_rng(seed).normal(0.0, 1.0, (SHAPE[0] * SHAPE[1], 4))

    def embed_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return np.stack([as_array(v, np.float64).reshape(-1) for v in frame["img"]]) @ self.weights

    def predict_frame(self, frame: pd.DataFrame) -> tuple[np.ndarray, None]:
        return (self.embed_frame(frame)[:, 0] > self.weights[:, 0].sum() * 0.5).astype(np.int64), None


def schema_of(frame: pd.DataFrame) -> FeatureSchema:
    return FeatureSchema.infer(frame, {"img": "image", "size": "numeric"}, "classification", None)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return images(300, 1)


def test_the_media_feature_is_judged_on_its_embeddings_instead_of_its_summaries(reference: pd.DataFrame) -> None:
    baseline = DriftBaseline(reference, schema_of(reference), model=Projector())
    stable, brighter = baseline.check(images(200, 2)), baseline.check(images(200, 3, brightness=0.15))
    assert list(stable.columns) == ["size", "img"] and baseline.features == ["size", "img"]
    assert stable.columns["img"]["method"] == "embeddings model"  # Evidently's default: a classifier's ROC AUC
    assert stable.columns["img"]["threshold"] is None  # under 1,000 reference rows: bootstrapped
    assert not stable.columns["img"]["drifted"] and brighter.columns["img"]["drifted"]
    assert brighter.drifted == ["img"] and brighter.share == 0.5
    assert brighter.columns["img"]["score"] > stable.columns["img"]["score"]
    without = DriftBaseline(reference, schema_of(reference))  # no model: the summary columns as before
    assert "img.mean" in without.check(images(200, 3, brightness=0.15)).drifted


@pytest.mark.slow  # Evidently draws a t-SNE of the embeddings for each metric: ~10 s apiece here
def test_scores_equal_evidently_embeddings_drift_metric(reference: pd.DataFrame) -> None:
    """The same scores as ``EmbeddingsDrift`` in a Report (default and a configured method), and the
    preset's answers for the other columns and the prediction."""
    window = images(200, 4, brightness=0.05)
    window[PREDICTION] = Projector().predict_frame(window)[0].tolist()
    for config in (None, DriftConfig(embeddings=EmbeddingsMethod(method="distance", threshold=0.3))):
        baseline = DriftBaseline(reference, schema_of(reference), config, model=Projector(), report_embeddings=True)
        result = baseline.check(window)
        with np.errstate(divide="ignore", invalid="ignore"):
            snapshot = result.snapshot
        values = {m["config"].get("embeddings_name"): float(m["value"]) for m in snapshot.dict()["metrics"]
                  if m["config"].get("type", "").endswith(":EmbeddingsDrift")}
        assert values == {"img": pytest.approx(result.columns["img"]["score"], abs=1e-6)}
        theirs = preset_columns(snapshot)
        assert theirs["size"] == result.columns["size"] | {"method": theirs["size"]["method"]}
        assert theirs[PREDICTION]["score"] == result.prediction["score"]
    assert result.columns["img"]["method"] == "embeddings distance" and result.columns["img"]["threshold"] == 0.3


@pytest.mark.parametrize(("config", "expected"), [
    (None, {"type": "ModelDriftMethod", "bootstrap": False, "threshold": 0.55}),
    (EmbeddingsMethod(threshold=0.6), {"type": "ModelDriftMethod", "bootstrap": False, "threshold": 0.6}),
    (EmbeddingsMethod(method="mmd", bootstrap=True), {"type": "MMDDriftMethod", "bootstrap": True}),
    (EmbeddingsMethod(method="ratio", threshold=0.5), {"type": "RatioDriftMethod", "threshold": 0.5}),
])
def test_embeddings_methods_follow_the_config_and_evidentlys_defaults(config: EmbeddingsMethod | None,
                                                                     expected: dict[str, Any]) -> None:
    from driftloop.monitoring.drift import embeddings_method

    method = embeddings_method(DriftConfig(embeddings=config) if config else None, reference_rows=1500)
    assert type(method).__name__ == expected.pop("type")
    assert {k: getattr(method, k) for k in expected} == expected
    assert embeddings_method(None, reference_rows=999).bootstrap is True


@pytest.fixture(scope="module")
def cnn() -> tuple[Any, bytes, FeatureSchema, pd.DataFrame]:
    from driftloop.models.families import fit_model
    from driftloop.training.media import DIGITS_FEATURES, DIGITS_TARGET, digits_frame

    frame = digits_frame(seed=5)
    train = frame[frame["period"] == "train"].head(200).reset_index(drop=True)
    schema = FeatureSchema.infer(train, dict(DIGITS_FEATURES), "classification", DIGITS_TARGET,
                                 tuple(sorted(train[DIGITS_TARGET].unique())))
    model = fit_model(schema, "cnn", {"channels": [4], "hidden": [8], "epochs": 2}, 0, train[schema.names],
                      train[DIGITS_TARGET])
    return model, model.to_onnx(schema), schema, train


@pytest.mark.slow
def test_the_cnn_graph_returns_its_embedding_last_and_serving_ignores_it(cnn: Any) -> None:
    from driftloop.models.onnx_model import OnnxModel

    native, onnx_bytes, schema, rows = cnn
    model = OnnxModel.from_bytes("v1", schema, onnx_bytes, {})
    assert [o.name for o in model.session.get_outputs()] == ["label", "probabilities", "embedding"]
    preds, proba = model.predict_frame(rows)  # what /predict answers: label and probabilities only
    assert preds.shape == (len(rows),) and proba.shape == (len(rows), len(schema.labels))
    np.testing.assert_array_equal(preds, native.predict(rows))
    embedding = model.embed_frame(rows)
    assert embedding.shape == (len(rows), 8)
    np.testing.assert_allclose(embedding, native.embed(rows), atol=1e-4)


@pytest.mark.slow
def test_a_recurrent_regressor_still_answers_one_output() -> None:
    from driftloop.models.families import fit_model
    from driftloop.models.onnx_model import OnnxModel

    rng = np.random.default_rng(6)
    frame = pd.DataFrame({"signal": list(rng.normal(0.0, 1.0, (120, 5, 2))), "y": rng.normal(0.0, 1.0, 120)})
    schema = FeatureSchema.infer(frame, {"signal": "sequence"}, "regression", "y")
    native = fit_model(schema, "lstm", {"units": 4, "hidden": [3], "epochs": 2}, 0, frame[["signal"]], frame["y"])
    model = OnnxModel.from_bytes("v1", schema, native.to_onnx(schema), {})
    assert [o.name for o in model.session.get_outputs()] == ["prediction", "embedding"]
    preds, second = model.predict_frame(frame)
    assert second is None
    np.testing.assert_allclose(preds, native.predict(frame), rtol=1e-4, atol=1e-5)
    assert model.embed_frame(frame).shape == (120, 3)


def test_the_html_report_leaves_the_embeddings_t_sne_out_unless_asked(reference: pd.DataFrame) -> None:
    window = images(200, 7, brightness=0.15)
    window[PREDICTION] = Projector().predict_frame(window)[0].tolist()
    result = DriftBaseline(reference, schema_of(reference), model=Projector()).check(window)
    metrics = [m["config"]["type"].rsplit(":", 1)[-1] for m in result.snapshot.dict()["metrics"]]
    assert "EmbeddingsDrift" not in metrics
    assert set(preset_columns(result.snapshot)) == {"size", PREDICTION}
    assert result.columns["img"]["drifted"]  # the check itself still judged the embeddings
