"""Grafana's provisioning and dashboards, checked without Grafana (it cannot run here): well-formed
JSON, one data-source variable every query names (so the files import through Grafana's UI and load
by file provisioning alike), job and instance variables every query is filtered by, annotations for
promotions and rollbacks, panels that fit the grid without overlapping, a query in every target; and
the alerts' runbook links, which land on README sections. tests/servers/test_observability.py runs
every query against a real Prometheus."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = {p.stem: p for p in sorted((GRAFANA / "dashboards").glob("*.json"))}
PANEL_TYPES = {"timeseries", "stat", "bargauge", "state-timeline", "gauge", "table"}
# The data source every panel, target, variable and annotation names: a variable, which Grafana's
# import fills from __inputs and file provisioning resolves at run time (its default is the
# provisioned data source).
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
VARIABLES = ["DS_PROMETHEUS", "job", "instance"]
FILTERS = ('job=~"$job"', 'instance=~"$instance"')  # in every selector of every query
# A metric (driftloop's, BentoML's, a recording rule) and the braces that follow it, if any.
SELECTOR = re.compile(r"\b((?:driftloop|bentoml)[_:][a-z0-9_:]*)\b(?!\s*\()(\s*\{[^}]*\})?")
# Where the alerts' runbook_url point: README.md on the project's main branch.
RUNBOOK_BASE = "https://github.com/driftloop/driftloop/blob/main/README.md"


def dashboard_targets() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(dashboard, panel, target) for every query of every dashboard."""
    for name, path in DASHBOARDS.items():
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                yield name, panel, target


def dashboard_annotations() -> Iterator[tuple[str, dict[str, Any]]]:
    """(dashboard, annotation) for every annotation query of every dashboard."""
    for name, path in DASHBOARDS.items():
        for annotation in json.loads(path.read_text())["annotations"]["list"]:
            yield name, annotation


def variable_query(variable: dict[str, Any]) -> tuple[str, str]:
    """A ``label_values(selector, label)`` variable's selector and label."""
    match = re.fullmatch(r"label_values\((\{.*\}),\s*(\w+)\)", variable["query"])
    assert match, f"{variable['name']}: not a label_values(selector, label) query: {variable['query']}"
    return match[1], match[2]


def provisioned_datasource() -> dict[str, Any]:
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    return source


def datasource_references(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``datasource`` anywhere in a dashboard, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield where, value
            yield from datasource_references(value, f"{where}/{node.get('title') or node.get('name') or key}")
    elif isinstance(node, list):
        for item in node:
            yield from datasource_references(item, where)


def unfiltered(expr: str) -> list[str]:
    """Metrics in ``expr`` whose selector lacks the job or instance matcher."""
    return [name for name, braces in SELECTOR.findall(expr) if not all(f in braces for f in FILTERS)]


def test_the_three_dashboards_are_there() -> None:
    assert set(DASHBOARDS) == {"serving", "model-health", "retraining"}
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS.values()]
    assert len(set(uids)) == 3 and all(u.startswith("driftloop-") for u in uids)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_well_formed(name: str) -> None:
    board = json.loads(DASHBOARDS[name].read_text())
    assert board["title"].startswith("driftloop / ") and "driftloop" in board["tags"]
    assert isinstance(board["schemaVersion"], int)
    assert [v["name"] for v in board["templating"]["list"]] == VARIABLES
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        where = f"{name}: {panel['title']}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel.get("description"), f"{where}: say what the panel answers"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{where} overlaps another panel"
        cells |= mine
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets), where
        assert all(t["expr"].strip() for t in targets), where


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_query_names_the_data_source_variable(name: str) -> None:
    """No panel, target, variable or annotation names a data source but the variable, and none
    leaves it out (it would get Grafana's default, whatever that is)."""
    board = json.loads(DASHBOARDS[name].read_text())
    named = [f"{where}: {ref}" for where, ref in datasource_references(board) if ref != DATASOURCE]
    assert not named, f"{name}: data sources other than ${{DS_PROMETHEUS}}: {named}"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    queries = [*board["panels"], *(t for p in board["panels"] for t in p["targets"]),
               variables["job"], variables["instance"], *board["annotations"]["list"]]
    assert all(q.get("datasource") == DATASOURCE for q in queries)
    # Grafana's import asks for the data source to put in place of ${DS_PROMETHEUS} ...
    (source,) = board["__inputs"]
    assert {k: source[k] for k in ("name", "type", "pluginId")} == {
        "name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}
    # ... and file provisioning, which ignores __inputs, resolves it as the variable, whose
    # default is the provisioned data source.
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    provisioned = provisioned_datasource()
    assert ds["current"]["value"] == provisioned["uid"] and ds["current"]["text"] == provisioned["name"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_query_filters_by_job_and_instance(name: str) -> None:
    assert unfiltered('rate(driftloop_a_total{job=~"$job"}[1m]) / bentoml_b{job=~"$job", instance=~"$instance"}'
                      ' + driftloop:c') == ["driftloop_a_total", "driftloop:c"]  # the check sees what is missing
    board = json.loads(DASHBOARDS[name].read_text())
    queries = [(f"{p['title']} [{t['refId']}]", t["expr"]) for p in board["panels"] for t in p["targets"]]
    queries += [(f"annotation {a['name']}", a["expr"]) for a in board["annotations"]["list"]]
    for where, expr in queries:
        assert SELECTOR.search(expr), f"{name}: {where}: no metric found in {expr}"
        assert not unfiltered(expr), f"{name}: {where}: filter {unfiltered(expr)} by {' and '.join(FILTERS)}"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_job_and_instance_variables(name: str) -> None:
    """Multi-valued with an All of ``.*``, so that ``=~"$job"`` matches every job by default; the
    instances follow the jobs chosen."""
    board = json.loads(DASHBOARDS[name].read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    for label in ("job", "instance"):
        variable = variables[label]
        assert variable["type"] == "query" and variable["multi"] and variable["includeAll"], label
        assert variable["allValue"] == ".*" and variable["current"]["value"] == ["$__all"], label
        selector, listed = variable_query(variable)
        assert listed == label and variable["definition"] == variable["query"]
    assert 'job=~"$job"' in variable_query(variables["instance"])[0]
    (link,) = board["links"]
    assert link["includeVars"] and link["keepTime"], "moving between the dashboards keeps the selection"


def test_the_dashboards_share_their_variables_and_annotations() -> None:
    boards = [json.loads(p.read_text()) for p in DASHBOARDS.values()]
    assert all(b["templating"] == boards[0]["templating"] for b in boards)
    assert all(b["annotations"] == boards[0]["annotations"] for b in boards)
    assert all(b["__inputs"] == boards[0]["__inputs"] for b in boards)


def test_annotations_mark_promotions_and_rollbacks_from_counters_the_monitor_exports() -> None:
    """Each reads a counter (and label values) the monitor exports at 0 from its start, so the
    first promotion is an increase Prometheus sees."""
    from driftloop.monitoring.metrics import MonitorMetrics

    exported = [(s.name, s.labels) for family in MonitorMetrics().registry.collect() for s in family.samples]
    annotations = {a["name"]: a for _, a in dashboard_annotations()}
    assert set(annotations) == {"Promotions", "Rollbacks"}
    for name, annotation in annotations.items():
        assert annotation["enable"] and annotation["titleFormat"] and annotation["step"], name
        for metric, braces in SELECTOR.findall(annotation["expr"]):
            wanted = dict(re.findall(r'(\w+)="([^"]*)"', braces))  # equality matchers
            assert any(n == metric and wanted.items() <= labels.items() for n, labels in exported), (name, metric)
    assert 'outcome="promoted"' in annotations["Promotions"]["expr"]
    assert "driftloop_rollbacks_total" in annotations["Rollbacks"]["expr"]


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
    realized, expected_expr = (SELECTOR.search(t["expr"])[1] for t in panel["targets"])
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


def test_the_outside_training_panel_and_alert_read_counters_a_monitor_exports_from_its_start() -> None:
    """The share of a feature's checked rows outside training: the panel and the alert divide
    two counters that a monitor creates at 0 for every feature its champion's schema judges (so
    the share exists before the first row outside, and that row is an increase), by the labels
    they carry. tests/servers/test_observability.py runs the panel's query against a real monitor."""
    from driftloop.models.schema import Feature, FeatureSchema
    from driftloop.monitoring.metrics import MonitorMetrics

    schema = FeatureSchema((Feature("income", "numeric", min=1.0, max=9.0),
                            Feature("region", "categorical", categories=("east",))), task="classification")
    metrics = MonitorMetrics()
    metrics.track_features(schema.training_sides)
    exported = {(s.name, tuple(sorted(s.labels.items()))) for family in metrics.registry.collect()
                for s in family.samples if s.value == 0}
    (panel,) = [p for p in json.loads(DASHBOARDS["model-health"].read_text())["panels"]
                if p["title"].startswith("Outside training")]
    (alert,) = [rule for group in yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "alerts.yml").read_text())
                ["groups"] for rule in group["rules"] if rule.get("alert") == "DriftloopFeatureOutsideTraining"]
    for expr in (panel["targets"][0]["expr"], alert["expr"]):
        names = {name for name, _ in SELECTOR.findall(expr)}
        assert names == {"driftloop_feature_outside_training_total", "driftloop_feature_checked_rows_total"}, expr
        assert "by (job, instance, feature" in expr
    assert {("driftloop_feature_outside_training_total", (("feature", "income"), ("side", side)))
            for side in ("below", "above")} <= exported
    assert ("driftloop_feature_outside_training_total", (("feature", "region"), ("side", "unseen"))) in exported
    assert {("driftloop_feature_checked_rows_total", (("feature", f),)) for f in ("income", "region")} <= exported
    assert "ignoring (side) group_left" in panel["targets"][0]["expr"]  # one line per feature and side
    assert panel["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == 0.01 == \
        float(alert["expr"].rsplit(">", 1)[1])  # the panel's line is the alert's threshold


# -- the alerts' runbooks -------------------------------------------------------------------------
def github_anchors(markdown: str) -> list[tuple[int, str, str]]:
    """(level, text, anchor) of every heading, as GitHub renders README.md: the text lower-cased,
    punctuation dropped (``_`` and ``-`` kept), spaces made hyphens; a repeated anchor gets -1, -2.
    Lines in fenced code blocks are not headings."""
    seen: dict[str, int] = {}
    found: list[tuple[int, str, str]] = []
    fence = None
    for line in markdown.splitlines():
        opening = re.match(r"\s{0,3}(`{3,}|~{3,})", line)
        if opening:
            if fence is None:
                fence = opening[1][0] * len(opening[1])
            elif opening[1].startswith(fence):
                fence = None
            continue
        heading = re.match(r"\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$", line)
        if fence is not None or not heading:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading[2]).replace("`", "").replace("*", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        anchor = slug if slug not in seen else f"{slug}-{seen[slug]}"
        seen[slug] = seen.get(slug, 0) + 1
        found.append((len(heading[1]), text.strip(), anchor))
    return found


@pytest.mark.parametrize(("markdown", "anchors"), [
    ("## The HTTP contract (a public contract)", ["the-http-contract-a-public-contract"]),
    ("#### `DriftloopDriftDetected`\n### What's [new](x.md) here", ["driftloopdriftdetected", "whats-new-here"]),
    ("## Metrics\n```sh\n# not a heading\n```\n## Metrics", ["metrics", "metrics-1"]),
    ("### serving.max_in_flight -- why", ["servingmax_in_flight----why"]),
])
def test_github_anchors(markdown: str, anchors: list[str]) -> None:
    assert [a for _, _, a in github_anchors(markdown)] == anchors


def test_every_alert_has_a_runbook_url_to_its_readme_section() -> None:
    rules = [rule for group in yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "alerts.yml").read_text())
             ["groups"] for rule in group["rules"] if "alert" in rule]
    headings = github_anchors((ROOT / "README.md").read_text())
    (start,) = [i for i, (level, text, _) in enumerate(headings) if (level, text) == (3, "The alerts")]
    end = next((i for i in range(start + 1, len(headings)) if headings[i][0] <= 3), len(headings))
    runbooks = {text: anchor for _, text, anchor in headings[start + 1:end]}
    assert rules
    for rule in rules:
        name = rule["alert"]
        assert name in runbooks, f"{name}: add a '#### {name}' runbook under README.md's '### The alerts'"
        assert rule["annotations"].get("runbook_url") == f"{RUNBOOK_BASE}#{runbooks[name]}", name
    # The section's table links each alert to its runbook too.
    section = re.search(r"^### The alerts\n(.*?)^#{2,3} ", (ROOT / "README.md").read_text(), re.M | re.S)[1]
    links = set(re.findall(r"\]\(#([^)]+)\)", section))
    assert links == set(runbooks.values()), links ^ set(runbooks.values())
