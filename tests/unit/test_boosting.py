"""Histogram gradient boosting (LightGBM in a pipeline): fit -> ONNX -> parity, for every task shape."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.models.boosting import DEFAULTS, as_float32, fit_boosting, float32_thresholds
from driftloop.models.errors import ConfigError
from driftloop.models.onnx_model import check_parity, run, session
from driftloop.models.schema import FeatureSchema
from driftloop.training.scenarios import FEATURES, TARGET

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def frame(loans: pd.DataFrame) -> pd.DataFrame:
    """The scenario's train period, with extra targets: 3 classes (int and str), str binary, a number."""
    f = loans[loans["period"] == "train"].reset_index(drop=True).copy()
    high_debt = f["debt_ratio"] > f["debt_ratio"].median()
    f["risk"] = np.where(f[TARGET] == 1, 2, np.where(high_debt, 1, 0))  # 0 low, 1 watch, 2 defaulted
    f["risk_name"] = f["risk"].map({0: "low", 1: "watch", 2: "defaulted"})
    f["outcome"] = f[TARGET].map({0: "repaid", 1: "defaulted"})
    f["monthly_debt"] = f["income"] * f["debt_ratio"] / 12
    return f


def split(f: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return f.iloc[:2400], f.iloc[2400:]


def classification_schema(f: pd.DataFrame, target: str) -> FeatureSchema:
    return FeatureSchema.infer(f, FEATURES, "classification", target, tuple(sorted(f[target].unique().tolist())))


CLASSIFICATION = [  # target, classes, least accuracy on the held-out rows
    (TARGET, 2, 0.75),
    ("outcome", 2, 0.75),  # string labels
    ("risk", 3, 0.75),
    ("risk_name", 3, 0.75),  # string labels, 3 classes
]


@pytest.mark.parametrize(("target", "classes", "least"), CLASSIFICATION, ids=[c[0] for c in CLASSIFICATION])
def test_classification_round_trip(frame: pd.DataFrame, target: str, classes: int, least: float) -> None:
    train, valid = split(frame)
    schema = classification_schema(frame, target)
    model = fit_boosting(schema, train[schema.names], train[target], {}, 42, None)
    onnx_bytes = model.to_onnx(schema)

    parity = check_parity(model, onnx_bytes, schema, valid)  # raises beyond tolerance
    assert parity.label_agreement == 1.0 and parity.max_abs_diff < 1e-5, parity
    assert check_parity(model, onnx_bytes, schema, train).label_agreement == 1.0

    # the serving path: request rows -> validated feeds -> onnxruntime
    rows = valid[schema.names].head(50).to_dict(orient="records")
    preds, proba = run(session(onnx_bytes), schema.validate_rows(rows))
    native = model.predict_proba(valid[schema.names].head(50))
    assert proba.shape == (50, classes) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(proba - native).max() < 1e-5
    assert preds.tolist() == model.predict(valid[schema.names].head(50)).tolist()
    assert set(preds.tolist()) <= set(schema.labels)
    assert list(model.pipeline.classes_) == list(schema.labels)  # probability columns in the schema's order

    accuracy = float(np.mean(model.predict(valid[schema.names]) == valid[target].to_numpy()))
    assert accuracy > least, accuracy
    assert model.scores(valid[schema.names]) is None


def test_regression_round_trip(frame: pd.DataFrame) -> None:
    train, valid = split(frame)
    schema = FeatureSchema.infer(frame, FEATURES, "regression", "monthly_debt")
    model = fit_boosting(schema, train[schema.names], train["monthly_debt"], {}, 42, None)
    onnx_bytes = model.to_onnx(schema)

    parity = check_parity(model, onnx_bytes, schema, valid)
    assert parity.label_agreement is None and parity.max_abs_diff < 1e-5 * valid["monthly_debt"].abs().max()
    preds, proba = run(session(onnx_bytes), schema.feeds(valid))
    assert proba is None and preds.shape == (len(valid),)
    assert model.predict_proba(valid[schema.names]) is None

    y = valid["monthly_debt"].to_numpy()
    r2 = 1 - np.sum((y - model.predict(valid[schema.names])) ** 2) / np.sum((y - y.mean()) ** 2)
    assert r2 > 0.9, r2


def test_float_values_near_thresholds_keep_parity() -> None:
    """Timestamps stored as floats: float32 keeps ~2 minutes of precision at 1.7e9 s, so splits
    sit between values that round together; the graph must still branch like the booster."""
    rng = np.random.default_rng(0)
    n = 3000
    f = pd.DataFrame({"ts": 1.7e9 + rng.uniform(0, 2e6, n), "amount": np.round(rng.lognormal(13, 1, n), 2),
                      "segment": rng.choice(["a", "b", "c"], n)})
    logit = np.sin((f["ts"] - 1.7e9) / 1e5) + np.log(f["amount"]) - 13 + (f["segment"] == "a")
    f["y"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    f["value"] = logit * 100
    kinds = {"ts": "numeric", "amount": "numeric", "segment": "categorical"}
    for task, target in (("classification", "y"), ("regression", "value")):
        schema = FeatureSchema.infer(f, kinds, task, target, (0, 1) if task == "classification" else ())
        model = fit_boosting(schema, f[schema.names].iloc[:2000], f[target].iloc[:2000], {"n_estimators": 100}, 0)
        parity = check_parity(model, model.to_onnx(schema), schema, f)
        assert parity.label_agreement in (None, 1.0), parity


def test_rounding_thresholds_keeps_float32_predictions(frame: pd.DataFrame) -> None:
    import lightgbm

    numeric = [name for name, kind in FEATURES.items() if kind == "numeric"]
    x = as_float32(frame[numeric], numeric)
    booster = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1, random_state=0).fit(x, frame[TARGET]).booster_
    before = booster.predict(x, raw_score=True)
    text = booster.model_to_string()
    rounded = float32_thresholds(text)
    assert rounded != text
    thresholds = [float(v) for line in rounded.splitlines() if line.startswith("threshold=")
                  for v in line.removeprefix("threshold=").split()]
    assert all(float(np.float32(t)) == t for t in thresholds)  # every threshold is a float32
    booster.model_from_string(rounded)
    assert np.array_equal(booster.predict(x, raw_score=True), before)


def test_defaults_and_silence(frame: pd.DataFrame, capfd: pytest.CaptureFixture[str]) -> None:
    train, _ = split(frame)
    schema = classification_schema(frame, TARGET)
    model = fit_boosting(schema, train[schema.names], train[TARGET], {"n_estimators": 20}, 7, None)
    params = model.pipeline.named_steps["model"].get_params()
    assert params["n_estimators"] == 20 and params["random_state"] == 7
    assert {k: params[k] for k in DEFAULTS if k != "n_estimators"} == \
        {k: v for k, v in DEFAULTS.items() if k != "n_estimators"}
    assert model.pipeline.named_steps["model"].booster_.num_trees() == 20
    model.to_onnx(schema)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_training_is_reproducible_by_seed(frame: pd.DataFrame) -> None:
    train, valid = split(frame)
    schema = classification_schema(frame, TARGET)
    params = {"n_estimators": 40, "subsample": 0.7, "subsample_freq": 1, "colsample_bytree": 0.7}

    def proba(seed: int) -> np.ndarray:
        return fit_boosting(schema, train[schema.names], train[TARGET], dict(params), seed, None) \
            .predict_proba(valid[schema.names])

    first = proba(1)
    assert np.array_equal(first, proba(1))
    assert not np.array_equal(first, proba(2))  # the seed drives the row and column sampling


def test_unknown_params_are_refused_by_name(frame: pd.DataFrame) -> None:
    schema = classification_schema(frame, TARGET)
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['l2_regularization', 'max_iter'\] for 'lightgbm'.*num_leaves"):
        fit_boosting(schema, frame[schema.names], frame[TARGET], {"max_iter": 50, "l2_regularization": 1.0,
                                                                 "learning_rate": 0.1}, 42, None)


@pytest.mark.parametrize(("params", "match"), [
    ({"num_leaves": 1}, r"LightGBM refused them: .*num_leaves"),
    ({"boosting_type": "rf"}, r"boosting_type: 'rf' cannot be exported"),
    ({"objective": "multiclassova"}, r"objective: 'multiclassova' cannot be exported"),
], ids=["bad-value", "rf", "objective"])
def test_params_that_cannot_train_or_export_are_refused(frame: pd.DataFrame, params: dict, match: str) -> None:
    schema = classification_schema(frame, "risk")
    train = frame.head(300)
    with pytest.raises(ConfigError, match=match):
        fit_boosting(schema, train[schema.names], train["risk"], params | {"n_estimators": 5}, 42, None)


def test_warm_start_is_refused(frame: pd.DataFrame) -> None:
    schema = classification_schema(frame, TARGET)
    with pytest.raises(ConfigError, match="'lightgbm' cannot fine-tune"):
        fit_boosting(schema, frame[schema.names], frame[TARGET], {}, 42, b"an earlier graph")


def test_unsupervised_tasks_are_refused(frame: pd.DataFrame) -> None:
    schema = FeatureSchema.infer(frame, FEATURES, "anomaly", None)
    with pytest.raises(ConfigError, match="model.kind: 'lightgbm' does not support task 'anomaly'"):
        fit_boosting(schema, frame[schema.names], None, {}, 42, None)


def test_import_is_lazy() -> None:
    code = ("import sys, driftloop.models.boosting; "
            "print(sorted(m for m in ('lightgbm', 'onnxmltools', 'skl2onnx') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
