"""Calibration, confusion matrix, permutation importance and the written report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from driftloop.models.families import SklearnModel
from driftloop.training import evaluate
from driftloop.training.report import metrics_table, permutation_importance, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[2]


# -- calibration -------------------------------------------------------------------------------

def _calibrated_binary() -> tuple[np.ndarray, np.ndarray]:
    """Rows whose top-label confidence equals the accuracy of their group, exactly."""
    y, p1 = [], []
    for prob_one, rows, ones in ((0.9, 10, 9), (0.8, 10, 8), (0.3, 10, 3), (0.25, 20, 5), (0.5, 4, 2)):
        y += [1] * ones + [0] * (rows - ones)
        p1 += [prob_one] * rows
    p1_arr = np.array(p1)
    return np.array(y), np.column_stack([1 - p1_arr, p1_arr])


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    y, proba = _calibrated_binary()
    result = evaluate.calibration(y, proba, [0, 1])
    assert result["ece"] == pytest.approx(0.0, abs=1e-12)
    filled = [b for b in result["bins"] if b["count"]]
    assert sum(b["count"] for b in filled) == len(y)
    for b in filled:
        assert b["accuracy"] == pytest.approx(b["confidence"])
        assert b["lower"] <= b["confidence"] < b["upper"] or b["confidence"] == b["upper"] == 1.0


def test_ece_is_zero_for_calibrated_multiclass() -> None:
    labels = ["a", "b", "c"]
    # 10 rows at confidence 0.6 for "a" (6 right), 5 rows at 0.8 for "c" (4 right)
    proba = np.array([[0.6, 0.3, 0.1]] * 10 + [[0.1, 0.1, 0.8]] * 5)
    y = np.array(["a"] * 6 + ["b"] * 3 + ["c"] + ["c"] * 4 + ["a"])
    assert evaluate.calibration(y, proba, labels)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_ece_is_large_for_overconfident_probabilities() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=400)
    predicted = rng.integers(0, 2, size=400)  # right half of the time...
    proba = np.where(predicted[:, None] == np.arange(2)[None, :], 0.99, 0.01)  # ...but 99% sure
    result = evaluate.calibration(y, proba, [0, 1])
    accuracy = float(np.mean(predicted == y))
    assert result["ece"] == pytest.approx(0.99 - accuracy)
    assert result["ece"] > 0.4
    assert [b["count"] for b in result["bins"]] == [0] * 9 + [400]


def test_brier_matches_hand_computation() -> None:
    binary = evaluate.calibration([0, 1, 1], np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]]), [0, 1])
    assert binary["brier"] == pytest.approx((0.1**2 + 0.4**2 + 0.2**2) / 3)  # 0.07
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    multi = evaluate.calibration(["a", "c"], proba, ["a", "b", "c"])
    hand = ((0.3**2 + 0.2**2 + 0.1**2) + (0.2**2 + 0.3**2 + 0.5**2)) / 2  # 0.26
    assert multi["brier"] == pytest.approx(hand)
    assert multi["brier"] == pytest.approx(skm.brier_score_loss(["a", "c"], proba, labels=["a", "b", "c"]))


def test_calibration_refuses_mismatched_columns() -> None:
    with pytest.raises(ValueError, match="shape"):
        evaluate.calibration([0, 1], np.array([[0.5, 0.5], [0.5, 0.5]]), [0, 1, 2])


def test_score_adds_ece_and_brier_only_with_probabilities() -> None:
    y, proba = _calibrated_binary()
    pred = proba.argmax(axis=1)
    with_proba = evaluate.score("classification", y, pred, proba, [0, 1])
    assert {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece", "brier"} <= set(with_proba)
    assert with_proba["ece"] == pytest.approx(0.0, abs=1e-12)
    assert with_proba["brier"] == pytest.approx(evaluate.calibration(y, proba, [0, 1])["brier"])
    assert set(evaluate.score("classification", y, pred)) == {"accuracy", "precision", "recall", "f1"}
    assert set(evaluate.score("regression", [1.0, 2.0], [1.5, 2.5])) == {"mse", "rmse", "mae", "r2"}


def test_confusion_matrix_rows_are_true_labels_in_label_order() -> None:
    y_true = np.array(["b", "a", "a", "c", "c", "c"])
    y_pred = np.array(["b", "a", "b", "c", "a", "c"])
    assert evaluate.confusion_matrix(y_true, y_pred, ["c", "a", "b"]) == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    matrix = evaluate.confusion_matrix(pd.Series([1, 0, 1]), np.array([1, 1, 1], dtype=np.int64), [0, 1])
    assert matrix == [[0, 1], [0, 2]]
    assert all(type(v) is int for row in matrix for v in row)


# -- permutation importance --------------------------------------------------------------------

def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"noise": rng.normal(size=n), "signal": rng.normal(size=n),
                         "colour": rng.choice(["red", "green", "blue"], size=n)})


def _pipeline(estimator: object) -> Pipeline:
    pre = ColumnTransformer([("num", StandardScaler(), ["noise", "signal"]),
                             ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["colour"])])
    return Pipeline([("pre", pre), ("model", estimator)])


@pytest.fixture(scope="module")
def classifier() -> tuple[SklearnModel, pd.DataFrame, pd.Series]:
    x = _frame(1200, seed=1)
    y = pd.Series(np.where(x["signal"] + 0.3 * np.random.default_rng(2).normal(size=len(x)) > 0, "yes", "no"))
    return SklearnModel(_pipeline(LogisticRegression()).fit(x[:800], y[:800]), "classification"), x[800:], y[800:]


@pytest.fixture(scope="module")
def regressor() -> tuple[SklearnModel, pd.DataFrame, pd.Series]:
    x = _frame(600, seed=3)
    y = pd.Series(3.0 * x["signal"] + 0.1 * np.random.default_rng(4).normal(size=len(x)))
    return SklearnModel(_pipeline(LinearRegression()).fit(x[:400], y[:400]), "regression"), x[400:], y[400:]


def test_importance_ranks_the_informative_feature_first(classifier) -> None:  # noqa: ANN001
    model, x, y = classifier
    importance = permutation_importance(model, x, y, "classification", seed=0)
    assert list(importance)[0] == "signal"
    assert importance["signal"]["mean"] > 0.3  # shuffling it leaves a coin toss
    assert abs(importance["noise"]["mean"]) < 0.05
    assert importance["signal"]["mean"] > importance["noise"]["mean"] + 0.25
    means = [v["mean"] for v in importance.values()]
    assert means == sorted(means, reverse=True)
    assert all(v["std"] >= 0 for v in importance.values())


def test_importance_is_reproducible_by_seed(classifier) -> None:  # noqa: ANN001
    model, x, y = classifier
    first = permutation_importance(model, x, y, "classification", seed=7, repeats=3)
    assert permutation_importance(model, x, y, "classification", seed=7, repeats=3) == first
    assert permutation_importance(model, x, y, "classification", seed=8, repeats=3) != first


def test_importance_for_regression_is_the_rmse_increase(regressor) -> None:  # noqa: ANN001
    model, x, y = regressor
    importance = permutation_importance(model, x, y, "regression", seed=0, repeats=3)
    assert list(importance)[0] == "signal"
    # shuffling the signal: RMSE goes from ~0.1 to about 3 * sqrt(2) * std(signal) ~ 4.2
    assert 3.0 < importance["signal"]["mean"] < 5.5
    assert abs(importance["noise"]["mean"]) < 0.05


class _FirstColumnModel:
    """A Trained model of no library: predicts ``a > 0`` and records the rows it was shown."""

    def __init__(self) -> None:
        self.seen: list[pd.DataFrame] = []

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        self.seen.append(x.copy())
        return (x["a"].to_numpy() > 0).astype(int)

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray | None:
        return None

    def to_onnx(self, schema: object) -> bytes:
        raise NotImplementedError


def test_importance_works_on_any_trained_model_and_subsamples_deterministically() -> None:
    rng = np.random.default_rng(5)
    x = pd.DataFrame({"a": rng.normal(size=500), "b": rng.normal(size=500)}, index=np.arange(500) * 3)
    y = pd.Series((x["a"] > 0).astype(int).to_numpy(), index=x.index)
    model = _FirstColumnModel()
    importance = permutation_importance(model, x, y, "classification", seed=1, repeats=2, max_rows=120)
    assert list(importance) == ["a", "b"]
    assert importance["b"] == {"mean": 0.0, "std": 0.0}  # the model never looks at it
    assert importance["a"]["mean"] > 0.3
    assert {len(seen) for seen in model.seen} == {120}
    baseline_rows = model.seen[0]
    assert baseline_rows["a"].isin(x["a"]).all()
    again = _FirstColumnModel()
    permutation_importance(again, x, y, "classification", seed=1, repeats=2, max_rows=120)
    pd.testing.assert_frame_equal(again.seen[0], baseline_rows)


def test_importance_refuses_bad_input(classifier) -> None:  # noqa: ANN001
    model, x, y = classifier
    with pytest.raises(ValueError, match="rows"):
        permutation_importance(model, x, y[:-1], "classification", seed=0)
    with pytest.raises(ValueError, match="task"):
        permutation_importance(model, x, y, "ranking", seed=0)
    with pytest.raises(ValueError, match="repeats"):
        permutation_importance(model, x, y, "classification", seed=0, repeats=0)


# -- the written report ------------------------------------------------------------------------

def _assert_png(path: str) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 10_000, f"{path}: only {len(data)} bytes"


def _check_written(paths: dict[str, str], out_dir: Path, expected: set[str]) -> dict:
    assert set(paths) == expected | {"report"}
    assert {Path(p).parent for p in paths.values()} == {out_dir}
    for name, path in paths.items():
        if name != "report":
            _assert_png(path)
    report = json.loads(Path(paths["report"]).read_text())
    assert report["figures"] == {name: Path(p).name for name, p in paths.items() if name != "report"}
    return report


def test_report_for_a_binary_classifier(classifier, tmp_path: Path) -> None:  # noqa: ANN001
    import matplotlib.pyplot as plt

    model, x, y = classifier
    labels = ["no", "yes"]
    pred, proba = model.predict(x), model.predict_proba(x)
    metrics = evaluate.score("classification", y, pred, proba, labels)
    importance = permutation_importance(model, x, y, "classification", seed=0, repeats=2)
    figures_before = plt.get_fignums()
    paths = write_report(tmp_path / "v3", "v3", "classification", y, pred, proba, labels, metrics, importance)
    assert plt.get_fignums() == figures_before  # nothing left open in pyplot

    report = _check_written(paths, tmp_path / "v3",
                            {"confusion_matrix", "roc", "reliability", "importance"})
    assert report["version"] == "v3" and report["task"] == "classification"
    assert report["metrics"] == pytest.approx(metrics)
    assert report["labels"] == labels
    assert report["confusion_matrix"]["matrix"] == evaluate.confusion_matrix(y, pred, labels)
    assert sum(map(sum, report["confusion_matrix"]["matrix"])) == len(y)
    assert report["calibration"]["ece"] == pytest.approx(metrics["ece"])
    assert len(report["calibration"]["bins"]) == 10
    assert report["importance"] == importance
    assert "residuals" not in report


def test_report_for_three_classes_with_integer_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, size=300)
    logits = rng.normal(size=(300, 3)) + 2.0 * (y[:, None] == np.arange(3)[None, :])
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    labels = [0, 1, 2]
    metrics = evaluate.score("classification", y, pred, proba, labels)
    importance = {"f1": {"mean": 0.2, "std": 0.01}, "f2": {"mean": -0.01, "std": 0.02}}
    paths = write_report(tmp_path, "v7", "classification", y, pred, proba, np.array(labels), metrics, importance)
    report = _check_written(paths, tmp_path, {"confusion_matrix", "roc", "reliability", "importance"})
    assert report["labels"] == labels
    assert np.array(report["confusion_matrix"]["matrix"]).shape == (3, 3)
    assert report["calibration"]["brier"] == pytest.approx(skm.brier_score_loss(y, proba, labels=labels))


def test_report_skips_undefined_roc_curves(tmp_path: Path) -> None:
    """A class with no row in y_true has no curve (and raises no UndefinedMetricWarning)."""
    y = np.array(["a", "b"] * 20)
    proba = np.tile([[0.5, 0.3, 0.2], [0.2, 0.6, 0.2]], (20, 1))
    paths = write_report(tmp_path, "v1", "classification", y, y, proba, ["a", "b", "c"], {}, {})
    _check_written(paths, tmp_path, {"confusion_matrix", "roc", "reliability"})
    only_one_class = write_report(tmp_path / "one", "v1", "classification", np.array(["a"] * 5),
                                  np.array(["a"] * 5), np.tile([0.9, 0.1], (5, 1)), ["a", "b"], {}, {})
    _check_written(only_one_class, tmp_path / "one", {"confusion_matrix", "reliability"})


def test_report_for_a_regressor(regressor, tmp_path: Path) -> None:  # noqa: ANN001
    model, x, y = regressor
    pred = model.predict(x)
    metrics = evaluate.score("regression", y, pred) | {"r2": float("nan")}  # NaN is written as null
    importance = permutation_importance(model, x, y, "regression", seed=0, repeats=2)
    paths = write_report(tmp_path, "v2", "regression", y, pred, None, None, metrics, importance)
    report = _check_written(paths, tmp_path, {"residuals", "predicted_vs_true", "importance"})
    assert report["metrics"]["r2"] is None
    assert report["metrics"]["rmse"] == pytest.approx(metrics["rmse"])
    residuals = report["residuals"]
    assert residuals["count"] == len(y)
    assert residuals["mean"] == pytest.approx(float(np.mean(y - pred)))
    assert residuals["min"] <= residuals["p05"] <= residuals["median"] <= residuals["p95"] <= residuals["max"]
    assert "confusion_matrix" not in report and "calibration" not in report


def test_importing_the_report_module_does_not_import_matplotlib() -> None:
    code = "import sys, driftloop.training.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the metrics table -------------------------------------------------------------------------

def test_metrics_table_lists_every_metric_aligned() -> None:
    metrics = {"accuracy": 0.8125, "log_loss": 0.43219, "ece": 0.0312, "mse": 12345.678, "r2": float("nan")}
    lines = metrics_table(metrics).splitlines()
    assert lines[0].split() == ["metric", "value"]
    rows = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert rows == {"accuracy": "0.8125", "log_loss": "0.4322", "ece": "0.0312", "mse": "12345.6780", "r2": "nan"}
    assert list(rows) == list(metrics)
    assert len({len(line) for line in lines}) == 1  # values right-aligned in one column
    assert metrics_table({}) == "(no metrics)"
