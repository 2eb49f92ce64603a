"""The retraining job and its gate.

Recipe: take fresh labelled rows -> keep the newest ``holdout_fraction`` aside -> fit a
candidate on the rest -> score candidate and champion on the held-out slice, both through
their ONNX graphs (the code path that serves them) -> register the candidate with the gate's
figures in its metadata -> promote it only if it is better by ``margin`` (otherwise it stays
in the registry as rejected, with the reason). Promotion is the last step, so a job that fails
anywhere leaves the champion untouched.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from models.errors import RegistryError
from models.onnx_model import OnnxModel
from models.families import expected_anomaly_rate
from models.registry import MODEL_FILE, Registry
from models.schema import SUPERVISED
from training import evaluate
from training.train import fit, register

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
    """Train a candidate on ``fresh`` (features, target if supervised, time order), gate it,
    register it. Unsupervised kinds retrain on inputs alone."""
    started = time.perf_counter()
    champion = registry.champion()
    if champion is None:
        raise RegistryError("no champion to compare a candidate with; train and promote one first")
    need = settings.retraining.min_rows
    if len(fresh) < need:
        what = "labelled rows" if settings.task in SUPERVISED else "rows"
        return RetrainOutcome(WAITING, f"{len(fresh)} {what} since the drift began; {need} needed",
                              champion.version)
    n_hold = max(1, int(round(len(fresh) * settings.retraining.holdout_fraction)))
    train_part, holdout = fresh.iloc[:-n_hold], fresh.iloc[-n_hold:]

    warm = None
    if settings.model.warm_start:  # fine-tune from the champion's weights (neural kinds)
        warm = (registry.verify(champion.version).path / MODEL_FILE).read_bytes()
    fitted = fit(settings, train_part, warm_start=warm)
    metric, higher_is_better = evaluate.primary(settings.task)
    target = settings.data.target

    task = settings.task
    supervised = task in SUPERVISED
    rate = expected_anomaly_rate(settings.model.params)

    def score(model: OnnxModel) -> float:
        preds, second = model.predict_frame(holdout)
        return evaluate.score(task, holdout[target] if supervised else None, preds,
                              second if task == "classification" else None, list(model.schema.labels) or None,
                              scores=None if supervised else second, expected_anomaly_rate=rate)[metric]

    candidate_score, champion_score = score(fitted.model()), score(registry.load(champion.version))
    gain = (candidate_score - champion_score) * (1 if higher_is_better else -1)
    margin = settings.retraining.margin
    passed = gain >= margin
    gate = {"metric": metric, "candidate": candidate_score, "champion": champion_score,
            "champion_version": champion.version, "margin": margin, "holdout_rows": len(holdout),
            "passed": passed}
    version = register(registry, fitted, trigger=trigger, parent=champion.version,
                       extra={"gate": gate, "retrain_reason": reason}).version
    summary = (f"{metric} on the newest {len(holdout)} labelled rows: candidate {version} "
               f"{candidate_score:.4f}, champion {champion.version} {champion_score:.4f}, margin {margin:.4f}")
    common = dict(champion=champion.version, candidate=version, metric=metric, champion_score=champion_score,
                  candidate_score=candidate_score, train_rows=len(train_part), holdout_rows=len(holdout))
    if not passed:
        return RetrainOutcome(REJECTED, f"not better by the margin: {summary}",
                              seconds=time.perf_counter() - started, **common)
    registry.promote(version, actor=actor, reason=f"{reason}; {summary}")
    return RetrainOutcome(PROMOTED, summary, seconds=time.perf_counter() - started, **common)
