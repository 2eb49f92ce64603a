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
