"""An Evidently 0.7 workspace of every checked window, browsable with ``evidently ui --workspace <path>``,
and the checks' pictures (:class:`Pictures`), drawn off the check's path.

One Evidently project per model version (``"<registry project> <version>"``), created on the
version's first recorded window with a small dashboard (share of drifted columns, drifted
columns, drift score per column); one snapshot per recorded window: the window's
``DataDriftPreset`` snapshot (:attr:`monitoring.drift.DriftResult.snapshot`, the one the HTML
report shows), stamped with the window's time, tagged ``window=<n>``, ``version=<v>`` and the
caller's tags (the decision), with the monitor's figures as metadata.

Design notes, from Evidently 0.7.23's source (``evidently/ui``):

- Evidently's ``Workspace(path)`` builds, besides the project and snapshot files it writes, a
  dataset manager whose constructor parses every snapshot of every project (with the metric
  points of each: 20 to 50 ms a snapshot here, ``bench/workspace.py``; minutes on a long-running
  monitor's workspace) and raises on one malformed snapshot. Every call used here (projects, runs,
  dashboards) goes through its small ``LocalState`` file store only, so :class:`DriftWorkspace`
  uses ``Workspace`` with that store alone (``driftloop.adapters.evidently.local_workspace_class``):
  construction reads nothing;
  a version's project is found by name once (one read of the projects' metadata files), then
  cached.
- The snapshot is built once per window (``Report.run``, also what ``save_html`` writes) and
  re-stamped here through its serialisation model rather than run again with a timestamp: the
  monitor may have built it earlier for the HTML report.
- Timestamps are stored naive, in UTC: Evidently's own are naive (``datetime.now()``) and its UI
  sorts and compares them with naive bounds (an aware one would fail those comparisons). An aware
  ``timestamp`` is converted; a naive one is taken as UTC (as the prediction log's times are).
  :meth:`DriftWorkspace.runs` gives them back aware (UTC).
- Metadata values must be strings: the UI's series filters compare them as ``dict[str, str]``.
- A snapshot file appears whole or not at all. Evidently's ``Workspace`` streams the JSON into
  its final file; one truncated snapshot (a monitor killed while writing) makes ``evidently ui``
  answer 500 to every project request. Here the snapshot is serialised first, written next to
  its final name (``.<id>.json.partial``, which Evidently ignores) and hard-linked into place:
  the link is atomic and is what the UI's file watcher sees as a new snapshot (it ignores a
  rename, whose source name is not a snapshot's). A failure raises; nothing is swallowed (the
  caller decides whether to log and go on).

Pictures. A window's snapshot and a flagged window's HTML report cost 0.5 to 1.3 s (Evidently's
``Report.run`` and its rendering), a hundred times the check that decides (a few milliseconds a
window), so a decision never waits for one: the check records itself and hands a :class:`Picture`
(the drift result, which holds the window's compared columns) to :class:`Pictures`, whose one
thread draws them afterwards, oldest first. That thread:

- runs only while the monitor is not checking (:meth:`Pictures.paused` around the monitor's
  windows): on two cores a picture drawn beside a backlog of checks would take half of them;
- is started by the first picture and ends when none is left, and is not a daemon: a process that
  exits (``driftloop monitor --once``) draws what is queued first; :meth:`Pictures.flush` waits
  for them (tests, the demo, a clean shutdown);
- holds at most ``MAX_PENDING`` pictures and ``MAX_PENDING_ROWS`` of their rows (a monitor
  catching up on hours of log would otherwise keep every window's rows): beyond that the oldest
  picture without a report is dropped (else the oldest), counted in
  ``driftloop_pictures_total{kind, outcome="dropped"}`` and logged (once a minute at most);
- logs a failed picture with its window and counts it (``outcome="failed"``); the check, its
  events and its decision were recorded before, so nothing about them depends on a picture. A
  check's ``report_path`` names where its report is written (a report dropped or failed leaves
  the path without a file, and says so in the log).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftloop.adapters.evidently import local_workspace_class, no_telemetry
from driftloop.monitoring.metrics import DRAWN, DROPPED, FAILED, REPORT, SNAPSHOT

if TYPE_CHECKING:
    from driftloop.settings import Settings
    from driftloop.monitoring.drift import DriftResult
    from driftloop.monitoring.metrics import MonitorMetrics

log = logging.getLogger("driftloop.monitor")
MAX_PENDING = 64  # pictures waiting to be drawn (about a minute of drawing)...
MAX_PENDING_ROWS = 500_000  # ...and their windows' rows, which they hold until drawn
DROP_LOG_EVERY_S = 60.0

VALUE_DRIFT = "evidently:metric_v2:ValueDrift"  # the preset's per-column metric
DRIFTED_COLUMNS = "evidently:metric_v2:DriftedColumnsCount"  # and its count/share of drifted columns


@dataclass(frozen=True)
class WorkspaceRun:
    """What the workspace holds for one recorded window."""

    id: str  # Evidently's snapshot id
    name: str | None
    window: int | None  # from the ``window`` metadata
    timestamp: datetime  # the window's time, aware (UTC)
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def utc_naive(timestamp: datetime) -> datetime:
    """The timestamp as Evidently stores it here: naive, in UTC (a naive one is taken as UTC)."""
    if timestamp.tzinfo is None:
        return timestamp
    return timestamp.astimezone(timezone.utc).replace(tzinfo=None)


class DriftWorkspace:
    """An Evidently 0.7 local workspace: one Evidently project per model version (named
    ``"<registry project> <version>"``), one snapshot per recorded window."""

    def __init__(self, path: Path, project: str) -> None:
        self.path = Path(path)
        self.project = project
        self._workspace: Any = None  # built on first use
        self._projects: dict[str, str | None] = {}  # version -> Evidently project id (None: none yet)

    @classmethod
    def from_settings(cls, settings: Settings) -> DriftWorkspace | None:
        """``monitoring.workspace`` (None when disabled); its path defaults to ``<reports_dir>/evidently``."""
        config = settings.monitoring.workspace
        if not config.enabled:
            return None
        return cls(config.path or settings.monitoring.reports_dir / "evidently", settings.registry.project)

    def project_name(self, version: str) -> str:
        return f"{self.project} {version}"

    # -- writing -----------------------------------------------------------------------------------
    def record(self, version: str, window: int, result: DriftResult, *, timestamp: datetime,
               tags: Sequence[str] = (), metadata: dict[str, str] | None = None,
               description: str | None = None) -> str:
        """Add the window's snapshot to the version's project (created on first use, with its
        dashboard; ``description`` is the new project's); returns the snapshot's id.

        ``timestamp`` is the window's time (the UI's time axis); ``tags`` and ``metadata`` are
        added to ``window=<n>``, ``version=<v>`` and the check's figures."""
        no_telemetry()
        from evidently.core.report import Snapshot

        extra = dict(metadata or {})
        wrong = sorted(key for key, value in extra.items() if not isinstance(value, str))
        if wrong:
            raise TypeError(f"workspace metadata values must be strings; not {wrong}")
        model = result.snapshot.to_snapshot_model()  # builds it (Report.run) unless built already
        labels = [*model.tags, f"window={window}", f"version={version}", *tags]
        info = dict(model.metadata) | {
            "project": self.project, "version": version, "window": str(window),
            "drift_share": f"{result.share:.4f}", "drifted": ",".join(result.drifted)} | extra
        stamped = Snapshot.load_model(model.copy(update={
            "timestamp": utc_naive(timestamp), "tags": list(dict.fromkeys(labels)), "metadata": info}))
        project_id = self._project_id(version) or self._create(version, model, description)
        return str(self._ws().add_run(project_id, stamped, name=f"window {window}").id)

    def _create(self, version: str, model: Any, description: str | None) -> str:
        ws = self._ws()
        self.path.mkdir(parents=True, exist_ok=True)
        project = ws.create_project(self.project_name(version), description or (
            f"Drift of {self.project} model version {version} against its reference sample: one snapshot "
            "per checked window (Evidently's DataDriftPreset), at the window's time."))
        ws.save_dashboard(project.id, dashboard(_value_drift_columns(model)))
        self._projects[version] = str(project.id)
        return str(project.id)

    # -- reading -----------------------------------------------------------------------------------
    def project_id(self, version: str) -> str | None:
        """The version's Evidently project id, None when it has none yet."""
        return self._project_id(version)

    def runs(self, version: str) -> list[WorkspaceRun]:
        """The version's recorded windows, in time order (each snapshot read back by Evidently)."""
        project_id = self._project_id(version)
        if project_id is None:
            return []
        ws = self._ws()
        out = []
        for run_id in ws.list_runs(project_id):
            run = ws.get_run(project_id, run_id)
            window = run.metadata.get("window")
            out.append(WorkspaceRun(str(run_id), run.name, int(window) if isinstance(window, str) else None,
                                    run.timestamp.replace(tzinfo=timezone.utc), list(run.tags),
                                    dict(run.metadata)))
        return sorted(out, key=lambda r: (r.timestamp, r.window if r.window is not None else -1, r.id))

    def _project_id(self, version: str) -> str | None:
        """Found by name among the stored projects, once per version (the oldest, should a
        name appear twice: Evidently's ids are time-ordered UUIDv7)."""
        if version not in self._projects:
            ws = self._ws()
            name = self.project_name(version)
            found = []
            if self.path.is_dir():
                for pid in ws.state.list_projects():
                    project = ws.get_project(pid)  # None: a directory without project metadata
                    if project is not None and project.name == name:
                        found.append(str(project.id))
            self._projects[version] = min(found) if found else None
        return self._projects[version]

    def _ws(self) -> Any:
        if self._workspace is None:
            self._workspace = local_workspace_class()(str(self.path))
        return self._workspace


def _value_drift_columns(model: Any) -> list[str]:
    """The columns the snapshot's preset judged (features, media summaries, prediction), in its order."""
    columns = []
    for result in model.metric_results.values():
        location = getattr(result, "metric_value_location", None)
        if location is not None and location.metric.params.get("type") == VALUE_DRIFT:
            columns.append(str(location.metric.params["column"]))
    return list(dict.fromkeys(columns))


def dashboard(columns: Sequence[str]) -> Any:
    """The project's dashboard (one tab: Evidently OSS shows one): the share of drifted columns
    and their count over time, and every column's drift score."""
    no_telemetry()
    from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
    from evidently.sdk.panels import bar_plot_panel, line_plot_panel

    panels = [
        line_plot_panel("Share of drifted columns", [
            PanelMetric(legend="share", metric=DRIFTED_COLUMNS, metric_labels={"value_type": "share"})],
            description="Evidently's DataDriftPreset per window (the prediction column counts when logged)",
            size="half"),
        bar_plot_panel("Drifted columns", [
            PanelMetric(legend="drifted columns", metric=DRIFTED_COLUMNS, metric_labels={"value_type": "count"})],
            size="half"),
        line_plot_panel("Drift score per column", [
            PanelMetric(legend=column, metric=VALUE_DRIFT, metric_labels={"column": column}) for column in columns],
            description="Each column's method and threshold are in its series' labels: p-values drift below "
                        "the threshold, distances above it"),
    ]
    return DashboardModel(tabs=[DashboardTabModel(title="Drift", panels=[p.id for p in panels])], panels=panels)


# -- the checks' pictures, drawn off the check's path ---------------------------------------------
@dataclass(frozen=True)
class Picture:
    """What a recorded check leaves to draw: its window's snapshot into the workspace
    (``snapshot``) and, for a flagged window, its HTML report (``report``: the path)."""

    window: int
    version: str  # the reference version: the workspace project
    result: DriftResult  # its snapshot is built from the window's columns it holds
    timestamp: datetime  # the window's newest row
    rows: int
    tags: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    description: str | None = None  # a new project's
    snapshot: bool = True
    report: Path | None = None


class Pictures:
    """Draws checks' pictures (see the module docstring): in one background thread, or at once
    when ``background`` is False (a :class:`~monitoring.check.WindowCheck` used on its own)."""

    def __init__(self, workspace: DriftWorkspace | None, metrics: MonitorMetrics | None = None, *,
                 background: bool = True, max_pending: int = MAX_PENDING,
                 max_pending_rows: int = MAX_PENDING_ROWS) -> None:
        self.workspace = workspace
        self.metrics = metrics
        self.background = background
        self.max_pending = max_pending
        self.max_pending_rows = max_pending_rows
        self._queue: deque[Picture] = deque()
        self._rows = 0  # of the queued pictures
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._drawing = False
        self._paused = 0  # nested paused() blocks
        self._flushing = 0  # flush() callers: they draw even while paused
        self._dropped = 0
        self._dropped_logged_at = -DROP_LOG_EVERY_S

    def submit(self, picture: Picture) -> None:
        """Queue ``picture`` (never blocks; drops the oldest when full), or draw it now."""
        if picture.report is None and not (picture.snapshot and self.workspace is not None):
            return  # nothing to draw
        if not self.background:
            self._draw(picture)
            return
        with self._cond:
            self._queue.append(picture)
            self._rows += picture.rows
            while len(self._queue) > 1 and (len(self._queue) > self.max_pending or self._rows > self.max_pending_rows):
                self._drop()
            if self._thread is None:
                self._start()
            self._pending()
            if not self._paused or self._flushing:
                self._cond.notify_all()

    def _start(self) -> None:
        """The worker (the lock is held); a process that can start no thread (shutting down) drops
        the queued pictures, counted, rather than fail the check that queued them."""
        thread = threading.Thread(target=self._work, name="driftloop-pictures", daemon=False)
        try:
            thread.start()
        except RuntimeError:
            log.exception("the pictures' thread could not start: %d pictures dropped", len(self._queue))
            while self._queue:
                self._drop(self._queue[0])
            return
        self._thread = thread

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No new picture is started inside (the one being drawn finishes)."""
        with self._cond:
            self._paused += 1
        try:
            yield
        finally:
            with self._cond:
                self._paused -= 1
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every picture submitted so far is drawn (or dropped), paused or not;
        False if ``timeout`` passed first."""
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: not self._queue and not self._drawing, timeout)
            finally:
                self._flushing -= 1

    def close(self, timeout: float | None = None) -> bool:
        """Draw what is queued and let the thread end (False: ``timeout`` passed first)."""
        done = self.flush(timeout)
        with self._cond:
            thread = self._thread
        if done and thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return done

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._drawing

    # -- the worker --------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: not self._queue or not self._paused or self._flushing)
                if not self._queue:
                    self._thread = None
                    self._cond.notify_all()
                    return
                picture = self._queue.popleft()
                self._rows -= picture.rows
                self._drawing = True
            try:
                self._draw(picture)
            finally:
                with self._cond:
                    self._drawing = False
                    self._pending()
                    self._cond.notify_all()

    def _draw(self, picture: Picture) -> None:
        """The report, then the snapshot (both from the one ``Report.run``); a failure is logged
        and counted, and the other is still drawn."""
        if picture.report is not None:
            try:
                picture.result.save_html(picture.report)
                self._count(REPORT, DRAWN)
            except Exception:
                log.exception("window %d: the Evidently report could not be written to %s", picture.window,
                              picture.report)
                self._count(REPORT, FAILED)
        if picture.snapshot and self.workspace is not None:
            try:
                self.workspace.record(picture.version, picture.window, picture.result, timestamp=picture.timestamp,
                                      tags=picture.tags, metadata=picture.metadata, description=picture.description)
                self._count(SNAPSHOT, DRAWN)
            except Exception:
                log.exception("window %d: the Evidently snapshot could not be written", picture.window)
                self._count(SNAPSHOT, FAILED)

    def _drop(self, victim: Picture | None = None) -> None:
        """Drop ``victim``, by default the oldest picture without a report, else the oldest (the
        lock is held)."""
        if victim is None:
            victim = next((p for p in self._queue if p.report is None), self._queue[0])
        self._queue.remove(victim)
        self._rows -= victim.rows
        kinds = [kind for kind, drawn in ((REPORT, victim.report is not None),
                                          (SNAPSHOT, victim.snapshot and self.workspace is not None)) if drawn]
        for kind in kinds:
            self._count(kind, DROPPED)
        self._dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged_at >= DROP_LOG_EVERY_S:
            self._dropped_logged_at = now
            log.warning("window %d: its %s dropped, not drawn: %d pictures wait (at most %d, %d rows); %d dropped "
                        "so far", victim.window, " and ".join(kinds), len(self._queue), self.max_pending,
                        self.max_pending_rows, self._dropped)

    def _count(self, kind: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.pictures.labels(kind, outcome).inc()

    def _pending(self) -> None:
        if self.metrics is not None:
            self.metrics.pictures_pending.set(len(self._queue) + self._drawing)
