"""Retraining strategies (training/retrain.py): each trains on what it claims, and ``auto`` picks
as specified. Importance weights (training/reweight.py) are checked on a synthetic covariate shift
whose answer is known: initial ``x ~ N(0, 1)``, live ``x ~ N(2.2, 0.5)``, label 1 mostly where
``0 < x < 2``. A logistic regression fitted to the initial data says "the larger x, the likelier 1",
which is wrong for most live rows; weighted toward them, it learns the other side of the bump.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from driftloop.models.errors import ConfigError
from driftloop.models.families import fit_model, resample
from driftloop.models.registry import Registry
from driftloop.models.schema import FeatureSchema
from driftloop.training import scenarios as sc
from driftloop.training.retrain import choose_strategy, retrain
from driftloop.training.reweight import importance_weights
from driftloop.training.train import initial_frame
from driftloop.vocabulary import Outcome, Trigger

from tests.conftest import make_settings
from tests.unit.test_guard import GUARD_ROWS, guarded_home, root, settings_at  # noqa: F401 (fixtures)

SYNTH_FEATURES = {"x": "numeric", "z": "numeric"}


def synth(n: int, mean: float, sd: float, seed: int, start: str = "2026-01-01") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(mean, sd, n)
    y = (rng.uniform(size=n) < np.where((x > 0) & (x < 2), 0.9, 0.1)).astype(int)
    t = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(np.arange(n), unit="min")
    return pd.DataFrame({"x": x, "z": rng.normal(0, 1, n), "y": y, "t": t})


def synth_settings(root: Path, **retraining: Any) -> Any:
    return make_settings(root, data={"path": str(root / "initial.csv"), "target": "y", "timestamp": "t"},
                         features=SYNTH_FEATURES, task="classification", model={"kind": "logistic_regression"},
                         retraining={"guard": {"rows": 0}, "tournament": {"enabled": False}} | retraining)


@pytest.fixture(scope="module")
def synth_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from driftloop.training.train import train_version

    home = tmp_path_factory.mktemp("synth")
    synth(2000, 0.0, 1.0, seed=1).to_csv(home / "initial.csv", index=False)
    settings = synth_settings(home)
    registry = Registry(settings.registry.home, settings.registry.project)
    result = train_version(settings, initial_frame(settings), registry, trigger="initial")
    registry.promote(result.version.version, actor="test", reason="fixture")
    return home


@pytest.fixture
def synth_root(synth_home: Path, tmp_path: Path) -> Path:
    shutil.copytree(synth_home / "bentoml", tmp_path / "bentoml")
    shutil.copy(synth_home / "initial.csv", tmp_path / "initial.csv")
    return tmp_path


def live_rows(labelled: int, rows: int = 600) -> pd.DataFrame:
    """The streak as the monitor passes it: every row, the first ``labelled`` with their label."""
    live = synth(rows, 2.2, 0.5, seed=2, start="2026-03-01").astype({"y": object})
    live.loc[live.index[labelled:], "y"] = None
    return live


# -- choosing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("configured", "labelled", "trigger", "expected"), [
    ("auto", 400, "drift", "window"), ("auto", 400, "decay", "window"), ("auto", 399, "drift", "reweighted"),
    ("auto", 0, "drift", "reweighted"), ("auto", 399, "decay", None), ("auto", 399, "manual", None),
    ("window", 399, "drift", None), ("window_and_original", 400, "decay", "window_and_original"),
    ("reweighted", 0, "decay", "reweighted"),
])
def test_strategy_choice(tmp_path: Path, configured: str, labelled: int, trigger: str, expected: str | None) -> None:
    settings = make_settings(tmp_path, retraining={"strategy": configured, "min_rows": 400})
    strategy, why = choose_strategy(settings.retraining, settings.task, labelled, Trigger(trigger))
    assert strategy == expected, why
    if expected is None:
        assert f"{labelled} labelled rows since the drift began; 400 needed" in why


def test_unsupervised_tasks_wait_for_rows_and_cannot_reweight(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, task="anomaly", model={"kind": "isolation_forest"},
                             retraining={"strategy": "auto", "min_rows": 400})
    strategy, why = choose_strategy(settings.retraining, settings.task, 100, Trigger.DRIFT)
    assert strategy is None and why.startswith("100 rows since the drift began; 400 needed")
    with pytest.raises(ConfigError, match="reweighted"):
        reweighted = make_settings(tmp_path, task="anomaly", model={"kind": "isolation_forest"},
                                   retraining={"strategy": "reweighted"})
        choose_strategy(reweighted.retraining, reweighted.task, 1000, Trigger.DRIFT)


def test_auto_waits_on_a_decay_without_labels(synth_root: Path) -> None:
    settings = synth_settings(synth_root, strategy="auto")
    registry = Registry(settings.registry.home, settings.registry.project)
    outcome = retrain(settings, registry, live_rows(100), trigger="decay", reason="test")
    assert outcome.status == Outcome.WAITING and outcome.candidate is None and "decay" in outcome.reason
    assert [v.version for v in registry.versions()] == ["v1"]


# -- what each strategy trains on -------------------------------------------------------------------
def streak(rows: int = 800, unlabelled_every: int = 4) -> pd.DataFrame:
    """Covariate-shift rows of the loans scenario in log order; every 4th has no label yet."""
    frame = sc.generate([sc.Period("covariate", rows, population=sc.SEGMENT)], seed=8)
    frame[sc.TIMESTAMP] = frame[sc.TIMESTAMP] + pd.Timedelta(days=60)
    frame = frame.astype({sc.TARGET: object})
    frame.loc[frame.index[::unlabelled_every], sc.TARGET] = None
    return frame


@pytest.mark.parametrize("missing", [None, np.nan])
def test_labels_with_gaps_come_back_as_integers(tmp_path: Path, missing: Any) -> None:
    from driftloop.training.retrain import _labelled

    fresh = streak(12).astype({sc.TARGET: object if missing is None else float})
    fresh.loc[fresh.index[::4], sc.TARGET] = missing
    labelled = _labelled(make_settings(tmp_path), fresh)
    assert len(labelled) == 9 and labelled[sc.TARGET].dtype == np.int64
    assert list(labelled.columns) == [*sc.FEATURES, sc.TARGET, sc.TIMESTAMP]  # the store's columns are dropped


@pytest.mark.parametrize("strategy", ["window", "window_and_original"])
def test_window_strategies_train_on_what_they_claim(root: Path, strategy: str) -> None:
    settings = settings_at(root, strategy=strategy, min_rows=400)
    registry = Registry(settings.registry.home, settings.registry.project)
    fresh = streak()
    labelled = fresh[fresh[sc.TARGET].notna()]
    n_hold = round(len(labelled) * settings.retraining.holdout_fraction)
    n_window = len(labelled) - n_hold
    n_valid = round(n_window * settings.training.validation_fraction)
    outcome = retrain(settings, registry, fresh, trigger="drift", reason="test")
    original = len(initial_frame(settings)) if strategy == "window_and_original" else 0

    assert outcome.strategy == strategy and outcome.holdout_rows == n_hold
    assert outcome.train_rows == n_window + original
    meta = registry.get(outcome.candidate).metadata
    data = meta["training_data"]
    assert data == outcome.training_data and data["strategy"] == strategy and data["weights"] is None
    assert outcome.tournament is None and "tournament" not in meta  # off by default: one candidate
    assert meta["gate"]["test"]["significance"] == settings.retraining.significance  # not divided
    assert data["rows"] == ({"window": n_window} | ({"original": original} if original else {}))
    assert data["holdout"] == {"source": "window", "rows": n_hold, "weighted": False}
    # the fit validates on the newest window rows; the original ones are all trained on
    assert meta["rows"] == {"train": original + n_window - n_valid, "validation": n_valid}
    assert meta["gate"]["holdout_rows"] == n_hold and meta["gate"]["strategy"] == strategy
    assert meta["gate"]["guard"]["rows"] == GUARD_ROWS
    if original:
        assert meta["time_range"][0] < "2026-01-10" < meta["time_range"][1]  # initial data, then the window
    json.dumps(outcome.to_dict())


# -- reweighting ------------------------------------------------------------------------------------
def test_importance_weights_follow_the_density_ratio() -> None:
    initial, live = synth(3000, 0.0, 1.0, seed=3), synth(800, 2.2, 0.5, seed=4)
    schema = FeatureSchema.infer(initial, SYNTH_FEATURES, "classification", "y", (0, 1))
    weights = importance_weights(schema, initial, live, max_weight=20.0, seed=0)
    w, x = weights.values, initial["x"].to_numpy()
    assert w.mean() == pytest.approx(1.0) and w.max() <= 20.0 + 1e-9 and (w > 0).all()
    assert w[x > 1.5].mean() > 10 * w[x < 0].mean()  # live-like rows weigh far more
    true_ratio = np.exp(-0.5 * ((x - 2.2) / 0.5) ** 2) / 0.5 / np.exp(-0.5 * x ** 2)
    assert spearmanr(w, true_ratio).statistic > 0.9  # z does not move: it barely matters
    summary = weights.summary()
    assert summary["live_rows"] == 800 and summary["domain_auc"] > 0.9
    assert 1 < summary["ess"] < len(w) and summary["clipped"] >= 0
    json.dumps(summary)


def test_reweighted_candidate_beats_the_champion_on_the_shifted_rows(synth_root: Path) -> None:
    settings = synth_settings(synth_root, strategy="reweighted")
    registry = Registry(settings.registry.home, settings.registry.project)
    fresh = live_rows(labelled=200)
    outcome = retrain(settings, registry, fresh, trigger="drift", reason="test")
    assert outcome.status == Outcome.PROMOTED, outcome.reason
    assert outcome.candidate_score > outcome.champion_score + 0.2  # measured: 0.87 against 0.41
    assert "all 200 labelled live rows" in outcome.reason and outcome.holdout_rows == 200
    data = registry.get(outcome.candidate).metadata["training_data"]
    n_initial = len(initial_frame(settings))
    assert data["rows"] == {"original": n_initial} and data["holdout"]["source"] == "live"
    assert data["weights"]["rows"] == n_initial and data["weights"]["live_rows"] == len(fresh)
    assert outcome.train_rows == n_initial
    reference = registry.reference(outcome.candidate)  # the drift baseline is the live inputs now
    assert len(reference) == len(fresh) and reference["x"].mean() > 1.5


def test_reweighted_with_few_labels_gates_on_weighted_initial_rows(synth_root: Path) -> None:
    settings = synth_settings(synth_root, strategy="auto", min_rows=400)
    registry = Registry(settings.registry.home, settings.registry.project)
    outcome = retrain(settings, registry, live_rows(labelled=20), trigger="drift", reason="test")
    assert outcome.strategy == "reweighted" and "importance-weighted" in outcome.reason
    n_initial = len(initial_frame(settings))
    n_hold = round(n_initial * settings.retraining.holdout_fraction)
    assert outcome.holdout_rows == n_hold and outcome.train_rows == n_initial - n_hold
    assert outcome.training_data["holdout"] == {"source": "initial", "rows": n_hold, "weighted": True}
    assert outcome.candidate_score > outcome.champion_score  # the weighted metric moves the right way


def test_kinds_without_weights_learn_from_a_weighted_resample() -> None:
    x = pd.DataFrame({"x": np.arange(10.0), "z": np.zeros(10)})
    y = pd.Series([0] * 5 + [1] * 5)
    w = np.r_[np.zeros(5), np.ones(5)]
    rx, ry = resample(x, y, w, seed=0)
    assert len(rx) == 10 and (rx["x"] >= 5).all() and (ry == 1).all() and rx["x"].is_monotonic_increasing
    pd.testing.assert_frame_equal(resample(x, y, w, seed=0)[0], rx)  # deterministic with the seed
    schema = FeatureSchema.infer(x.assign(y=y), SYNTH_FEATURES, "classification", "y", (0, 1))
    knn = fit_model(schema, "knn", {"n_neighbors": 3}, 0, x, y, sample_weight=w)
    assert (knn.predict(x) == 1).all()  # k-nearest neighbours take no weights: resampled, the 0 rows are gone
    with pytest.raises(ValueError, match="sample_weight"):
        resample(x, y, -w, seed=0)


@pytest.mark.parametrize(("kind", "params"), [("gradient_boosting", {"max_depth": 1, "n_estimators": 20}),
                                              ("lightgbm", {"num_leaves": 2, "n_estimators": 20})])
def test_kinds_with_weights_get_them(kind: str, params: dict[str, Any]) -> None:
    frame = synth(400, 0.0, 1.0, seed=5)
    schema = FeatureSchema.infer(frame, SYNTH_FEATURES, "classification", "y", (0, 1))
    x, y = frame[schema.names], frame["y"]
    light = np.where(y == 1, 1.0, 0.05)  # the 0 rows barely count: weighted stumps say 1 (almost) everywhere
    fresh = synth(400, 0.0, 1.0, seed=6)[schema.names]
    plain = fit_model(schema, kind, params, 0, x, y).predict(fresh).mean()
    weighted = fit_model(schema, kind, params, 0, x, y, sample_weight=light).predict(fresh).mean()
    assert weighted > 0.9 and plain < 0.6  # measured: 0.995 / 1.0 against 0.53
