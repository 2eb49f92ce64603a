"""The shadow judge: a candidate scored beside the champion on live traffic is promoted or cleared.

With ``retraining.shadow`` a candidate that passed the gate is not promoted at once: serving
workers score every logged request with it too (the champion still answers). Once ``min_labels``
of the live rows it scored have labels, the judge compares both on them with the gate's own rule
(:func:`driftloop.training.evaluate.compare`: better by ``retraining.margin`` and significantly so
at ``retraining.significance``, on the same rows), it is promoted; otherwise cleared. Cleared too if ``max_windows`` windows were checked without enough
labels.

Only a shadow in the ``candidate`` role is judged; a ``watch`` shadow (a promotion's predecessor)
belongs to :class:`~monitoring.watch.PromotionWatch`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from driftloop.models.registry import Registry
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.policy import RetrainPolicy
from driftloop.monitoring.store import PredictionStore, as_utc
from driftloop.training.evaluate import compare
from driftloop.vocabulary import EventKind, Outcome

if TYPE_CHECKING:
    from driftloop.settings import RetrainingConfig

log = logging.getLogger("driftloop.monitor")


class ShadowJudge:
    """Judges the registry's candidate shadow (``retraining``: ``shadow`` and ``margin``; ``task``: the metric)."""

    def __init__(self, config: RetrainingConfig, task: str, store: PredictionStore, registry: Registry,
                 policy: RetrainPolicy, metrics: MonitorMetrics) -> None:
        self.config = config
        self.task = task
        self.store = store
        self.registry = registry
        self.policy = policy
        self.metrics = metrics

    def judge(self) -> dict[str, Any] | None:
        """The verdict on the shadow, if one is due: recorded (``shadow_promoted`` or
        ``shadow_rejected``), acted on, and returned (the event's detail and ``verdict``)."""
        # a candidate only: a watch shadow (the previous champion, monitoring/watch.py) is not judged here
        shadow, champion = self.registry.candidate(), self.registry.champion()
        if shadow is None or champion is None:
            return None
        config = self.config.shadow
        rows = self.store.shadow_rows(shadow.version)
        labelled = rows[rows["label"].notna() & (rows["model_version"] == champion.version)]
        detail: dict[str, Any] = {"shadow": shadow.version, "champion": champion.version, "scored": len(rows),
                                  "labelled": len(labelled), "min_labels": config.min_labels}
        if len(labelled) < config.min_labels:
            since = as_utc(shadow.set_at)
            waited = [c.window for c in self.store.checks(limit=config.max_windows)
                      if as_utc(c.created_at) >= since]
            if len(waited) < config.max_windows:
                return None
            verdict = Outcome.REJECTED
            reason = (f"{len(labelled)} of {config.min_labels} labelled rows after {len(waited)} windows "
                      f"(retraining.shadow.max_windows)")
            window = waited[-1]
        else:
            # the gate's rule (training.evaluate.compare): better by the margin, and significantly
            c = compare(self.task, labelled["label"], labelled["prediction"], labelled["shadow_prediction"],
                        margin=self.config.margin, significance=self.config.significance)
            verdict = Outcome.PROMOTED if c.passed else Outcome.REJECTED
            reason = (f"{c.metric} on the {len(labelled)} labelled live rows it scored: shadow {shadow.version} "
                      f"{c.candidate:.4f}, champion {champion.version} {c.champion:.4f}, margin {c.margin:.4f}, "
                      f"{c.describe()}")
            detail |= {"metric": c.metric, "shadow_score": c.candidate, "champion_score": c.champion,
                       "margin": c.margin} | c.to_dict()
            last = self.store.last_check()
            window = last.window if last else None
        if verdict == Outcome.PROMOTED:
            self.registry.promote(shadow.version, actor="monitor", reason=f"shadow: {reason}")  # clears the shadow
            if window is not None:
                self.policy.retrained(window)  # the new champion's cool-down starts now
        else:
            self.registry.clear_shadow(actor="monitor", reason=f"shadow rejected: {reason}")
        detail["reason"] = reason
        self.store.record_event(EventKind.shadow(verdict), detail, window, shadow.version)
        self.metrics.retrains.labels(verdict).inc()
        log.info("shadow %s %s: %s", shadow.version, verdict, reason)
        return detail | {"verdict": verdict}
