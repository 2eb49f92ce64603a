"""``driftloop predict FILE --out FILE``: offline scoring through the /predict path (issue 16)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from driftloop.cli import app
from driftloop.models.registry import Registry
from driftloop.monitoring.store import PredictionStore
from tests.conftest import make_settings

runner = CliRunner()
FEATURES = ["income", "age", "debt_ratio", "credit_lines", "region", "employment"]


@pytest.fixture
def project(champion_home: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(champion_home / "bentoml", tmp_path / "bentoml")
    settings = make_settings(tmp_path)
    config = tmp_path / "driftloop.yaml"
    config.write_text(yaml.safe_dump({"registry": {"home": str(settings.registry.home)},
                                      "store": {"url": settings.store.url}, "serving": {"max_rows": 40}}))
    return tmp_path, config


def batch(loans: pd.DataFrame, n: int = 100) -> pd.DataFrame:
    return loans[loans["period"] == "stable"].head(n).reset_index(drop=True)


def test_a_csv_is_scored_like_predict_in_chunks_with_other_columns_passed_through(
        project: tuple[Path, Path], loans: pd.DataFrame) -> None:
    root, config = project
    rows = batch(loans)
    rows.to_csv(root / "in.csv", index=False)
    result = runner.invoke(app, ["predict", str(root / "in.csv"), "--out", str(root / "out.csv"), "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert "scored 100 rows with v1" in result.output
    out = pd.read_csv(root / "out.csv")
    assert list(out.columns[:len(rows.columns)]) == list(rows.columns)  # passed through, in order
    assert len(out) == 100 and set(out["model_version"]) == {"v1"} and "request_id" not in out
    model = Registry(str(root / "bentoml"), "loans").load("v1")
    feeds = model.schema.validate_rows(rows[FEATURES].to_dict("records"), 1000)
    preds, probs = model.predict(feeds)
    assert out["prediction"].tolist() == preds.tolist()  # 3 chunks of at most 40 rows, same answers
    np.testing.assert_allclose(out[["probability_0", "probability_1"]].to_numpy(), probs, atol=1e-6)
    assert PredictionStore(make_settings(root).store.url).create().count_predictions() == 0  # not logged


def test_log_puts_the_rows_in_the_prediction_log_with_their_request_ids(
        project: tuple[Path, Path], loans: pd.DataFrame) -> None:
    root, config = project
    batch(loans, 50).to_parquet(root / "in.parquet")
    result = runner.invoke(app, ["predict", str(root / "in.parquet"), "--out", str(root / "out.parquet"), "--log",
                                 "-c", str(config)])
    assert result.exit_code == 0 and "50 rows in the prediction log" in result.output, result.output
    out = pd.read_parquet(root / "out.parquet")
    store = PredictionStore(make_settings(root).store.url)
    assert store.known_request_ids(out["request_id"]) == set(out["request_id"])
    logged = store.window(0, 100)
    assert logged["prediction"].tolist() == out["prediction"].tolist()


def test_a_bad_cell_names_its_line_and_nothing_is_written(project: tuple[Path, Path], loans: pd.DataFrame) -> None:
    root, config = project
    rows = batch(loans, 60).astype({"income": object})
    rows.loc[45, "income"] = "n/a?"
    rows.to_csv(root / "in.csv", index=False)
    result = runner.invoke(app, ["predict", str(root / "in.csv"), "--out", str(root / "out.csv"), "-c", str(config)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {root / 'in.csv'}: line 47: income must be a number, got 'n/a?'"
    assert not (root / "out.csv").exists()
    rows = batch(loans, 60)
    rows.loc[44, "region"] = "x" * 5000  # refused by the /predict rules, in the second chunk
    rows.to_csv(root / "in.csv", index=False)
    result = runner.invoke(app, ["predict", str(root / "in.csv"), "--out", str(root / "out.csv"), "-c", str(config)])
    assert result.exit_code == 2 and f"{root / 'in.csv'}: line 46: region" in result.output, result.output
    rows.drop(columns=["age"]).to_csv(root / "in.csv", index=False)
    result = runner.invoke(app, ["predict", str(root / "in.csv"), "--out", str(root / "out.csv"), "-c", str(config)])
    assert result.exit_code == 2 and "missing column(s) ['age']" in result.output
    assert not (root / "out.csv").exists()
