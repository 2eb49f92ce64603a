"""The loop's words: what a check decides, what a retrain comes to, why a version was trained,
what the audit trail records, and what one checked window is.

Every module that writes or reads these (the policy, the monitor, the retrain job, the registry,
the metrics, the CLI, the demo, the benchmarks) takes them from here; nothing below types them by
hand. They are ``StrEnum``s: a member *is* its string, so what the store, the JSON of ``/history``,
the Prometheus label values and the config hold is unchanged (``Decision.RETRAIN == "retrain"``).

This module imports nothing of the project's: ``models/``, ``training/`` and ``monitoring/`` all
stand on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar


class Decision(StrEnum):
    """The retraining policy's answer to one window, from quiet to loud."""

    NONE = "none"  # no drift, no decay
    SUSPECT = "suspect"  # decay suspected from confidence, before enough labels; never retrains
    HELD = "held"  # inputs drifted, but enough labels show the champion holds on them: no retrain
    WATCH = "watch"  # flagged, but fewer than ``consecutive`` windows in a row
    COOLDOWN = "cooldown"  # flagged while a new champion cools down
    ALERT = "alert"  # would retrain, but the policy is in dry-run mode
    RETRAIN = "retrain"  # retrain now


class Signal(StrEnum):
    """What flagged a window."""

    DRIFT = "drift"  # the share of drifted features reached ``monitoring.drift_share``
    DECAY = "decay"  # labels show the champion's accuracy significantly below its baseline
    SUSPECTED = "suspected"  # decay, estimated from confidence before labels (a gauge, not a trigger)


class Outcome(StrEnum):
    """What came of a retrain (the ``outcome`` of its check and the ``driftloop_retrains`` label)."""

    PROMOTED = "promoted"  # passed the gate and became the champion
    REJECTED = "rejected"  # registered, not promoted (the reason says which test it failed)
    WAITING = "waiting"  # too few labelled rows yet: nothing trained, the streak goes on
    SHADOW = "shadow"  # passed the gate; scored beside the champion until the shadow judge decides
    FAILED = "failed"  # the job raised, or its process died; retried with back-off
    RUNNING = "running"  # recorded before the job starts: a check left so belongs to a dead process
    SHADOW_PENDING = "shadow_pending"  # decided while a shadow waits: no new candidate until it is judged


# What a retrain job itself can return (the rest are the monitor's bookkeeping around it).
JOB_OUTCOMES = (Outcome.PROMOTED, Outcome.REJECTED, Outcome.WAITING, Outcome.SHADOW)
# Counted in ``driftloop_retrains{outcome}`` (shadow: judged later, and counted again as its verdict).
COUNTED_OUTCOMES = (Outcome.PROMOTED, Outcome.REJECTED, Outcome.WAITING, Outcome.FAILED, Outcome.SHADOW)
# A retrain that ran (or was running) at a window: the policy's cool-down starts there.
RETRAINED = (Outcome.PROMOTED, Outcome.REJECTED, Outcome.FAILED, Outcome.RUNNING)


class Trigger(StrEnum):
    """Why a version was trained (its metadata's ``trigger``)."""

    INITIAL = "initial"  # ``driftloop train``
    MANUAL = "manual"  # ``POST /admin/retrain`` or an operator's command
    DRIFT = "drift"  # the policy, on drift
    DECAY = "decay"  # the policy, on decay (with or without drift)
    SCHEDULE = "schedule"  # a calendar
    FOLLOW_UP = "follow_up"  # more labelled rows since a change that was already answered


class Job(StrEnum):
    """The monitor's scheduled jobs, by the id ``driftloop jobs`` takes (monitoring/scheduler.py)."""

    CHECK = "check"  # check the ready windows and act on them, every monitoring.interval_s
    RETENTION = "retention"  # registry retention: old versions deleted (registry.keep_*)
    STORE_RETENTION = "store_retention"  # store retention: old log rows, checks, events, pictures (monitoring.retention)
    RETRAIN = "retrain"  # the scheduled retrain, only where retraining.schedule is set

    @property
    def describe(self) -> str:
        return {Job.CHECK: "check the ready windows and act on them (monitoring.interval_s)",
                Job.RETENTION: "delete old model versions (registry.keep_*)",
                Job.STORE_RETENTION: "prune the prediction log, checks, events and pictures (monitoring.retention)",
                Job.RETRAIN: "the scheduled retrain (only with retraining.schedule)"}[self]


class EventKind(StrEnum):
    """The kinds of the audit trail (the store's ``events``)."""

    DRIFT_DETECTED = "drift_detected"  # a window decided alert or retrain on drift...
    DECAY_DETECTED = "decay_detected"  # ...on decay
    DRIFT_AND_DECAY_DETECTED = "drift+decay_detected"  # ...on both
    DECAY_SUSPECTED = "decay_suspected"  # confidence says accuracy fell; labels will tell
    RETRAIN_STARTED = "retrain_started"
    RETRAIN_PROMOTED = "retrain_promoted"
    RETRAIN_REJECTED = "retrain_rejected"
    RETRAIN_WAITING = "retrain_waiting"
    RETRAIN_SHADOW = "retrain_shadow"
    RETRAIN_FAILED = "retrain_failed"
    RETRAIN_REQUESTED = "retrain_requested"  # POST /admin/retrain: the monitor runs it
    RETRAIN_REQUEST_DONE = "retrain_request_done"
    SHADOW_PROMOTED = "shadow_promoted"
    SHADOW_REJECTED = "shadow_rejected"
    WATCH_STARTED = "watch_started"  # a promotion: its predecessor scores live rows beside it
    PROMOTION_REFUSED = "promotion_refused"  # an operator's promotion the registry refused (unknown, broken, unloadable)
    WATCH_LOOKED = "watch_looked"  # a look before the last found it not significantly worse: the watch goes on
    WATCH_KEPT = "watch_kept"  # the new champion is not significantly worse at the last look: the watch ends
    WATCH_ROLLED_BACK = "watch_rolled_back"  # it is: rolled back to its predecessor
    WATCH_EXPIRED = "watch_expired"  # max_windows without enough labels: the watch ends
    VERSIONS_DELETED = "versions_deleted"  # registry retention
    BACKLOG_SKIPPED = "backlog_skipped"  # a monitor far behind left old windows unchecked (monitoring/backlog.py)
    STORE_PRUNED = "store_pruned"  # store retention: old log rows, checks, events, reports, snapshots deleted
    SCHEDULER_ACTIVE = "scheduler_active"  # this monitor took the scheduler lease
    JOB_FAILED = "job_failed"  # a scheduler job raised
    JOB_PAUSE = "job_pause"  # ``driftloop jobs pause|resume|run`` (the command's verb, as recorded)
    JOB_RESUME = "job_resume"
    JOB_RUN = "job_run"

    @classmethod
    def job(cls, action: str) -> EventKind:
        """The event of an operator's ``driftloop jobs ACTION`` (pause, resume or run)."""
        return cls(f"job_{action}")

    @classmethod
    def detected(cls, signals: tuple[str, ...]) -> EventKind:
        """The event of a window flagged by ``signals`` (drift, decay or both)."""
        return cls(f"{'+'.join(signals)}_detected")

    @classmethod
    def retrain(cls, outcome: str) -> EventKind:
        """The event of a retrain job that came to ``outcome``."""
        return cls(f"retrain_{outcome}")

    @classmethod
    def shadow(cls, verdict: str) -> EventKind:
        """The shadow judge's verdict (promoted or rejected)."""
        return cls(f"shadow_{verdict}")


@dataclass
class Check:
    """One checked window, as the store's ``checks`` table holds it.

    ``outcome`` and ``reason`` are the only fields that change after it is recorded (a retrain's
    outcome lands after the check, which is recorded first, as ``running``).
    """

    window: int  # 0, 1, 2, ... in log order
    first_id: int  # the window's first and last prediction-log ids
    last_id: int
    rows: int
    model_version: str  # the version that served most of its rows
    reference_version: str  # the champion whose reference sample the drift test used
    drift_share: float  # share of drifted features
    drifted_features: list[str]
    feature_scores: dict[str, dict[str, Any]]  # feature -> {method, score, threshold, drifted}; "prediction" too
    labelled: int  # rows with a label when checked
    accuracy: float | None  # on those rows, whoever served them (classification; regression: ``rmse``, ``mae``)
    champion_labelled: int  # labelled rows the champion answered...
    champion_accuracy: float | None  # ...and its accuracy on them: what the decay test looks at
    decision: Decision
    reason: str
    outcome: Outcome | None = None  # of the retrain this check decided
    report_path: str | None = None  # the Evidently HTML report of a flagged window
    duration_s: float = 0.0
    estimated_accuracy: float | None = None  # from the champion's calibrated confidence, without labels
    created_at: datetime | None = None  # set by the store
    id: int | None = None  # set by the store
    # Regression: the errors of the served predictions on the labelled rows, whoever served them...
    rmse: float | None = None
    mae: float | None = None
    # ...and on the rows the champion answered, with the standard deviation of their squared
    # errors: what the decay test looks at (a restarted monitor's policy replays them)
    champion_rmse: float | None = None
    champion_mae: float | None = None
    champion_squared_error_std: float | None = None
    unfamiliar_share: float | None = None  # of the champion's rows: outside its training ranges or categories

    COLUMNS: ClassVar[tuple[str, ...]] = ()  # filled below: the store's column names, in order

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Check:
        """A check from a stored row (JSON columns already decoded)."""
        values = {name: row.get(name) for name in cls.COLUMNS}
        values["decision"] = Decision(values["decision"])
        values["outcome"] = None if values["outcome"] is None else Outcome(values["outcome"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the enums are strings): for the store, JSON and the CLI."""
        return asdict(self)


Check.COLUMNS = tuple(f.name for f in fields(Check))
