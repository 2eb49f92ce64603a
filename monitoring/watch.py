"""The promotion watch: after every promotion, the previous champion keeps scoring live rows beside
the new one, and the promotion is rolled back if the new champion proves significantly worse.

A gate judges a candidate on held-out rows from before it served; the watch judges it on the rows
it actually answered. When the registry's champion pointer names a new promotion (``promote``,
not ``rollback``) with a predecessor, :class:`PromotionWatch` makes that predecessor the shadow in
the ``watch`` role (:class:`~models.registry.ShadowRole`): the serving workers score every
logged request the champion answered with it too, off the request path, as they do a candidate
(:mod:`service.serving`). It looks ``looks`` times, when ``min_labels``, 2x, 4x, ... of those
rows have labels: each look is the gate's paired test
(:func:`driftloop.training.evaluate.compare`) with the roles reversed, "is the predecessor better
than the new champion on every labelled row both answered so far?", margin 0, at
``significance / looks``.

- significantly better: the registry rolls back to exactly that predecessor (only if the champion
  is still the watched promotion), the rollback is recorded with its figures
  (``watch_rolled_back``) and counted (``driftloop_rollbacks_total{reason="watch"}``). No cool-down
  starts: the predecessor is no new model to wait for, and the change the rolled-back champion
  failed to answer is still there, so the policy's streak goes on and a retrain answers it again;
- otherwise the watch goes on to the next look (``watch_looked``), or, after the last, ends and
  the new champion stays (``watch_kept``).

Why several looks, and why on all the rows the champion answered (not only those from the world it
was trained for): the gate judged the candidate on the newest rows before the promotion; what
matters is whether it serves the traffic that follows better than the model it replaced. Rows
that arrive grouped (a stretch of one sub-population, then another) can make a candidate win on
one stretch and lose on the next; a single look at ``min_labels`` rows would often see only the
first stretch. If the world changes again during the watch and the predecessor is significantly
better on it, rolling back serves the better model meanwhile, and the policy answers the change.
Bonferroni over the looks (each at ``significance / looks``) keeps the chance of rolling back a
champion that is truly as good under ``significance`` however the looks fall: conservative, but
needs no assumption about how the rows of successive looks relate. Once a look is recorded it
is never repeated (a restarted monitor counts the ``watch_looked`` events), and the look schedule,
minimum and significance are those the watch started with.

The watch's state is the shadow pointer and the audit trail: a ``watch_started`` event names the
promotion (its pointer's ``promoted_at``) and every watch ends in one of the three events above,
so a restarted monitor resumes an open watch and never watches a promotion twice. A promotion
older than ``max_windows`` checked windows is past its watch and not started (a monitor upgraded
onto an old champion). A candidate waiting in shadow keeps the pointer: its promotion is watched
once it is judged. ``retraining.watch.enabled: false`` switches it off (an open watch is ended).
Tasks without labels (clustering, anomaly) are never watched.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from driftloop.models.errors import DriftloopError
from driftloop.models.registry import Champion, Registry, Shadow, ShadowRole
from driftloop.models.schema import SUPERVISED
from driftloop.monitoring.metrics import ROLLBACK_WATCH, MonitorMetrics
from driftloop.monitoring.store import PredictionStore, as_utc
from driftloop.training.evaluate import MCNEMAR, Comparison, compare
from driftloop.vocabulary import EventKind

if TYPE_CHECKING:
    from driftloop.settings import WatchConfig

log = logging.getLogger("driftloop.monitor")
ACTOR = "monitor"
ENDS = (EventKind.WATCH_KEPT, EventKind.WATCH_ROLLED_BACK, EventKind.WATCH_EXPIRED)
# what a watch_started event from before looks were configurable means
ONE_LOOK = 1


class PromotionWatch:
    """Watches the latest promotion (``retraining.watch``; ``task``: the metric)."""

    def __init__(self, config: WatchConfig, task: str, store: PredictionStore, registry: Registry,
                 metrics: MonitorMetrics) -> None:
        self.config = config
        self.task = task
        self.store = store
        self.registry = registry
        self.metrics = metrics

    def run(self) -> dict[str, Any] | None:
        """Start, judge or end the watch, whichever is due; returns the detail of the event recorded
        (with its ``kind``), or None if nothing happened."""
        if self.task not in SUPERVISED:
            return None
        shadow = self.registry.shadow()
        if not self.config.enabled and (shadow is None or shadow.role != ShadowRole.WATCH):
            return None  # off, and no watch left open to end: nothing to read
        champion, watch = self.registry.champion(), self.open_watch()
        ended = None
        if watch is not None:
            why = self._ended(watch["detail"], champion, shadow)
            if why is None:
                return self._judge(watch, champion, shadow)
            ended = self._end(watch, EventKind.WATCH_EXPIRED, why, shadow)
            shadow = self.registry.shadow()
        if not self.config.enabled:
            return self._clear_stray(shadow, "retraining.watch.enabled is false") or ended
        return self._start(champion, shadow) or ended  # a newer promotion's watch, if one starts

    def open_watch(self) -> dict[str, Any] | None:
        """The ``watch_started`` event of the watch still open, if any."""
        started = self.store.events(EventKind.WATCH_STARTED)
        if not started:
            return None
        last = started[-1]
        ended = any(e["id"] > last["id"] and e["detail"].get("started") == last["id"]
                    for kind in ENDS for e in self.store.events(kind))
        return None if ended else last

    # -- starting ---------------------------------------------------------------------------------
    def _start(self, champion: Champion | None, shadow: Shadow | None) -> dict[str, Any] | None:
        if champion is None or champion.action != "promote" or not champion.lineage or self._watched(champion):
            return self._clear_stray(shadow, "no promotion is watched")
        if shadow is not None and shadow.role == ShadowRole.CANDIDATE:
            return None  # the candidate keeps the pointer; this promotion is watched once it is judged
        since = as_utc(champion.promoted_at)
        # at most max_windows: all a decision needs to know is whether that many have passed
        waited = [c.window for c in self.store.checks(limit=self.config.max_windows) if as_utc(c.created_at) >= since]
        if len(waited) >= self.config.max_windows:
            return self._clear_stray(shadow, "no promotion is watched")  # past its watch (an older promotion)
        predecessor = champion.lineage[-1]
        try:
            watching = self.registry.set_shadow(
                predecessor, actor=ACTOR, role=ShadowRole.WATCH,
                reason=f"watch: {champion.version} promoted at {champion.promoted_at}; its predecessor scores "
                       f"live rows beside it")
        except DriftloopError as exc:  # pruned or corrupt: nothing to compare with (tried again next run)
            log.warning("cannot watch the promotion of %s: predecessor %s: %s", champion.version, predecessor, exc)
            return None
        at = ", ".join(map(str, schedule(self.config.min_labels, self.config.looks)))
        detail = {"champion": champion.version, "predecessor": predecessor, "promoted_at": champion.promoted_at,
                  "set_at": watching.set_at, "min_labels": self.config.min_labels, "looks": self.config.looks,
                  "max_windows": self.config.max_windows, "significance": self.config.significance,
                  "reason": f"{champion.version} promoted ({champion.reason}); {predecessor} scores the rows it "
                            f"answers; it looks at {at} labelled rows"}
        self._record(EventKind.WATCH_STARTED, detail, champion.version)
        log.info("watching the promotion of %s: %s scores beside it", champion.version, predecessor)
        return detail | {"kind": EventKind.WATCH_STARTED}

    def _watched(self, champion: Champion) -> bool:
        """Whether this promotion (this pointer write) was watched already."""
        return any((e["detail"].get("champion"), e["detail"].get("promoted_at")) == (champion.version,
                                                                                    champion.promoted_at)
                   for e in self.store.events(EventKind.WATCH_STARTED))

    def _clear_stray(self, shadow: Shadow | None, why: str) -> None:
        """A watch shadow no open watch belongs to (a process that died in between) is cleared."""
        if shadow is not None and shadow.role == ShadowRole.WATCH:
            self.registry.clear_shadow(actor=ACTOR, reason=f"watch: {why}")
        return None

    # -- judging ----------------------------------------------------------------------------------
    def _judge(self, watch: dict[str, Any], champion: Champion, shadow: Shadow) -> dict[str, Any] | None:
        d = watch["detail"]
        looks, done = d.get("looks", ONE_LOOK), self.looks_of(watch)
        points = schedule(d["min_labels"], looks)
        rows = self.store.shadow_rows(shadow.version)
        # the rows this champion answered and the predecessor scored, since this watch began
        rows = rows[(rows["model_version"] == champion.version)
                    & (rows["created_at"].map(as_utc) >= as_utc(shadow.set_at))]
        labelled = rows[rows["label"].notna()]
        counts = {"scored": len(rows), "labelled": len(labelled)}
        since = as_utc(shadow.set_at)
        # at most max_windows: all a decision needs to know is whether that many have passed
        waited = [c.window for c in self.store.checks(limit=self.config.max_windows) if as_utc(c.created_at) >= since]
        out_of_time = len(waited) >= self.config.max_windows
        reached = sum(len(labelled) >= n for n in points)  # schedule points passed (a burst of labels: several)
        if reached <= done and not out_of_time:
            return None  # the next look is not due
        if len(labelled) < d["min_labels"]:
            why = (f"{len(labelled)} of {d['min_labels']} labelled rows after {len(waited)} windows "
                   f"(retraining.watch.max_windows); {champion.version} stays")
            return self._end(watch, EventKind.WATCH_EXPIRED, why, shadow, counts, window=waited[-1])
        # the look at the furthest point reached (points passed over in a burst are skipped, not
        # repeated on the same rows: each would spend significance / looks for no new evidence)
        look = max(reached, done + 1)
        last = look >= looks or out_of_time
        # is the predecessor significantly better on the same rows? (the gate's test, roles reversed)
        c = compare(self.task, labelled["label"], champion=labelled["prediction"],
                    candidate=labelled["shadow_prediction"], margin=0.0, significance=d["significance"] / looks)
        worse = c.significant and c.gain > 0
        figures = figures_of(c) | counts | {"look": look, "looks": looks}
        evidence = (f"look {look} of {looks}: {c.metric} on the {len(labelled)} labelled live rows both answered: "
                    f"champion {d['champion']} {c.champion:.4f}, predecessor {d['predecessor']} {c.candidate:.4f}, "
                    f"{describe(c)}")
        if not worse and not last:
            detail = {"champion": d["champion"], "predecessor": d["predecessor"]} | figures | {
                "started": watch["id"], "reason": f"not significantly worse so far: {evidence}"}
            self._record(EventKind.WATCH_LOOKED, detail, d["champion"])
            log.info("watch of %s: %s", d["champion"], detail["reason"])
            return detail | {"kind": EventKind.WATCH_LOOKED}
        if not worse:
            return self._end(watch, EventKind.WATCH_KEPT, f"not significantly worse: {evidence}", shadow, figures)
        try:  # exactly to the watched predecessor, and only if the champion is still the watched promotion
            self.registry.rollback(actor=ACTOR, reason=f"watch: significantly worse than {d['predecessor']}: "
                                                       f"{evidence}", expect=champion)
        except DriftloopError as exc:
            if self.registry.champion() != champion:  # it moved on meanwhile: the next run ends this watch
                log.warning("watch of %s: not rolled back: %s", d["champion"], exc)
                return None
            log.error("watch of %s: significantly worse, but the rollback failed: %s", d["champion"], exc)
            return self._end(watch, EventKind.WATCH_EXPIRED, f"significantly worse, but the rollback to "
                             f"{d['predecessor']} failed ({exc}): {evidence}", shadow, figures)
        self.metrics.rollbacks.labels(ROLLBACK_WATCH).inc()
        # the rollback cleared the shadow: the predecessor is the champion again
        return self._end(watch, EventKind.WATCH_ROLLED_BACK, f"significantly worse: {evidence}", None, figures)

    def looks_of(self, watch: dict[str, Any]) -> int:
        """The last look the watch ``watch`` (its start event) took without a verdict (0: none)."""
        return max((e["detail"].get("look", 0) for e in self.store.events(EventKind.WATCH_LOOKED)
                    if e["detail"].get("started") == watch["id"]), default=0)

    # -- ending -----------------------------------------------------------------------------------
    def _ended(self, watch: dict[str, Any], champion: Champion | None, shadow: Shadow | None) -> str | None:
        """Why the open watch ``watch`` (its start's detail) cannot go on, or None if it can."""
        if champion is None or (champion.version, champion.promoted_at) != (watch["champion"], watch["promoted_at"]):
            now = "no champion" if champion is None else (
                f"{champion.version} ({champion.action} by {champion.actor}: {champion.reason})")
            return f"the champion changed before a verdict: now {now}"
        if not self.config.enabled:
            return "retraining.watch.enabled is false"
        if shadow is None or (shadow.version, shadow.role) != (watch["predecessor"], ShadowRole.WATCH):
            now = "none" if shadow is None else f"{shadow.role} {shadow.version} (by {shadow.actor}: {shadow.reason})"
            return f"the shadow pointer no longer names {watch['predecessor']} as a watch: now {now}"
        return None

    def _end(self, watch: dict[str, Any], kind: EventKind, why: str, shadow: Shadow | None,
             figures: dict[str, Any] | None = None, window: int | None = None) -> dict[str, Any]:
        """Clear the watch's shadow (if the pointer still names it) and record how the watch ended."""
        d = watch["detail"]
        if shadow is not None and (shadow.version, shadow.role) == (d["predecessor"], ShadowRole.WATCH):
            self.registry.clear_shadow(actor=ACTOR, reason=f"watch {kind.removeprefix('watch_')}: {why}")
        # the figures first: `driftloop history --events` shows the first 160 characters
        detail = {"champion": d["champion"], "predecessor": d["predecessor"]} | (figures or {}) | {
            "promoted_at": d["promoted_at"], "started": watch["id"], "min_labels": self.config.min_labels,
            "reason": why}
        self._record(kind, detail, d["champion"], window if window is not None else self._window())
        level = logging.WARNING if kind == EventKind.WATCH_ROLLED_BACK else logging.INFO
        log.log(level, "watch of %s: %s: %s", d["champion"], kind, why)
        return detail | {"kind": kind}

    def _record(self, kind: EventKind, detail: dict[str, Any], version: str, window: int | None = None) -> None:
        self.store.record_event(kind, detail, window if window is not None else self._window(), version)

    def _window(self) -> int | None:
        last = self.store.last_check()
        return last.window if last else None


def schedule(min_labels: int, looks: int) -> list[int]:
    """The labelled rows at which a watch looks: ``min_labels``, twice that, four times, ..."""
    return [min_labels * 2 ** k for k in range(looks)]


def figures_of(c: Comparison) -> dict[str, Any]:
    """A reversed comparison's figures, named for the watch (the predecessor was the 'candidate')."""
    return {"metric": c.metric, "champion_score": c.champion, "predecessor_score": c.candidate, "p_value": c.p_value,
            "significance": c.significance, "significant": c.significant, "test": c.test,
            "predecessor_only": c.candidate_only, "champion_only": c.champion_only}


def describe(c: Comparison) -> str:
    rows = (f"{c.candidate_only} rows only the predecessor got right, {c.champion_only} only the champion"
            if c.test == MCNEMAR else f"{c.rows} rows")
    return (f"one-sided p {c.p_value:.4f} that the predecessor is better "
            f"(significance {c.significance:g}; {c.test}: {rows})")
