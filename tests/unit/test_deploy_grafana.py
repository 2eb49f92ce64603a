"""Grafana's provisioning and dashboards, checked without Grafana (it cannot run here): well-formed
JSON, one data source everyone names, panels that fit the grid without overlapping, a query in
every target. tests/servers/test_observability.py runs every query against a real Prometheus."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARDS = {p.stem: p for p in sorted((GRAFANA / "dashboards").glob("*.json"))}
PANEL_TYPES = {"timeseries", "stat", "bargauge", "state-timeline", "gauge", "table"}


def dashboard_targets() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(dashboard, panel, target) for every query of every dashboard."""
    for name, path in DASHBOARDS.items():
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield name, panel, target


def datasource_uid() -> str:
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    return str(source["uid"])


def test_the_three_dashboards_are_there() -> None:
    assert set(DASHBOARDS) == {"serving", "model-health", "retraining"}
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS.values()]
    assert len(set(uids)) == 3 and all(u.startswith("driftloop-") for u in uids)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_well_formed(name: str) -> None:
    board = json.loads(DASHBOARDS[name].read_text())
    uid = datasource_uid()
    assert board["title"].startswith("driftloop / ") and "driftloop" in board["tags"]
    assert isinstance(board["schemaVersion"], int) and board["templating"]["list"] == []
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        where = f"{name}: {panel['title']}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, where
        assert panel.get("description"), f"{where}: say what the panel answers"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{where} overlaps another panel"
        cells |= mine
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets), where
        for target in targets:
            assert target["expr"].strip() and target["datasource"]["uid"] == uid, where


def test_dashboard_provider_points_where_compose_mounts_the_dashboards() -> None:
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "driftloop.yml").read_text())["providers"]
    compose = yaml.safe_load((GRAFANA.parent / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


@pytest.mark.parametrize(("figures", "expected", "shown"), [
    ({"rmse": 912.0, "mae": 700.0}, {"expected_rmse": 830.0, "expected_accuracy": None},
     {("rmse", "realized"): 912.0, ("mae", "realized"): 700.0, ("rmse", "expected"): 830.0}),
    ({"accuracy": 0.75}, {"expected_rmse": None, "expected_accuracy": 0.8},
     {("error_rate", "realized"): 0.25, ("error_rate", "expected"): pytest.approx(0.2)}),
], ids=["regression", "classification"])
def test_the_error_panel_shows_what_a_monitor_exports(figures: dict[str, float], expected: dict[str, Any],
                                                      shown: dict[tuple[str, str], float]) -> None:
    """tests/servers/test_observability.py runs the panel's queries against a classifier's monitor;
    here a regressor's gauges (and a classifier's) are read by the very names the panel queries."""
    from driftloop.monitoring.metrics import MonitorMetrics
    from driftloop.vocabulary import Check, Decision

    (panel,) = [p for p in json.loads(DASHBOARDS["model-health"].read_text())["panels"] if p["title"].startswith("Error")]
    realized, expected_expr = (t["expr"] for t in panel["targets"])
    metrics = MonitorMetrics()
    metrics.observe_check(Check(window=0, first_id=1, last_id=500, rows=500, model_version="v1", reference_version="v1",
                                drift_share=0.0, drifted_features=[], feature_scores={}, labelled=420,
                                champion_labelled=420, champion_accuracy=None, decision=Decision.NONE, reason="",
                                **({"accuracy": None} | figures)),
                          (), threshold=0.5, champion="v1", now=0.0, **expected)
    got = {(s.labels["metric"], "realized" if family.name == realized else "expected"): s.value
           for family in metrics.registry.collect() if family.name in (realized, expected_expr)
           for s in family.samples}
    assert got == shown
