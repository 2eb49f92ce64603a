"""Retention: everything that grows is pruned, and nothing the monitor still needs goes.

What grows, and the limits (``monitoring.retention``; each 0 or null: off):

- the prediction log: ``predictions``, with each row's label (``feedback``) and the shadow's answers
  to it (``shadow_predictions``), older than ``predictions_days``. They go together: a kept row
  keeps its label (a retrain learns from both), and a label or shadow answer means nothing without
  its row. With ``archive_dir`` they are first copied to Parquet (below);
- ``checks`` and ``events``: older than ``checks_days`` / ``events_days``, or beyond the newest
  ``checks_max`` / ``events_max``. Both go oldest first (a prefix by window, by id), so what is left
  reads as the audit trail did: a ``retrain_request_done`` never outlives its ``retrain_requested``
  (the request would run again), a series' promotion never outlives its start;
- the HTML reports directly in ``monitoring.reports_dir`` (``*.html``) and the Evidently workspace's
  snapshot files (``<workspace>/<project>/snapshots/*.json``, :mod:`monitoring.workspace`): older
  than ``reports_days`` / ``snapshots_days`` by the file's modification time (when it was written),
  or beyond the newest ``reports_max`` / ``snapshots_max``. A snapshot's ``.partial`` left by a
  killed write goes after an hour. A check's ``report_path`` may then name a deleted report.

What the monitor still needs (:func:`needs`) is kept whatever the limits, as three floors:
checks of windows from ``window`` on, prediction rows with ids from ``row_id`` on (with their labels
and shadow answers), events with ids from ``event_id`` on. Each floor is the lowest of the rules:

- *unchecked*: with no check recorded yet every row waits for one: nothing is deleted; after, rows
  above the newest check's ``last_id`` (the next windows, the early warning's estimates);
- *newest windows*: the newest ``keep_windows`` windows, and at least ``monitoring.consecutive``
  (an operator's request retrains on those), ``cooldown_windows + 1`` (a restarted policy's
  cool-down), ``retraining.shadow.max_windows`` and ``retraining.watch.max_windows`` (the shadow
  judge and the watch read the shadow's rows since it was set, and end after that many windows):
  their checks, their rows (from the first one's ``first_id``) and the events recorded for them
  (from the first event whose window is among them);
- *streak*: while the newest window is flagged, the windows since the newest quiet one (none,
  suspect, held) or retrain that ran (a ``retrain`` decision that came to promoted, rejected but
  not ``promising``, failed or running; a scheduled promotion), that window included (so the next
  run finds the same streak), and their rows: the retrain they lead to learns every row of the
  streak (``PolicyDecision.since_window``). Not in dry-run mode (``monitoring.dry_run``), where no
  retrain reads them and a streak can last as long as the drift;
- *pending retry*: the newest failed retrain whose retry is due later and that no newer retrain
  superseded (``RetrainRunner.retry_due``): its window, rows (``first_id``) and first try's events;
  and every check still ``running`` (``RetrainRunner.recover`` retries it): its window, its
  retrain's rows and start;
- *follow-up series*: an open series (:func:`monitoring.follow_up.read_series`) counts and learns
  the rows since its change (``first_id``) and is read from its promotion and that retrain's first
  start on. It ends at the latest with the follow-up that learnt ``retraining.follow_up.max_rows``
  labelled rows;
- *pending request*: a ``retrain_requested`` without its ``retrain_request_done``;
- *watch*: the newest ``watch_started`` (a promotion already watched is never watched again).

A restarted monitor's policy replays the checks from the ``window`` floor on, plus the current
champion's first ``calibration_windows`` calibrating checks (quiet, with ``min_labels`` of its
labels) wherever they lie: :func:`restore_checks`, bounded, and the same policy state as a replay
of every check ever stored (the streak, the cool-down and the calibration are all in there).

The scheduled retrain learns the rows logged since the champion's promotion that are still there:
after ``predictions_days`` it learns from fewer. Rows held past their age by a rule above are
reported (``held``) by each run, with the rule.

Deletes go in batches of ``batch_rows`` ids (windows, event ids), one transaction each, so a large
prune never holds SQLite's single write lock for long: on SQLite each batch is followed by a pause
as long as it held the lock (at least 0.1 s, SQLite's longest busy-wait step, so a waiting writer
always gets its turn), never more than a second. PostgreSQL takes the same statements, without
the pause (rows are locked, not the table). The prediction log is walked in id order from its oldest
row and the walk stops at the first batch with no row past its age (the log is in time order to
within a writer's flush).

SQLite's file. A store created by this driftloop has incremental auto-vacuum (set by the
migrations before the first table): after deleting, a run gives the freed pages back to the disk
``VACUUM_PAGES`` at a time (40 MB at SQLite's 4 KB pages), one short write transaction each, with
the same pause as a batch, then truncates the write-ahead log (a large prune grows it), so the
file follows what the store holds (``returned_bytes``). An older store (made with auto-vacuum
off, which SQLite cannot switch without a full VACUUM) keeps its file at its high-water mark: the
freed pages are reused by new rows. Nothing here runs VACUUM: it rewrites the whole file holding
the write lock throughout (seconds to minutes), and every service writer waits for it;
``driftloop db prune --vacuum`` runs it by hand (and switches an older store to incremental). Each
run reports the free space left inside the file (``free_bytes``). On PostgreSQL autovacuum makes
the space reusable.

The archive. With ``archive_dir``, each run writes one Parquet file per table,
``<archive_dir>/predictions/<run>_<first id>-<last id>.parquet`` (id, request_id, created_at,
model_version, features and prediction as their JSON text, confidence, label as JSON text,
label_received_at) and ``<archive_dir>/shadow_predictions/...`` (request_id, model_version,
prediction, confidence, created_at): ``pandas.read_parquet(archive_dir / "predictions")`` reads every
run. The whole file is written, synced and renamed into place before the first row is deleted; each
batch is then deleted only if it still holds exactly the rows, labels and shadow answers copied (a
label that arrived in between leaves that batch for the next run, which copies it again: an id may
appear in two files, the later one complete, never in none). Nothing is pickled.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from driftloop.monitoring.follow_up import EVENTS as SERIES_EVENTS
from driftloop.monitoring.follow_up import read_series
from driftloop.monitoring.retraining import follow_up as not_retried
from driftloop.monitoring.store import (PredictionStore, checks, events, feedback, predictions, shadow_predictions,
                                        utcnow)
from driftloop.vocabulary import RETRAINED, Check, Decision, EventKind, Outcome, Trigger

if TYPE_CHECKING:
    from driftloop.monitoring.metrics import MonitorMetrics
    from driftloop.monitoring.monitor import Monitor
    from driftloop.settings import Settings

log = logging.getLogger("driftloop.retention")
QUIET = (Decision.NONE, Decision.SUSPECT, Decision.HELD)  # windows that end a flagged streak
CALIBRATING = (Decision.NONE, Decision.SUSPECT)  # no signal: RetrainPolicy._calibrate may pool them
WHAT = ("predictions", "feedback", "shadow_predictions", "checks", "events", "reports", "snapshots")
DELETED_METRIC = "driftloop_retention_deleted"
PARTIAL_AGE_S = 3600.0  # a snapshot's .partial older than this belongs to a write that died
LONGEST_PAUSE_S, SHORTEST_PAUSE_S = 1.0, 0.1  # SQLite, between batches (see the module docstring)
VACUUM_PAGES = 10_240  # SQLite: pages given back to the disk per transaction (incremental auto-vacuum)
Counts = tuple[int, int, int]  # a batch's prediction rows, labels, shadow answers


# -- what the monitor still needs --------------------------------------------------------------------
@dataclass(frozen=True)
class Needs:
    """The floors below which retention may delete (see the module docstring)."""

    window: int | None  # checks of windows from here on are kept (None: no check recorded)
    row_id: int  # prediction rows with ids from here on are kept (0: every row)
    event_id: int | None  # events with ids from here on are kept (None: no rule holds any)
    calibration: tuple[int, ...] = ()  # the champion's calibrating windows, kept wherever they lie
    why: dict[str, str] = field(default_factory=dict)  # floor -> the rule that set it

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "row_id": self.row_id, "event_id": self.event_id,
                "calibration": list(self.calibration), "why": dict(self.why)}


def keep_windows(settings: Settings) -> int:
    """How many of the newest windows are always kept: ``keep_windows``, and at least what the
    policy, an operator's request, the shadow judge and the watch read back."""
    m, r = settings.monitoring, settings.retraining
    return max(m.retention.keep_windows, m.consecutive, m.cooldown_windows + 1, r.shadow.max_windows,
               r.watch.max_windows)


def needs(store: PredictionStore, settings: Settings) -> Needs:
    """What the monitor still needs of the store, read from it now (a few small queries)."""
    newest = store.last_check()
    if newest is None:
        return Needs(None, 0, None, why={"row_id": "unchecked"})
    kinds = (*SERIES_EVENTS, EventKind.RETRAIN_REQUESTED, EventKind.WATCH_STARTED)
    trail = store.events(kinds)  # retrain, request and watch events: a few per retrain
    windows: dict[str, int] = {"newest windows": max(0, newest.window - keep_windows(settings) + 1)}
    rows: dict[str, int] = {"unchecked": newest.last_id + 1}
    held: dict[str, int] = {}  # events

    if not settings.monitoring.dry_run and (bound := _streak_bound(store, trail)) < newest.window:
        windows["streak"] = max(bound, 0)  # and the window before it, so the next run finds the same streak
    _pending_retrains(store, trail, windows, rows, held)
    series = read_series([e for e in trail if e["kind"] in SERIES_EVENTS])
    if series is not None and series.ended is None:
        rows["follow-up series"] = series.first_id
        held["follow-up series"] = _series_begins(series.id, trail)
    done = {e["detail"].get("request") for e in trail if e["kind"] == EventKind.RETRAIN_REQUEST_DONE}
    pending = [e["id"] for e in trail if e["kind"] == EventKind.RETRAIN_REQUESTED and e["id"] not in done]
    if pending:
        held["pending request"] = min(pending)
    watches = [e["id"] for e in trail if e["kind"] == EventKind.WATCH_STARTED]
    if watches:
        held["watch"] = max(watches)

    window_rule = min(windows, key=lambda k: windows[k])
    floor = windows[window_rule]
    with store.engine.connect() as conn:
        first_row, first_event = conn.execute(sa.select(
            sa.select(sa.func.min(checks.c.first_id)).where(checks.c.window >= floor).scalar_subquery(),
            sa.select(sa.func.min(events.c.id)).where(events.c.window >= floor).scalar_subquery())).one()
    if first_row is not None:
        rows[window_rule] = min(rows.get(window_rule, first_row), first_row)
    if first_event is not None:
        held[window_rule] = min(held.get(window_rule, first_event), first_event)
    row_rule = min(rows, key=lambda k: rows[k])
    event_rule = min(held, key=lambda k: held[k]) if held else None
    why = {"window": window_rule, "row_id": row_rule} | ({"event_id": event_rule} if event_rule else {})
    return Needs(floor, rows[row_rule], held[event_rule] if event_rule else None,
                 tuple(_calibration(store, settings, newest)), why)


def restore_checks(store: PredictionStore, settings: Settings) -> list[Check]:
    """The checks a restarted monitor's policy replays (``monitor.restore``): the current
    champion's calibrating checks, then every check from the ``window`` floor on; bounded, and
    the same policy state as a replay of them all (see the module docstring)."""
    need = needs(store, settings)
    if need.window is None:
        return []
    head = [w for w in need.calibration if w < need.window]
    return store.checks_of(head) + store.checks(since_window=need.window - 1)


def _streak_bound(store: PredictionStore, trail: list[dict[str, Any]]) -> int:
    """The newest quiet window or retrain that ran (-1: none): RetrainPolicy's streak starts after it."""
    promising = {e["window"] for e in trail if e["kind"] == EventKind.RETRAIN_REJECTED
                 and e["detail"].get("promising") and e["window"] is not None}
    scheduled = [e["window"] for e in trail if e["kind"] == EventKind.RETRAIN_PROMOTED
                 and e["detail"].get("trigger") == Trigger.SCHEDULE and e["window"] is not None]
    ran = (checks.c.decision == str(Decision.RETRAIN)) & checks.c.outcome.in_([str(o) for o in RETRAINED])
    if promising:
        ran &= checks.c.window.notin_(sorted(promising))
    with store.engine.connect() as conn:
        quiet, reset = conn.execute(sa.select(
            sa.select(sa.func.max(checks.c.window)).where(checks.c.decision.in_([str(d) for d in QUIET]))
            .scalar_subquery(),
            sa.select(sa.func.max(checks.c.window)).where(ran).scalar_subquery())).one()
    ends = [w for w in (quiet, reset, *scheduled) if w is not None]
    return max(ends, default=-1)


def _pending_retrains(store: PredictionStore, trail: list[dict[str, Any]], windows: dict[str, int],
                      rows: dict[str, int], held: dict[str, int]) -> None:
    """The newest failed retrain whose retry is still to come, and retrains left ``running``."""
    retried = [e for e in trail if e["kind"] in (EventKind.RETRAIN_FAILED, EventKind.RETRAIN_STARTED)
               and not not_retried(e)]
    failed = [e for e in retried if e["kind"] == EventKind.RETRAIN_FAILED]
    if failed and failed[-1]["detail"].get("retry_at") is not None \
            and not any(e["id"] > failed[-1]["id"] and e["kind"] == EventKind.RETRAIN_STARTED for e in retried):
        last = failed[-1]
        _lower(rows, "pending retry", last["detail"].get("first_id"))
        _lower(held, "pending retry", last["detail"].get("episode") or last["id"])
        _lower(windows, "pending retry", last["window"])
    starts = {e["window"]: e for e in retried if e["kind"] == EventKind.RETRAIN_STARTED
              and e["detail"].get("request") is None}
    for check in store.checks(outcome=Outcome.RUNNING):
        _lower(windows, "running retrain", check.window)
        if (start := starts.get(check.window)) is not None:
            _lower(rows, "running retrain", start["detail"].get("first_id"))
            _lower(held, "running retrain", start["detail"].get("episode") or start["id"])


def _series_begins(series_id: int, trail: list[dict[str, Any]]) -> int:
    """The first event :func:`read_series` needs to see the series that ``series_id`` began: the
    first try's ``retrain_started`` of the retrain whose promotion began it."""
    begun = next((e for e in trail if e["id"] == series_id), None)
    if begun is None:
        return series_id
    detail = begun["detail"]
    if begun["kind"] == EventKind.SHADOW_PROMOTED:  # the retrain that put it in shadow
        shadowed = [e for e in trail if e["kind"] == EventKind.RETRAIN_SHADOW and e["id"] < series_id
                    and e["detail"].get("candidate") == detail.get("shadow")]
        detail = shadowed[-1]["detail"] if shadowed else {}
    episode = detail.get("episode")
    return min(series_id, episode) if isinstance(episode, int) else series_id


def _calibration(store: PredictionStore, settings: Settings, newest: Check) -> list[int]:
    """The windows of the current champion's first ``calibration_windows`` calibrating checks
    (RetrainPolicy._calibrate: no signal, ``min_labels`` of its labels, a figure), since it last
    became the version the checks measure against."""
    m = settings.monitoring
    if m.calibration_windows == 0:
        return []
    c = checks.c
    with store.engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.max(c.window))
                              .where(c.reference_version != newest.reference_version)).scalar()
        q = (sa.select(c.window)
             .where(c.window > (-1 if before is None else before), c.reference_version == newest.reference_version,
                    c.decision.in_([str(d) for d in CALIBRATING]), c.champion_labelled >= m.min_labels,
                    sa.or_(c.champion_accuracy.is_not(None), c.champion_rmse.is_not(None)))
             .order_by(c.window).limit(m.calibration_windows))
        return [int(w) for w in conn.execute(q).scalars()]


def _lower(floors: dict[str, int], rule: str, value: Any) -> None:
    if isinstance(value, int):
        floors[rule] = min(floors.get(rule, value), value)


# -- one run ---------------------------------------------------------------------------------------
@dataclass
class Pruned:
    """What one run deleted (a dry run: would delete), archived and kept."""

    dry_run: bool
    needs: Needs
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WHAT, 0))
    archived: dict[str, int] = field(default_factory=dict)  # table -> rows copied to Parquet
    archive_files: list[str] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)  # rows/checks/events past their age kept by a rule
    skipped_batches: int = 0  # archived batches that changed before their delete: left for the next run
    stopped: bool = False  # asked to stop (the monitor shutting down): the rest is left for the next run
    free_bytes: int | None = None  # SQLite: free space inside the file (reused by new rows)
    returned_bytes: int | None = None  # SQLite: given back to the disk by incremental vacuum and the log's truncation
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def to_dict(self) -> dict[str, Any]:
        """For the ``store_pruned`` event."""
        return {"dry_run": self.dry_run, "deleted": dict(self.deleted), "archived": dict(self.archived),
                "archive_files": list(self.archive_files), "held": dict(self.held),
                "skipped_batches": self.skipped_batches, "stopped": self.stopped, "free_bytes": self.free_bytes,
                "returned_bytes": self.returned_bytes,
                "kept_from": self.needs.to_dict(), "seconds": round(self.seconds, 3)}

    def describe(self) -> str:
        """A few lines for a person (``driftloop db prune``)."""
        verb = "would delete" if self.dry_run else "deleted"
        lines = [f"{verb}: " + ", ".join(f"{n} {what}" for what, n in self.deleted.items())]
        if self.archived:
            lines.append("archived: " + ", ".join(f"{n} {what}" for what, n in self.archived.items())
                         + "".join(f"\n  {path}" for path in self.archive_files))
        n = self.needs
        if n.window is None:
            lines.append("kept: every row (no window has been checked yet)")
        else:
            kept = [f"checks from window {n.window} ({n.why['window']})",
                    f"rows from id {n.row_id} ({n.why['row_id']})"]
            if n.event_id is not None:
                kept.append(f"events from id {n.event_id} ({n.why['event_id']})")
            lines.append("kept: " + ", ".join(kept))
        if self.held:
            lines.append("held past their age by those rules: " + ", ".join(f"{v} {k}" for k, v in self.held.items()))
        if self.skipped_batches:
            lines.append(f"{self.skipped_batches} batch(es) changed while archived: left for the next run")
        if self.stopped:
            lines.append("stopped before the end: the rest is left for the next run")
        if self.returned_bytes:
            lines.append(f"SQLite: the files shrank by {self.returned_bytes / 1e6:.1f} MB")
        if self.free_bytes:
            lines.append(f"SQLite: {self.free_bytes / 1e6:.1f} MB free inside the file (reused by new rows; "
                         "`driftloop db prune --vacuum` gives it back to the disk)")
        lines.append(f"took {self.seconds:.2f}s")
        return "\n".join(lines)


def prune(store: PredictionStore, settings: Settings, *, now: datetime | None = None, dry_run: bool = False,
          pause: Callable[[float], None] = time.sleep, stop: Callable[[], bool] = lambda: False) -> Pruned:
    """Delete what ``monitoring.retention`` no longer keeps and the monitor does not need (with
    ``dry_run``: count it, delete and write nothing). ``now``: the clock ages are measured from;
    ``pause``: how to wait between SQLite batches; ``stop``: asked before each batch, True leaves
    the rest for the next run (a monitor shutting down never waits for a long prune)."""
    r = settings.monitoring.retention
    now = now or utcnow()
    started = time.perf_counter()
    out = Pruned(dry_run, needs(store, settings))
    batches = _Batches(store, r.batch_rows, dry_run, pause, stop)
    if r.predictions_days:
        _prune_log(batches, now - timedelta(days=r.predictions_days), out,
                   None if dry_run or r.archive_dir is None else Path(r.archive_dir), now)
    if r.checks_days or r.checks_max:
        _prune_checks(batches, _ago(now, r.checks_days), r.checks_max, out)
    if r.events_days or r.events_max:
        _prune_events(batches, _ago(now, r.events_days), r.events_max, out)
    m = settings.monitoring
    reports = [p for p in Path(m.reports_dir).glob("*.html") if p.is_file()]
    out.deleted["reports"] = len(prune_files(reports, _ago(now, r.reports_days), r.reports_max, dry_run))
    # the workspace's place, as DriftWorkspace.from_settings has it (pruned even if switched off since)
    workspace = Path(m.workspace.path or Path(m.reports_dir) / "evidently")
    snapshots = list(workspace.glob("*/snapshots/*.json"))
    stale = list(workspace.glob("*/snapshots/.*.partial"))
    out.deleted["snapshots"] = (len(prune_files(snapshots, _ago(now, r.snapshots_days), r.snapshots_max, dry_run))
                                + len(prune_files(stale, now - timedelta(seconds=PARTIAL_AGE_S), None, dry_run)))
    if not dry_run and store.dialect == "sqlite":
        out.returned_bytes = give_back(batches)
    out.free_bytes = free_bytes(store)
    out.stopped = batches.stopped
    out.seconds = time.perf_counter() - started
    return out


def run_store_retention(monitor: Monitor, stop: Callable[[], bool] = lambda: False) -> Pruned:
    """The scheduler's ``store_retention`` job: :func:`prune` (``stop``: see there), recorded as a
    ``store_pruned`` event when anything went, counted in ``driftloop_retention_deleted_total{what}``."""
    result = prune(monitor.store, monitor.settings, stop=stop)
    counter = retention_counter(monitor.metrics)
    for what, n in result.deleted.items():
        if n:
            counter.labels(what).inc(n)
    if result.total or result.archived:
        monitor.store.record_event(EventKind.STORE_PRUNED, result.to_dict())
    log.info("store retention: %s", result.describe().replace("\n", "; "))
    return result


def deleted_counter(registry: Any) -> Any:
    """``driftloop_retention_deleted_total{what}`` on ``registry``, every ``what`` at 0."""
    import prometheus_client as pc

    counter = pc.Counter(DELETED_METRIC, "Rows and files the store retention deleted (monitoring.retention), by "
                         "what: predictions, feedback, shadow_predictions, checks, events, reports, snapshots.",
                         ["what"], registry=registry)
    for what in WHAT:
        counter.labels(what)
    return counter


def retention_counter(metrics: MonitorMetrics) -> Any:
    """``driftloop_retention_deleted_total`` on the monitor's metrics, created there once (one
    registry per monitor process, shared by the monitors a lease takeover builds). MonitorMetrics
    may define it itself as ``self.retention_deleted = deleted_counter(r)``; then this finds it."""
    counter = getattr(metrics, "retention_deleted", None)
    if counter is None:
        counter = deleted_counter(metrics.registry)
        metrics.retention_deleted = counter
    return counter


def free_bytes(store: PredictionStore) -> int | None:
    """SQLite: the bytes free inside the file (pages freed by deletes, reused by new rows)."""
    if store.dialect != "sqlite":
        return None
    with store.engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA freelist_count").scalar()
        size = conn.exec_driver_sql("PRAGMA page_size").scalar()
    return int(pages or 0) * int(size or 0)


def give_back(batches: _Batches) -> int | None:
    """SQLite: the freed pages given back to the disk ``VACUUM_PAGES`` at a time (incremental
    auto-vacuum; an older store without it: none), then the write-ahead log truncated; returns the
    bytes the store's files shrank by (None: an in-memory store)."""
    store = batches.store
    path = Path(store.engine.url.database or ":memory:")
    if not path.is_file():
        return None
    files = [path, path.with_name(path.name + "-wal")]
    before = sum(f.stat().st_size for f in files if f.is_file())
    with store.engine.connect() as conn:
        incremental = conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2
    free = free_bytes(store) if incremental else 0
    while free and batches.go_on():
        # executescript steps the pragma to its end: one execute() frees a single page
        batches.run(lambda conn: conn.connection.driver_connection.executescript(
            f"PRAGMA incremental_vacuum({VACUUM_PAGES});"))
        free, before_step = free_bytes(store), free
        if free >= before_step:  # nothing given back (never expected): do not spin
            break
    with store.engine.connect() as conn:  # a writer holding the log open only makes this a partial checkpoint
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return before - sum(f.stat().st_size for f in files if f.is_file())


def vacuum(store: PredictionStore) -> int | None:
    """SQLite: VACUUM (the file shrinks to what it holds; the store is locked while it runs);
    returns the bytes given back to the disk. None on PostgreSQL, whose autovacuum does what is
    needed without locking the tables."""
    if store.dialect != "sqlite" or not store.engine.url.database:
        return None
    path = Path(store.engine.url.database)
    before = path.stat().st_size
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("PRAGMA auto_vacuum = INCREMENTAL")  # an older store: switched by this VACUUM
        conn.exec_driver_sql("VACUUM")
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return before - path.stat().st_size


def prune_files(files: Iterable[Path], older_than: datetime | None, keep: int | None,
                dry_run: bool = False) -> list[Path]:
    """Delete the files modified before ``older_than`` and all but the newest ``keep`` (None: no
    such limit); returns those deleted (a dry run: those that would be)."""
    stamped = []
    for path in files:
        try:
            stamped.append((path.stat().st_mtime, path))
        except FileNotFoundError:  # gone meanwhile
            continue
    stamped.sort(key=lambda item: (item[0], str(item[1])), reverse=True)  # newest first
    cutoff = None if older_than is None else older_than.timestamp()
    gone = [path for i, (mtime, path) in enumerate(stamped)
            if (keep is not None and i >= keep) or (cutoff is not None and mtime < cutoff)]
    if not dry_run:
        for path in gone:
            path.unlink(missing_ok=True)
    return gone


def _ago(now: datetime, days: float | None) -> datetime | None:
    return None if not days else now - timedelta(days=days)


# -- the tables, in batches ----------------------------------------------------------------------------
class _Changed(Exception):
    """An archived batch no longer holds what was copied (rolled back, left for the next run)."""


class _Batches:
    """Runs one batch per transaction, then ``pause(seconds)``: on SQLite as long as it held the
    lock (see the module docstring), on PostgreSQL 0."""

    def __init__(self, store: PredictionStore, size: int, dry_run: bool, pause: Callable[[float], None],
                 stop: Callable[[], bool]) -> None:
        self.store = store
        self.size = size
        self.dry_run = dry_run
        self._pause = pause
        self._stop = stop
        self.stopped = False

    def go_on(self) -> bool:
        """False once ``stop`` said so: no new batch begins."""
        self.stopped = self.stopped or self._stop()
        return not self.stopped

    def run(self, work: Callable[[sa.Connection], Any]) -> Any:
        """``work`` in one transaction (a dry run: a read-only connection, rolled back)."""
        started = time.perf_counter()
        if self.dry_run:
            with self.store.engine.connect() as conn:
                return work(conn)
        try:
            with self.store.engine.begin() as conn:
                return work(conn)
        finally:  # PostgreSQL locks rows, not the table: no pause (0)
            held = time.perf_counter() - started
            self._pause(min(max(held, SHORTEST_PAUSE_S), LONGEST_PAUSE_S) if self.store.dialect == "sqlite" else 0.0)

    def delete(self, conn: sa.Connection, table: sa.Table, where: Any) -> int:
        """Rows of ``table`` matching ``where`` deleted (a dry run: counted)."""
        if self.dry_run:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one())
        return int(conn.execute(table.delete().where(where)).rowcount)

    def ranges(self, column: sa.Column, below: int) -> Iterator[tuple[int, int]]:
        """``[lo, hi)`` ranges of ``column`` (an integer key) below ``below``, ``size`` wide, oldest
        first, skipping gaps."""
        table = column.table
        with self.store.engine.connect() as conn:
            lo = conn.execute(sa.select(sa.func.min(column)).select_from(table)).scalar()
        while lo is not None and lo < below and self.go_on():
            hi = min(lo + self.size, below)
            yield lo, hi
            with self.store.engine.connect() as conn:
                lo = conn.execute(sa.select(sa.func.min(column)).where(column >= hi)).scalar()


def _prune_log(batches: _Batches, cutoff: datetime, out: Pruned, archive_dir: Path | None, now: datetime) -> None:
    """Prediction rows older than ``cutoff`` below the row floor, with their labels and shadow answers."""
    floor = out.needs.row_id
    with batches.store.engine.connect() as conn:
        versions = list(conn.execute(sa.select(shadow_predictions.c.model_version).distinct()).scalars())
    _delete_log(batches, cutoff, floor, versions, out, archive_dir, now)
    if held := _count(batches.store, predictions, (predictions.c.id >= floor) & (predictions.c.created_at < cutoff)):
        out.held["predictions"] = held  # counted after the deletes: only what a rule kept is left that old


def _delete_log(batches: _Batches, cutoff: datetime, floor: int, versions: list[str], out: Pruned,
                archive_dir: Path | None, now: datetime) -> None:
    def old(lo: int, hi: int) -> Any:
        return (predictions.c.id >= lo) & (predictions.c.id < hi) & (predictions.c.created_at < cutoff)

    def delete(conn: sa.Connection, lo: int, hi: int, expect: Counts | None = None) -> Counts:
        ids = sa.select(predictions.c.request_id).where(old(lo, hi))
        labels = batches.delete(conn, feedback, feedback.c.request_id.in_(ids))
        shadow = sum(batches.delete(conn, shadow_predictions, (shadow_predictions.c.model_version == version)
                                    & shadow_predictions.c.request_id.in_(ids)) for version in versions)
        rows = batches.delete(conn, predictions, old(lo, hi))
        if expect is not None and (rows, labels, shadow) != expect:
            raise _Changed(f"ids {lo}..{hi - 1}: {(rows, labels, shadow)} != {expect} archived")
        return rows, labels, shadow

    def count(got: tuple[int, int, int]) -> None:
        for what, n in zip(("predictions", "feedback", "shadow_predictions"), got):
            out.deleted[what] += n

    if archive_dir is None:
        for lo, hi in batches.ranges(predictions.c.id, floor):
            got = batches.run(lambda conn: delete(conn, lo, hi))
            count(got)
            if got[0] == 0:  # the first batch with nothing past its age: the rest is younger
                break
        return
    copied = _archive(batches.store, archive_dir, now, batches.ranges(predictions.c.id, floor), old, versions, out)
    for lo, hi, expect in copied:  # the files are in place: now the rows may go
        if not batches.go_on():  # copied, not deleted: the next run copies them again
            break
        try:
            count(batches.run(lambda conn: delete(conn, lo, hi, expect)))
        except _Changed as exc:
            log.info("store retention: %s; left for the next run", exc)
            out.skipped_batches += 1


def _prune_checks(batches: _Batches, older_than: datetime | None, most: int | None, out: Pruned) -> None:
    floor = out.needs.window
    if floor is None:
        return
    cut = _cut(batches.store, checks.c.window, checks.c.created_at, older_than, most)
    keep = list(out.needs.calibration)
    if older_than is not None and cut > floor:
        held = (checks.c.window >= floor) & (checks.c.created_at < older_than)
        out.held["checks"] = _count(batches.store, checks, held)
    for lo, hi in batches.ranges(checks.c.window, min(cut, floor)):
        where = (checks.c.window >= lo) & (checks.c.window < hi)
        if keep:
            where &= checks.c.window.notin_(keep)
        out.deleted["checks"] += batches.run(lambda conn: batches.delete(conn, checks, where))


def _prune_events(batches: _Batches, older_than: datetime | None, most: int | None, out: Pruned) -> None:
    floor = out.needs.event_id
    cut = _cut(batches.store, events.c.id, events.c.created_at, older_than, most)
    if floor is not None and cut > floor:
        if older_than is not None:
            held = (events.c.id >= floor) & (events.c.created_at < older_than)
            out.held["events"] = _count(batches.store, events, held)
        cut = floor
    for lo, hi in batches.ranges(events.c.id, cut):
        where = (events.c.id >= lo) & (events.c.id < hi)
        out.deleted["events"] += batches.run(lambda conn: batches.delete(conn, events, where))


def _cut(store: PredictionStore, key: sa.Column, created_at: sa.Column, older_than: datetime | None,
         most: int | None) -> int:
    """The key below which rows go by age (after the newest row older than ``older_than``) or by
    count (beyond the newest ``most``): a prefix, oldest first."""
    cut = 0
    with store.engine.connect() as conn:
        if older_than is not None:
            aged = conn.execute(sa.select(sa.func.max(key)).where(created_at < older_than)).scalar()
            cut = 0 if aged is None else int(aged) + 1
        if most is not None:
            beyond = conn.execute(sa.select(key).order_by(key.desc()).offset(most).limit(1)).scalar()
            cut = cut if beyond is None else max(cut, int(beyond) + 1)
    return cut


def _count(store: PredictionStore, table: sa.Table, where: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one())


# -- the Parquet archive --------------------------------------------------------------------------------
def _archive(store: PredictionStore, directory: Path, now: datetime, ranges: Iterator[tuple[int, int]],
             old: Callable[[int, int], Any], versions: list[str], out: Pruned) -> list[tuple[int, int, Counts]]:
    """Copy the batches' rows to this run's Parquet files (written whole, synced and renamed into
    place before this returns); returns each batch with what it held (rows, labels, shadow answers)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = {
        "predictions": pa.schema([("id", pa.int64()), ("request_id", pa.string()),
                                  ("created_at", pa.timestamp("us", tz="UTC")), ("model_version", pa.string()),
                                  ("features", pa.string()), ("prediction", pa.string()),
                                  ("confidence", pa.float64()), ("label", pa.string()),
                                  ("label_received_at", pa.timestamp("us", tz="UTC"))]),
        "shadow_predictions": pa.schema([("request_id", pa.string()), ("model_version", pa.string()),
                                         ("prediction", pa.string()), ("confidence", pa.float64()),
                                         ("created_at", pa.timestamp("us", tz="UTC"))]),
    }
    writers: dict[str, Any] = {}
    partials: dict[str, Path] = {}
    copied: list[tuple[int, int, Counts]] = []
    first = last = None
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")

    def write(name: str, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        if name not in writers:
            (directory / name).mkdir(parents=True, exist_ok=True)
            partials[name] = directory / name / f".{stamp}.parquet.partial"
            writers[name] = pq.ParquetWriter(partials[name], schemas[name], compression="zstd")
        writers[name].write_table(pa.Table.from_pylist(records, schema=schemas[name]))

    try:
        for lo, hi in ranges:
            with store.engine.connect() as conn:  # one snapshot of the batch
                q = (sa.select(predictions, feedback.c.label, feedback.c.received_at.label("label_received_at"))
                     .select_from(predictions.outerjoin(feedback, feedback.c.request_id == predictions.c.request_id))
                     .where(old(lo, hi)).order_by(predictions.c.id))
                rows = [_utc(dict(r), "created_at", "label_received_at") for r in conn.execute(q).mappings()]
                ids = sa.select(predictions.c.request_id).where(old(lo, hi))
                shadow = [_utc(dict(r), "created_at") for version in versions for r in conn.execute(
                    sa.select(shadow_predictions).where(shadow_predictions.c.model_version == version,
                                                        shadow_predictions.c.request_id.in_(ids))).mappings()]
            if not rows:  # the first batch with nothing past its age: the rest is younger
                break
            write("predictions", rows)
            write("shadow_predictions", shadow)
            first = rows[0]["id"] if first is None else first
            last = rows[-1]["id"]
            copied.append((lo, hi, (len(rows), sum(r["label"] is not None for r in rows), len(shadow))))
            out.archived["predictions"] = out.archived.get("predictions", 0) + len(rows)
            if shadow:
                out.archived["shadow_predictions"] = out.archived.get("shadow_predictions", 0) + len(shadow)
        for name, writer in writers.items():
            writer.close()
            final = directory / name / f"{stamp}_{first}-{last}.parquet"
            _sync(partials[name])
            os.replace(partials[name], final)
            _sync(final.parent)
            out.archive_files.append(str(final))
        writers.clear()
    finally:
        for name, writer in writers.items():  # failed before every file was in place: nothing is deleted
            writer.close()
            partials[name].unlink(missing_ok=True)
    return copied


def _utc(row: dict[str, Any], *columns: str) -> dict[str, Any]:
    """SQLite gives back naive datetimes; the store's times are UTC."""
    for column in columns:
        value = row.get(column)
        if isinstance(value, datetime) and value.tzinfo is None:
            row[column] = value.replace(tzinfo=timezone.utc)
    return row


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
