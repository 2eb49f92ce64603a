"""Follow-up retrains: a change already answered is learnt again as its labelled rows accumulate.

The retrain that answers a change learns the labelled rows there are when the policy fires: a few
hundred. Tens of thousands may follow, and the same kind of model learns more from them (on
``loans``, 0.914 / 0.918 / 0.920 on 2,000 / 5,000 / 10,000 post-change rows against 0.900). So a
*series* starts when a retrain that answered a change is promoted (a check's ``drift`` or ``decay``
retrain, or an operator's request; at once or through the shadow judge): it remembers where the
change began (the first prediction id of the rows that retrain got) and how many labelled rows it
got. Once the checked rows since the change hold ``factor`` times as many labelled rows as the
series' last promoted retrain got (and at least ``retraining.min_rows``), the job retrains on them
(:class:`~monitoring.retraining.FreshRows`, trigger ``follow_up``), through the same gate: the
``window`` strategy holds out the newest rows, so candidate and champion are judged on rows
neither learnt from. ``max_rows`` caps it: then the newest ``max_rows`` labelled rows since the
change, and the series ends there. ``retraining.follow_up``: ``enabled``, ``factor``, ``max_rows``.

A follow-up waits (and is tried again next run) while

- another retrain ran in this run (a request, a retry, a check's retrain), or the retrain lease is
  held (another process is retraining);
- the newest check decided anything but ``none``: a flagged window may be a new change, whose rows
  must not be learnt as the old one's. Only checked rows count (up to the newest check's last id);
- a candidate awaits the shadow judge's verdict (a follow-up's own one included). A promotion's
  watch (:mod:`monitoring.watch`) does not hold it back: a follow-up promoted meanwhile ends that
  watch (the champion it judged no longer serves) and its own promotion is watched.

A rejected follow-up does not end the series (``stop_on_reject: false``, the default): the next
one waits for ``factor`` times the rows the rejected one had, and each is gated on its own. The
bigger steps are where the gains are (a few hundred held-out rows often cannot tell 1,500 rows
from 700), and a rejection only says this step did not show itself no worse. A series ends when a
follow-up does not win otherwise (waiting, failed or interrupted: a process
that died in the job, perhaps for want of memory, is not sent in again), when its shadow is
rejected, when its rows reached ``max_rows``, when a newer retrain starts (a new change: the policy
fired again) or a newer one is promoted (which starts the next series), and when the champion is no
longer the series' last promotion (a watch rolled it back, an operator promoted another).

The series is read from the audit trail on every run, so a restarted monitor goes on with it:
``retrain_started`` and ``retrain_<outcome>`` events with ``trigger: follow_up``, ``series`` (the
id of the promotion event that started it), ``step`` (1, 2, ...), the rows (``first_id``,
``last_id``, ``rows`` logged, ``labelled``) and, on the outcome, ``series_ended`` (why, or null).
The policy calibrates a promoted follow-up afresh (it keys on the champion's version), but no
cool-down starts: a follow-up answers no new change, and it only runs after a quiet window, so the
policy has no streak to restart; a cool-down would only hold back the answer to the next change
(in tests/unit/test_monitor.py's timeline, a concept change answered one window later). The
``reweighted`` strategy learns no live label: with it there are no follow-ups.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from driftloop.models.registry import Registry
from driftloop.monitoring.lease import RETRAIN as RETRAIN_LEASE
from driftloop.monitoring.lease import LeaseBusy, read_state
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.retraining import FreshRows, Job
from driftloop.monitoring.store import PredictionStore
from driftloop.vocabulary import Check, Decision, EventKind, Outcome, Trigger

if TYPE_CHECKING:
    from driftloop.settings import RetrainingConfig

log = logging.getLogger("driftloop.monitor")
# What the series is read from.
EVENTS = (EventKind.RETRAIN_STARTED, EventKind.RETRAIN_PROMOTED, EventKind.RETRAIN_REJECTED,
          EventKind.RETRAIN_WAITING, EventKind.RETRAIN_SHADOW, EventKind.RETRAIN_FAILED,
          EventKind.SHADOW_PROMOTED, EventKind.SHADOW_REJECTED, EventKind.RETRAIN_REQUEST_DONE)


@dataclass(frozen=True)
class Series:
    """Follow-ups of one change, as the audit trail tells them."""

    id: int  # the event of the promotion that started it
    first_id: int  # the change's first prediction id
    labelled: int  # labelled rows the series' last promoted retrain got
    version: str  # the champion that promotion made
    step: int = 0  # follow-ups started so far
    started: int | None = None  # a follow-up's retrain_started without its outcome (its process died)
    shadow: str | None = None  # a follow-up's candidate awaiting the shadow judge
    ended: str | None = None  # why the series is over (None: it goes on)
    tried: int = 0  # labelled rows of the newest follow-up the gate rejected (the next waits for more)


def read_series(events: list[dict[str, Any]]) -> Series | None:
    """The newest series in ``events`` (the audit trail's retrain events, in id order), or None."""
    series: Series | None = None
    starts: dict[int, dict[str, Any]] = {}  # episode -> the latest retrain_started of a retrain that answered a change
    shadows: dict[str, tuple[str, Any]] = {}  # candidate -> ("step", its labelled) or ("change", its start)

    def ends(why: str) -> None:
        nonlocal series
        if series is not None and series.ended is None:
            series = replace(series, ended=why)

    def begins(event: dict[str, Any], start: dict[str, Any], outcome: dict[str, Any], version: str) -> None:
        nonlocal series
        labelled = start.get("labelled", outcome.get("train_rows", 0) + outcome.get("holdout_rows", 0))
        series = Series(event["id"], int(start["first_id"]), int(labelled), version)

    for e in events:
        kind, d = e["kind"], e["detail"]
        if d.get("trigger") == Trigger.FOLLOW_UP:
            if series is None or d.get("series") != series.id or series.ended is not None:
                continue
            if kind == EventKind.RETRAIN_STARTED:
                series = replace(series, step=d["step"], started=e["id"])
            elif kind == EventKind.RETRAIN_PROMOTED:
                series = replace(series, labelled=d["labelled"], version=d["candidate"], started=None,
                                 ended=d.get("series_ended"))
            elif kind == EventKind.RETRAIN_SHADOW:
                shadows[d["candidate"]] = ("step", d["labelled"])
                series = replace(series, started=None, shadow=d["candidate"])
            else:  # rejected, waiting, failed: over unless the outcome says it goes on (a busy lease, a rejection)
                series = replace(series, started=None, ended=d.get("series_ended"),
                                 tried=d.get("labelled", 0) if kind == EventKind.RETRAIN_REJECTED else series.tried)
        elif kind == EventKind.RETRAIN_STARTED:
            starts[d.get("episode") or e["id"]] = d  # a retry's start: the rows it got
            ends(f"a new retrain started (window {e['window']}, {d.get('trigger')}): a new change")
        elif kind == EventKind.RETRAIN_PROMOTED and (start := starts.get(d.get("episode"))):
            ends("a newer retrain was promoted")
            begins(e, start, d, d["candidate"])
        elif kind == EventKind.RETRAIN_SHADOW and (start := starts.get(d.get("episode"))):
            shadows[d["candidate"]] = ("change", (start, d))
        elif kind == EventKind.RETRAIN_REQUEST_DONE and d.get("outcome") == Outcome.PROMOTED and "first_id" in d:
            ends("a newer retrain was promoted")
            begins(e, d, d, d["candidate"])
        elif kind in (EventKind.SHADOW_PROMOTED, EventKind.SHADOW_REJECTED) and d.get("shadow") in shadows:
            what, about = shadows.pop(d["shadow"])
            promoted = kind == EventKind.SHADOW_PROMOTED
            if what == "change" and promoted:
                ends("a newer retrain was promoted")
                begins(e, *about, d["shadow"])
            elif what == "step" and series is not None and series.shadow == d["shadow"]:
                series = replace(series, shadow=None)
                if promoted:
                    series = replace(series, labelled=about, version=d["shadow"])
                else:
                    ends(f"its candidate {d['shadow']} was rejected in shadow")
    return series


class FollowUps:
    """Runs the follow-up retrains of the newest series (``retraining``: ``follow_up``, ``min_rows``
    and ``strategy``)."""

    def __init__(self, config: RetrainingConfig, store: PredictionStore, registry: Registry, job: Job,
                 fresh: FreshRows, metrics: MonitorMetrics) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.job = job
        self.fresh = fresh
        self.metrics = metrics

    def series(self) -> Series | None:
        """The newest series (ended or not), from the audit trail."""
        return read_series(self.store.events(EVENTS))

    def needed(self, series: Series) -> int:
        """Labelled rows since the change that the series' next follow-up waits for."""
        follow = self.config.follow_up
        base = max(series.labelled, series.tried)
        return min(max(math.ceil(base * follow.factor), self.config.min_rows), follow.max_rows)

    def run(self, *, retrained: bool = False) -> Outcome | None:
        """The next follow-up, if one is due (see the module docstring); ``retrained``: another
        retrain ran in this run. Returns its outcome, or None."""
        follow = self.config.follow_up
        if not follow.enabled or self.config.strategy == "reweighted" or retrained:
            return None
        series = self.series()
        if series is None or series.ended is not None or series.shadow is not None:
            return None  # none, over, or its candidate awaits the shadow judge (or was cleared by hand)
        if read_state(self.store, RETRAIN_LEASE).active:
            return None
        if series.started is not None:
            return self._interrupted(series)
        last = self.store.last_check()
        champion = self.registry.champion()
        if champion is None or champion.version != series.version or self.registry.candidate() is not None:
            return None
        if last is None or last.decision != Decision.NONE or series.labelled >= follow.max_rows:
            return None
        count, last_id = self.store.count_rows(series.first_id, last.last_id, labelled=self.fresh.supervised)
        if count < self.needed(series) or last_id is None:
            return None
        return self._step(series, last, last_id)

    def _step(self, series: Series, last: Check, last_id: int) -> Outcome:
        cap = self.config.follow_up.max_rows
        fresh = self.fresh(series.first_id, last_id)
        learnable = self.fresh.learnable(fresh)
        if learnable.sum() > cap:  # the newest max_rows labelled rows since the change
            fresh = fresh[fresh["id"] >= fresh.loc[learnable, "id"].iloc[-cap]].reset_index(drop=True)
            learnable = self.fresh.learnable(fresh)
        labelled, step = int(learnable.sum()), series.step + 1
        newest = f" (the newest {cap}: retraining.follow_up.max_rows)" if labelled == cap else ""
        reason = (f"follow-up {step} of the change since row {series.first_id}: {labelled} labelled rows since it"
                  f"{newest}, {labelled / max(series.labelled, 1):.1f}x the {series.labelled} its last promoted "
                  f"retrain learnt from")
        where: dict[str, Any] = {"trigger": Trigger.FOLLOW_UP, "series": series.id, "step": step,
                                 "first_id": int(fresh["id"].iloc[0]), "last_id": last_id,
                                 "change_first_id": series.first_id}
        started = self.store.record_event(EventKind.RETRAIN_STARTED, where | {
            "rows": len(fresh), "labelled": labelled, "reason": reason}, last.window)
        where |= {"labelled": labelled, "episode": started}
        log.info("window %d: %s", last.window, reason)
        clock = time.perf_counter()
        try:
            result = self.job(fresh, trigger=Trigger.FOLLOW_UP, reason=reason)
        except LeaseBusy as exc:  # another process retrains: this step is tried again later
            return self._failed(where, last.window, f"{type(exc).__name__}: {exc}", None)
        except Exception as exc:
            log.exception("window %d: follow-up %d failed", last.window, step)
            return self._failed(where, last.window, f"{type(exc).__name__}: {exc}",
                                "the follow-up failed (not retried: the next change starts a new series)")
        outcome = Outcome(result.status)
        ended = None  # promoted or in shadow (or rejected, unless stop_on_reject): the series goes on
        goes_on = (Outcome.PROMOTED, Outcome.SHADOW) + (() if self.config.follow_up.stop_on_reject
                                                          else (Outcome.REJECTED,))
        if outcome not in goes_on:
            ended = f"the follow-up was {outcome}: {result.reason}"
        elif labelled >= cap:
            ended = f"its rows reached retraining.follow_up.max_rows ({cap})"
        self.store.record_event(EventKind.retrain(outcome), result.to_dict() | where | {"series_ended": ended},
                                last.window, result.candidate)
        self.metrics.retrains.labels(outcome).inc()
        if outcome != Outcome.WAITING:
            self.metrics.retrain_seconds.observe(time.perf_counter() - clock)
        log.info("window %d: follow-up %d %s%s", last.window, step, outcome, f"; series ended: {ended}" if ended else "")
        return outcome

    def _interrupted(self, series: Series) -> Outcome:
        """A follow-up whose process died inside the job (no process holds the retrain lease)."""
        start = next(e for e in self.store.events(EventKind.RETRAIN_STARTED) if e["id"] == series.started)
        d = start["detail"]
        where = {k: d[k] for k in ("trigger", "series", "step", "first_id", "last_id", "change_first_id")
                 if k in d} | {"labelled": d["labelled"], "episode": start["id"]}
        log.error("follow-up %d was interrupted (its process stopped)", d["step"])
        return self._failed(where, start["window"], "interrupted: the process running it stopped",
                            "the follow-up was interrupted (not retried: it may not fit in memory)")

    def _failed(self, where: dict[str, Any], window: int | None, error: str, ended: str | None) -> Outcome:
        self.store.record_event(EventKind.RETRAIN_FAILED, where | {"error": error, "retry_at": None,
                                                                   "series_ended": ended}, window)
        self.metrics.retrains.labels(Outcome.FAILED).inc()
        return Outcome.FAILED
