"""Prometheus for real: it scrapes a real ``bentoml serve`` and a real ``driftloop monitor`` with
the rules of ``deploy/prometheus`` while a short drifting scenario runs (once per session).

Then: the drift alert fires, every rule evaluates cleanly, every metric named in a rule or a
dashboard exists, every Grafana panel's query returns data, and none when its job or instance
variable names another process; the job and instance variables list the scraped processes and the
promotion annotation marks the retrain's promotion (Grafana itself cannot run here: its variables
are substituted the way it would).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from driftloop.demo import Replay
from driftloop.launch import free_port
from driftloop.launch import ServiceProcess, stop_process, write_config
from driftloop.models.registry import Registry
from driftloop.monitoring.store import PredictionStore
from tests.conftest import make_settings
from tests.unit.test_deploy_grafana import DASHBOARDS, dashboard_annotations, dashboard_targets, variable_query
from tests.waiting import wait_until
from driftloop.training import scenarios
from driftloop.training.train import train_version
from driftloop.vocabulary import Outcome

pytestmark = pytest.mark.slow
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = shutil.which("prometheus")
WINDOW_ROWS = 200
WINDOWS = 3  # stable, covariate, covariate: the second covariate window retrains
# Counters that appear with their first event (nothing creates their labels at 0 beforehand):
# they cannot exist in a run where nothing was shed. Named one by one.
EVENT_ONLY = {"driftloop_requests_shed_total"}
# Grafana's variables, as Grafana would fill them for a short time range, with All jobs and
# instances (the variables' allValue).
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "15s", "$__range": "10m", "$job": ".*",
                     "$instance": ".*"}
NAME = re.compile(r"\b((?:driftloop|bentoml)_[a-z0-9_]+|driftloop:[a-z0-9_:]+|up)\b(?!\s*\()")


def prometheus_config(service: str, monitor: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with local targets, 1 s intervals, no Alertmanager."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    config.pop("alerting")
    targets = {"driftloop-service": service, "driftloop-monitor": monitor}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


class Prometheus:
    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = root / "prometheus.log"
        assert PROMETHEUS is not None
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with code {self.proc.returncode}; see {self.log}")
        try:
            return self.client.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def api(self, path: str, **params: Any) -> Any:
        body = self.client.get(f"/api/v1/{path}", params=params).json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        self.client.close()
        stop_process(self.proc, 20)


def start_monitor(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``driftloop monitor`` as a user runs it (its log goes to ``log``)."""
    driftloop = Path(sys.executable).with_name("driftloop")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen([str(driftloop), "monitor", "--config", str(config)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Service (2 workers), monitor and Prometheus, after a drifting scenario ran through them."""
    if PROMETHEUS is None:
        pytest.fail("prometheus is not installed: scripts/system-deps.sh installs it")
    started = time.time()
    root = tmp_path_factory.mktemp("observability")
    monitor_port = free_port()
    settings = make_settings(root, serving={"port": free_port(), "workers": 2, "poll_interval_s": 0.2},
                             monitoring={"window_rows": WINDOW_ROWS, "interval_s": 0.5,
                                         "metrics_port": monitor_port})
    frame = scenarios.generate(scenarios.loans_periods(window=WINDOW_ROWS, stable=1, covariate=WINDOWS - 1,
                                                       concept=0), seed=7)
    registry = Registry(settings.registry.home, settings.registry.project)
    first = train_version(settings, frame[frame["period"] == "train"].reset_index(drop=True), registry,
                          trigger="initial")
    registry.promote(first.version.version, actor="test", reason="observability fixture")
    config = write_config(settings, root / "driftloop.yaml")
    store = PredictionStore(settings.store.url).create()

    service = ServiceProcess(settings, config, log_path=root / "service.log")
    monitor = prometheus = replay = None
    try:
        service.start()
        monitor = start_monitor(config, root / "monitor.log")
        targets = {"driftloop-service": f"127.0.0.1:{settings.serving.port}",
                   "driftloop-monitor": f"127.0.0.1:{monitor_port}"}
        prometheus = Prometheus(root, prometheus_config(targets["driftloop-service"], targets["driftloop-monitor"]))
        wait_until(prometheus.ready, "prometheus to be ready", 30, interval=0.2)
        wait_until(lambda: len(prometheus.query('up{job=~"driftloop-.*"} == 1')) == 2, "both targets up", 90,
                   interval=0.2)

        live = frame[frame["period"] != "train"].reset_index(drop=True)
        # 100 rows/s: a window spans a few scrapes, so counters that appear with the first
        # request (predictions by class) are seen to grow, as they would in a longer run.
        replay = Replay(service.url, live, list(settings.features), settings.data.target or "",
                        rows_per_second=100.0)
        for w in range(WINDOWS):
            replay.send_window(live.iloc[w * WINDOW_ROWS:(w + 1) * WINDOW_ROWS])
        replay.flush_labels()
        assert replay.traffic.failed == 0, replay.traffic.failures

        def checked() -> bool:
            if monitor.poll() is not None:
                raise RuntimeError(f"the monitor exited with code {monitor.returncode}; see {root / 'monitor.log'}")
            return len(store.checks()) >= WINDOWS

        wait_until(checked, f"the monitor to check {WINDOWS} windows", 120, interval=0.2)
        wait_until(lambda: prometheus.query(f"sum(driftloop_checks_total) >= {WINDOWS}"),
                   "prometheus to scrape the last check", 90, interval=0.2)
        yield {"prometheus": prometheus, "store": store, "root": root, "settings": settings, "targets": targets,
               "started": started}
    finally:
        if replay:
            replay.close()
        if monitor:
            stop_process(monitor)
        service.stop()
        if prometheus:
            prometheus.stop()
        store.close()


def rule_expressions() -> list[str]:
    return [rule["expr"] for path in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
            for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: driftloop_*, bentoml_*, recording rules and up
    (label names and values inside braces are left out)."""
    return set(NAME.findall(re.sub(r"\{[^}]*\}", "{}", expr)))


def test_the_drift_alert_fires(stack: dict[str, Any]) -> None:
    prometheus = stack["prometheus"]

    def firing() -> list[dict[str, Any]]:
        return [a for a in prometheus.api("alerts")["alerts"]
                if a["labels"]["alertname"] == "DriftloopDriftDetected" and a["state"] == "firing"]

    (alert,) = wait_until(firing, "DriftloopDriftDetected to fire", 30, interval=0.2)
    assert alert["labels"]["job"] == "driftloop-monitor" and alert["labels"]["severity"] == "warning"
    assert float(alert["value"]) >= stack["settings"].monitoring.drift_share  # the value is the drift share
    assert "features drifted" in alert["annotations"]["summary"]
    assert any(c.decision == "retrain" for c in stack["store"].checks())  # the monitor saw it too


def test_every_rule_evaluates_without_error(stack: dict[str, Any]) -> None:
    prometheus = stack["prometheus"]
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    assert len(rules) == len(rule_expressions())
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad


def test_every_metric_named_in_rules_and_dashboards_exists(stack: dict[str, Any]) -> None:
    prometheus = stack["prometheus"]
    names = set().union(*map(metric_names, rule_expressions()))
    names |= set().union(*(metric_names(t["expr"]) for _, _, t in dashboard_targets()))
    names |= set().union(*(metric_names(a["expr"]) for _, a in dashboard_annotations()))
    assert {"driftloop_drift_share", "bentoml_service_request_total", "driftloop_batch_rows_bucket",
            "driftloop:request_errors:ratio_rate5m"} <= names  # the parser finds what is there
    missing = sorted(n for n in names - EVENT_ONLY if not prometheus.api("series", **{"match[]": n}))
    assert not missing, f"named in rules or dashboards but never scraped or recorded: {missing}"


def _substitute(expr: str, **values: str) -> str:
    """``expr`` as Grafana sends it; ``values`` overrides variables by name (``job="x"``)."""
    for variable, value in (GRAFANA_VARIABLES | {f"${k}": v for k, v in values.items()}).items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


@pytest.mark.parametrize("dashboard", sorted(DASHBOARDS))
def test_every_panel_query_returns_data(stack: dict[str, Any], dashboard: str) -> None:
    prometheus = stack["prometheus"]
    empty = []
    for name, panel, target in dashboard_targets():
        if name != dashboard or metric_names(target["expr"]) & EVENT_ONLY:
            continue
        result = prometheus.query(_substitute(target["expr"]))
        values = [float(r["value"][1]) for r in result]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{panel['title']} [{target['refId']}]: {target['expr']} -> {values}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


@pytest.mark.parametrize("other", [{"job": "driftloop-elsewhere"}, {"instance": "10.0.0.1:3000"}],
                         ids=["job", "instance"])
def test_every_panel_query_follows_the_job_and_instance_variables(stack: dict[str, Any],
                                                                   other: dict[str, str]) -> None:
    """With a job or instance that is not scraped, no panel shows data: every selector is filtered."""
    prometheus = stack["prometheus"]
    shown = [f"{name}: {panel['title']} [{target['refId']}]" for name, panel, target in dashboard_targets()
             if prometheus.query(_substitute(target["expr"], **other))]
    assert not shown, f"data for a process not selected ({other}): {shown}"


@pytest.mark.parametrize("dashboard", sorted(DASHBOARDS))
def test_the_job_and_instance_variables_list_the_scraped_processes(stack: dict[str, Any], dashboard: str) -> None:
    prometheus, targets = stack["prometheus"], stack["targets"]
    board = json.loads(DASHBOARDS[dashboard].read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}

    def values(name: str, **chosen: str) -> set[str]:
        selector, label = variable_query(variables[name])
        return set(prometheus.api(f"label/{label}/values", **{"match[]": _substitute(selector, **chosen)}))

    assert values("job") == set(targets)
    assert values("instance") == set(targets.values())
    assert values("instance", job="driftloop-monitor") == {targets["driftloop-monitor"]}  # chained on $job


def test_the_annotation_queries_run_and_mark_the_promotion(stack: dict[str, Any]) -> None:
    """Each annotation query runs as Grafana runs it (a range query); the scenario's retrain was
    promoted, and the Promotions annotation marks it (nothing was rolled back: no Rollbacks)."""
    prometheus, store = stack["prometheus"], stack["store"]
    annotations = {a["name"]: _substitute(a["expr"]) for _, a in dashboard_annotations()}
    wait_until(lambda: store.checks(outcome=Outcome.PROMOTED), "the scenario's retrain to be promoted", 180,
               interval=0.2)
    wait_until(lambda: prometheus.query(annotations["Promotions"]), "prometheus to scrape the promotion", 30,
               interval=0.2)
    end = time.time()  # a step of the range, so that its last step sees what the instant query saw
    start = end - math.ceil(end - stack["started"])
    marked = {name: {s["metric"]["job"] for s in prometheus.api("query_range", query=expr, start=start, end=end,
                                                                 step="1s")["result"]}
              for name, expr in annotations.items()}
    assert marked == {"Promotions": {"driftloop-monitor"}, "Rollbacks": set()}
