"""The retraining job and its gate.

Recipe: pick what the candidate learns from and what it is judged on (the *strategy*, below) ->
fit the candidate -> score candidate and champion on the held-out rows, both through their ONNX
graphs (the code path that serves them) -> score both on the fixed guard set
(``training/guard.py``) -> register the candidate with the gate's figures in its metadata ->
promote it only if, on the same held-out rows (at least ``min_holdout_rows`` of them, else the
job waits), it is better by ``margin`` AND significantly so (a one-sided paired test at
``significance``: :func:`training.evaluate.compare`), AND no worse than ``guard.max_drop`` on the
guard set (otherwise it stays in the registry as rejected, with the reason); with
``retraining.shadow`` it becomes the shadow instead, judged later on live labels by the same rule.
Promotion is the last step, so a job that fails anywhere leaves the champion untouched.

``fresh`` is every row of the flagged streak in log order: the features, the target (None/NaN
where no label has arrived yet), ``created_at`` and the timestamp column if configured. Only
labelled rows are trained and gated on; a frame of labelled rows alone works the same. The
strategies (``retraining.strategy``):

``window``               the labelled rows since the drift began; the newest ``holdout_fraction``
                         of them are held out for the gate. Needs ``min_rows`` labelled rows.
``window_and_original``  the same holdout; the candidate learns the window's other labelled rows
                         AND the initial data (:func:`training.train.initial_frame`, guard rows
                         excluded), original first; its validation rows stay the newest window ones.
``reweighted``           covariate shift without enough labels: the initial data, each row weighted
                         by ``p_live(x) / p_initial(x)`` (``training/reweight.py``; the live rows
                         are the streak's inputs, labelled or not). Gate: every labelled live row
                         when there are at least :data:`LIVE_GATE_ROWS` (none was trained on),
                         else the newest ``holdout_fraction`` of the initial rows, held out of the
                         fit and scored with the same weights (weighted primary metric). The new
                         version's drift reference is the live inputs it was adapted to.
``auto``                 ``window`` with ``min_rows`` labelled rows; without them ``reweighted``
                         for a drift trigger (covariate shift), else wait: a decay (the rule
                         changed) cannot be fixed by reweighting the old labels.

The candidate's metadata records ``gate`` (:class:`GateResult`: metric, both scores, held-out rows
and where they came from, margin, ``guard`` figures, ``passed``; ``evaluation``: the held-out rows'
record, :meth:`Plan.holdout_record`, with every metric of both models on them: unlike the two
versions' validation figures, a pair measured on the same rows) and ``training_data`` (strategy,
rows per source, importance-weight summary); its own ``evaluation`` (``training/train.py``) names
its validation rows, with their prediction ids when they are live. :class:`RetrainOutcome` carries
the same, and both records (``validation``, ``holdout``) for the retrain events. Neural kinds fine-tune from
the champion when ``model.warm_start`` is set, whatever the strategy.

**A tournament** (``retraining.tournament``, :func:`run_tournament`) instead of one guess: with
``min_rows`` labelled rows (supervised tasks), one candidate per configured strategy and model kind,
all judged on the same held-out rows, the window's newest ``holdout_fraction``, carved before the
strategies differ (:func:`window_split`; ``reweighted`` then learns from all the initial data and is
judged on those window rows too). The best by the primary metric goes to the gate, whose paired test
runs at ``significance / n`` for ``n`` candidates scored (Bonferroni; see :class:`Tournament` for
why that pays for picking the winner on the very rows it is judged on). Only the winner is
registered; every candidate's figures, and each skipped one's reason, go in its
``metadata["tournament"]`` and :attr:`RetrainOutcome.tournament`. Below ``min_rows`` labelled rows
there is no tournament: ``retraining.strategy`` decides alone, as without one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from driftloop.models.errors import ConfigError, RegistryError, SchemaError
from driftloop.models.families import expected_anomaly_rate, unfit
from driftloop.models.onnx_model import GraphOutput, OnnxModel
from driftloop.models.registry import MODEL_FILE, Champion, Registry
from driftloop.models.schema import SUPERVISED, FeatureSchema, plain_label
from driftloop.training import evaluate
from driftloop.training.reweight import importance_weights, weighted_metric
from driftloop.training.train import (
    Fitted,
    Origin,
    describe_source,
    fit,
    guard_frame,
    initial_frame,
    register,
    rows_fingerprint,
)
from driftloop.vocabulary import Outcome, Trigger

if TYPE_CHECKING:
    from driftloop.settings import GuardConfig, RetrainingConfig, Settings

log = logging.getLogger("driftloop.training")
LIVE_GATE_ROWS = 50  # reweighted: labelled live rows enough to judge on (and live rows to weight by)

Scorer = Callable[[OnnxModel, pd.DataFrame, np.ndarray | None], float]  # score_rows with the task bound


@dataclass(frozen=True)
class RetrainOutcome:
    status: Outcome  # promoted | rejected | waiting (too few labelled rows yet) | shadow (retraining.shadow)
    reason: str
    champion: str | None
    candidate: str | None = None
    metric: str = ""
    champion_score: float | None = None
    candidate_score: float | None = None
    train_rows: int = 0  # rows handed to the fit (it keeps validation_fraction of the newest for metrics)
    holdout_rows: int = 0
    seconds: float = 0.0
    strategy: str = ""  # what ran: window | window_and_original | reweighted ("" while waiting)
    training_data: dict[str, Any] = field(default_factory=dict)  # the candidate's metadata["training_data"]
    guard: dict[str, Any] | None = None  # the guard set's figures (None: no guard set)
    tournament: dict[str, Any] | None = None  # Tournament.to_dict() (None: one candidate, no tournament)
    # Rejected only because the paired test could not yet tell: better by the margin (and not worse
    # on the guard set), on too few held-out rows. The policy retrains again with more rows.
    promising: bool = False
    validation: dict[str, Any] | None = None  # the rows the candidate's metrics are on (its metadata["evaluation"])
    holdout: dict[str, Any] | None = None  # the gate's rows (Plan.holdout_record): both scores are on these

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """What a strategy trains on and judges with."""

    strategy: str
    train: pd.DataFrame  # fit's frame (split into training and validation rows)
    holdout: pd.DataFrame  # the gate's rows
    holdout_source: str  # window | live | initial
    holdout_what: str  # for the reason
    rows: dict[str, int]  # training rows per source
    base: pd.DataFrame | None = None  # always trained on (window_and_original: the initial data)
    sample_weight: np.ndarray | None = None  # per row of ``train``
    holdout_weight: np.ndarray | None = None  # per row of ``holdout`` (weighted gate)
    reference: pd.DataFrame | None = None  # the new version's drift reference (None: from ``train``)
    weights: dict[str, Any] | None = None  # importance-weight summary
    train_ids: np.ndarray | None = None  # live ``train`` rows: their prediction ids (None: not known)
    holdout_ids: np.ndarray | None = None  # ...and the ``holdout`` rows'

    @property
    def trained_rows(self) -> int:
        """Rows handed to the fit: ``train`` and ``base``."""
        return len(self.train) + (0 if self.base is None else len(self.base))

    def train_origin(self, settings: Settings) -> Origin:
        """Where ``train``'s rows came from: the window's live rows, or the initial data (``reweighted``)."""
        return Origin.initial(settings) if self.strategy == "reweighted" else Origin.live(self.train_ids)

    def holdout_record(self, settings: Settings, n_labels: int) -> dict[str, Any]:
        """What the gate scores both models on, as a version's ``evaluation`` names its validation
        rows: ``set`` (``holdout``), ``rows``, ``source``, ``description``, ``fingerprint``,
        ``weighted`` and the ``averages`` of the averaged metrics."""
        origin = Origin.initial(settings) if self.holdout_source == "initial" else Origin.live(self.holdout_ids)
        source = origin.source(np.arange(len(self.holdout)))
        target = [settings.data.target] if settings.task in SUPERVISED else []
        return {"set": "holdout", "rows": len(self.holdout), "source": source,
                "description": f"{self.holdout_what} ({describe_source(source)})",
                "fingerprint": rows_fingerprint(self.holdout, [*settings.features, *target]),
                "weighted": self.holdout_weight is not None,
                "averages": evaluate.averages(settings.task, n_labels)}

    def training_data(self, configured: str, choice: str) -> dict[str, Any]:
        """The candidate's ``metadata["training_data"]``: what it learned from and was judged on."""
        return {"strategy": self.strategy, "configured": configured, "choice": choice, "rows": self.rows,
                "weights": self.weights, "holdout": {"source": self.holdout_source, "rows": len(self.holdout),
                                                     "weighted": self.holdout_weight is not None}}


@dataclass(frozen=True)
class GuardResult:
    """Candidate and champion on the fixed guard set (``training/guard.py``)."""

    rows: int
    metric: str
    candidate: float
    champion: float
    drop: float  # how much worse the candidate is (negative: better), whichever way the metric points
    max_drop: float  # retraining.guard.max_drop
    source: str  # file | carved

    @property
    def passed(self) -> bool:
        return bool(self.drop <= self.max_drop + 1e-12)

    def to_dict(self) -> dict[str, Any]:
        """``metadata["gate"]["guard"]`` and :attr:`RetrainOutcome.guard`."""
        return {"rows": self.rows, "metric": self.metric, "candidate": self.candidate, "champion": self.champion,
                "drop": self.drop, "max_drop": self.max_drop, "passed": self.passed, "source": self.source}


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict on a candidate, with its evidence: better than the champion by
    ``margin`` on the held-out rows (:func:`training.evaluate.beats`), and no worse than
    ``guard.max_drop`` on the guard set."""

    metric: str
    candidate: float  # the primary metric on the held-out rows
    champion: float
    champion_version: str
    margin: float
    holdout_rows: int
    holdout_source: str  # window | live | initial
    weighted: bool  # the held-out rows carry importance weights
    margin_passed: bool
    guard: GuardResult | None  # None: no guard set
    strategy: str
    # The paired test on the held-out rows (None: an unsupervised task or a weighted gate, judged
    # by the margin alone).
    comparison: evaluate.Comparison | None = None
    # The held-out rows (Plan.holdout_record) and, under "metrics", every metric of "candidate" and
    # "champion" on them (None for a weighted gate: its one figure is the weighted primary metric)
    evaluation: dict[str, Any] | None = None

    @property
    def significant(self) -> bool:
        return self.comparison is None or self.comparison.significant

    @property
    def passed(self) -> bool:
        return self.margin_passed and self.significant and (self.guard is None or self.guard.passed)

    @property
    def why_not(self) -> list[str]:
        """The tests the candidate failed (empty when it passed)."""
        failed = [] if self.margin_passed else ["not better by the margin"]
        if not self.significant and self.comparison is not None:
            failed.append(f"not shown to be no worse ({self.comparison.describe()})" if self.comparison.tolerance
                          else f"not significantly better ({self.comparison.describe()})")
        if self.guard is not None and not self.guard.passed:
            failed.append(f"worse on the guard set by {self.guard.drop:.4f} (more than {self.guard.max_drop:.4f})")
        return failed

    def to_metadata(self) -> dict[str, Any]:
        """The candidate's ``metadata["gate"]``."""
        return {"metric": self.metric, "candidate": self.candidate, "champion": self.champion,
                "champion_version": self.champion_version, "margin": self.margin, "holdout_rows": self.holdout_rows,
                "holdout_source": self.holdout_source, "weighted": self.weighted, "margin_passed": self.margin_passed,
                "guard": None if self.guard is None else self.guard.to_dict(), "passed": self.passed,
                "strategy": self.strategy,
                "test": None if self.comparison is None else self.comparison.to_dict(),
                "evaluation": self.evaluation}

    def summary(self, candidate_version: str, holdout_what: str, choice: str) -> str:
        """Both scores, on what, and the margin (and the guard set's figures): for reasons and the audit."""
        text = (f"{self.metric} on {holdout_what}: candidate {candidate_version} {self.candidate:.4f}, champion "
                f"{self.champion_version} {self.champion:.4f}, margin {self.margin:.4f}")
        if self.comparison is not None:
            text += f", {self.comparison.describe()}"
        if self.guard is not None:
            text += (f"; on the guard set ({self.guard.rows} rows): candidate {self.guard.candidate:.4f}, champion "
                     f"{self.guard.champion:.4f}, max drop {self.guard.max_drop:.4f}")
        return f"{text} [{choice}]"


@dataclass(frozen=True)
class Entry:
    """One candidate of a tournament: a strategy's rows and a model kind, with its primary metric on
    the shared held-out rows, or why it did not run (``skipped``)."""

    strategy: str
    kind: str
    train_rows: int = 0
    score: float | None = None
    skipped: str | None = None

    @property
    def name(self) -> str:
        return f"{self.strategy}/{self.kind}"

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "kind": self.kind, "train_rows": self.train_rows, "score": self.score,
                "skipped": self.skipped}


@dataclass(frozen=True)
class Tournament:
    """Every candidate of a retrain (``retraining.tournament``), and the one sent to the gate: the
    best by the primary metric on the held-out rows they all share (the first listed on a tie).

    The gate's paired test then runs at ``significance / comparisons``, Bonferroni, because the
    winner is judged on the very rows that picked it: a draw of rows that happens to flatter one of
    ``n`` candidates no better than the champion both picks that candidate and passes it, so the
    winner tested at ``significance`` would be promoted on noise up to ``n`` times as often as a
    single candidate. At ``significance / n`` the pick is paid for in full: a no-better winner passes
    only if its own test rejects at ``significance / n``; being one of the ``n``, that happens no
    more often than "some candidate's test rejects at ``significance / n``", at most
    ``n * significance / n``, whatever the candidates' dependence and however the winner was chosen
    (the union bound); tighter for independent candidates, conservative for alike ones (``window``
    and ``window_and_original`` share the window's rows). Measured (``bench.gate --tournament``,
    equal models, 300 trials): one candidate at 0.05 promoted 3.0%; the best of 2 at 0.05, 8.0%;
    at 0.025, 3.3%; the best of 4 at 0.0125, 1.0%. The margin is the same as for one candidate.
    ``significance`` 1.0 (no test) becomes ``1 / n``: a weak test (between equal models the best of
    2 then passes as often as by the margin alone, 45% against one candidate's 33%). A winner sent
    to the shadow (``retraining.shadow``) is judged there at the full ``significance``: on live rows
    the pick never saw.
    """

    entries: tuple[Entry, ...]
    winner: int  # index into entries
    significance: float  # the gate's level: retraining.significance / comparisons

    @classmethod
    def of(cls, task: str, entries: list[Entry], significance: float) -> Tournament:
        """The field ``entries`` (at least one scored), its winner, and the gate's level for it."""
        scored = [i for i, e in enumerate(entries) if e.skipped is None and e.score is not None]
        if not scored:
            raise ValueError("a tournament needs at least one scored candidate")
        _, higher_is_better = evaluate.primary(task)
        sign = 1.0 if higher_is_better else -1.0
        winner = max(scored, key=lambda i: (sign * float(entries[i].score or 0.0), -i))  # a tie: the first listed
        return cls(tuple(entries), winner, significance / len(scored))

    @property
    def comparisons(self) -> int:
        """Candidates scored (skipped ones are not: they could not have been picked)."""
        return sum(e.skipped is None for e in self.entries)

    @property
    def best(self) -> Entry:
        return self.entries[self.winner]

    def to_dict(self) -> dict[str, Any]:
        """The winner's ``metadata["tournament"]`` and :attr:`RetrainOutcome.tournament`."""
        return {"candidates": [e.to_dict() for e in self.entries],
                "winner": {"strategy": self.best.strategy, "kind": self.best.kind},
                "comparisons": self.comparisons, "significance": self.significance}

    def describe(self) -> str:
        """The field and the winner, for reasons and the audit trail."""
        scored = ", ".join(f"{e.name} {e.score:.4f}" for e in self.entries if e.skipped is None)
        skipped = "; ".join(f"{e.name} skipped: {e.skipped}" for e in self.entries if e.skipped is not None)
        return (f"tournament winner {self.best.name} of {self.comparisons} ({scored}"
                f"{'; ' + skipped if skipped else ''}; paired test at significance / {self.comparisons} = "
                f"{self.significance:g})")


@dataclass(frozen=True)
class Entrant:
    """The candidate sent to the gate, with its plan and how it was chosen."""

    plan: Plan
    fitted: Fitted
    why: str  # how it was chosen: the strategy choice, or the tournament's field
    tournament: Tournament | None = None


def choose_strategy(config: RetrainingConfig, task: str, labelled: int, trigger: Trigger) -> tuple[str | None, str]:
    """The strategy to run for ``labelled`` rows and ``trigger``, or None and why to wait
    (``config``: the ``retraining`` section)."""
    configured, need = config.strategy, config.min_rows
    supervised = task in SUPERVISED
    if configured == "reweighted" and not supervised:
        raise ConfigError(f"retraining.strategy: reweighted learns from labelled initial data; task "
                          f"{task!r} has no labels (window retrains on live inputs)")
    what = "labelled rows" if supervised else "rows"
    short = f"{labelled} {what} since the drift began; {need} needed"
    if configured == "reweighted":
        return configured, f"strategy {configured}"
    if labelled >= need:
        return ("window" if configured == "auto" else configured), f"strategy {configured}"
    if configured != "auto":
        return None, short
    if trigger == Trigger.DRIFT and supervised:
        return "reweighted", f"strategy auto: {short} for window, so reweighted (a drift trigger)"
    return None, f"{short} (strategy auto: reweighting the initial data answers a drift, not a {trigger})"


def retrain(settings: Settings, registry: Registry, fresh: pd.DataFrame, *, trigger: Trigger,
            reason: str, actor: str = "monitor") -> RetrainOutcome:
    """Train a candidate from ``fresh`` (the streak's rows, see the module docstring) by the
    configured strategy, or the best of a tournament, gate it, register it, promote it if it passed."""
    started = time.perf_counter()
    champion = _champion(registry)
    usable, ids = usable_rows(settings, fresh), prediction_ids(settings, fresh)
    schema = registry.get(champion.version).schema
    if in_tournament(settings, len(usable)):
        entrant = run_tournament(settings, registry, champion.version, schema, fresh, usable, ids)
    else:
        entrant = single_candidate(settings, registry, champion.version, schema, fresh, usable, trigger, ids)
    if isinstance(entrant, str):
        return RetrainOutcome(Outcome.WAITING, entrant, champion.version)
    plan, contest = entrant.plan, entrant.tournament
    gate = judge(settings, entrant.fitted.model(), registry.load(champion.version), champion.version, plan,
                 significance=None if contest is None else contest.significance,
                 follow_up=trigger == Trigger.FOLLOW_UP)
    choice = entrant.why if contest is None else f"tournament: {contest.best.name} of {contest.comparisons}"
    training_data = plan.training_data(settings.retraining.strategy, choice)
    extra = {"gate": gate.to_metadata(), "retrain_reason": reason, "training_data": training_data}
    if contest is not None:
        extra["tournament"] = contest.to_dict()
    candidate = register(registry, entrant.fitted, trigger=trigger, parent=champion.version, extra=extra).version
    summary = gate.summary(candidate, plan.holdout_what, entrant.why)
    status = decide(gate, shadow=settings.retraining.shadow.enabled)
    act(registry, status, candidate, actor=actor, reason=f"{reason}; {summary}")
    return RetrainOutcome(status, outcome_reason(status, gate, summary, settings.retraining.shadow.min_labels),
                          champion=champion.version, candidate=candidate, metric=gate.metric,
                          champion_score=gate.champion, candidate_score=gate.candidate,
                          train_rows=plan.trained_rows, holdout_rows=gate.holdout_rows,
                          seconds=time.perf_counter() - started, strategy=plan.strategy,
                          training_data=training_data, guard=None if gate.guard is None else gate.guard.to_dict(),
                          tournament=None if contest is None else contest.to_dict(),
                          promising=status == Outcome.REJECTED and gate.margin_passed and not gate.significant
                          and (gate.guard is None or gate.guard.passed),
                          validation=entrant.fitted.metadata.get("evaluation"),
                          holdout=None if gate.evaluation is None
                          else {k: v for k, v in gate.evaluation.items() if k != "metrics"})


# -- the steps of retrain ----------------------------------------------------------------------------

def _champion(registry: Registry) -> Champion:
    champion = registry.champion()
    if champion is None:
        raise RegistryError("no champion to compare a candidate with; train and promote one first")
    return champion


def usable_rows(settings: Settings, fresh: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``fresh`` a candidate can learn from and be judged on: the labelled ones
    (supervised tasks), or all of them, in the columns a fit needs."""
    if fresh.empty:
        return fresh
    return _labelled(settings, fresh) if settings.task in SUPERVISED else _columns(settings, fresh)


def prediction_ids(settings: Settings, fresh: pd.DataFrame) -> np.ndarray | None:
    """The prediction id of each of :func:`usable_rows`' rows, in their order, when ``fresh`` comes
    from the prediction log (its ``id`` column); None otherwise. Recorded as the first and last id
    of a version's validation rows and of the gate's held-out rows."""
    if fresh.empty or "id" not in fresh.columns:
        return None
    rows = fresh[fresh[settings.data.target].notna()] if settings.task in SUPERVISED else fresh
    return rows["id"].to_numpy()


def _split_ids(ids: np.ndarray | None, holdout: pd.DataFrame) -> dict[str, np.ndarray | None]:
    """``train_ids`` and ``holdout_ids`` of a plan carved by :func:`window_split`."""
    if ids is None:
        return {}
    return {"train_ids": ids[:-len(holdout)], "holdout_ids": ids[-len(holdout):]}


def single_candidate(settings: Settings, registry: Registry, champion: str, schema: FeatureSchema,
                     fresh: pd.DataFrame, usable: pd.DataFrame, trigger: Trigger,
                     ids: np.ndarray | None = None) -> Entrant | str:
    """The candidate of the strategy :func:`choose_strategy` picks, fitted; or why to wait.
    ``ids``: the prediction id of each ``usable`` row (:func:`prediction_ids`)."""
    strategy, why = choose_strategy(settings.retraining, settings.task, len(usable), trigger)
    plan = None if strategy is None else plan_rows(strategy, settings, schema, fresh, usable, ids)
    if plan is None:
        return why if strategy is None else f"{len(fresh)} live rows to weight by; {LIVE_GATE_ROWS} needed"
    short = _short_holdout(settings, plan.holdout)
    if short is not None:
        return short
    return Entrant(plan, fit_candidate(settings, registry, champion, plan), why)


def _short_holdout(settings: Settings, holdout: pd.DataFrame) -> str | None:
    """Why to wait when a supervised gate would rest on fewer than ``min_holdout_rows`` rows."""
    if settings.task in SUPERVISED and len(holdout) < settings.retraining.min_holdout_rows:
        return (f"{len(holdout)} held-out rows to judge a candidate on; {settings.retraining.min_holdout_rows} "
                "needed (retraining.min_holdout_rows)")
    return None


def window_split(settings: Settings, labelled: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The window's rows to learn from, its newest ``holdout_fraction`` held out for the gate, and
    how the reason names them: one carving for ``window``, ``window_and_original`` and every
    candidate of a tournament."""
    n_hold = max(1, int(round(len(labelled) * settings.retraining.holdout_fraction)))
    train, holdout = labelled.iloc[:-n_hold], labelled.iloc[-n_hold:]
    return train, holdout, f"the newest {len(holdout)} labelled rows"


def plan_rows(strategy: str, settings: Settings, schema: FeatureSchema, fresh: pd.DataFrame,
              labelled: pd.DataFrame, ids: np.ndarray | None = None) -> Plan | None:
    """The rows ``strategy`` trains and gates on; None when there are too few live rows to weight by.
    ``ids``: the prediction id of each ``labelled`` row, if known."""
    if strategy in ("window", "window_and_original"):
        train, holdout, what = window_split(settings, labelled)
        if strategy == "window":
            return Plan(strategy, train, holdout, "window", what, {"window": len(train)}, **_split_ids(ids, holdout))
        original = _columns(settings, initial_frame(settings))
        return Plan(strategy, train, holdout, "window", what, {"original": len(original), "window": len(train)},
                    base=original, **_split_ids(ids, holdout))
    if len(fresh) < LIVE_GATE_ROWS:
        return None
    original = _columns(settings, initial_frame(settings))
    weights = importance_weights(schema, original, fresh, settings.retraining.max_weight, settings.seed)
    common = dict(reference=fresh, weights=weights.summary())
    if len(labelled) >= LIVE_GATE_ROWS:
        return Plan(strategy, original, labelled, "live", f"all {len(labelled)} labelled live rows (none trained on)",
                    {"original": len(original)}, sample_weight=weights.values, holdout_ids=ids, **common)
    n_hold = max(1, int(round(len(original) * settings.retraining.holdout_fraction)))
    return Plan(strategy, original.iloc[:-n_hold], original.iloc[-n_hold:], "initial",
                f"the newest {n_hold} initial rows (held out of the fit), importance-weighted "
                f"({len(labelled)} labelled live rows: fewer than {LIVE_GATE_ROWS})",
                {"original": len(original) - n_hold}, sample_weight=weights.values[:-n_hold],
                holdout_weight=weights.values[-n_hold:], **common)


# -- the tournament ----------------------------------------------------------------------------------

def in_tournament(settings: Settings, labelled: int) -> bool:
    """Whether this retrain is a tournament: ``retraining.tournament.enabled`` and ``min_rows``
    labelled rows to carve the shared held-out rows from (fewer: ``retraining.strategy`` alone).
    Unsupervised tasks never hold one (the pick and its price need labels; the settings refuse
    one asked for explicitly)."""
    if not settings.retraining.tournament.enabled or settings.task not in SUPERVISED:
        return False
    return labelled >= settings.retraining.min_rows


def run_tournament(settings: Settings, registry: Registry, champion: str, schema: FeatureSchema,
                   fresh: pd.DataFrame, labelled: pd.DataFrame, ids: np.ndarray | None = None) -> Entrant | str:
    """One candidate per strategy and kind of ``retraining.tournament``, each scored through its
    ONNX graph on the same held-out rows; the best, with the field (:class:`Tournament`), or why to
    wait. A strategy or kind that cannot apply is skipped with its reason; no kind that suits the
    task and features is a :class:`ConfigError`."""
    config = settings.retraining.tournament
    train, holdout, what = window_split(settings, labelled)
    short = _short_holdout(settings, holdout)
    if short is not None:
        return short
    kinds = {kind: unfit(kind, settings.task, dict(settings.features))
             for kind in dict.fromkeys(config.kinds or [settings.model.kind])}
    if all(kinds.values()):
        raise ConfigError("retraining.tournament.kinds: none suits this task and these features: "
                          + "; ".join(why for why in kinds.values() if why))
    original = _original(settings) if set(config.strategies) & {"window_and_original", "reweighted"} else None
    score: Scorer = partial(score_rows, settings.task, settings.data.target,
                            expected_anomaly_rate(settings.model.params))
    entries: list[Entry] = []
    candidates: dict[int, tuple[Plan, Fitted]] = {}
    for strategy in dict.fromkeys(config.strategies):
        plan = tournament_plan(strategy, settings, schema, fresh, original, train, holdout, what,
                               _split_ids(ids, holdout))
        for kind, why_not in kinds.items():
            if isinstance(plan, str) or why_not is not None:
                entries.append(Entry(strategy, kind, skipped=plan if isinstance(plan, str) else why_not))
                continue
            fitted = fit_candidate(kind_settings(settings, kind), registry, champion, plan)
            candidates[len(entries)] = plan, fitted
            entries.append(Entry(strategy, kind, plan.trained_rows, score(fitted.model(), holdout, None)))
    if not candidates:
        return "no tournament candidate could run: " + "; ".join(f"{e.name}: {e.skipped}" for e in entries)
    contest = Tournament.of(settings.task, entries, settings.retraining.significance)
    plan, fitted = candidates[contest.winner]
    return Entrant(plan, fitted, contest.describe(), contest)


def tournament_plan(strategy: str, settings: Settings, schema: FeatureSchema, fresh: pd.DataFrame,
                    original: pd.DataFrame | str | None, train: pd.DataFrame, holdout: pd.DataFrame,
                    what: str, ids: dict[str, np.ndarray | None] | None = None) -> Plan | str:
    """``strategy``'s rows in a tournament, judged on the shared ``holdout``; or why it cannot run.
    ``original``: the initial data, or why it is not at hand; ``ids``: :func:`_split_ids`."""
    ids = ids or {}
    if strategy == "window":
        return Plan(strategy, train, holdout, "window", what, {"window": len(train)}, **ids)
    if isinstance(original, str) or original is None:
        return original or "no initial data"
    if strategy == "window_and_original":
        return Plan(strategy, train, holdout, "window", what, {"original": len(original), "window": len(train)},
                    base=original, **ids)
    if len(fresh) < LIVE_GATE_ROWS:
        return f"{len(fresh)} live rows to weight by; {LIVE_GATE_ROWS} needed"
    try:
        weights = importance_weights(schema, original, fresh, settings.retraining.max_weight, settings.seed)
    except ConfigError as exc:  # image or sequence features: no domain classifier for them
        return str(exc)
    return Plan(strategy, original, holdout, "window", what, {"original": len(original)},
                sample_weight=weights.values, reference=fresh, weights=weights.summary(),
                holdout_ids=ids.get("holdout_ids"))


def _original(settings: Settings) -> pd.DataFrame | str:
    """The initial data in a fit's columns, or why it is not at hand (its file is gone, or empty)."""
    try:
        original = _columns(settings, initial_frame(settings))
    except (OSError, ConfigError, SchemaError) as exc:  # gone, unreadable, or without the model's columns
        return f"the initial data cannot be read ({exc})"
    except KeyError as exc:  # a file whose columns are not the model's (the schema moved on since)
        return f"the initial data lacks the model's columns ({exc})"
    return original if len(original) else "the initial data has no rows"


def kind_settings(settings: Settings, kind: str) -> Settings:
    """The settings a tournament fits ``kind`` with: as configured for ``model.kind``; any other
    kind on its defaults, since ``model.params``, ``model.search`` and ``model.warm_start`` were
    written for ``model.kind`` (another family's parameter names differ, and its graph cannot be
    fine-tuned from the champion's)."""
    if kind == settings.model.kind:
        return settings
    return settings.model_copy(update={"model": type(settings.model)(kind=kind)})


# -- fitting and judging -----------------------------------------------------------------------------

def fit_candidate(settings: Settings, registry: Registry, champion: str, plan: Plan) -> Fitted:
    """The candidate, fitted on the plan's rows; neural kinds fine-tune from the champion's
    weights when ``model.warm_start`` is set."""
    warm = (registry.verify(champion).path / MODEL_FILE).read_bytes() if settings.model.warm_start else None
    return fit(settings, plan.train, warm_start=warm, sample_weight=plan.sample_weight, base=plan.base,
               reference=plan.reference, origin=plan.train_origin(settings))


def judge(settings: Settings, candidate: OnnxModel, champion: OnnxModel, champion_version: str,
          plan: Plan, *, significance: float | None = None, follow_up: bool = False) -> GateResult:
    """Both models through their ONNX graphs on the plan's held-out rows, then on the guard set.
    ``significance``: the paired test's level (default ``retraining.significance``; a tournament's
    winner is judged at that divided by the candidates, :class:`Tournament`). A ``follow_up``
    (more rows of the world its champion learnt) must not be worse by
    ``retraining.follow_up.tolerance`` (a non-inferiority test) and score at least as well (margin
    0), where a retrain that answers a change must be better by the margin, significantly
    (:func:`~driftloop.training.evaluate.compare`)."""
    task, margin = settings.task, settings.retraining.margin
    tolerance = settings.retraining.follow_up.tolerance if follow_up else 0.0
    if follow_up and tolerance > 0:
        margin = 0.0
    score: Scorer = partial(score_rows, task, settings.data.target, expected_anomaly_rate(settings.model.params))
    metric, _ = evaluate.primary(task)
    guard = guard_check(task, settings.retraining.guard, guard_frame(settings), score, candidate, champion)
    record = plan.holdout_record(settings, len(candidate.schema.labels))
    common = dict(champion_version=champion_version, margin=margin, holdout_rows=len(plan.holdout),
                  holdout_source=plan.holdout_source, weighted=plan.holdout_weight is not None, guard=guard,
                  strategy=plan.strategy)
    if plan.holdout_weight is not None:  # one figure each: the weighted primary metric
        candidate_score = score(candidate, plan.holdout, plan.holdout_weight)
        champion_score = score(champion, plan.holdout, plan.holdout_weight)
        return GateResult(metric, candidate_score, champion_score,
                          margin_passed=evaluate.beats(task, candidate_score, champion_score, margin),
                          evaluation=record | {"metrics": None}, **common)
    models = {"candidate": candidate, "champion": champion}
    outputs = {role: model.predict_frame(plan.holdout) for role, model in models.items()}
    figures = holdout_metrics(settings, models, plan.holdout, outputs)
    common["evaluation"] = record | {"metrics": figures}
    if task in SUPERVISED:  # the paired test on the same rows
        labels = plan.holdout[settings.data.target]
        comparison = evaluate.compare(task, labels, outputs["champion"].predictions,
                                      outputs["candidate"].predictions, margin=margin,
                                      significance=settings.retraining.significance
                                      if significance is None else significance, tolerance=tolerance)
        return GateResult(metric, comparison.candidate, comparison.champion, margin_passed=comparison.margin_passed,
                          comparison=comparison, **common)
    if figures is None:
        candidate_score, champion_score = score(candidate, plan.holdout, None), score(champion, plan.holdout, None)
    else:
        candidate_score, champion_score = figures["candidate"][metric], figures["champion"][metric]
    return GateResult(metric, candidate_score, champion_score,
                      margin_passed=evaluate.beats(task, candidate_score, champion_score, margin), **common)


def holdout_metrics(settings: Settings, models: dict[str, OnnxModel], rows: pd.DataFrame,
                    outputs: dict[str, GraphOutput]) -> dict[str, dict[str, float]] | None:
    """Every metric of each model (by role) on the gate's held-out ``rows``, from its ``outputs``:
    for the record, since on the same rows they are the one comparable pair of figures. None when
    one cannot be computed there (a class a model never learnt: scikit-learn's log loss refuses
    it); the verdict rests on the primary metric alone and does not depend on these."""
    rate = expected_anomaly_rate(settings.model.params)
    try:
        return {role: output_metrics(settings.task, settings.data.target, rate, model, rows, outputs[role])
                for role, model in models.items()}
    except ValueError as exc:
        log.warning("the held-out rows' metrics are not recorded: %s", exc)
        return None


def guard_check(task: str, config: GuardConfig, rows: pd.DataFrame | None, score: Scorer, candidate: OnnxModel,
                champion: OnnxModel) -> GuardResult | None:
    """Both models on the fixed guard set ``rows`` (None: no guard set); it passes unless the
    candidate is worse by more than ``config.max_drop``."""
    if rows is None:
        return None
    metric, _ = evaluate.primary(task)
    candidate_score, champion_score = score(candidate, rows, None), score(champion, rows, None)
    return GuardResult(len(rows), metric, candidate_score, champion_score,
                       drop=evaluate.gain(task, champion_score, candidate_score), max_drop=config.max_drop,
                       source="file" if config.path is not None else "carved")


def decide(gate: GateResult, *, shadow: bool) -> Outcome:
    """Rejected unless the gate passed; then the shadow (``retraining.shadow``) or promoted."""
    if not gate.passed:
        return Outcome.REJECTED
    return Outcome.SHADOW if shadow else Outcome.PROMOTED


def act(registry: Registry, status: Outcome, candidate: str, *, actor: str, reason: str) -> None:
    """The last step, so a job that fails anywhere leaves the champion untouched: promote the
    candidate, or set it as the shadow (the monitor judges it on live labels, Monitor.judge_shadow)."""
    if status == Outcome.PROMOTED:
        registry.promote(candidate, actor=actor, reason=reason)
    elif status == Outcome.SHADOW:
        registry.set_shadow(candidate, actor=actor, reason=reason)


def outcome_reason(status: Outcome, gate: GateResult, summary: str, shadow_labels: int) -> str:
    if status == Outcome.REJECTED:
        return f"{' and '.join(gate.why_not)}: {summary}"
    if status == Outcome.SHADOW:
        return (f"passed the gate; scored beside {gate.champion_version} until {shadow_labels} "
                f"of the live rows it scores have labels: {summary}")
    return summary


# -- rows and scores ---------------------------------------------------------------------------------

def _columns(settings: Settings, frame: pd.DataFrame) -> pd.DataFrame:
    """The columns a fit needs (features, target, timestamp as UTC), index reset: live rows and
    initial data then concatenate cleanly."""
    target = settings.data.target if settings.task in SUPERVISED else None
    timestamp = settings.data.timestamp if settings.data.timestamp in frame.columns else None
    out = frame[[*settings.features, *([target] if target else []), *([timestamp] if timestamp else [])]]
    out = out.reset_index(drop=True)
    if timestamp:
        out = out.assign(**{timestamp: pd.to_datetime(out[timestamp], utc=True)})
    return out


def _labelled(settings: Settings, fresh: pd.DataFrame) -> pd.DataFrame:
    """The rows whose label has arrived, with labels as plain values: a column with gaps comes
    as objects or floats, and class labels 0/1 must stay integers (:func:`models.schema.plain_label`)."""
    target = settings.data.target
    rows = _columns(settings, fresh[fresh[target].notna()])
    y = rows[target]
    if settings.task == "classification" and len(y):
        y = y.map(plain_label)
    return rows.assign(**{target: y.infer_objects()})


def score_rows(task: str, target: str | None, expected_rate: float, model: OnnxModel, rows: pd.DataFrame,
               weights: np.ndarray | None = None) -> float:
    """The primary metric of ``model`` on ``rows`` (weighted by ``weights`` when given)."""
    output = model.predict_frame(rows)
    if weights is not None:
        return weighted_metric(task, rows[target], output.predictions, weights)
    metric, _ = evaluate.primary(task)
    return output_metrics(task, target, expected_rate, model, rows, output)[metric]


def output_metrics(task: str, target: str | None, expected_rate: float, model: OnnxModel, rows: pd.DataFrame,
                   output: GraphOutput) -> dict[str, float]:
    """Every metric of the task for ``model``'s ``output`` (its graph's answer) on ``rows``."""
    supervised = task in SUPERVISED
    preds, scores = output
    return evaluate.score(task, rows[target] if supervised else None, preds,
                          scores if task == "classification" else None, list(model.schema.labels) or None,
                          scores=None if supervised else scores, expected_anomaly_rate=expected_rate)
