"""The retrain job's gate and its steps (training/retrain.py), without fitting anything: the
verdict (:class:`GateResult`), the guard set's figures, the decision and the acts that follow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop.settings import GuardConfig
from driftloop.training import scenarios as sc
from driftloop.training.retrain import (
    GateResult,
    GuardResult,
    Plan,
    _labelled,
    act,
    decide,
    guard_check,
    outcome_reason,
)
from driftloop.vocabulary import Outcome

from tests.conftest import make_settings

GATE_KEYS = ["metric", "candidate", "champion", "champion_version", "margin", "holdout_rows", "holdout_source",
             "weighted", "margin_passed", "guard", "passed", "strategy", "test",  # test: the paired test (issue 12)
             "evaluation"]  # the held-out rows' record and both models' metrics on them (issue 16)
GUARD_KEYS = ["rows", "metric", "candidate", "champion", "drop", "max_drop", "passed", "source"]


def guard(drop: float, max_drop: float = 0.04) -> GuardResult:
    return GuardResult(300, "accuracy", 0.8 - drop, 0.8, drop, max_drop, "carved")


def gate(margin_passed: bool = True, guard_result: GuardResult | None = None) -> GateResult:
    return GateResult("accuracy", 0.85, 0.80, "v1", 0.01, 150, "window", False, margin_passed, guard_result,
                      "window")


def test_gate_metadata_keeps_its_keys_and_order() -> None:
    meta = gate(guard_result=guard(0.01)).to_metadata()
    assert list(meta) == GATE_KEYS and list(meta["guard"]) == GUARD_KEYS
    assert meta["passed"] is True and meta["guard"]["passed"] is True and meta["champion_version"] == "v1"
    assert gate().to_metadata()["guard"] is None


@pytest.mark.parametrize(("margin_passed", "drop", "passed", "why_not"), [
    (True, None, True, []),
    (True, 0.04, True, []),  # exactly max_drop passes
    (False, None, False, ["not better by the margin"]),
    (True, 0.05, False, ["worse on the guard set by 0.0500 (more than 0.0400)"]),
    (False, 0.05, False, ["not better by the margin", "worse on the guard set by 0.0500 (more than 0.0400)"]),
])
def test_gate_passes_only_on_the_margin_and_the_guard(margin_passed: bool, drop: float | None, passed: bool,
                                                      why_not: list[str]) -> None:
    result = gate(margin_passed, None if drop is None else guard(drop))
    assert result.passed is passed and result.why_not == why_not
    assert decide(result, shadow=False) == (Outcome.PROMOTED if passed else Outcome.REJECTED)
    assert decide(result, shadow=True) == (Outcome.SHADOW if passed else Outcome.REJECTED)


def test_summary_and_reasons_name_both_scores_and_the_guard() -> None:
    result = gate(False, guard(0.05))
    summary = result.summary("v2", "the newest 150 labelled rows", "strategy window")
    assert summary == ("accuracy on the newest 150 labelled rows: candidate v2 0.8500, champion v1 0.8000, "
                       "margin 0.0100; on the guard set (300 rows): candidate 0.7500, champion 0.8000, "
                       "max drop 0.0400 [strategy window]")
    rejected = outcome_reason(Outcome.REJECTED, result, summary, 300)
    assert rejected.startswith("not better by the margin and worse on the guard set by 0.0500")
    assert outcome_reason(Outcome.PROMOTED, gate(), "s", 300) == "s"
    assert outcome_reason(Outcome.SHADOW, gate(), "s", 300) == (
        "passed the gate; scored beside v1 until 300 of the live rows it scores have labels: s")


@pytest.mark.parametrize(("task", "candidate", "champion", "drop"), [
    ("classification", 0.78, 0.80, 0.02),  # accuracy: higher is better
    ("regression", 12.0, 10.0, 2.0),  # rmse: lower is better
    ("regression", 9.0, 10.0, -1.0),
])
def test_guard_drop_points_the_way_of_the_metric(task: str, candidate: float, champion: float, drop: float) -> None:
    scores = {"candidate": candidate, "champion": champion}

    def score(model: Any, rows: pd.DataFrame, weights: np.ndarray | None) -> float:
        assert weights is None and len(rows) == 5  # the guard set is never weighted
        return scores[model]

    rows = pd.DataFrame({"x": range(5)})
    result = guard_check(task, GuardConfig(rows=5, max_drop=0.5), rows, score, "candidate", "champion")
    assert result is not None and result.drop == pytest.approx(drop) and result.source == "carved"
    assert result.passed is (drop <= 0.5)
    assert guard_check(task, GuardConfig(), None, score, "candidate", "champion") is None
    filed = guard_check(task, GuardConfig(path=Path("guard.csv")), rows, score, "candidate", "champion")
    assert filed is not None and filed.source == "file"


class FakeRegistry:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []

    def promote(self, version: str, *, actor: str, reason: str) -> None:
        self.calls.append(("promote", version, actor, reason))

    def set_shadow(self, version: str, *, actor: str, reason: str) -> None:
        self.calls.append(("shadow", version, actor, reason))


@pytest.mark.parametrize(("status", "expected"), [
    (Outcome.PROMOTED, [("promote", "v2", "monitor", "why")]),
    (Outcome.SHADOW, [("shadow", "v2", "monitor", "why")]),
    (Outcome.REJECTED, []),
])
def test_act_touches_the_champion_only_when_promoted(status: Outcome, expected: list[tuple[str, ...]]) -> None:
    registry = FakeRegistry()
    act(registry, status, "v2", actor="monitor", reason="why")  # type: ignore[arg-type]
    assert registry.calls == expected


def test_plan_reports_what_it_trains_on() -> None:
    train, holdout, base = (pd.DataFrame({"x": range(n)}) for n in (30, 10, 100))
    plan = Plan("window_and_original", train, holdout, "window", "the newest 10 labelled rows",
                {"original": 100, "window": 30}, base=base)
    assert plan.trained_rows == 130
    assert plan.training_data("auto", "strategy auto") == {
        "strategy": "window_and_original", "configured": "auto", "choice": "strategy auto",
        "rows": {"original": 100, "window": 30}, "weights": None,
        "holdout": {"source": "window", "rows": 10, "weighted": False}}


def test_labels_stay_what_they_are(tmp_path: Path) -> None:
    """Classes 1.0 are 1 (plain_label); string classes stay strings; a regression target stays float."""
    frame = sc.generate([sc.Period("stable", 6)], seed=1)
    classes = frame.astype({sc.TARGET: float})
    assert _labelled(make_settings(tmp_path), classes)[sc.TARGET].dtype == np.int64
    named = frame.assign(**{sc.TARGET: frame[sc.TARGET].map({0: "no", 1: "yes"})})
    assert set(_labelled(make_settings(tmp_path), named)[sc.TARGET]) <= {"no", "yes"}
    regression = make_settings(tmp_path, task="regression", model={"kind": "linear_regression"})
    assert _labelled(regression, classes)[sc.TARGET].dtype == np.float64


def test_the_holdout_record_names_its_rows_whatever_their_order(tmp_path: Path) -> None:
    """What the gate scores both models on (issue 16): the rows, where they came from (prediction
    ids when live) and a fingerprint that is the same for the same rows in any order, and only for them."""
    settings = make_settings(tmp_path)
    frame = sc.generate([sc.Period("stable", 12)], seed=1)

    def record(holdout: pd.DataFrame, source: str = "window", **ids: Any) -> dict[str, Any]:
        plan = Plan("window", frame.iloc[:2], holdout, source, "the newest 10 labelled rows", {"window": 2}, **ids)
        return plan.holdout_record(settings, 2)

    live = record(frame.iloc[2:], holdout_ids=np.arange(103, 113))
    assert (live["set"], live["rows"], live["weighted"]) == ("holdout", 10, False)
    assert live["source"] == {"data": "live", "name": "the prediction log", "prediction_ids": [103, 112]}
    assert live["description"] == "the newest 10 labelled rows (live, prediction ids 103..112)"
    assert live["averages"]["f1"] == "macro"
    shuffled = record(frame.iloc[2:].sample(frac=1.0, random_state=0))
    assert shuffled["fingerprint"] == live["fingerprint"] and "prediction_ids" not in shuffled["source"]
    assert record(frame.iloc[1:11])["fingerprint"] != live["fingerprint"]
    assert record(frame.iloc[2:], "initial")["source"] == {"data": "initial", "name": "scenario loans"}
