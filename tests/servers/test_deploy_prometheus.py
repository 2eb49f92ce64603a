"""deploy/prometheus with promtool: the config and rules are valid, every alert has a unit test and
passes it, and the unit tests notice a broken rule. No server runs here (see test_observability)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
K8S_CONFIG = PROMETHEUS.parent / "k8s" / "prometheus-config.yaml"
SEVERITIES = {"info", "warning", "critical"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: scripts/system-deps.sh installs Debian's prometheus")
    return path


def run(*argv: str | Path, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def alert_rules(rules_dir: Path = PROMETHEUS / "rules") -> list[dict[str, Any]]:
    return [rule for path in sorted(rules_dir.glob("*.yml")) for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def test_config_is_valid(promtool: str) -> None:
    out = run(promtool, "check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == {"driftloop-service", "driftloop-monitor"}


def test_rules_are_valid(promtool: str) -> None:
    out = run(promtool, "check", "rules", *sorted(p.name for p in (PROMETHEUS / "rules").glob("*.yml")),
              cwd=PROMETHEUS / "rules")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    out = run(promtool, "test", "rules", *sorted(p.name for p in (PROMETHEUS / "tests").glob("*.yml")),
              cwd=PROMETHEUS / "tests")
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_issue_s_alerts_are_there_and_documented() -> None:
    alerts = {rule["alert"]: rule for rule in alert_rules()}
    assert {"DriftloopDriftDetected", "DriftloopPerformanceDecay", "DriftloopRetrainFailed",
            "DriftloopRetrainRejected", "DriftloopPredictionLogRowsDropped", "DriftloopHighErrorRate",
            "DriftloopLatencyObjective", "DriftloopTargetDown", "DriftloopFeatureOutsideTraining"} <= set(alerts)
    readme = (PROMETHEUS.parents[1] / "README.md").read_text()
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert name in readme, f"{name}: say in README.md's 'Operate it' what it means and what to do"


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    fired: set[str] = set()
    for path in (PROMETHEUS / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert {rule["alert"] for rule in alert_rules()} <= fired


@pytest.mark.parametrize(("alert", "old", "new"), [
    ("DriftloopHighErrorRate", "> 0.01", "> 0.5"),
    ("DriftloopTargetDown", "== 0", "== 2"),
    ("DriftloopDriftDetected", 'signal="drift"} == 1', 'signal="drift"} == 2'),
    ("DriftloopFeatureOutsideTraining", "> 0.01", "> 0.5"),
    # one side alone (above): income's 10% would read 6%, as if the rows below the minimum were fine
    ("DriftloopFeatureOutsideTraining", "driftloop_feature_outside_training_total[1h]",
     'driftloop_feature_outside_training_total{side="above"}[1h]'),
])
def test_the_unit_tests_notice_a_broken_rule(promtool: str, tmp_path: Path, alert: str, old: str, new: str) -> None:
    shutil.copytree(PROMETHEUS / "rules", tmp_path / "rules")
    shutil.copytree(PROMETHEUS / "tests", tmp_path / "tests")
    path = tmp_path / "rules" / "alerts.yml"
    doc = yaml.safe_load(path.read_text())
    (rule,) = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == alert]
    assert old in rule["expr"]
    rule["expr"] = rule["expr"].replace(old, new)
    path.write_text(yaml.safe_dump(doc))
    out = run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path / "tests")
    assert out.returncode != 0 and alert in out.stdout + out.stderr


def test_kubernetes_prometheus_config_is_valid(promtool: str, tmp_path: Path) -> None:
    """The in-cluster config (pod discovery by annotations) loads the same rules.

    Debian builds Prometheus without Kubernetes discovery, so its promtool refuses
    ``kubernetes_sd_configs``: that one block is checked here, the rest (relabelling regexes,
    rule files) by promtool with static targets in its place."""
    (config_map,) = yaml.safe_load_all(K8S_CONFIG.read_text())
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    config["rule_files"] = [str(PROMETHEUS / "rules" / "*.yml")]  # where the ConfigMap of rules is mounted
    (job,) = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod", "namespaces": {"names": ["driftloop"]}}]
    job["static_configs"] = [{"targets": ["10.0.0.1:3000"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = run(promtool, "check", "config", tmp_path / "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    relabels = config["scrape_configs"][0]["relabel_configs"]
    assert {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "target_label": "job"} in relabels
