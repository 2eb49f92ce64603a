"""The steps of training/train.py's ``fit``, one at a time: what each takes and hands on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driftloop.models.errors import ConfigError
from driftloop.models.registry import Registry
from driftloop.training import scenarios as sc
from driftloop.training.train import (
    evaluate_model,
    export_checked,
    fit,
    fit_estimator,
    learning_data,
    reference_sample,
    report_dir,
    search_params,
    split_rows,
)

from tests.conftest import make_settings

METADATA_KEYS = ["kind", "params", "search", "metrics", "evaluation", "confidence_calibration", "parity", "rows",
                 "data_fingerprint", "time_range", "libraries", "code_revision", "seed", "warm_start",
                 "importance", "training_seconds"]


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    frame = sc.scenario_frame("loans", seed=42)
    return frame[frame["period"] == "train"].head(400).reset_index(drop=True)


def lr_settings(root: Path, **model: object):  # noqa: ANN201
    return make_settings(root, model={"kind": "logistic_regression"} | model)


def test_learning_data_infers_the_schema_from_base_and_frame(tmp_path: Path, rows: pd.DataFrame) -> None:
    settings = lr_settings(tmp_path)
    base, frame = rows.iloc[:100], rows.iloc[100:].set_axis(range(1000, 1300))
    data = learning_data(settings, frame, base)
    assert list(data.frame.index) == list(range(300))  # index reset: weights are by position
    assert len(data.seen) == 400 and data.seen.iloc[0].equals(base.iloc[0])
    assert data.target == sc.TARGET and data.timestamp == sc.TIMESTAMP
    assert data.labels == sorted(rows[sc.TARGET].unique().tolist()) == [0, 1]
    assert data.schema.names == list(settings.features)

    unsupervised = learning_data(make_settings(tmp_path, task="anomaly", model={"kind": "isolation_forest"}),
                                 rows.drop(columns=[sc.TIMESTAMP]))
    assert unsupervised.target is None and unsupervised.labels == [] and unsupervised.timestamp is None


def test_split_keeps_each_rows_weight_and_trains_on_all_of_base(tmp_path: Path, rows: pd.DataFrame) -> None:
    settings = lr_settings(tmp_path)
    base, frame = rows.iloc[:100].reset_index(drop=True), rows.iloc[100:]
    weights = np.arange(len(frame), dtype=float) + 10.0  # a row's weight says which row it is
    split = split_rows(learning_data(settings, frame, base), 0.25, settings.seed, weights)
    assert split.n_base == 100 and len(split.valid) == 75 and len(split.train) == 100 + 225
    assert split.time_ordered  # the newest rows validate
    assert split.valid[sc.TIMESTAMP].min() > split.train[sc.TIMESTAMP].max()
    pd.testing.assert_frame_equal(split.train.iloc[:100], base)
    assert (split.weights[:100] == 1.0).all()
    assert list(split.weights[100:]) == list(np.arange(225) + 10.0)
    assert split.describe() == ("split 300 rows: 225 to train, 75 to validate (time-ordered); "
                                "100 more always trained on")

    shuffled = split_rows(learning_data(settings, rows.drop(columns=[sc.TIMESTAMP])), 0.25, settings.seed)
    assert shuffled.weights is None and shuffled.n_base == 0 and not shuffled.time_ordered
    assert shuffled.describe() == "split 400 rows: 300 to train, 100 to validate (shuffled)"


def test_search_params_merges_the_best_over_the_configured(tmp_path: Path, rows: pd.DataFrame) -> None:
    plain = lr_settings(tmp_path, params={"max_iter": 300})
    data = learning_data(plain, rows)
    params, found = search_params(plain.model, plain.seed, data, rows)
    assert params == {"max_iter": 300} and found is None
    params["max_iter"] = 1
    assert plain.model.params == {"max_iter": 300}  # a copy: the settings are not touched

    searched = lr_settings(tmp_path, params={"max_iter": 300}, search={"params": {"C": [0.1, 1.0]}})
    params, found = search_params(searched.model, searched.seed, data, rows)
    assert found is not None and params == {"max_iter": 300, "C": found.best_params["C"]}
    assert found.describe().startswith("searched 2 candidates (grid")


def test_an_out_of_range_parameter_names_model_params(tmp_path: Path, rows: pd.DataFrame) -> None:
    settings = lr_settings(tmp_path)
    data = learning_data(settings, rows)
    split = split_rows(data, 0.2, settings.seed)
    with pytest.raises(ConfigError, match=r"model\.params: .*'C'"):
        fit_estimator("logistic_regression", {"C": -1.0}, settings.seed, data, split)


def test_evaluate_then_export_check_parity_on_the_validation_rows(tmp_path: Path, rows: pd.DataFrame) -> None:
    settings = lr_settings(tmp_path)
    data = learning_data(settings, rows)
    split = split_rows(data, 0.2, settings.seed)
    model = fit_estimator("logistic_regression", {}, settings.seed, data, split)
    evaluation = evaluate_model(model, data, split.valid, settings.seed, expected_rate=0.05)
    assert 0.5 < evaluation.metrics["accuracy"] <= 1.0
    assert list(evaluation.y_true.index) == list(split.valid.index) and evaluation.proba.shape == (80, 2)
    assert set(evaluation.importance) == set(settings.features)
    assert evaluation.describe().startswith("evaluated on the validation rows; most important: ")

    onnx_bytes, parity = export_checked(model, data.schema, split.valid)
    assert onnx_bytes[:2] and parity.rows == len(split.valid) and parity.max_abs_diff < 1e-4


def test_reference_sample_is_at_most_the_configured_rows(rows: pd.DataFrame) -> None:
    names = list(sc.FEATURES)
    assert len(reference_sample(rows, names, 100, seed=0)) == 100
    assert list(reference_sample(rows, names, 10_000, seed=0).columns) == names
    assert len(reference_sample(rows, names, 10_000, seed=0)) == len(rows)


def test_fit_reports_each_step_and_writes_the_same_metadata_keys(tmp_path: Path, rows: pd.DataFrame) -> None:
    settings = lr_settings(tmp_path)
    heard: list[str] = []
    fitted = fit(settings, rows, progress=heard.append)
    steps = [line.split(" ")[0] for line in heard]
    assert steps == ["split", "fit", "evaluated", "exported"], heard
    assert list(fitted.metadata) == METADATA_KEYS
    assert fitted.metrics == fitted.evaluation.metrics == fitted.metadata["metrics"]
    assert fitted.metadata["rows"] == {"train": 320, "validation": 80}
    assert len(fitted.reference) == min(settings.training.reference_rows, len(rows))


def test_reports_live_in_the_registry_project_directory(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "bentoml", "loans")
    assert report_dir(registry, "v3") == registry.project_dir / "reports" / "v3"
    assert report_dir(registry, "v3") == tmp_path / "bentoml" / "driftloop" / "loans" / "reports" / "v3"
