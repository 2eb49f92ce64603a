"""A tournament of retraining candidates (training/retrain.py, ``retraining.tournament``): one per
strategy and kind, all scored on the same held-out rows, the best sent to the gate at
``significance / n``, only it registered, the field recorded. On the synthetic covariate shift of
test_retrain_strategies (a logistic-regression champion, live ``x ~ N(2.2, 0.5)``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from driftloop.models.errors import ConfigError
from driftloop.models.registry import Registry
from driftloop.training import retrain as retrain_mod
from driftloop.models.families import unfit as kind_unfit
from driftloop.training.retrain import Entry, Tournament, in_tournament, kind_settings, retrain
from driftloop.training.train import initial_frame
from driftloop.vocabulary import Outcome

from tests.conftest import make_settings
from tests.unit.test_retrain_strategies import live_rows, synth_home, synth_root, synth_settings  # noqa: F401

STRATEGIES = ["window_and_original", "reweighted", "window"]  # the best (measured: window) listed last


def contest_settings(root: Path, **tournament: Any) -> Any:
    return synth_settings(root, min_rows=400, significance=0.05,
                          tournament={"enabled": True, "strategies": STRATEGIES} | tournament)


@pytest.fixture
def scored_rows(monkeypatch: pytest.MonkeyPatch) -> list[pd.DataFrame]:
    """Every frame a candidate is scored on in the tournament (the gate scores through compare)."""
    seen: list[pd.DataFrame] = []
    real = retrain_mod.score_rows

    def spy(task: str, target: str | None, rate: float, model: Any, rows: pd.DataFrame, weights: Any = None) -> float:
        seen.append(rows)
        return real(task, target, rate, model, rows, weights)

    monkeypatch.setattr(retrain_mod, "score_rows", spy)
    return seen


def test_a_tournament_sends_the_best_of_the_same_holdout_at_significance_over_n(
        synth_root: Path, scored_rows: list[pd.DataFrame]) -> None:
    settings = contest_settings(synth_root, kinds=["decision_tree", "logistic_regression"])
    registry = Registry(settings.registry.home, settings.registry.project)
    fresh = live_rows(labelled=600)
    outcome = retrain(settings, registry, fresh, trigger="drift", reason="test")

    n_hold = round(600 * settings.retraining.holdout_fraction)
    n_window, n_initial = 600 - n_hold, len(initial_frame(settings))
    contest = outcome.tournament
    assert contest is not None and contest["comparisons"] == 6
    assert contest["significance"] == pytest.approx(0.05 / 6)
    field = contest["candidates"]
    assert [(c["strategy"], c["kind"]) for c in field] == [
        (s, k) for s in STRATEGIES for k in ("decision_tree", "logistic_regression")]
    assert [c["train_rows"] for c in field] == [n_window + n_initial] * 2 + [n_initial] * 2 + [n_window] * 2
    assert all(c["skipped"] is None for c in field)

    # every candidate was scored on the same rows: the newest labelled ones, none trained on
    assert len(scored_rows) == 6
    newest = fresh["x"].iloc[-n_hold:].to_numpy()
    for rows in scored_rows:
        assert (rows["x"].to_numpy() == newest).all()

    best = max(field, key=lambda c: c["score"])
    assert field.index(best) > 0  # measured: window/logistic_regression 0.833, window_and_original/... 0.407
    assert contest["winner"] == {"strategy": best["strategy"], "kind": best["kind"]}
    assert outcome.strategy == best["strategy"] and outcome.candidate_score == pytest.approx(best["score"])
    assert outcome.holdout_rows == n_hold

    # only the winner is registered; its metadata carries the field and the corrected test
    assert [v.version for v in registry.versions()] == ["v1", "v2"] and outcome.candidate == "v2"
    meta = registry.get("v2").metadata
    assert meta["kind"] == best["kind"] and meta["training_data"]["strategy"] == best["strategy"]
    assert meta["tournament"] == contest and meta["gate"]["test"]["significance"] == pytest.approx(0.05 / 6)
    assert meta["training_data"]["holdout"] == {"source": "window", "rows": n_hold, "weighted": False}
    name = f"{best['strategy']}/{best['kind']}"
    assert f"tournament winner {name} of 6" in outcome.reason
    assert all(f"{c['strategy']}/{c['kind']} " in outcome.reason for c in field)
    assert "significance / 6" in outcome.reason
    json.dumps(outcome.to_dict())


def test_candidates_that_cannot_run_are_recorded_with_their_reason(synth_root: Path) -> None:
    (synth_root / "initial.csv").unlink()  # window_and_original and reweighted need the initial data
    settings = contest_settings(synth_root, kinds=["logistic_regression"])
    registry = Registry(settings.registry.home, settings.registry.project)
    outcome = retrain(settings, registry, live_rows(labelled=600), trigger="drift", reason="test")

    contest = outcome.tournament
    assert contest is not None and contest["comparisons"] == 1 and contest["significance"] == pytest.approx(0.05)
    skipped = {(c["strategy"], c["kind"]): c["skipped"] for c in contest["candidates"]}
    assert skipped[("window", "logistic_regression")] is None
    for strategy in ("window_and_original", "reweighted"):
        assert skipped[(strategy, "logistic_regression")].startswith("the initial data cannot be read")
    assert contest["winner"] == {"strategy": "window", "kind": "logistic_regression"}
    assert "window_and_original/logistic_regression skipped: the initial data cannot be read" in outcome.reason
    assert [v.version for v in registry.versions()] == ["v1", "v2"]


def test_reweighting_is_skipped_without_enough_live_rows(synth_root: Path) -> None:
    settings = synth_settings(synth_root, min_rows=20, min_holdout_rows=1,
                              tournament={"enabled": True, "strategies": ["reweighted", "window"]})
    registry = Registry(settings.registry.home, settings.registry.project)
    outcome = retrain(settings, registry, live_rows(labelled=40, rows=40), trigger="drift", reason="test")
    assert outcome.tournament is not None
    first, second = outcome.tournament["candidates"]
    assert first["skipped"] == "40 live rows to weight by; 50 needed" and first["score"] is None
    assert second["skipped"] is None and outcome.strategy == "window"
    assert outcome.tournament["significance"] == settings.retraining.significance  # one scored: nothing to pay


def test_below_min_rows_the_configured_strategy_decides_alone(synth_root: Path) -> None:
    settings = synth_settings(synth_root, strategy="auto", min_rows=400, tournament={"enabled": True})
    registry = Registry(settings.registry.home, settings.registry.project)
    outcome = retrain(settings, registry, live_rows(labelled=20), trigger="drift", reason="test")
    assert outcome.strategy == "reweighted" and outcome.tournament is None
    assert "tournament" not in registry.get(outcome.candidate).metadata
    waiting = retrain(settings, registry, live_rows(labelled=100), trigger="decay", reason="test")
    assert waiting.status == Outcome.WAITING and waiting.tournament is None


def test_no_suitable_kind_and_unsupervised_tasks_are_refused(synth_root: Path, tmp_path: Path) -> None:
    """Refused when the config loads (driftloop/settings.py), before any retrain could fail on it."""
    with pytest.raises(ConfigError, match=r"retraining.tournament.kinds: cnn takes exactly one image feature"):
        contest_settings(synth_root, kinds=["cnn", "kmeans"])
    with pytest.raises(ConfigError, match=r"retraining.tournament.kinds: kmeans does not learn"):
        contest_settings(synth_root, kinds=["logistic_regression", "kmeans"])
    with pytest.raises(ConfigError, match="retraining.tournament.enabled: a tournament scores candidates on labels"):
        make_settings(tmp_path, task="anomaly", model={"kind": "isolation_forest"},
                      retraining={"tournament": {"enabled": True}})
    assert in_tournament(make_settings(tmp_path), 1000)  # on by default, for tasks with labels...
    assert not in_tournament(make_settings(tmp_path), 100)  # ...once min_rows labelled rows are there
    assert not make_settings(tmp_path, task="anomaly", model={"kind": "isolation_forest"}).retraining.tournament.enabled \
        or not in_tournament(make_settings(tmp_path, task="anomaly", model={"kind": "isolation_forest"}), 1000)


def entry(strategy: str, score: float | None, skipped: str | None = None) -> Entry:
    return Entry(strategy, "gradient_boosting", 0 if skipped else 100, score, skipped)


@pytest.mark.parametrize(("task", "scores", "winner"), [
    ("classification", [0.80, 0.85, 0.83], 1),  # accuracy: the highest
    ("classification", [0.85, 0.85, 0.80], 0),  # a tie: the first listed
    ("regression", [2.0, 1.5, 1.7], 1),  # rmse: the lowest
])
def test_the_winner_is_the_best_scored_and_the_test_is_paid_for(task: str, scores: list[float], winner: int) -> None:
    entries = [entry(s, v) for s, v in zip(["a", "b", "c"], scores, strict=True)]
    contest = Tournament.of(task, [*entries, entry("d", None, "no rows")], 0.05)
    assert contest.winner == winner and contest.comparisons == 3 and contest.significance == pytest.approx(0.05 / 3)
    assert contest.to_dict()["candidates"][3] == {"strategy": "d", "kind": "gradient_boosting", "train_rows": 0,
                                                  "score": None, "skipped": "no rows"}
    assert contest.describe().endswith("d/gradient_boosting skipped: no rows; paired test at significance / 3 = "
                                       "0.0166667)")
    with pytest.raises(ValueError, match="at least one scored"):
        Tournament.of(task, [entry("d", None, "no rows")], 0.05)


@pytest.mark.parametrize(("kind", "task", "features", "why"), [
    ("mlp", "classification", {"x": "numeric", "c": "categorical"}, None),
    ("cnn", "classification", {"img": "image"}, None),
    ("gru", "regression", {"s": "sequence"}, None),
    ("cnn", "classification", {"x": "numeric"}, "cnn takes exactly one image feature"),
    ("lstm", "classification", {"s": "sequence", "x": "numeric"}, "lstm takes exactly one sequence feature"),
    ("gradient_boosting", "classification", {"img": "image"}, "gradient_boosting takes numeric and categorical "
                                                              "features, not image"),
    ("kmeans", "classification", {"x": "numeric"}, "kmeans does not learn task 'classification' (only clustering)"),
])
def test_a_kind_must_suit_the_task_and_the_features(kind: str, task: str, features: dict[str, str],
                                                    why: str | None) -> None:
    assert kind_unfit(kind, task, features) == why


def test_other_kinds_run_on_their_defaults(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, model={"kind": "gradient_boosting", "params": {"max_depth": 2}})
    assert kind_settings(settings, "gradient_boosting") is settings
    other = kind_settings(settings, "logistic_regression")
    assert other.model.kind == "logistic_regression" and other.model.params == {} and other.model.search is None
    assert other.retraining == settings.retraining and settings.model.params == {"max_depth": 2}
