"""The retraining job and its gate.

Recipe: pick what the candidate learns from and what it is judged on (the *strategy*, below) ->
fit the candidate -> score candidate and champion on the held-out rows, both through their ONNX
graphs (the code path that serves them) -> score both on the fixed guard set
(``training/guard.py``) -> register the candidate with the gate's figures in its metadata ->
promote it only if it is better by ``margin`` on the held-out rows AND no worse than
``guard.max_drop`` on the guard set (otherwise it stays in the registry as rejected, with the
reason); with ``retraining.shadow`` it becomes the shadow instead, judged later on live labels.
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

The candidate's metadata records ``gate`` (metric, both scores, held-out rows and where they came
from, margin, ``guard`` figures, ``passed``) and ``training_data`` (strategy, rows per source,
importance-weight summary); :class:`RetrainOutcome` carries the same. Neural kinds fine-tune from
the champion when ``model.warm_start`` is set, whatever the strategy.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from driftloop.models.errors import ConfigError, RegistryError
from driftloop.models.families import expected_anomaly_rate
from driftloop.models.onnx_model import OnnxModel
from driftloop.models.registry import MODEL_FILE, Registry
from driftloop.models.schema import SUPERVISED, FeatureSchema
from driftloop.training import evaluate
from driftloop.training.reweight import importance_weights, weighted_metric
from driftloop.training.train import fit, guard_frame, initial_frame, register

if TYPE_CHECKING:
    from driftloop.settings import Settings

PROMOTED, REJECTED, WAITING, SHADOW = "promoted", "rejected", "waiting", "shadow"
LIVE_GATE_ROWS = 50  # reweighted: labelled live rows enough to judge on (and live rows to weight by)


@dataclass(frozen=True)
class RetrainOutcome:
    status: str  # promoted | rejected | waiting (too few labelled rows yet) | shadow (retraining.shadow)
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


def choose_strategy(settings: Settings, labelled: int, trigger: str) -> tuple[str | None, str]:
    """The strategy to run for ``labelled`` rows and ``trigger``, or None and why to wait."""
    configured, need = settings.retraining.strategy, settings.retraining.min_rows
    supervised = settings.task in SUPERVISED
    if configured == "reweighted" and not supervised:
        raise ConfigError(f"retraining.strategy: reweighted learns from labelled initial data; task "
                          f"{settings.task!r} has no labels (window retrains on live inputs)")
    what = "labelled rows" if supervised else "rows"
    short = f"{labelled} {what} since the drift began; {need} needed"
    if configured == "reweighted":
        return configured, f"strategy {configured}"
    if labelled >= need:
        return ("window" if configured == "auto" else configured), f"strategy {configured}"
    if configured != "auto":
        return None, short
    if trigger == "drift" and supervised:
        return "reweighted", f"strategy auto: {short} for window, so reweighted (a drift trigger)"
    return None, f"{short} (strategy auto: reweighting the initial data answers a drift, not a {trigger})"


def retrain(settings: Settings, registry: Registry, fresh: pd.DataFrame, *, trigger: str,
            reason: str, actor: str = "monitor") -> RetrainOutcome:
    """Train a candidate from ``fresh`` (the streak's rows, see the module docstring) by the
    configured strategy, gate it, register it, promote it if it passed."""
    started = time.perf_counter()
    champion = registry.champion()
    if champion is None:
        raise RegistryError("no champion to compare a candidate with; train and promote one first")
    supervised = settings.task in SUPERVISED
    labelled = fresh if fresh.empty else _labelled(settings, fresh) if supervised else _columns(settings, fresh)
    strategy, why = choose_strategy(settings, len(labelled), trigger)
    plan = None if strategy is None else _plan(strategy, settings, registry.get(champion.version).schema,
                                               fresh, labelled)
    if plan is None:
        why = why if strategy is None else f"{len(fresh)} live rows to weight by; {LIVE_GATE_ROWS} needed"
        return RetrainOutcome(WAITING, why, champion.version)

    warm = None
    if settings.model.warm_start:  # fine-tune from the champion's weights (neural kinds)
        warm = (registry.verify(champion.version).path / MODEL_FILE).read_bytes()
    fitted = fit(settings, plan.train, warm_start=warm, sample_weight=plan.sample_weight, base=plan.base,
                 reference=plan.reference)
    metric, higher_is_better = evaluate.primary(settings.task)
    candidate_model, champion_model = fitted.model(), registry.load(champion.version)
    candidate_score = _score(settings, candidate_model, plan.holdout, plan.holdout_weight)
    champion_score = _score(settings, champion_model, plan.holdout, plan.holdout_weight)
    gain = (candidate_score - champion_score) * (1 if higher_is_better else -1)
    margin = settings.retraining.margin
    guard = _guard(settings, candidate_model, champion_model)
    passed = gain >= margin and (guard is None or guard["passed"])
    gate = {"metric": metric, "candidate": candidate_score, "champion": champion_score,
            "champion_version": champion.version, "margin": margin, "holdout_rows": len(plan.holdout),
            "holdout_source": plan.holdout_source, "weighted": plan.holdout_weight is not None,
            "margin_passed": gain >= margin, "guard": guard, "passed": passed, "strategy": plan.strategy}
    training_data = {"strategy": plan.strategy, "configured": settings.retraining.strategy, "choice": why,
                     "rows": plan.rows, "weights": plan.weights,
                     "holdout": {"source": plan.holdout_source, "rows": len(plan.holdout),
                                 "weighted": plan.holdout_weight is not None}}
    version = register(registry, fitted, trigger=trigger, parent=champion.version,
                       extra={"gate": gate, "retrain_reason": reason, "training_data": training_data}).version
    summary = (f"{metric} on {plan.holdout_what}: candidate {version} {candidate_score:.4f}, champion "
               f"{champion.version} {champion_score:.4f}, margin {margin:.4f}")
    if guard is not None:
        summary += (f"; on the guard set ({guard['rows']} rows): candidate {guard['candidate']:.4f}, champion "
                    f"{guard['champion']:.4f}, max drop {guard['max_drop']:.4f}")
    summary += f" [{why}]"
    common = dict(champion=champion.version, candidate=version, metric=metric, champion_score=champion_score,
                  candidate_score=candidate_score, train_rows=len(plan.train) + _len(plan.base),
                  holdout_rows=len(plan.holdout), strategy=plan.strategy, training_data=training_data, guard=guard)
    if not passed:
        failed = [*(["not better by the margin"] if gain < margin else []),
                  *([f"worse on the guard set by {guard['drop']:.4f} (more than {guard['max_drop']:.4f})"]
                    if guard is not None and not guard["passed"] else [])]
        return RetrainOutcome(REJECTED, f"{' and '.join(failed)}: {summary}",
                              seconds=time.perf_counter() - started, **common)
    shadow = settings.retraining.shadow
    if shadow.enabled:  # the monitor promotes or rejects it on live labels (Monitor.judge_shadow)
        registry.set_shadow(version, actor=actor, reason=f"{reason}; {summary}")
        return RetrainOutcome(SHADOW, f"passed the gate; scored beside {champion.version} until {shadow.min_labels} "
                                      f"of the live rows it scores have labels: {summary}",
                              seconds=time.perf_counter() - started, **common)
    registry.promote(version, actor=actor, reason=f"{reason}; {summary}")
    return RetrainOutcome(PROMOTED, summary, seconds=time.perf_counter() - started, **common)


def _plan(strategy: str, settings: Settings, schema: FeatureSchema, fresh: pd.DataFrame,
          labelled: pd.DataFrame) -> Plan | None:
    """The rows ``strategy`` trains and gates on; None when there are too few live rows to weight by."""
    if strategy in ("window", "window_and_original"):
        n_hold = max(1, int(round(len(labelled) * settings.retraining.holdout_fraction)))
        train, holdout = labelled.iloc[:-n_hold], labelled.iloc[-n_hold:]
        what = f"the newest {len(holdout)} labelled rows"
        if strategy == "window":
            return Plan(strategy, train, holdout, "window", what, {"window": len(train)})
        original = _columns(settings, initial_frame(settings))
        return Plan(strategy, train, holdout, "window", what, {"original": len(original), "window": len(train)},
                    base=original)
    if len(fresh) < LIVE_GATE_ROWS:
        return None
    original = _columns(settings, initial_frame(settings))
    weights = importance_weights(schema, original, fresh, settings.retraining.max_weight, settings.seed)
    common = dict(reference=fresh, weights=weights.summary())
    if len(labelled) >= LIVE_GATE_ROWS:
        return Plan(strategy, original, labelled, "live", f"all {len(labelled)} labelled live rows (none trained on)",
                    {"original": len(original)}, sample_weight=weights.values, **common)
    n_hold = max(1, int(round(len(original) * settings.retraining.holdout_fraction)))
    return Plan(strategy, original.iloc[:-n_hold], original.iloc[-n_hold:], "initial",
                f"the newest {n_hold} initial rows (held out of the fit), importance-weighted "
                f"({len(labelled)} labelled live rows: fewer than {LIVE_GATE_ROWS})",
                {"original": len(original) - n_hold}, sample_weight=weights.values[:-n_hold],
                holdout_weight=weights.values[-n_hold:], **common)


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
    as objects or floats, and class labels 0/1 must stay integers."""
    target = settings.data.target
    rows = _columns(settings, fresh[fresh[target].notna()])
    y = rows[target].infer_objects()
    if settings.task == "classification" and y.dtype.kind == "f" and len(y) and bool((y == y.round()).all()):
        y = y.astype(np.int64)
    return rows.assign(**{target: y})


def _score(settings: Settings, model: OnnxModel, rows: pd.DataFrame, weights: np.ndarray | None = None) -> float:
    """The primary metric of ``model`` on ``rows`` (weighted by ``weights`` when given)."""
    task = settings.task
    supervised = task in SUPERVISED
    target = settings.data.target
    preds, second = model.predict_frame(rows)
    if weights is not None:
        return weighted_metric(task, rows[target], preds, weights)
    metric, _ = evaluate.primary(task)
    return evaluate.score(task, rows[target] if supervised else None, preds,
                          second if task == "classification" else None, list(model.schema.labels) or None,
                          scores=None if supervised else second,
                          expected_anomaly_rate=expected_anomaly_rate(settings.model.params))[metric]


def _guard(settings: Settings, candidate: OnnxModel, champion: OnnxModel) -> dict[str, Any] | None:
    """Both models on the fixed guard set; ``passed`` unless the candidate is worse by more than max_drop."""
    rows = guard_frame(settings)
    if rows is None:
        return None
    metric, higher_is_better = evaluate.primary(settings.task)
    candidate_score, champion_score = _score(settings, candidate, rows), _score(settings, champion, rows)
    drop = (champion_score - candidate_score) * (1 if higher_is_better else -1)
    max_drop = settings.retraining.guard.max_drop
    return {"rows": len(rows), "metric": metric, "candidate": candidate_score, "champion": champion_score,
            "drop": drop, "max_drop": max_drop, "passed": bool(drop <= max_drop + 1e-12),
            "source": "file" if settings.retraining.guard.path is not None else "carved"}


def _len(frame: pd.DataFrame | None) -> int:
    return 0 if frame is None else len(frame)
