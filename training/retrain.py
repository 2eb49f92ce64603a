"""The retraining job and its gate.

Recipe: take fresh labelled rows -> keep the newest ``holdout_fraction`` aside -> train a
candidate on the rest -> score candidate and champion on the held-out slice, both through
their verified ONNX graphs (the code path that serves them) -> promote only if the candidate
is better by ``margin``. Promotion is the last step, so a job that fails anywhere leaves the
champion untouched.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from models.errors import RegistryError
from models.registry import Registry
from training import evaluate
from training.train import train_version

if TYPE_CHECKING:
    from driftloop.settings import Settings

PROMOTED, REJECTED, WAITING = "promoted", "rejected", "waiting"


@dataclass(frozen=True)
class RetrainOutcome:
    status: str  # promoted | rejected | waiting (too few labelled rows yet)
    reason: str
    champion: str | None
    candidate: str | None = None
    metric: str = ""
    champion_score: float | None = None
    candidate_score: float | None = None
    train_rows: int = 0
    holdout_rows: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retrain(settings: Settings, registry: Registry, fresh: pd.DataFrame, *, trigger: str,
            reason: str, actor: str = "monitor") -> RetrainOutcome:
    """Train a candidate on ``fresh`` (features, target, time order) and gate it."""
    started = time.perf_counter()
    champion = registry.champion()
    if champion is None:
        raise RegistryError("no champion to compare a candidate with; train and promote one first")
    need = settings.retraining.min_rows
    if len(fresh) < need:
        return RetrainOutcome(WAITING, f"{len(fresh)} labelled rows since the drift began; {need} needed",
                              champion.version)
    n_hold = max(1, int(round(len(fresh) * settings.retraining.holdout_fraction)))
    train_part, holdout = fresh.iloc[:-n_hold], fresh.iloc[-n_hold:]

    result = train_version(settings, train_part, registry, trigger=trigger, parent=champion.version,
                           extra={"retrain_reason": reason, "gate_holdout_rows": len(holdout)})
    candidate = result.version.version
    metric, higher_is_better = evaluate.primary(settings.task)
    scores = {}
    for version in (champion.version, candidate):
        model = registry.load(version)
        preds, proba = model.predict_frame(holdout)
        scores[version] = evaluate.score(settings.task, holdout[settings.data.target], preds, proba,
                                         list(model.schema.labels) or None)[metric]
    gain = scores[candidate] - scores[champion.version]
    if not higher_is_better:
        gain = -gain
    margin = settings.retraining.margin
    summary = (f"{metric} on the newest {len(holdout)} labelled rows: candidate {candidate} "
               f"{scores[candidate]:.4f}, champion {champion.version} {scores[champion.version]:.4f}, "
               f"margin {margin:.4f}")
    common = dict(champion=champion.version, candidate=candidate, metric=metric,
                  champion_score=scores[champion.version], candidate_score=scores[candidate],
                  train_rows=len(train_part), holdout_rows=len(holdout))
    if gain < margin:
        return RetrainOutcome(REJECTED, f"not better by the margin: {summary}",
                              seconds=time.perf_counter() - started, **common)
    registry.promote(candidate, actor=actor, reason=f"{reason}; {summary}")
    return RetrainOutcome(PROMOTED, summary, seconds=time.perf_counter() - started, **common)
