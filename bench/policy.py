"""Policy benchmark: driftloop's retraining policy against never-retrain and retrain-every-K.

    python -m bench.policy [--json FILE] [--quick] [--only NAME ...] [--strategy NAME]
                           [--guard-rows N] [--guard-max-drop X]

Every scenario (``training/scenarios.py``: stationary, abrupt covariate shift, abrupt concept
change with late labels, gradual drift, recurring drift; a stationary concept whose rows arrive
grouped by sub-population, a covariate shift of 2 of the 6 features that costs about 3 points,
and a covariate shift and a concept change followed by 48 windows, where follow-up retrains can
pay) is replayed in process through the loop's own code, once per arm, each arm in a temporary
directory of its own:

* the champion's ONNX graph predicts each chunk of ``STEP`` rows, written to a SQLite
  :class:`~monitoring.store.PredictionStore` with a stream time of one row per second (from the
  arm's start by the wall clock, so rows are newer than what the registry stamps);
* once a chunk is logged, the registry's shadow (a candidate in ``retraining.shadow`` mode, or
  a promotion's predecessor under ``retraining.watch``) scores the same rows into the store's
  shadow predictions, as a serving worker does (``service/serving.py``);
* labels are sent as feedback ``label_delay`` rows later (a share of rows never gets one);
* a fake clock reads the stream time and :meth:`monitoring.monitor.Monitor.run_once` checks every
  window that is ready (``min_label_coverage`` / ``label_wait_s`` decide when), asks the arm's
  policy and retrains through ``training/retrain.py`` and its gate, exactly as in production.

Arms: ``driftloop`` (the configured :class:`~monitoring.policy.RetrainPolicy`), ``never``
(``dry_run``: the same detector alerts, nothing retrains) and ``every-K`` (:class:`EveryKWindows`:
at every K-th window, retrain on the K windows before it, through the same job and gate). An
``oracle`` per change, trained like the first model but on a fresh sample of the world after the
change, is scored on the same rows. Accuracy is measured on the true label of every row served
(not only on the rows whose label arrived).

The first model learns the scenario's ``train`` period through :func:`training.train.initial_frame`
(the period is written to a Parquet file that is ``data.path``), so the guard set
(``retraining.guard``) is carved out of it as in production and every retrain strategy sees it as
the initial data. ``--strategy`` sets ``retraining.strategy`` of the driftloop arm (the periodic
arm keeps the default); ``--guard-rows`` and ``--guard-max-drop`` set the guard of every arm. Each
arm's retrains (strategy, outcome, holdout and guard figures) are listed under its scenario.

Harm: an arm's accuracy over the whole live stream minus never-retrain's (the loop should cost
nothing where retraining cannot help: at least -``MAX_HARM``). Second half: over the second half
of each change's period (from the midpoint of its rows to the next change), the arm's accuracy
against a second oracle that learnt ``ORACLE_LONG_ROWS`` rows of the new world (target
``LONG_RATIO``; n/a after a return to the first model's world). Per arm: the rows each version
served and each shadow scored, follow-up retrains (trained/promoted) and the watch's rollbacks;
the shadow judge's verdicts and the watch's events are listed among the retrains.

Detection delay: the first alarm (retrain or alert decision) on a window at or after the change's
first window, in windows (alarm window - onset window) and in rows (rows served after the onset
when that check ran, so label latency counts). False alarms: alarms on windows before the first
change (the whole stream for ``stationary`` and ``grouped``). Exit code 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import typing
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.monitoring import policy as pol
from driftloop.training import scenarios as sc
from driftloop.vocabulary import Check, Decision, EventKind, Outcome, Trigger

WINDOW = 500  # rows per monitoring window (the default monitoring.window_rows)
K = 4  # the periodic baseline retrains every K windows on the K windows before (see README)
STEP = 100  # rows served between two monitor runs
LABEL_DELAY = 100  # rows between a prediction and its label (the demo's)
ORACLE_ROWS = 3000  # the oracle learns from as many post-change rows as the first model had
ORACLE_LONG_ROWS = 10_000  # ...and a second one from many more: what a long post-change period allows
MAX_HARM = 0.002  # the loop may cost at most this much accuracy over the whole stream against never-retrain
LONG_RATIO = 0.99  # over a change's second half, the loop reaches this share of the 10k-row oracle's accuracy
EQUAL = 0.005  # accuracies within half a point count as equal (the periodic comparison)
ALARMS = (Decision.RETRAIN, Decision.ALERT)
# a retrain that trained (or tried to train) a candidate; shadow: it passed the gate and waits in shadow
RAN = (Outcome.PROMOTED, Outcome.REJECTED, Outcome.FAILED, Outcome.SHADOW)
TRAINED = (EventKind.RETRAIN_PROMOTED, EventKind.RETRAIN_REJECTED, EventKind.RETRAIN_SHADOW)  # the gate judged it
# what happened to a candidate or a promotion afterwards: the shadow judge's verdict, the promotion watch
AFTERWARDS = (EventKind.SHADOW_PROMOTED, EventKind.SHADOW_REJECTED, EventKind.WATCH_STARTED, EventKind.WATCH_LOOKED,
              EventKind.WATCH_KEPT, EventKind.WATCH_ROLLED_BACK, EventKind.WATCH_EXPIRED)
INITIAL_FILE = "initial.parquet"  # the first model's data (data.path), in the scenario's base directory
STATIONARY = ("none", "grouped")  # kinds without a change: every window is quiet


@dataclass(frozen=True)
class Case:
    """A scenario of the benchmark: its timeline, its kind of change and how labels arrive."""

    name: str
    description: str
    timeline: Callable[..., list[sc.Period | sc.Ramp]]
    full: dict[str, int]  # timeline sizes of the full run
    quick: dict[str, int]  # ...and of --quick
    kind: str  # the kind of every change: covariate | concept | gradual; none | grouped: no change
    label_delay: int = LABEL_DELAY
    label_share: float = 1.0
    seed: int = 11


CASES = (
    Case("stationary", "nothing changes", sc.stationary_timeline, {"rows": 100_000}, {"rows": 6000}, "none"),
    Case("covariate", "abrupt covariate shift (new segment)", sc.covariate_shift_timeline,
         {"stable": 4, "shifted": 16}, {"stable": 2, "shifted": 6}, "covariate"),
    Case("concept", "abrupt concept change (only labels show it)", sc.concept_change_timeline,
         {"stable": 4, "changed": 16}, {"stable": 2, "changed": 6}, "concept", label_delay=500, label_share=0.9),
    Case("gradual", "gradual concept drift over 8 windows", sc.gradual_drift_timeline,
         {"stable": 4, "ramp": 8, "drifted": 12}, {"stable": 2, "ramp": 3, "drifted": 4}, "gradual"),
    Case("recurring", "concept switches and returns, twice", sc.recurring_drift_timeline,
         {"stable": 4, "episode": 8, "episodes": 2}, {"stable": 2, "episode": 4, "episodes": 1}, "concept"),
    Case("grouped", "stationary concept, rows grouped by sub-population", sc.grouped_arrival_timeline,
         {"windows": 60}, {"windows": 16, "block_rows": (1500, 1000, 2000)}, "grouped"),
    Case("partial-cov", "covariate shift of 2 of 6 features (-3 points)", sc.partial_covariate_timeline,
         {"stable": 4, "shifted": 16}, {"stable": 2, "shifted": 6}, "covariate"),
    Case("long-cov", "abrupt covariate shift, 48 windows after", sc.covariate_shift_timeline,
         {"stable": 4, "shifted": 48}, {"stable": 2, "shifted": 10}, "covariate"),
    Case("long-concept", "abrupt concept change, 48 windows after", sc.concept_change_timeline,
         {"stable": 4, "changed": 48}, {"stable": 2, "changed": 10}, "concept", label_delay=500, label_share=0.9),
)


@dataclass(frozen=True)
class Change:
    """Where the world changed: ``onset`` and ``end`` are live-row positions (window boundaries)."""

    name: str
    onset: int
    end: int
    world: sc.Period  # the world after the change (a ramp's final one): what the oracle learns
    first_world: bool = False  # back to the world the first model learnt (never-retrain is its oracle)


@dataclass
class EveryKWindows:
    """The periodic baseline as a policy the monitor can hold: no detector; at every ``k``-th
    window, retrain on the labelled rows of the ``k`` windows that end with it."""

    k: int

    def update(self, stats: pol.WindowStats) -> pol.PolicyDecision:
        if (stats.window + 1) % self.k == 0:
            return pol.PolicyDecision(Decision.RETRAIN, f"scheduled: every {self.k} windows", (),
                                      stats.window - self.k + 1)
        return pol.PolicyDecision(Decision.NONE, "not due")

    def retrained(self, window: int) -> None:
        """Nothing to remember: the schedule does not depend on what came of a retrain."""

    def suspected(self, stats: pol.WindowStats) -> bool:
        """No detector: never suspects a decay before the labels come (monitoring/early_warning.py)."""
        return False


@dataclass
class ArmRun:
    """What one arm did on one scenario's live stream."""

    arm: str
    correct: np.ndarray  # per live row: the served prediction was the true label
    served: list[str]  # per live row: the version that answered
    checks: list[Check]
    checked_at: dict[int, int]  # window -> live rows served when its check ran
    seconds: float
    versions: list[str] = field(default_factory=list)
    retrain_log: list[dict[str, Any]] = field(default_factory=list)  # per trained candidate: its gate
    shadow_rows: dict[str, int] = field(default_factory=dict)  # rows each shadow version scored
    afterwards: list[dict[str, Any]] = field(default_factory=list)  # shadow verdicts and watch events

    def served_rows(self) -> dict[str, int]:
        """Rows each version answered, in the order they first served."""
        return dict(Counter(self.served))

    @property
    def rollbacks(self) -> int:
        """Promotions the watch rolled back."""
        return sum(e["kind"] == EventKind.WATCH_ROLLED_BACK for e in self.afterwards)

    def alarms(self, first: int, last: int) -> list[Check]:
        return [c for c in self.checks if first <= c.window < last and c.decision in ALARMS]

    def retrains(self) -> list[Check]:
        """Retrains that ran (a candidate was trained): promoted, rejected or failed."""
        return [c for c in self.checks if c.decision == Decision.RETRAIN and c.outcome in RAN]


@dataclass(frozen=True)
class Options:
    """The loop's settings the benchmark varies: ``strategy`` (the driftloop arm's
    ``retraining.strategy``; None: the default) and ``retraining`` (every arm's overrides: the guard)."""

    strategy: str | None = None
    retraining: dict[str, Any] = field(default_factory=dict)
    driftloop: dict[str, Any] = field(default_factory=dict)  # the driftloop arm's own retraining overrides

    def for_arm(self, arm: str) -> dict[str, Any]:
        extra = {"strategy": self.strategy} if arm == "driftloop" and self.strategy else {}
        return self.retraining | extra | (self.driftloop if arm == "driftloop" else {})


# -- running ---------------------------------------------------------------------------------------
def settings_for(root: Path, initial: Path | None = None, retraining: dict[str, Any] | None = None,
                 **monitoring: Any) -> Any:
    """The loop's settings under ``root``; ``initial``: the first model's data file (``data.path``)."""
    from driftloop.settings import load_settings

    data = {} if initial is None else {"data": {"path": str(initial), "target": sc.TARGET, "timestamp": sc.TIMESTAMP},
                                       "features": dict(sc.FEATURES)}
    return load_settings(None, registry={"home": str(root / "bentoml")},
                         store={"url": f"sqlite:///{root / 'driftloop.db'}"},
                         # no Evidently workspace: half a second per window, and not what is measured here
                         monitoring={"reports_dir": str(root / "reports"), "metrics_port": 0,
                                     "window_rows": WINDOW, "workspace": {"enabled": False}} | monitoring,
                         retraining=retraining or {}, **data)


def changes_of(parts: list[sc.Period | sc.Ramp]) -> list[Change]:
    first = parts[0]
    live = [p for p in parts if p.name != "train"]
    bounds = np.cumsum([0] + [p.rows for p in live])
    out = []
    for i, part in enumerate(live[1:], start=1):
        world = part.after if isinstance(part, sc.Ramp) else part
        if isinstance(live[i - 1], sc.Ramp):  # a ramp's end is not a change of its own
            continue
        end = next((int(bounds[j]) for j in range(i + 1, len(live)) if not isinstance(live[j - 1], sc.Ramp)),
                   int(bounds[-1]))
        out.append(Change(part.name, int(bounds[i]), end, world,
                          (world.population, world.rule) == (first.population, first.rule)))
    return out


def run_arm(arm: str, live: pd.DataFrame, base: Path, root: Path, case: Case, progress: Callable[[str], None],
            options: Options = Options()) -> ArmRun:
    """Replay ``live`` through a monitor with the arm's policy, from a copy of the registry in ``base``."""
    from driftloop.models.registry import Registry
    from driftloop.monitoring.monitor import Monitor
    from driftloop.monitoring.store import PredictionStore

    started = time.perf_counter()
    # The stream starts now: the registry and the audit trail stamp the wall clock, the rows the
    # stream's (a row a second, far ahead of it), and the watch compares them (rows since its shadow was set).
    start = datetime.now(timezone.utc).replace(microsecond=0)
    shutil.copytree(base / "bentoml", root / "bentoml")
    settings = settings_for(root, base / INITIAL_FILE, options.for_arm(arm), dry_run=arm == "never")
    store = PredictionStore(settings.store.url).create()
    registry = Registry(settings.registry.home, settings.registry.project)
    now = [start.timestamp()]
    periodic = EveryKWindows(int(arm.split("-")[1])) if arm.startswith("every-") else None
    monitor = Monitor(settings, store, registry, clock=lambda: now[0], policy=periodic)  # type: ignore[arg-type]

    n = len(live)
    truth = live[sc.TARGET].to_numpy()
    labelled = np.random.default_rng(case.seed + 1).uniform(size=n) < case.label_share  # same for every arm
    records = live[list(sc.FEATURES)].to_dict(orient="records")
    ids = [str(uuid.uuid4()) for _ in range(n)]
    correct = np.zeros(n, dtype=bool)
    served: list[str] = [""] * n
    checked_at: dict[int, int] = {}
    models: dict[str, Any] = {}
    shadow_rows: Counter[str] = Counter()
    sent = 0  # labels sent up to this row

    def model_of(version: str) -> Any:
        return models.get(version) or models.setdefault(version, registry.load(version))

    def send_labels(upto: int) -> None:
        nonlocal sent
        due = [(ids[i], int(truth[i])) for i in range(sent, upto) if labelled[i]]
        if due:
            store.insert_feedback(due)
        sent = max(sent, upto)

    for first in range(0, n, STEP):
        end = min(first + STEP, n)
        version = registry.champion().version
        chunk = live.iloc[first:end]
        preds, proba = model_of(version).predict_frame(chunk)
        store.insert_predictions([
            {"request_id": ids[i], "created_at": start + timedelta(seconds=i), "model_version": version,
             "features": records[i], "prediction": p, "confidence": float(c)}
            for i, p, c in zip(range(first, end), preds.tolist(), proba.max(axis=1))])
        # Once the rows are logged, a worker scores them with the shadow, if any (service/serving.py)
        shadow = registry.shadow()
        if shadow is not None and shadow.version != version:
            shadow_preds, shadow_proba = model_of(shadow.version).predict_frame(chunk)
            store.insert_shadow_predictions([
                {"request_id": ids[i], "model_version": shadow.version, "prediction": p, "confidence": float(c)}
                for i, p, c in zip(range(first, end), shadow_preds.tolist(), shadow_proba.max(axis=1))])
            shadow_rows[shadow.version] += end - first
        correct[first:end] = preds == truth[first:end]
        served[first:end] = [version] * (end - first)
        send_labels(max(0, end - case.label_delay))
        now[0] = (start + timedelta(seconds=end - 1)).timestamp()
        for check in monitor.run_once():
            checked_at[check.window] = end
            if check.decision != Decision.NONE:
                progress(f"  {arm:<10} window {check.window:>3}: {check.decision} {check.outcome or ''}")
    send_labels(n)  # the stream is over: every label arrives, and the last windows are checked
    now[0] += settings.monitoring.label_wait_s + 1
    for check in monitor.run_once():
        checked_at[check.window] = n
    run = ArmRun(arm, correct, served, store.checks(), checked_at, time.perf_counter() - started,
                 [v.version for v in registry.versions()], retrain_log(store), dict(shadow_rows),
                 afterwards_log(store))
    store.close()
    return run


def retrain_log(store: Any) -> list[dict[str, Any]]:
    """Every trained candidate's outcome in the store's events: window, strategy, status, the
    holdout's and the guard set's figures."""
    out = []
    for event in store.events():
        if event["kind"] not in TRAINED:
            continue
        d, guard = event["detail"], event["detail"].get("guard") or {}
        weights = (d.get("training_data") or {}).get("weights") or {}
        out.append({"window": event["window"], "status": d["status"], "strategy": d.get("strategy", ""),
                    "trigger": d.get("trigger", ""),
                    "candidate": d["candidate"], "metric": d["metric"], "holdout": d["candidate_score"],
                    "holdout_champion": d["champion_score"], "holdout_rows": d["holdout_rows"],
                    "train_rows": d["train_rows"], "guard": guard.get("candidate"),
                    "guard_champion": guard.get("champion"), "guard_drop": guard.get("drop"),
                    "weights_ess": weights.get("ess")})
    return out


def afterwards_log(store: Any) -> list[dict[str, Any]]:
    """The shadow judge's verdicts and the promotion watch's events: window, kind, the versions
    and the reason (which says what the verdict rests on)."""
    return [{"window": e["window"], "kind": e["kind"], "reason": e["detail"].get("reason", ""),
             "version": e["detail"].get("shadow") or e["detail"].get("champion"),
             "predecessor": e["detail"].get("predecessor")} for e in store.events(AFTERWARDS)]


def oracle_correct(case: Case, live: pd.DataFrame, changes: list[Change], root: Path,
                   rows: int = ORACLE_ROWS, seed: int = 100) -> np.ndarray:
    """Per live row, whether the oracle of the row's segment (trained like the first model on
    ``rows`` fresh rows of the world after that segment's change, generated from ``case.seed +
    seed``) predicts its label; NaN before the first change."""
    from driftloop.training.train import fit

    settings = settings_for(root)
    out = np.full(len(live), np.nan)
    for i, change in enumerate(changes):
        world = sc.Period("oracle", rows, change.world.population, change.world.rule)
        sample = sc.generate([world], seed=case.seed + seed + i)
        model = fit(settings, sample).model("oracle")
        segment = live.iloc[change.onset:change.end]
        preds, _ = model.predict_frame(segment)
        out[change.onset:change.end] = preds == segment[sc.TARGET].to_numpy()
    return out


def run_case(case: Case, quick: bool, arms: list[str], workdir: Path, progress: Callable[[str], None],
             options: Options = Options()) -> dict[str, Any]:
    """Replay the scenario once per arm and return its figures."""
    return analyse(case, *replay_case(case, quick, arms, workdir, progress, options))


def replay_case(case: Case, quick: bool, arms: list[str], workdir: Path, progress: Callable[[str], None],
                options: Options = Options()
                ) -> tuple[pd.DataFrame, list[Change], dict[str, ArmRun], np.ndarray, np.ndarray]:
    """Train the first model (on :func:`~training.train.initial_frame`: the ``train`` period less
    the guard rows) and the oracles, replay every arm: (live rows, changes, runs, oracle, oracle
    on :data:`ORACLE_LONG_ROWS`). A scenario of a stationary kind has no change (a grouped
    arrival's blocks are no change of world: the concept and the whole population stay)."""
    from driftloop.models.registry import Registry
    from driftloop.training.train import initial_frame, train_version

    parts = case.timeline(**(case.quick if quick else case.full))
    frame = sc.generate(parts, seed=case.seed)
    live = frame[frame["period"] != "train"].reset_index(drop=True)
    changes = [] if case.kind in STATIONARY else changes_of(parts)
    base = workdir / case.name / "base"
    base.mkdir(parents=True, exist_ok=True)
    frame.loc[frame["period"] == "train", [*sc.FEATURES, sc.TARGET, sc.TIMESTAMP]].to_parquet(base / INITIAL_FILE)
    settings = settings_for(base, base / INITIAL_FILE, options.retraining)
    registry = Registry(settings.registry.home, settings.registry.project)
    first = train_version(settings, initial_frame(settings), registry, trigger=Trigger.INITIAL)
    registry.promote(first.version.version, actor="bench", reason="the benchmark's first model")
    oracle = oracle_correct(case, live, changes, base)
    oracle_long = oracle_correct(case, live, changes, base, ORACLE_LONG_ROWS, seed=200)
    progress(f"{case.name}: {len(live):,} live rows, {len(live) // WINDOW} windows, changes at "
             f"{[c.onset // WINDOW for c in changes]}")
    runs = {arm: run_arm(arm, live, base, workdir / case.name / arm, case, progress, options) for arm in arms}
    return live, changes, runs, oracle, oracle_long


# -- accounting -------------------------------------------------------------------------------------
def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def analyse(case: Case, live: pd.DataFrame, changes: list[Change], runs: dict[str, ArmRun],
            oracle: np.ndarray, oracle_long: np.ndarray | None = None) -> dict[str, Any]:
    """The figures of one scenario: per arm and per change (see the module docstring)."""
    n = len(live)
    oracle_long = np.full(n, np.nan) if oracle_long is None else oracle_long
    quiet_end = changes[0].onset if changes else n  # windows before this row are stationary
    quiet_windows = quiet_end // WINDOW
    never = runs.get("never")
    arms: dict[str, Any] = {}
    for arm, run in runs.items():
        quiet_checks = [c for c in run.checks if c.window < quiet_windows]
        false_alarms = run.alarms(0, quiet_windows)
        per_window = [float(run.correct[w * WINDOW:(w + 1) * WINDOW].mean()) for w in range(n // WINDOW)]
        retrains = run.retrains()
        follow_ups = [r for r in run.retrain_log if r.get("trigger") == Trigger.FOLLOW_UP]
        accuracy = float(run.correct.mean())
        arms[arm] = {
            "retrains": len(retrains), "promoted": sum(c.outcome == Outcome.PROMOTED for c in retrains),
            "retrain_windows": [c.window for c in retrains],
            "checks": len(run.checks), "quiet_checks": len(quiet_checks),
            "false_alarms": len(false_alarms) if not arm.startswith("every-") else None,
            "flagged_quiet": sum(c.decision != Decision.NONE for c in quiet_checks)
            if not arm.startswith("every-") else None,
            "accuracy": accuracy, "accuracy_per_window": per_window,
            # what the loop cost (or won) against never retraining, over the whole stream
            "harm": accuracy - float(never.correct.mean()) if never is not None else None,
            "follow_ups": len(follow_ups),
            "follow_ups_promoted": sum(r["status"] == Outcome.PROMOTED for r in follow_ups),
            "served_rows": run.served_rows(), "shadow_rows": run.shadow_rows, "rollbacks": run.rollbacks,
            "seconds": round(run.seconds, 1), "changes": [], "retrain_log": run.retrain_log,
            "afterwards": run.afterwards,
        }
        for change in changes:
            arms[arm]["changes"].append(change_figures(run, change, changes, oracle, never, oracle_long))
    return {"scenario": case.name, "description": case.description, "kind": case.kind, "rows": n,
            "windows": n // WINDOW, "label_delay": case.label_delay, "label_share": case.label_share,
            "changes": [{"name": c.name, "onset": c.onset, "onset_window": c.onset // WINDOW, "end": c.end,
                         "first_world": c.first_world} for c in changes],
            "oracle": [_mean(oracle[c.onset:c.end]) for c in changes],
            "oracle_long": [_mean(oracle_long[c.onset:c.end]) for c in changes], "arms": arms}


def change_figures(run: ArmRun, change: Change, changes: list[Change], oracle: np.ndarray,
                   never: ArmRun | None, oracle_long: np.ndarray | None = None) -> dict[str, Any]:
    first, last = change.onset // WINDOW, change.end // WINDOW
    previous = max([c.onset for c in changes if c.onset < change.onset], default=0)
    out: dict[str, Any] = {"change": change.name, "onset_window": first,
                           "accuracy_before": _mean(run.correct[previous:change.onset]),
                           "accuracy_after": _mean(run.correct[change.onset:change.end])}
    # The second half of the period after the change, once there was time to learn it, against the
    # oracle that learnt ORACLE_LONG_ROWS rows of the new world: what a long period allows.
    half = slice(change.onset + (change.end - change.onset) // 2, change.end)
    long = oracle_long[half] if oracle_long is not None else np.array([])
    out |= {"second_half_from": half.start, "second_half_accuracy": _mean(run.correct[half]),
            "oracle_long_second_half": None if len(long) == 0 or np.isnan(long).any() else _mean(long)}
    out["oracle_long_ratio"] = (out["second_half_accuracy"] / out["oracle_long_second_half"]
                                if out["oracle_long_second_half"] and out["second_half_accuracy"] is not None else None)
    alarms = run.alarms(first, last) if not run.arm.startswith("every-") else []
    if alarms:
        at = alarms[0].window
        out |= {"detected_window": at, "delay_windows": at - first,
                "delay_rows": run.checked_at.get(at, len(run.correct)) - change.onset}
    else:
        out |= {"detected_window": None, "delay_windows": None, "delay_rows": None}
    promoted = [c for c in run.retrains() if first <= c.window < last and c.outcome == Outcome.PROMOTED]
    out["retrains"] = sum(first <= c.window < last for c in run.retrains())
    if promoted:
        # From the first promotion on, the new model answers: score every arm on these rows.
        since = run.checked_at[promoted[0].window]
        rows = slice(since, change.end)
        out |= {"promoted_window": promoted[0].window, "post_retrain_rows": change.end - since,
                "post_retrain_accuracy": _mean(run.correct[rows]),
                "oracle_same_rows": _mean(oracle[rows]),
                "never_same_rows": _mean(never.correct[rows]) if never is not None else None}
        if out["oracle_same_rows"] and out["post_retrain_accuracy"] is not None:
            out["oracle_ratio"] = out["post_retrain_accuracy"] / out["oracle_same_rows"]
    return out


def targets(result: dict[str, Any], periodic: str) -> list[tuple[str, bool | None, str]]:
    """The issue's targets for driftloop's arm on one scenario: (target, met, evidence); met is
    None where a target does not apply: "above never-retrain" and the 10k-row oracle's share after
    a return to the first model's world, where never-retrain serves a model trained on that world
    (its oracle)."""
    arms, out = result["arms"], []
    ours = arms.get("driftloop")
    if ours is None:
        return out
    if ours.get("harm") is not None:
        out.append((f"harm >= -{MAX_HARM} (accuracy minus never-retrain's, whole stream)",
                    ours["harm"] >= -MAX_HARM - 1e-12,  # exactly -MAX_HARM is met, whatever the rounding
                    f"{ours['accuracy']:.4f} vs {arms['never']['accuracy']:.4f} ({ours['harm']:+.4f})"))
    if result["kind"] == "none":
        out.append(("zero retrains", ours["retrains"] == 0, f"{ours['retrains']} retrains"))
        rate = ours["false_alarms"] / max(ours["quiet_checks"], 1)
        out.append(("false alarms < 1% of checks", rate < 0.01,
                    f"{ours['false_alarms']} of {ours['quiet_checks']} checks ({rate:.2%})"))
    for change, info in zip(ours["changes"], result["changes"]):
        if result["kind"] in ("covariate", "concept"):  # abrupt
            delay = change["delay_windows"]
            out.append((f"{change['change']}: detected within 2 windows", delay is not None and delay <= 2,
                        "missed" if delay is None else f"{delay} windows, {change['delay_rows']} rows"))
        if result["kind"] == "concept":
            ratio, post, base = change.get("oracle_ratio"), change.get("post_retrain_accuracy"), \
                change.get("never_same_rows")
            out.append((f"{change['change']}: post-retrain >= 95% of oracle", ratio is not None and ratio >= 0.95,
                        "no promotion" if ratio is None else
                        f"{post:.3f} vs oracle {change['oracle_same_rows']:.3f} ({ratio:.1%})"))
            above = post is not None and base is not None and post > base
            evidence = "no promotion" if post is None or base is None else f"{post:.3f} vs {base:.3f}"
            if info["first_world"]:
                above, evidence = None, f"{evidence} (n/a: back to the first model's world)"
            out.append((f"{change['change']}: post-retrain above never-retrain", above, evidence))
        ratio, acc, oracle = (change.get(k) for k in ("oracle_long_ratio", "second_half_accuracy",
                                                      "oracle_long_second_half"))
        name = f"{change['change']}: 2nd half >= {LONG_RATIO:.0%} of the {ORACLE_LONG_ROWS:,}-row oracle"
        if ratio is None:
            out.append((name, None, "no oracle"))
            continue
        met, evidence = ratio >= LONG_RATIO, f"{acc:.4f} vs oracle {oracle:.4f} ({ratio:.1%})"
        if info["first_world"]:
            met, evidence = None, f"{evidence} (n/a: back to the first model's world)"
        out.append((name, met, evidence))
    if periodic in arms:
        other = arms[periodic]
        equal = ours["accuracy"] >= other["accuracy"] - EQUAL
        mine = ours["retrains"] + ours.get("follow_ups", 0)  # a follow-up is a retrain too
        fewer = mine < other["retrains"]
        follow = f" + {ours['follow_ups']} follow-ups" if ours.get("follow_ups") else ""
        out.append((f"vs {periodic}: accuracy equal or better (within {EQUAL:.1%}) with fewer retrains",
                    equal and fewer, f"accuracy {ours['accuracy']:.3f} vs {other['accuracy']:.3f}, "
                                     f"retrains {ours['retrains']}{follow} vs {other['retrains']}"))
    return out


# -- printing ---------------------------------------------------------------------------------------
def _f(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def render(result: dict[str, Any], periodic: str) -> str:
    lines = [f"== {result['scenario']}: {result['description']}; {result['rows']:,} live rows in "
             f"{result['windows']} windows of {WINDOW}; labels {result['label_delay']} rows late, "
             f"{result['label_share']:.0%} labelled; changes at windows "
             f"{[c['onset_window'] for c in result['changes']] or '-'}"]
    lines.append(f"{'arm':<10} {'checks':>6} {'retrains':>8} {'promoted':>8} {'follow-ups':>10} {'rollbacks':>9} "
                 f"{'false alarms':>13} {'flagged':>8} {'live acc':>8} {'harm':>7} {'seconds':>8}")
    for arm, a in result["arms"].items():
        fa = "-" if a["false_alarms"] is None else f"{a['false_alarms']}/{a['quiet_checks']}"
        fl = "-" if a["flagged_quiet"] is None else f"{a['flagged_quiet']}"
        fu = f"{a.get('follow_ups', 0)}/{a.get('follow_ups_promoted', 0)}"
        lines.append(f"{arm:<10} {a['checks']:>6} {a['retrains']:>8} {a['promoted']:>8} {fu:>10} "
                     f"{a.get('rollbacks', 0):>9} {fa:>13} {fl:>8} {a['accuracy']:>8.3f} "
                     f"{_f(a.get('harm'), '+.4f'):>7} {a['seconds']:>8.1f}")
    if result["changes"]:
        lines.append(f"{'arm':<10} {'change':<10} {'onset':>5} {'detected':>8} {'delay w':>7} {'delay rows':>10} "
                     f"{'acc before':>10} {'acc after':>9} {'retrains':>8} {'post-retrain':>12} {'oracle':>6} "
                     f"{'ratio':>6} {'never':>6} {'2nd half':>8} {'or.10k':>6} {'ratio':>6}")
        for arm, a in result["arms"].items():
            for c in a["changes"]:
                lines.append(
                    f"{arm:<10} {c['change']:<10} {c['onset_window']:>5} {_f(c['detected_window'], 'd'):>8} "
                    f"{_f(c['delay_windows'], 'd'):>7} {_f(c['delay_rows'], ',d'):>10} "
                    f"{_f(c['accuracy_before']):>10} {_f(c['accuracy_after']):>9} {c['retrains']:>8} "
                    f"{_f(c.get('post_retrain_accuracy')):>12} {_f(c.get('oracle_same_rows')):>6} "
                    f"{_f(c.get('oracle_ratio'), '.1%'):>6} {_f(c.get('never_same_rows')):>6} "
                    f"{_f(c.get('second_half_accuracy')):>8} {_f(c.get('oracle_long_second_half')):>6} "
                    f"{_f(c.get('oracle_long_ratio'), '.1%'):>6}")
    lines.append(accuracy_over_time(result))
    lines += retrain_lines(result)
    for name, met, evidence in targets(result, periodic):
        verdict = "n/a   " if met is None else "MET   " if met else "MISSED"
        lines.append(f"  target {verdict} {name}: {evidence}")
    return "\n".join(lines)


def retrain_lines(result: dict[str, Any]) -> list[str]:
    """One line per trained candidate (where, how and why it was trained, what the gate saw), per
    shadow verdict and watch event, in window order; then, where more than one version served or a
    shadow scored, the rows each answered and scored."""
    lines = []
    for arm, a in result["arms"].items():
        entries = [(_at(r["window"]), 0, i) for i, r in enumerate(a.get("retrain_log", []))]
        entries += [(_at(e["window"]), 1, i) for i, e in enumerate(a.get("afterwards", []))]
        for _, source, i in sorted(entries):
            if source == 1:
                e = a["afterwards"][i]
                lines.append(f"  {e['kind']:<17} {arm:<10} w{_f(e['window'], 'd'):<3} {e['version']}"
                             f"{'' if not e['predecessor'] else ' vs ' + e['predecessor']}: {e['reason'][:150]}")
                continue
            r = a["retrain_log"][i]
            guard = "-" if r["guard"] is None else \
                f"{r['guard']:.3f} vs {r['guard_champion']:.3f} (drop {r['guard_drop']:+.3f})"
            lines.append(f"  retrain {arm:<10} w{r['window']:<3} {r.get('trigger', ''):<9} {r['strategy']:<19} "
                         f"{r['status']:<8} {r['candidate']:<4} {r['train_rows']:>5} rows; {r['metric']} "
                         f"{r['holdout']:.3f} vs {r['holdout_champion']:.3f} on {r['holdout_rows']}; guard {guard}"
                         + ("" if r["weights_ess"] is None else f"; ess {r['weights_ess']:.0f}"))
        served, scored = a.get("served_rows", {}), a.get("shadow_rows", {})
        if len(served) > 1 or scored:
            lines.append(f"  rows {arm:<10} served " + ", ".join(f"{v} {n:,}" for v, n in served.items())
                         + ("" if not scored else "; shadow scored "
                            + ", ".join(f"{v} {n:,}" for v, n in scored.items())))
    return lines


def _at(window: int | None) -> int:
    return -1 if window is None else window


def accuracy_over_time(result: dict[str, Any], columns: int = 20) -> str:
    """Accuracy per block of windows (one block per window when they fit in ``columns``)."""
    windows = result["windows"]
    block = max(1, -(-windows // columns))
    marks = {c["onset_window"] // block for c in result["changes"]}
    head = " ".join(("|" if b in marks else " ") + f"{b * block:<4d}" for b in range(-(-windows // block)))
    lines = [f"accuracy over time (per {block} window{'s' if block > 1 else ''}; | marks a change)",
             f"{'window':<10} {head}"]
    for arm, a in result["arms"].items():
        acc = a["accuracy_per_window"]
        cells = [np.mean(acc[b * block:(b + 1) * block]) for b in range(-(-windows // block))]
        lines.append(f"{arm:<10} " + " ".join(f"{v:5.3f}"[1:] + " " for v in cells))
    return "\n".join(lines)


def summary(results: list[dict[str, Any]]) -> str:
    """One line per scenario, change and arm: the figures the README quotes. Retrains are counted
    per segment (from a change to the next), the 10k-row oracle's share (ratio10k) per change;
    false alarms, live accuracy, harm, follow-ups (f-ups) and rollbacks (rb) per scenario."""
    lines = [f"{'scenario':<12} {'change@w':<11} {'arm':<9} {'retrains':>8} {'false al.':>9} {'delay w':>7} "
             f"{'delay rows':>10} {'acc before':>10} {'acc after':>9} {'post-retr.':>10} {'oracle':>6} "
             f"{'never':>6} {'ratio10k':>8} {'live acc':>8} {'harm':>7} {'f-ups':>5} {'rb':>2}"]
    for result in results:
        changes = result["changes"] or [None]
        for i, change in enumerate(changes):
            for arm, a in result["arms"].items():
                c = a["changes"][i] if change is not None else {}
                first = i == 0
                fa = "-" if a["false_alarms"] is None else f"{a['false_alarms']}/{a['quiet_checks']}"
                where = "-" if change is None else f"{change['name']}@{change['onset_window']}"
                lines.append(
                    f"{result['scenario'] if first else '':<12} {where:<11} {arm:<9} "
                    f"{c.get('retrains', a['retrains']):>8} {fa if first else '':>9} "
                    f"{_f(c.get('delay_windows'), 'd'):>7} {_f(c.get('delay_rows'), ',d'):>10} "
                    f"{_f(c.get('accuracy_before')):>10} {_f(c.get('accuracy_after')):>9} "
                    f"{_f(c.get('post_retrain_accuracy')):>10} {_f(c.get('oracle_same_rows')):>6} "
                    f"{_f(c.get('never_same_rows')) if arm != 'never' else '-':>6} "
                    f"{_f(c.get('oracle_long_ratio'), '.1%'):>8} "
                    f"{format(a['accuracy'], '.3f') if first else '':>8} "
                    f"{_f(a.get('harm'), '+.4f') if first else '':>7} "
                    f"{a.get('follow_ups', 0) if first else '':>5} {a.get('rollbacks', 0) if first else '':>2}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from driftloop.settings import RetrainingConfig

    parser = argparse.ArgumentParser(prog="python -m bench.policy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--quick", action="store_true", help="short streams (a minute or so)")
    parser.add_argument("--only", nargs="+", choices=[c.name for c in CASES], help="these scenarios only")
    parser.add_argument("--k", type=int, default=K, help=f"the periodic baseline's K (default {K})")
    parser.add_argument("--workdir", type=Path, help="keep the registries and stores here (default: a temp dir)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every non-quiet decision")
    strategies = typing.get_args(RetrainingConfig.model_fields["strategy"].annotation)
    parser.add_argument("--strategy", choices=strategies, help="the driftloop arm's retraining.strategy")
    parser.add_argument("--guard-rows", type=int, help="every arm's retraining.guard.rows (0: no guard set)")
    parser.add_argument("--guard-max-drop", type=float, help="every arm's retraining.guard.max_drop")
    parser.add_argument("--retraining", type=json.loads, default={}, metavar="JSON",
                        help='the driftloop arm\'s retraining overrides, e.g. \'{"significance": 0.05, '
                             '"follow_up": {"enabled": true}}\'')
    args = parser.parse_args(argv)
    guard = {k: v for k, v in (("rows", args.guard_rows), ("max_drop", args.guard_max_drop)) if v is not None}
    options = Options(args.strategy, {"guard": guard} if guard else {}, args.retraining)
    periodic = f"every-{args.k}"
    arms = ["driftloop", "never", periodic]
    progress = (lambda line: print(line, flush=True)) if args.verbose else (lambda line: None)
    results, missed = [], 0
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-policy-") as tmp:
        workdir = args.workdir or Path(tmp)
        for case in CASES:
            if args.only and case.name not in args.only:
                continue
            result = run_case(case, args.quick, arms, workdir, progress, options)
            result["targets"] = [{"target": t, "met": m, "evidence": e} for t, m, e in targets(result, periodic)]
            missed += sum(t["met"] is False for t in result["targets"])
            results.append(result)
            print(render(result, periodic), end="\n\n", flush=True)
    print(f"driftloop arm: strategy {args.strategy or 'default'}, retraining {options.driftloop or 'default'}; "
          f"every arm: retraining {options.retraining or 'default'}")
    print(summary(results))
    total = sum(t["met"] is not None for r in results for t in r["targets"])
    print(f"targets met: {total - missed} of {total}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"window_rows": WINDOW, "k": args.k, "quick": args.quick,
                                         "oracle_rows": ORACLE_ROWS, "oracle_long_rows": ORACLE_LONG_ROWS,
                                         "max_harm": MAX_HARM, "long_ratio": LONG_RATIO,
                                         "strategy": args.strategy, "retraining": options.retraining,
                                         "driftloop_retraining": options.driftloop,
                                         "scenarios": results}, indent=1))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
