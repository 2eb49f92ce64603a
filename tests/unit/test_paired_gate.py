"""The gate's paired test (training.evaluate.compare): candidate and champion on the same rows,
better by the margin AND significantly, for the retrain gate and the shadow judge alike."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from driftloop.training.evaluate import MCNEMAR, PAIRED_T, compare


def _pairs(both: int, only_candidate: int, only_champion: int, neither: int) -> tuple[list, list, list]:
    """Labels and two prediction lists with the given agreement counts (class 1 is always right)."""
    rows = [(1, 1)] * both + [(0, 1)] * only_candidate + [(1, 0)] * only_champion + [(0, 0)] * neither
    labels = [1] * len(rows)
    return labels, [c for c, _ in rows], [k for _, k in rows]


def test_mcnemar_p_is_the_exact_binomial_tail_of_the_discordant_rows() -> None:
    labels, champion, candidate = _pairs(both=80, only_candidate=10, only_champion=2, neither=8)
    c = compare("classification", labels, champion, candidate, margin=0.01, significance=0.05)
    assert c.test == MCNEMAR and (c.candidate_only, c.champion_only) == (10, 2)
    assert c.p_value == pytest.approx(sum(comb(12, k) for k in (10, 11, 12)) / 2 ** 12)  # 0.0193
    assert c.candidate == pytest.approx(0.90) and c.champion == pytest.approx(0.82)
    assert c.margin_passed and c.significant and c.passed


def test_a_gain_on_a_few_discordant_rows_passes_the_margin_but_not_the_test() -> None:
    labels, champion, candidate = _pairs(both=90, only_candidate=4, only_champion=1, neither=5)
    c = compare("classification", labels, champion, candidate, margin=0.01, significance=0.05)
    assert c.gain == pytest.approx(0.03) and c.margin_passed
    assert c.p_value == pytest.approx((comb(5, 4) + 1) / 32) and not c.significant and not c.passed
    assert "4 rows only the candidate got right, 1 only the champion" in c.describe()


def test_identical_answers_are_never_significant_and_significance_one_switches_the_test_off() -> None:
    labels, champion, candidate = _pairs(both=50, only_candidate=0, only_champion=0, neither=50)
    assert compare("classification", labels, champion, candidate, margin=0.0, significance=0.5).p_value == 1.0
    off = compare("classification", labels, champion, candidate, margin=0.0, significance=1.0)
    assert off.significant and off.passed  # the margin alone, as before the test existed


def test_served_1_and_label_1_0_are_the_same_class() -> None:
    c = compare("classification", [1.0, 0.0, 1.0], [1, 0, 0], [1, 0, 1], margin=0.0, significance=1.0)
    assert (c.champion, c.candidate) == (pytest.approx(2 / 3), 1.0)


def test_regression_pairs_squared_errors() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(size=200)
    champion = y + rng.normal(0, 1.0, 200)
    better = compare("regression", y, champion, y + rng.normal(0, 0.5, 200), margin=0.0, significance=0.05)
    assert better.test == PAIRED_T and better.significant and better.candidate < better.champion
    worse = compare("regression", y, champion, y + rng.normal(0, 2.0, 200), margin=0.0, significance=0.05)
    assert worse.p_value > 0.99 and not worse.passed
    same = compare("regression", y, champion, champion, margin=0.0, significance=0.05)
    assert same.p_value == 1.0


def test_unsupervised_tasks_have_no_paired_test() -> None:
    with pytest.raises(ValueError, match="margin alone"):
        compare("clustering", [0], [0], [0], margin=0.0, significance=0.05)


def test_false_promotions_between_equal_classifiers_stay_under_the_level() -> None:
    """Two classifiers equally good (each right on a row with chance 0.8, independently), judged on
    250 rows, 4,000 times: the margin alone promotes the luckier one often; with the test at 0.05,
    at most 5% of the time (McNemar's exact test is conservative)."""
    rng = np.random.default_rng(12)
    trials, rows = 4000, 250
    margin_only = with_test = 0
    labels = [1] * rows
    for _ in range(trials):
        champion = (rng.random(rows) < 0.8).astype(int)
        candidate = (rng.random(rows) < 0.8).astype(int)
        c = compare("classification", labels, champion, candidate, margin=0.01, significance=0.05)
        margin_only += c.margin_passed
        with_test += c.passed
    assert margin_only / trials > 0.25  # the failure the test is for
    assert with_test / trials <= 0.05


def test_a_retrain_waits_for_min_holdout_rows(champion_home, loans, tmp_path) -> None:  # noqa: ANN001
    import shutil

    from driftloop.models.registry import Registry
    from driftloop.training.retrain import retrain
    from driftloop.vocabulary import Outcome, Trigger
    from tests.conftest import make_settings

    shutil.copytree(champion_home / "bentoml", tmp_path / "bentoml")
    settings = make_settings(tmp_path, retraining={"min_rows": 400, "min_holdout_rows": 150, "significance": 0.05,
                                                   "guard": {"rows": 0}})
    registry = Registry(settings.registry.home, settings.registry.project)
    fresh = loans[loans["period"] == "covariate"].head(480).reset_index(drop=True)
    result = retrain(settings, registry, fresh, trigger=Trigger.DRIFT, reason="test")
    assert result.status == Outcome.WAITING and result.candidate is None
    assert result.reason == "120 held-out rows to judge a candidate on; 150 needed (retraining.min_holdout_rows)"
    assert registry.champion().version == "v1" and [v.version for v in registry.versions()] == ["v1"]


def test_a_follow_up_is_judged_by_non_inferiority() -> None:
    """A follow-up must not be worse by the tolerance (significantly); a first retrain must be better."""
    from driftloop.training.evaluate import NONINFERIOR_MCNEMAR, NONINFERIOR_T, compare

    labels = [1] * 1000
    champion = [1] * 800 + [0] * 200
    # the candidate gets 30 rows the champion missed and misses 20 it got: +1 point, 50 discordant
    candidate = [1] * 780 + [0] * 20 + [1] * 30 + [0] * 170
    superiority = compare("classification", labels, champion, candidate, margin=0.0, significance=0.05)
    assert superiority.p_value > 0.05 and not superiority.passed  # a point on 1,000 rows: not shown better
    follow_up = compare("classification", labels, champion, candidate, margin=0.0, significance=0.05, tolerance=0.01)
    assert follow_up.test == NONINFERIOR_MCNEMAR and follow_up.tolerance == 0.01
    # d = 0.01, se = sqrt((50/1000 - 0.0001) / 1000) = 0.00707: z = (0.01 + 0.01) / se = 2.83
    assert follow_up.p_value == pytest.approx(0.00234, abs=2e-4) and follow_up.passed
    assert "not worse by 0.01: one-sided p" in follow_up.describe()
    # a candidate a point worse is not shown to be no worse than 1 point worse
    worse = [1] * 780 + [0] * 20 + [1] * 10 + [0] * 190
    judged = compare("classification", labels, champion, worse, margin=0.0, significance=0.05, tolerance=0.01)
    assert judged.p_value == pytest.approx(0.5, abs=1e-9) and not judged.passed
    # regression: the tolerance is a share of the champion's MSE
    y = np.zeros(200)
    rng = np.random.default_rng(3)
    base = rng.normal(0, 1, 200)
    same = compare("regression", y, base, base * 0.999, margin=0.0, significance=0.05, tolerance=0.05)
    assert same.test == NONINFERIOR_T and same.passed
    assert not compare("regression", y, base, base * 1.3, margin=0.0, significance=0.05, tolerance=0.05).passed


@pytest.mark.parametrize(("trigger", "test"), [("follow_up", "paired_proportions_noninferiority"),
                                               ("drift", "mcnemar_exact")])
def test_only_a_follow_up_retrain_is_gated_by_non_inferiority(champion_home, loans, tmp_path,  # noqa: ANN001
                                                              trigger: str, test: str) -> None:
    import shutil

    from driftloop.models.registry import Registry
    from driftloop.training.retrain import retrain
    from tests.conftest import make_settings

    shutil.copytree(champion_home / "bentoml", tmp_path / "bentoml")
    settings = make_settings(tmp_path, retraining={"min_rows": 400, "significance": 0.05, "guard": {"rows": 0}})
    registry = Registry(settings.registry.home, settings.registry.project)
    fresh = loans[loans["period"] == "stable"].head(800).reset_index(drop=True)
    result = retrain(settings, registry, fresh, trigger=trigger, reason="test")
    gate = registry.get(result.candidate).metadata["gate"]
    assert gate["test"]["test"] == test
    assert (gate["margin"], gate["test"]["tolerance"]) == ((0.0, 0.01) if trigger == "follow_up" else (0.01, 0.0))
