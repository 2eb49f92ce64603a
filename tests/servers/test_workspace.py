"""The Evidently workspace of checked windows (monitoring/workspace.py): one project per model
version, one snapshot per window at the window's time, found again by a new process, and what a
real ``evidently ui`` serves from it (its HTTP API), including windows written while it runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftloop.launch import free_port
from driftloop.launch import stop_process
from driftloop.monitoring.drift import DriftBaseline, DriftResult, preset_columns
from driftloop.monitoring.workspace import DriftWorkspace, utc_naive

from tests.unit.test_drift import schema_of, tabular
from tests.waiting import wait_until

START = datetime(2025, 3, 1, 10, 0, tzinfo=timezone.utc)
PLUS_TWO = timezone(timedelta(hours=2))


@dataclass(frozen=True)
class Window:
    version: str
    index: int
    result: DriftResult
    timestamp: datetime  # as passed to record
    decision: str
    run_id: str


@pytest.fixture(scope="module")
def results() -> dict[str, DriftResult]:
    """A stationary and a drifted window against one reference sample (small: K-S, chi-square, Z)."""
    reference = tabular(300, 1)
    baseline = DriftBaseline(reference, schema_of(reference))
    out = {"stationary": baseline.check(tabular(200, 2)), "drifted": baseline.check(tabular(200, 3, 1.0))}
    assert out["stationary"].share <= 0.2 and out["drifted"].share >= 0.8, out
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, results: dict[str, DriftResult],
             ) -> tuple[Path, list[Window]]:
    """v1: windows 0 (stationary), 1 (drifted) by one DriftWorkspace, window 2 (drifted) by a
    second one on the same path (a restarted monitor); v2: windows 3 and 4, one timestamp in
    UTC+2, one naive (taken as UTC). Windows are ten minutes apart."""
    path = tmp_path_factory.mktemp("ws") / "evidently"
    plan = [("v1", 0, "stationary", START, "none"), ("v1", 1, "drifted", START + timedelta(minutes=10), "watch"),
            ("v1", 2, "drifted", START + timedelta(minutes=20), "retrain"),
            ("v2", 3, "stationary", (START + timedelta(minutes=30)).astimezone(PLUS_TWO), "none"),
            ("v2", 4, "drifted", (START + timedelta(minutes=40)).replace(tzinfo=None), "watch")]
    first = DriftWorkspace(path, "loans")
    windows = []
    for version, index, kind, ts, decision in plan:
        workspace = DriftWorkspace(path, "loans") if index == 2 else first
        run_id = workspace.record(version, index, results[kind], timestamp=ts, tags=[f"decision={decision}"],
                                  metadata={"decision": decision}, description=f"{version}: test reference")
        windows.append(Window(version, index, results[kind], ts, decision, run_id))
    return path, windows


def aware(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


def test_projects_runs_and_times_as_evidently_reads_them(recorded: tuple[Path, list[Window]]) -> None:
    """Evidently's own Workspace (its full loader: every snapshot parsed, none may be malformed)."""
    from evidently.core.report import Snapshot
    from evidently.ui.workspace import Workspace

    path, windows = recorded
    ws = Workspace(str(path))
    projects = {p.name: p for p in ws.list_projects()}
    assert sorted(p.name for p in ws.list_projects()) == ["loans v1", "loans v2"]  # appended: no duplicate
    assert projects["loans v2"].description == "v2: test reference"
    for version in ("v1", "v2"):
        mine = [w for w in windows if w.version == version]
        pid = projects[f"loans {version}"].id
        assert sorted(str(r) for r in ws.list_runs(pid)) == sorted(w.run_id for w in mine)
        for w in mine:
            run = ws.get_run(pid, w.run_id)
            assert run.timestamp == aware(w.timestamp).astimezone(timezone.utc).replace(tzinfo=None)
            assert run.timestamp.tzinfo is None
            assert run.name == f"window {w.index}"
            assert set(run.tags) == {f"window={w.index}", f"version={version}", f"decision={w.decision}"}
            assert run.metadata == {"project": "loans", "version": version, "window": str(w.index),
                                    "drift_share": f"{w.result.share:.4f}", "drifted": ",".join(w.result.drifted),
                                    "decision": w.decision}
            # the stored snapshot is the window's comparison: Evidently's verdicts are the check's
            stored = preset_columns(Snapshot.load_model(run))
            assert {c: v["drifted"] for c, v in stored.items()} == {c: v["drifted"]
                                                                  for c, v in w.result.columns.items()}
        dashboard = ws.get_dashboard(pid)
        assert [p.title for p in dashboard.panels] == ["Share of drifted columns", "Drifted columns",
                                                       "Drift score per column"]
        assert [v.legend for v in dashboard.panels[2].values] == list(mine[0].result.columns)
        assert len(dashboard.tabs) == 1 and dashboard.tabs[0].panels == [p.id for p in dashboard.panels]


def test_a_fresh_driftworkspace_finds_every_version(recorded: tuple[Path, list[Window]]) -> None:
    path, windows = recorded
    workspace = DriftWorkspace(path, "loans")
    for version in ("v1", "v2"):
        runs = workspace.runs(version)
        mine = [w for w in windows if w.version == version]
        assert [r.window for r in runs] == [w.index for w in mine]
        assert [r.timestamp for r in runs] == [aware(w.timestamp) for w in mine]  # the instants passed
        assert [r.id for r in runs] == [w.run_id for w in mine]
    assert workspace.runs("v9") == [] and workspace.project_id("v9") is None
    assert DriftWorkspace(path, "other").runs("v1") == []  # another registry project's versions are apart


def test_projects_are_looked_up_once_per_version(tmp_path: Path, results: dict[str, DriftResult],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from evidently.ui.storage.local.base import LocalState

    scans: list[str] = []
    listing = LocalState.list_projects
    monkeypatch.setattr(LocalState, "list_projects", lambda self: scans.append(self.path) or listing(self))
    path = tmp_path / "nested" / "evidently"
    workspace = DriftWorkspace(path, "loans")
    assert not path.exists()  # constructing reads and writes nothing
    first = workspace.record("v1", 0, results["stationary"], timestamp=START)
    assert scans == [] and path.is_dir()  # nothing stored yet: no directory to scan
    workspace.record("v1", 1, results["drifted"], timestamp=START + timedelta(minutes=1))
    reopened = DriftWorkspace(path, "loans")
    reopened.record("v1", 2, results["drifted"], timestamp=START + timedelta(minutes=2))
    reopened.record("v1", 3, results["drifted"], timestamp=START + timedelta(minutes=3))
    reopened.record("v2", 0, results["drifted"], timestamp=START + timedelta(minutes=4))
    assert len(scans) == 2  # reopened: v1 once, v2 once
    assert [r.id for r in reopened.runs("v1")][0] == first and len(reopened.runs("v1")) == 4
    assert reopened.project_id("v1") == workspace.project_id("v1")
    assert len([p for p in path.iterdir() if p.is_dir()]) == 2  # one project per version
    assert not list(path.rglob("*.partial"))  # no temporary file left behind


def test_settings_name_the_path_and_the_project(tmp_path: Path) -> None:
    from tests.conftest import make_settings

    on = {"workspace": {"enabled": True}}  # tests' settings turn it off (tests/conftest.py); the default is on
    workspace = DriftWorkspace.from_settings(make_settings(tmp_path, registry={"project": "credit"}, monitoring=on))
    assert workspace is not None
    assert (workspace.path, workspace.project_name("v3")) == (tmp_path / "reports" / "evidently", "credit v3")
    chosen = make_settings(tmp_path, monitoring={"workspace": {"enabled": True, "path": str(tmp_path / "ws")}})
    assert DriftWorkspace.from_settings(chosen).path == tmp_path / "ws"  # type: ignore[union-attr]
    assert DriftWorkspace.from_settings(make_settings(tmp_path, monitoring={"workspace": {"enabled": False}})) is None
    from driftloop.settings import load_settings

    assert load_settings(None).monitoring.workspace.enabled


def test_metadata_must_be_strings(tmp_path: Path, results: dict[str, DriftResult]) -> None:
    workspace = DriftWorkspace(tmp_path, "loans")
    with pytest.raises(TypeError, match="'rows'"):
        workspace.record("v1", 0, results["stationary"], timestamp=START, metadata={"rows": 500})  # type: ignore
    assert workspace.runs("v1") == []


def test_a_failed_write_raises_and_leaves_nothing(tmp_path: Path, results: dict[str, DriftResult],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = DriftWorkspace(tmp_path, "loans")
    workspace.record("v1", 0, results["stationary"], timestamp=START)

    def refuse(src: Any, dst: Any) -> None:
        raise PermissionError("read-only")

    monkeypatch.setattr(os, "link", refuse)
    with pytest.raises(PermissionError):
        workspace.record("v1", 1, results["drifted"], timestamp=START + timedelta(minutes=1))
    assert [r.window for r in workspace.runs("v1")] == [0]
    assert not list(tmp_path.rglob("*.partial"))


# -- a real `evidently ui` --------------------------------------------------------------------------
class EvidentlyUI:
    def __init__(self, workspace: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        command = [str(Path(sys.executable).with_name("evidently")), "ui", "--workspace", str(workspace),
                   "--port", str(self.port)]
        env = os.environ | {"DO_NOT_TRACK": "1"}  # Evidently's telemetry
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"evidently ui exited with code {self.proc.returncode}: {self.log.read_text()}")
        try:
            return self.client.get("/api/version").status_code == 200
        except httpx.TransportError:
            return False

    def get(self, path: str) -> Any:
        response = self.client.get(path)
        assert response.status_code == 200, (path, response.text)
        return response.json()

    def projects(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.get("/api/projects")}

    def snapshots(self, project_id: str) -> list[dict[str, Any]]:
        return sorted(self.get(f"/api/projects/{project_id}/snapshots"), key=lambda s: s["timestamp"])

    def stop(self) -> None:
        self.client.close()
        stop_process(self.proc, 20)


@pytest.mark.slow
def test_evidently_ui_serves_every_version_and_new_windows(tmp_path: Path, recorded: tuple[Path, list[Window]],
                                                           results: dict[str, DriftResult]) -> None:
    source, windows = recorded
    path = tmp_path / "evidently"
    shutil.copytree(source, path)
    ui = EvidentlyUI(path, tmp_path / "ui.log")
    try:
        wait_until(ui.up, "evidently ui", 60, interval=0.2)
        projects = ui.projects()  # the first request loads the workspace and starts its file watcher
        assert sorted(projects) == ["loans v1", "loans v2"]
        for version in ("v1", "v2"):
            mine = [w for w in windows if w.version == version]
            pid = projects[f"loans {version}"]["id"]
            snapshots = ui.snapshots(pid)
            assert [s["id"] for s in snapshots] == [w.run_id for w in mine]
            assert [datetime.fromisoformat(s["timestamp"]) for s in snapshots] == [
                utc_naive(w.timestamp) for w in mine]
            assert [s["metadata"]["window"] for s in snapshots] == [str(w.index) for w in mine]
            panels = ui.get(f"/api/v2/dashboards/{pid}")["panels"]
            assert [p["title"] for p in panels] == ["Share of drifted columns", "Drifted columns",
                                                    "Drift score per column"]
            # the dashboard's series: on the windows' time axis, with each window's share
            series = ui.client.post(f"/api/v2/snapshots/{pid}/data_series_batch", json={"series_filter": [
                {"tags": [], "metadata": {}, "metric": p["metric"], "metric_labels": p["metric_labels"]}
                for p in panels[0]["values"]]})
            assert series.status_code == 201, series.text
            body = series.json()
            assert [datetime.fromisoformat(s["timestamp"]) for s in body["sources"]] == [
                utc_naive(w.timestamp) for w in mine]
            assert len(body["series"]) == 1
            assert body["series"][0]["values"] == pytest.approx([w.result.share for w in mine])

        # a monitor writing while the UI runs: a new window of v2 and a new version's project
        live = DriftWorkspace(path, "loans")
        later = START + timedelta(hours=1)
        new_run = live.record("v2", 5, results["drifted"], timestamp=later)
        live.record("v3", 6, results["stationary"], timestamp=later + timedelta(minutes=10))

        def caught_up() -> dict[str, dict[str, Any]] | None:
            now = ui.projects()
            if "loans v3" not in now:
                return None
            v2 = [s["id"] for s in ui.snapshots(now["loans v2"]["id"])]
            return now if new_run in v2 and ui.snapshots(now["loans v3"]["id"]) else None

        projects = wait_until(caught_up, "the new windows in evidently ui", 30, interval=0.2)
        assert sorted(projects) == ["loans v1", "loans v2", "loans v3"]
        assert len(ui.snapshots(projects["loans v2"]["id"])) == 3
    finally:
        ui.stop()


def test_the_monitor_snapshots_every_checked_window_into_the_workspace(champion_home: Path, tmp_path: Path) -> None:
    """The wiring: each check of a monitor run lands in its reference version's Evidently project,
    tagged with the decision, at the window's time."""
    from driftloop.models.registry import Registry
    from driftloop.monitoring.monitor import Monitor
    from driftloop.monitoring.store import PredictionStore
    from tests.conftest import make_settings
    from tests.unit.test_monitor import serve
    from driftloop.training import scenarios

    home = tmp_path / "bentoml"
    shutil.copytree(champion_home / "bentoml", home)
    settings = make_settings(tmp_path, registry={"home": str(home)},
                             monitoring={"window_rows": 300, "dry_run": True, "workspace": {"enabled": True}})
    store = PredictionStore(settings.store.url).create()
    registry = Registry(settings.registry.home, "loans")
    frame = scenarios.generate(scenarios.loans_periods(window=300, stable=2, covariate=2, concept=0), seed=5)
    live = frame[frame["period"] != "train"].reset_index(drop=True)
    monitor = Monitor(settings, store, registry)
    for start in range(0, len(live), 300):
        serve(store, registry, live.iloc[start:start + 300])
        monitor.run_once()
    assert monitor.flush(timeout=120)  # snapshots are drawn after the checks, in the background
    checks = store.checks()
    assert len(checks) == 4
    runs = DriftWorkspace(tmp_path / "reports" / "evidently", "loans").runs("v1")
    assert [r.window for r in runs] == [c.window for c in checks]
    assert [f"decision={c.decision}" in r.tags for r, c in zip(runs, checks)] == [True] * 4
    assert {c.decision for c in checks} != {"none"}  # the shifted windows are flagged, and tagged so
