"""Built-in data scenarios with drift you can control.

The ``loans`` scenario is a credit-default classifier's world, replayed in periods:

``train``     the history the first model learns from;
``stable``    live traffic from the same distribution (nothing should fire);
``covariate`` a new customer segment arrives: younger, lower income, more self-employed,
              fewer credit lines. The label rule is unchanged, but the young segment carries a
              risk the training data never showed, so the first model is wrong there;
``concept``   the same inputs, a different rule: a state guarantee takes the extra risk of
              young and self-employed borrowers away, rates rise so debt hurts far more, and the
              east region's advantage becomes a penalty. Only labels reveal it.

The loans world has 6 features (income, age, debt_ratio, credit_lines, region, employment).

Everything is generated from a seed, so every run sees the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from driftloop.builtin import SCENARIO_COLUMNS, ScenarioColumns

LOANS = SCENARIO_COLUMNS["loans"]
FEATURES: dict[str, str] = LOANS.features
TARGET = LOANS.target
TIMESTAMP = LOANS.timestamp
REGIONS = ("north", "south", "east", "west")
EMPLOYMENT = ("salaried", "self_employed", "unemployed")


@dataclass(frozen=True)
class Population:
    """Who applies: the input distribution of a period."""

    income_median: float = 52_000.0
    age_low: float = 26.0
    age_high: float = 66.0
    debt_alpha: float = 2.0
    debt_beta: float = 5.0
    credit_lines_mean: float = 6.0
    employment_p: tuple[float, float, float] = (0.75, 0.18, 0.07)


@dataclass(frozen=True)
class Rule:
    """How default depends on the inputs: the concept of a period."""

    debt_weight: float = 5.0
    east_effect: float = -0.8
    young_penalty: float = 3.0  # applied below age 25: invisible while nobody that young applies
    self_employed_effect: float = 0.4
    intercept: float = -1.2


@dataclass(frozen=True)
class Period:
    name: str
    rows: int
    population: Population = field(default_factory=Population)
    rule: Rule = field(default_factory=Rule)


SEGMENT = Population(
    income_median=40_000.0,
    age_low=18.0,
    age_high=40.0,
    debt_alpha=3.0,
    debt_beta=4.0,
    credit_lines_mean=2.5,
    employment_p=(0.45, 0.40, 0.15),
)
RATE_RISE = Rule(debt_weight=12.0, east_effect=3.0, young_penalty=0.0,
                 self_employed_effect=-3.0, intercept=-3.0)


def loans_periods(train_rows: int = 3000, window: int = 500,
                  stable: int = 2, covariate: int = 4, concept: int = 4) -> list[Period]:
    """The default timeline of the ``loans`` scenario, live periods in whole windows."""
    return [
        Period("train", train_rows),
        Period("stable", stable * window),
        Period("covariate", covariate * window, population=SEGMENT),
        Period("concept", concept * window, population=SEGMENT, rule=RATE_RISE),
    ]


def _inputs(pop: Population, n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({
        "income": np.round(rng.lognormal(np.log(pop.income_median), 0.35, n), 2),
        "age": np.round(rng.uniform(pop.age_low, pop.age_high, n), 1),
        "debt_ratio": np.round(rng.beta(pop.debt_alpha, pop.debt_beta, n), 4),
        "credit_lines": rng.poisson(pop.credit_lines_mean, n).astype(float),
        "region": rng.choice(REGIONS, n),
        "employment": rng.choice(EMPLOYMENT, n, p=list(pop.employment_p)),
    })


def default_probability(x: pd.DataFrame, rule: Rule) -> np.ndarray:
    """The true probability of default under ``rule`` (the generator's ground truth)."""
    logit = (
        rule.intercept
        + rule.debt_weight * (x["debt_ratio"].to_numpy() - 0.3)
        - 2.0 * np.log(x["income"].to_numpy() / 45_000.0)
        - 0.12 * (x["credit_lines"].to_numpy() - 5.0)
        + np.where(x["region"].to_numpy() == "east", rule.east_effect, 0.0)
        + np.where(x["employment"].to_numpy() == "unemployed", 1.5, 0.0)
        + np.where(x["employment"].to_numpy() == "self_employed", rule.self_employed_effect, 0.0)
        + np.where(x["age"].to_numpy() < 25.0, rule.young_penalty, 0.0)
    )
    return 1.0 / (1.0 + np.exp(-logit))


@dataclass(frozen=True)
class Scenario:
    """A built-in scenario: its columns (:mod:`driftloop.builtin`), the model kind that suits it,
    and its frame."""

    columns: ScenarioColumns
    frame: Callable[..., pd.DataFrame]  # (seed, **sizes) -> every period, in time order

    @property
    def features(self) -> dict[str, str]:
        return self.columns.features

    @property
    def target(self) -> str:
        return self.columns.target

    @property
    def timestamp(self) -> str:
        return self.columns.timestamp

    @property
    def kind(self) -> str:
        return self.columns.kind


def _loans_frame(seed: int = 42, **sizes: int) -> pd.DataFrame:
    return generate(loans_periods(**sizes), seed=seed)


def _scenarios() -> dict[str, Scenario]:
    from driftloop.training import media  # images and sequences (see training/media.py)

    frames = {"loans": _loans_frame, "digits": media.digits_frame, "sensors": media.sensors_frame}
    return {name: Scenario(SCENARIO_COLUMNS[name], frames[name]) for name in SCENARIO_COLUMNS}


SCENARIOS = _scenarios()


def scenario_frame(name: str, seed: int = 42, **sizes: int) -> pd.DataFrame:
    """The named built-in scenario as one frame; ``sizes`` override the default timeline."""
    try:
        scenario = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; available: {sorted(SCENARIOS)}") from None
    return scenario.frame(seed=seed, **sizes)


# -- timelines for the policy benchmark (bench/policy.py) ---------------------------------------
# Each returns the ``train`` period followed by live periods in whole windows; period names mark
# where the world changed. The default ``loans`` timeline above is unchanged.

RATE_SHOCK = Rule(debt_weight=12.0, east_effect=3.0, young_penalty=0.0, self_employed_effect=-3.0, intercept=-1.2)
"""A concept change on the training population itself: rates rise so debt hurts far more, the east
region turns risky, a guarantee removes the self-employed risk; the inputs do not move, so only
labels reveal it (the first model's accuracy falls from about 0.81 to 0.71)."""


@dataclass(frozen=True)
class Ramp:
    """Gradual drift: each row comes from ``after`` with a probability rising linearly across the
    ramp (from ~0 at its first row to 1 at its last), otherwise from ``before``."""

    name: str
    rows: int
    before: Period
    after: Period


def generate(parts: list[Period | Ramp], seed: int = 42, start: pd.Timestamp | None = None,
             seconds_per_row: float = 60.0) -> pd.DataFrame:
    """Rows of every part in time order, with features, label, timestamp and period name; a
    :class:`Ramp` part mixes two periods row by row (gradual drift)."""
    rng = np.random.default_rng(seed)
    start = start if start is not None else pd.Timestamp("2026-01-01T00:00:00Z")
    frames = []
    for part in parts:
        if isinstance(part, Ramp):
            old = _inputs(part.before.population, part.rows, rng)
            new = _inputs(part.after.population, part.rows, rng)
            from_new = rng.uniform(size=part.rows) < np.linspace(1.0 / part.rows, 1.0, part.rows)
            x = old.copy()
            x.loc[from_new] = new.loc[from_new]
            p = np.where(from_new, default_probability(new, part.after.rule),
                         default_probability(old, part.before.rule))
        else:
            x = _inputs(part.population, part.rows, rng)
            p = default_probability(x, part.rule)
        x[TARGET] = (rng.uniform(size=part.rows) < p).astype(int)
        x["period"] = part.name
        frames.append(x)
    df = pd.concat(frames, ignore_index=True)
    df[TIMESTAMP] = start + pd.to_timedelta(np.arange(len(df)) * seconds_per_row, unit="s")
    return df


def stationary_timeline(train_rows: int = 3000, rows: int = 100_000) -> list[Period | Ramp]:
    """Nothing changes: ``rows`` of live traffic from the training distribution."""
    return [Period("train", train_rows), Period("stable", rows)]


def covariate_shift_timeline(train_rows: int = 3000, window: int = 500, stable: int = 4,
                             shifted: int = 16) -> list[Period | Ramp]:
    """An abrupt covariate shift: the new customer segment arrives at once (the rule is unchanged)."""
    return [Period("train", train_rows), Period("stable", stable * window),
            Period("covariate", shifted * window, population=SEGMENT)]


def concept_change_timeline(train_rows: int = 3000, window: int = 500, stable: int = 4,
                            changed: int = 16) -> list[Period | Ramp]:
    """An abrupt concept change (:data:`RATE_SHOCK`) with the same inputs: only labels show it."""
    return [Period("train", train_rows), Period("stable", stable * window),
            Period("concept", changed * window, rule=RATE_SHOCK)]


def gradual_drift_timeline(train_rows: int = 3000, window: int = 500, stable: int = 4, ramp: int = 8,
                           drifted: int = 12) -> list[Period | Ramp]:
    """A gradual concept drift: rows follow :data:`RATE_SHOCK` with a share rising over ``ramp`` windows."""
    before, after = Period("stable", 0), Period("drifted", 0, rule=RATE_SHOCK)
    return [Period("train", train_rows), Period("stable", stable * window),
            Ramp("ramp", ramp * window, before, after), Period("drifted", drifted * window, rule=RATE_SHOCK)]


def recurring_drift_timeline(train_rows: int = 3000, window: int = 500, stable: int = 4, episode: int = 8,
                             episodes: int = 2) -> list[Period | Ramp]:
    """Recurring drift: the concept switches to :data:`RATE_SHOCK` and back, ``episodes`` times."""
    parts: list[Period | Ramp] = [Period("train", train_rows), Period("stable", stable * window)]
    for i in range(1, episodes + 1):
        parts += [Period(f"shock-{i}", episode * window, rule=RATE_SHOCK), Period(f"calm-{i}", episode * window)]
    return parts


# The new kinds of the benchmark (issue 12). Long post-change periods, where follow-up retrains can
# pay, need no timeline of their own: covariate_shift_timeline and concept_change_timeline with 40+
# changed windows (bench/policy.py's long-* cases).

# Sub-populations of the training population, by age band, whose union is close to it: the
# youngest earn less and borrow more (and default less predictably: the first model's accuracy is
# about 0.74 on them against 0.81 overall), the oldest earn more and borrow less (about 0.87).
YOUNGER = Population(income_median=42_000.0, age_low=26.0, age_high=40.0, debt_alpha=2.4,
                     employment_p=(0.65, 0.25, 0.10))
MIDDLE = Population(income_median=54_000.0, age_low=40.0, age_high=53.0)
OLDER = Population(income_median=62_000.0, age_low=53.0, age_high=66.0, debt_alpha=1.7,
                   employment_p=(0.85, 0.11, 0.04))
SUB_POPULATIONS = {"younger": YOUNGER, "middle": MIDDLE, "older": OLDER}


def grouped_arrival_timeline(train_rows: int = 3000, window: int = 500, windows: int = 60,
                             block_rows: tuple[int, ...] = (3000, 2000, 4000, 2500, 3500)) -> list[Period | Ramp]:
    """A stationary concept whose rows arrive grouped: the first model learns the usual mixed
    population, then live rows come in blocks (sizes cycling through ``block_rows``), each block
    from one of :data:`SUB_POPULATIONS` in turn (younger, middle, older, younger, ...), ``windows``
    windows in all. Nothing changes: the rule is the same throughout, and the union of the blocks
    is close to the training population, but a window inside a block looks drifted (age, income,
    employment, debt) and a block of the younger has lower accuracy than average. This is data
    sorted by a key that follows a sub-population (a survey by year and record id): the right
    answer is no harmful promotion. A model retrained on one block's rows knows only that block."""
    if not block_rows or min(block_rows) < 1:
        raise ValueError(f"block_rows: positive row counts, got {block_rows!r}")
    names = list(SUB_POPULATIONS)
    parts: list[Period | Ramp] = [Period("train", train_rows)]
    left, i = windows * window, 0
    while left > 0:
        rows = min(block_rows[i % len(block_rows)], left)
        name = names[i % len(names)]
        parts.append(Period(f"{name}-{i + 1}", rows, population=SUB_POPULATIONS[name]))
        left, i = left - rows, i + 1
    return parts


DEBT_SHIFT = Population(debt_alpha=2.3, credit_lines_mean=5.0)
"""A covariate shift of 2 of the loans world's 6 features: more debt (debt_ratio Beta(2.3, 5)
instead of Beta(2, 5)) and fewer credit lines (Poisson mean 5 instead of 6); the other four keep
their distribution and the rule is unchanged. Riskier borrowers are harder to tell apart: the
first model's accuracy falls by about 3 points (0.81 to 0.78), and a model trained on 10,000 rows
of the shifted world wins back less than half a point of it."""


def partial_covariate_timeline(train_rows: int = 3000, window: int = 500, stable: int = 4,
                               shifted: int = 16) -> list[Period | Ramp]:
    """A partial covariate shift (:data:`DEBT_SHIFT`: 2 of 6 features move, the rule does not),
    abrupt, after ``stable`` windows."""
    return [Period("train", train_rows), Period("stable", stable * window),
            Period("partial", shifted * window, population=DEBT_SHIFT)]
