"""The built-in ``loans`` scenario really contains the drift its docstring promises.

Two-sample tests on the seeded default timeline (the session fixture ``loans``): numeric
features with Kolmogorov-Smirnov, categorical ones with a chi-squared test of independence
between period and category. The seed is fixed, so each p-value is a fixed number; the
thresholds are the usual "clearly no evidence" (p > 0.01) and "overwhelming evidence"
(p < 1e-6) levels for samples of thousands of rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency, ks_2samp

from driftloop.training.scenarios import (
    DEBT_SHIFT,
    FEATURES,
    RATE_RISE,
    SCENARIOS,
    SUB_POPULATIONS,
    TARGET,
    TIMESTAMP,
    Period,
    Population,
    Rule,
    default_probability,
    generate,
    grouped_arrival_timeline,
    partial_covariate_timeline,
    scenario_frame,
)

NUMERIC = [f for f, kind in FEATURES.items() if kind == "numeric"]
CATEGORICAL = [f for f, kind in FEATURES.items() if kind == "categorical"]
SMALL = {"train_rows": 200, "window": 50}


def period(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    part = frame[frame["period"] == name]
    assert len(part) > 0, f"period {name!r} is empty"
    return part


def p_value(a: pd.DataFrame, b: pd.DataFrame, feature: str) -> float:
    """Two-sample p-value that ``feature`` has the same distribution in ``a`` and ``b``."""
    if FEATURES[feature] == "numeric":
        return float(ks_2samp(a[feature], b[feature]).pvalue)
    counts = pd.crosstab(
        np.r_[np.zeros(len(a), dtype=int), np.ones(len(b), dtype=int)],
        np.r_[a[feature].to_numpy(), b[feature].to_numpy()],
    )
    return float(chi2_contingency(counts).pvalue)


def test_default_timeline_has_every_period(loans: pd.DataFrame) -> None:
    assert list(dict.fromkeys(loans["period"])) == ["train", "stable", "covariate", "concept"]
    assert set(FEATURES) | {TARGET, TIMESTAMP, "period"} == set(loans.columns)
    assert set(loans[TARGET].unique()) == {0, 1}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_stable_period_matches_training(loans: pd.DataFrame, feature: str) -> None:
    assert p_value(period(loans, "train"), period(loans, "stable"), feature) > 0.01


@pytest.mark.parametrize("feature", ["income", "age", "debt_ratio", "credit_lines", "employment"])
def test_covariate_period_shifts_the_segment_features(loans: pd.DataFrame, feature: str) -> None:
    assert p_value(period(loans, "train"), period(loans, "covariate"), feature) < 1e-6


def test_covariate_period_keeps_region(loans: pd.DataFrame) -> None:
    assert p_value(period(loans, "train"), period(loans, "covariate"), "region") > 0.01


def test_covariate_shift_goes_the_documented_way(loans: pd.DataFrame) -> None:
    """Younger, lower income, fewer credit lines, more self-employed."""
    train, cov = period(loans, "train"), period(loans, "covariate")
    assert cov["age"].median() < train["age"].median()
    assert cov["income"].median() < train["income"].median()
    assert cov["credit_lines"].mean() < train["credit_lines"].mean()
    share = lambda f: (f["employment"] == "self_employed").mean()  # noqa: E731
    assert share(cov) > share(train)
    assert (cov["age"] < 25).any() and not (train["age"] < 25).any()


@pytest.mark.parametrize("feature", list(FEATURES))
def test_concept_period_has_the_covariate_inputs(loans: pd.DataFrame, feature: str) -> None:
    assert p_value(period(loans, "covariate"), period(loans, "concept"), feature) > 0.01


def test_rate_rise_changes_the_true_default_probability(loans: pd.DataFrame) -> None:
    rows = period(loans, "concept")[list(FEATURES)]
    before = default_probability(rows, Rule())
    after = default_probability(rows, RATE_RISE)
    assert before.shape == after.shape == (len(rows),)
    assert np.all((before > 0) & (before < 1)) and np.all((after > 0) & (after < 1))
    # Same rows, different rule: the probability moves by a large amount on average
    # (a fifth of the whole [0, 1] scale), not just a few rows at the edges.
    assert np.mean(np.abs(after - before)) > 0.2
    # The documented directions: the guarantee helps the self-employed, east becomes a penalty.
    self_emp = rows["employment"].to_numpy() == "self_employed"
    east = rows["region"].to_numpy() == "east"
    assert after[self_emp].mean() < before[self_emp].mean() - 0.2
    # East keeps most of its risk while every other region's drops with the lower intercept.
    assert after[east].mean() - before[east].mean() > after[~east].mean() - before[~east].mean() + 0.2


def _loglik(frame: pd.DataFrame, rule: Rule) -> float:
    p = default_probability(frame, rule)
    y = frame[TARGET].to_numpy()
    return float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_labels_follow_each_period_s_rule(loans: pd.DataFrame) -> None:
    """Covariate labels are explained better by the default Rule, concept labels by RATE_RISE."""
    cov, con = period(loans, "covariate"), period(loans, "concept")
    assert _loglik(cov, Rule()) > _loglik(cov, RATE_RISE)
    assert _loglik(con, RATE_RISE) > _loglik(con, Rule())


def _rate_differs(a: pd.DataFrame, b: pd.DataFrame) -> float:
    counts = pd.crosstab(
        np.r_[np.zeros(len(a), dtype=int), np.ones(len(b), dtype=int)],
        np.r_[a[TARGET].to_numpy(), b[TARGET].to_numpy()],
    )
    return float(chi2_contingency(counts).pvalue)


def test_observed_default_rate_changes_for_the_same_inputs(loans: pd.DataFrame) -> None:
    """The inputs of covariate and concept are identically distributed (tested above), so a
    different default rate, overall and inside fixed input groups, is a change of P(y | x)."""
    cov, con = period(loans, "covariate"), period(loans, "concept")
    assert _rate_differs(cov, con) < 1e-6
    for column, value in [("employment", "self_employed"), ("region", "north"), ("region", "south"), ("region", "west")]:
        a, b = cov[cov[column] == value], con[con[column] == value]
        assert _rate_differs(a, b) < 1e-6, (column, value)
    # Self-employed borrowers become much safer; east turns from the safest region into the riskiest
    # (its own rate moves less, the intercept drop offsets its penalty, so it is compared by rank).
    se = lambda f: f.loc[f["employment"] == "self_employed", TARGET].mean()  # noqa: E731
    assert se(con) < se(cov)
    by_region_cov = cov.groupby("region")[TARGET].mean()
    by_region_con = con.groupby("region")[TARGET].mean()
    assert by_region_cov.idxmin() == "east"
    assert by_region_con.idxmax() == "east"


def test_same_seed_gives_an_identical_frame() -> None:
    pd.testing.assert_frame_equal(scenario_frame("loans", seed=7, **SMALL), scenario_frame("loans", seed=7, **SMALL))


def test_different_seed_gives_different_rows() -> None:
    a = scenario_frame("loans", seed=7, **SMALL)
    b = scenario_frame("loans", seed=8, **SMALL)
    assert a.shape == b.shape
    assert list(a["period"]) == list(b["period"])
    for feature in NUMERIC:
        assert not np.array_equal(a[feature].to_numpy(), b[feature].to_numpy()), feature


def test_sizes_override_the_timeline() -> None:
    frame = scenario_frame("loans", seed=1, train_rows=120, window=30, stable=1, covariate=2, concept=3)
    assert frame["period"].value_counts().to_dict() == {"train": 120, "stable": 30, "covariate": 60, "concept": 90}


def test_timestamps_strictly_increase(loans: pd.DataFrame) -> None:
    stamps = loans[TIMESTAMP]
    assert stamps.is_unique and stamps.is_monotonic_increasing
    assert (stamps.diff().iloc[1:] > pd.Timedelta(0)).all()


def test_unknown_scenario_names_the_available_ones() -> None:
    with pytest.raises(ValueError, match="unknown scenario 'mortgages'") as info:
        scenario_frame("mortgages")
    for name in SCENARIOS:
        assert name in str(info.value)


# -- the policy benchmark's new timelines (bench/policy.py) ------------------------------------------
def best_accuracy(frame: pd.DataFrame) -> float:
    """The accuracy of the generator's own rule (a model that knew it): the mean of max(p, 1 - p)."""
    p = default_probability(frame, Rule())
    return float(np.maximum(p, 1 - p).mean())


def test_grouped_arrival_cycles_sub_populations_in_blocks_under_one_rule() -> None:
    parts = grouped_arrival_timeline(window=100, windows=23, block_rows=(300, 200, 500, 250))
    live = parts[1:]
    assert parts[0] == Period("train", 3000)  # the usual mixed population
    assert sum(p.rows for p in live) == 23 * 100
    assert [p.rows for p in live] == [300, 200, 500, 250, 300, 200, 500, 50]  # the last block is cut
    names = list(SUB_POPULATIONS)
    assert [p.population for p in live] == [SUB_POPULATIONS[names[i % 3]] for i in range(len(live))]
    assert [p.name for p in live][:4] == ["younger-1", "middle-2", "older-3", "younger-4"]
    assert all(isinstance(p, Period) and p.rule == Rule() for p in parts)  # the concept never changes


def test_grouped_blocks_look_drifted_but_their_union_is_the_training_population() -> None:
    frame = generate([Period("train", 6000)] + [Period(name, 6000, population=pop)
                                               for name, pop in SUB_POPULATIONS.items()], seed=4)
    train, live = period(frame, "train"), frame[frame["period"] != "train"]
    for name in SUB_POPULATIONS:  # each block alone: its ages are far from the training mix...
        assert p_value(train, period(frame, name), "age") < 1e-6, name
    for name in ("younger", "older"):  # ...and so are the incomes of the outer bands
        assert p_value(train, period(frame, name), "income") < 1e-6, name
    # Equal shares of every sub-population: close to the training population, feature by feature.
    assert abs(live["age"].mean() - train["age"].mean()) < 0.5
    assert live["income"].median() == pytest.approx(train["income"].median(), rel=0.05)
    assert live["debt_ratio"].mean() == pytest.approx(train["debt_ratio"].mean(), abs=0.01)
    shares = lambda f: f["employment"].value_counts(normalize=True)  # noqa: E731
    assert (shares(live) - shares(train)).abs().max() < 0.02
    # The younger default less predictably: the true rule's best accuracy is lower there.
    best = {name: best_accuracy(period(frame, name)) for name in SUB_POPULATIONS}
    assert best["younger"] < best["middle"] < best["older"]


@pytest.mark.parametrize("rows", [(), (1000, 0)])
def test_grouped_arrival_refuses_empty_blocks(rows: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="block_rows"):
        grouped_arrival_timeline(block_rows=rows)


def test_partial_covariate_shift_moves_two_of_the_six_features() -> None:
    assert len(FEATURES) == 6  # the loans world: "2 of 7" in the issue is 2 of 6 here
    parts = partial_covariate_timeline(train_rows=4000, window=1000, stable=1, shifted=4)
    assert [(p.name, p.rows) for p in parts] == [("train", 4000), ("stable", 1000), ("partial", 4000)]
    assert all(p.rule == Rule() for p in parts)  # the rule is unchanged
    frame = generate(parts, seed=6)
    train, shifted = period(frame, "train"), period(frame, "partial")
    moved = {f for f in FEATURES if p_value(train, shifted, f) < 1e-6}
    assert moved == {"debt_ratio", "credit_lines"}
    assert all(p_value(train, shifted, f) > 0.01 for f in set(FEATURES) - moved)
    assert shifted["debt_ratio"].mean() > train["debt_ratio"].mean()
    assert shifted["credit_lines"].mean() < train["credit_lines"].mean()


def test_partial_covariate_shift_costs_about_three_points_even_to_the_true_rule() -> None:
    """Riskier borrowers are harder to tell apart: the best possible accuracy (the generator's own
    probabilities) falls by 2 to 4 points (DEBT_SHIFT's docstring: the first model loses about 3)."""
    before, after = (best_accuracy(generate([Period("x", 40_000, population=pop)], seed=8))
                     for pop in (Population(), DEBT_SHIFT))
    drop = before - after
    assert 0.02 < drop < 0.04
