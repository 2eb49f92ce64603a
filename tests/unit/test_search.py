"""Hyperparameter search from config: scikit-learn's searches for classical kinds, a held-out
search for the others; reproducible by seed; the winner is what gets trained and recorded."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from driftloop.models.errors import ConfigError
from driftloop.models.registry import Registry
from tests.conftest import make_settings
from driftloop.training.search import candidates
from driftloop.training.train import train_version


def train_with(tmp_path: Path, frame: pd.DataFrame, kind: str, search: dict, **extra) -> dict:  # noqa: ANN003
    settings = make_settings(tmp_path, model={"kind": kind, "search": search} | extra)
    registry = Registry(settings.registry.home, "loans")
    return train_version(settings, frame, registry, trigger="initial").version.metadata


@pytest.fixture(scope="module")
def frame(loans: pd.DataFrame) -> pd.DataFrame:
    return loans[loans["period"] == "train"].head(1500).reset_index(drop=True)


def test_grid_search_picks_the_better_model(tmp_path: Path) -> None:
    from tests.unit.test_families import regression_frame

    settings = make_settings(tmp_path, task="regression", data={"target": "price"},
                             features={"size": "numeric", "rooms": "numeric", "city": "categorical"},
                             model={"kind": "ridge", "search": {"params": {"alpha": [1e6, 1e-3, 1e4]}}})
    meta = train_version(settings, regression_frame(), Registry(settings.registry.home, "p"),
                         trigger="initial").version.metadata
    found = meta["search"]
    assert found["candidates"] == 3 and "shuffled folds" in found["method"]  # no timestamp: shuffled
    assert found["best_params"] == {"alpha": 1e-3}  # huge alphas flatten the fit to the mean
    assert found["metric"] == "rmse" and found["best_score"] < 20  # noise sd is 10
    assert meta["params"]["alpha"] == 1e-3  # the final model is trained with the winner


def test_time_ordered_rows_are_searched_with_time_series_folds(tmp_path: Path, frame: pd.DataFrame) -> None:
    meta = train_with(tmp_path, frame, "decision_tree", {"params": {"max_depth": [2, 4]}, "folds": 4})
    assert "4 time-series folds" in meta["search"]["method"] and meta["search"]["candidates"] == 2


def test_random_search_is_reproducible(tmp_path: Path, frame: pd.DataFrame) -> None:
    space = {"params": {"n_estimators": [20, 40, 60], "max_depth": [2, 3, 4]}, "method": "random", "iterations": 3}
    a = train_with(tmp_path / "a", frame, "gradient_boosting", space)["search"]
    b = train_with(tmp_path / "b", frame, "gradient_boosting", space)["search"]
    assert a["candidates"] == 3 and a["best_params"] == b["best_params"] and a["best_score"] == b["best_score"]


def test_neural_search_uses_the_newest_rows_to_choose(tmp_path: Path, frame: pd.DataFrame) -> None:
    meta = train_with(tmp_path, frame, "mlp", {"params": {"hidden": [[4], [32]], "lr": [0.01]}},
                      params={"epochs": 30, "patience": 5})
    assert meta["search"]["candidates"] == 2 and "held out" in meta["search"]["method"]
    assert meta["params"]["hidden"] in ([4], [32]) and meta["params"]["epochs"] == 30


def test_search_names_unknown_parameters(tmp_path: Path, frame: pd.DataFrame) -> None:
    with pytest.raises(ConfigError, match=r"no parameter\(s\) \['depth'\]"):
        train_with(tmp_path, frame, "decision_tree", {"params": {"depth": [1, 2]}})


def test_an_empty_search_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.search.params"):
        make_settings(tmp_path, model={"search": {"params": {}}})


def test_candidates() -> None:
    space = {"a": [1, 2, 3], "b": ["x", "y"]}
    assert len(candidates(space, "grid", 0, 1)) == 6
    picked = candidates(space, "random", 4, 1)
    assert len(picked) == 4 and picked == candidates(space, "random", 4, 1)
    assert len({tuple(sorted(p.items())) for p in picked}) == 4  # without replacement
