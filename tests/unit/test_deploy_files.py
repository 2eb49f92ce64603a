"""Container, compose and Kubernetes files, validated offline: no Docker engine or cluster runs here.

- the compose file against the compose-spec JSON schema (vendored by check-jsonschema);
- the Dockerfile through BuildKit's own parser (the ``dockerfile`` package), every COPY source
  present in the repository;
- every Kubernetes manifest against the Kubernetes 1.37 OpenAPI schemas in strict mode (unknown
  fields are errors; the schemas ship in the ``kubernetes-validate`` package);
- the files agree with each other: ports, labels, mounts, the settings file, job names.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerfile
import kubernetes_validate
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema
from jsonschema.validators import validator_for

from driftloop.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.37.0"
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "ADD", "USER", "EXPOSE", "HEALTHCHECK", "CMD",
                "ENTRYPOINT", "LABEL", "VOLUME", "STOPSIGNAL", "SHELL"}


# -- docker compose ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_spec(compose: dict[str, Any]) -> None:
    schema = get_builtin_schema("vendor.compose-spec")
    validator = validator_for(schema)(schema)  # the draft the schema names (2020-12)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    broken = compose | {"services": compose["services"] | {"service": compose["services"]["service"] | {"prots": []}}}
    assert list(validator.iter_errors(broken)), "the schema must refuse an unknown key"


def test_compose_runs_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"service", "monitor", "postgres", "prometheus", "grafana", "alertmanager"} <= set(services)
    for name, spec in services.items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
    stages = dockerfile_stages()
    for name in ("service", "monitor", "trainer"):
        build = services[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert build["target"] in stages
    # Prometheus scrapes the compose services by name, on the ports they listen on.
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0]
               for job in yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]}
    settings = container_settings()
    assert targets == {"driftloop-service": f"service:{settings.serving.port}",
                       "driftloop-monitor": f"monitor:{settings.monitoring.metrics_port}"}
    alerting = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["alerting"]
    assert alerting["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    # Secrets come from the caller's environment, required, never written in the file.
    assert "${POSTGRES_PASSWORD:?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert "${DRIFTLOOP_ADMIN_TOKEN:?" in services["service"]["environment"]["DRIFTLOOP_SERVING__ADMIN_TOKEN"]
    assert services["service"]["depends_on"]["trainer"] == {"condition": "service_completed_successfully"}


def test_alertmanager_routes_to_declared_receivers() -> None:
    config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"] for r in config["receivers"]}

    def routes(route: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield route
        for child in route.get("routes", []):
            yield from routes(child)

    assert all(r.get("receiver", config["route"]["receiver"]) in receivers for r in routes(config["route"]))


# -- the images -----------------------------------------------------------------------------------
def dockerfile_stages() -> dict[str, list[Any]]:
    stages: dict[str, list[Any]] = {}
    current: list[Any] = []
    for command in dockerfile.parse_file(str(DEPLOY / "Dockerfile")):
        if command.cmd.upper() == "FROM":
            current = stages.setdefault(command.value[-1] if len(command.value) == 3 else "", [])
        current.append(command)
    return stages


def test_dockerfile_parses_and_copies_what_exists() -> None:
    commands = dockerfile.parse_file(str(DEPLOY / "Dockerfile"))
    assert {c.cmd.upper() for c in commands} <= INSTRUCTIONS
    for command in commands:
        if command.cmd.upper() == "COPY" and not any(f.startswith("--from") for f in command.flags):
            for source in command.value[:-1]:
                assert (ROOT / source).exists(), f"line {command.start_line}: COPY {source}: not in the repository"


@pytest.mark.parametrize(("stage", "port", "command"), [
    ("service", 3000, ["driftloop", "serve"]),
    ("monitor", 9464, ["driftloop", "monitor"]),
])
def test_image_stage(stage: str, port: int, command: list[str]) -> None:
    stages = dockerfile_stages()
    last = {c.cmd.upper(): c for c in stages[stage]}
    assert last["USER"].value == ("driftloop",), "images run as an unprivileged user"
    assert last["EXPOSE"].value == (str(port),)
    assert json.loads(last["CMD"].original.split(None, 1)[1]) == command
    settings = container_settings()
    assert port in (settings.serving.port, settings.monitoring.metrics_port)
    if stage == "service":  # serving's dependencies only: the same list as the Bento's
        run = " ".join(c.original for c in stages[stage] if c.cmd.upper() == "RUN")
        assert "requirements-service.txt" in run and "--no-deps" in run and "torch" not in run


def container_settings() -> Any:
    return load_settings(DEPLOY / "config" / "driftloop.yaml")


def test_container_settings_load() -> None:
    settings = container_settings()
    assert settings.serving.host == "0.0.0.0"  # reachable from other containers
    assert str(settings.registry.home).startswith("/var/lib/driftloop/")  # the shared volume


# -- Kubernetes -------------------------------------------------------------------------------
def manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, doc) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(p.read_text()) if doc]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


@pytest.mark.parametrize(("name", "doc"), manifests(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_matches_the_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["metadata"].get("namespace", "driftloop") == "driftloop"


def test_strict_validation_refuses_a_typo() -> None:
    deployment = by_kind("Deployment")["driftloop-service"]
    broken = deployment | {"spec": deployment["spec"] | {"replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted({name for name, _ in manifests()})


def test_the_manifests_fit_together() -> None:
    kinds = {doc["kind"] for _, doc in manifests()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Job", "ConfigMap", "Secret"} <= kinds
    deployments = by_kind("Deployment")
    service, monitor = deployments["driftloop-service"], deployments["driftloop-monitor"]
    assert set(deployments) == {"driftloop-service", "driftloop-monitor"}
    assert monitor["spec"]["replicas"] == 1 and monitor["spec"]["strategy"]["type"] == "Recreate"

    svc = by_kind("Service")["driftloop-service"]
    labels = service["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = by_kind("HorizontalPodAutoscaler")["driftloop-service"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "driftloop-service"}
    assert hpa["spec"]["minReplicas"] >= 2

    settings = container_settings()
    # Scrape annotations on the ports the processes listen on; the job label Prometheus gives
    # them (app.kubernetes.io/name) is the job the alert rules name.
    for deployment, port in ((service, settings.serving.port), (monitor, settings.monitoring.metrics_port)):
        template = deployment["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)
        (container,) = template["spec"]["containers"]
        assert [p["containerPort"] for p in container["ports"]] == [port]
        assert template["metadata"]["labels"]["app.kubernetes.io/name"] in ("driftloop-service", "driftloop-monitor")
    rules = (DEPLOY / "prometheus" / "rules" / "alerts.yml").read_text()
    assert 'job="driftloop-service"' in rules and "driftloop-monitor" in rules

    # Every pod reads the same settings file and secrets, and shares the registry volume.
    pods = [d["spec"]["template"]["spec"] for d in deployments.values()]
    pods += [j["spec"]["template"]["spec"] for j in by_kind("Job").values()]
    secret = by_kind("Secret")["driftloop-secrets"]
    monitor = deployments["driftloop-monitor"]["spec"]["template"]["spec"]
    for pod in pods:
        (container,) = pod["containers"]
        # The monitor may also read the owner's store URL (the service has a restricted role): after, so it wins
        owner = [{"secretRef": {"name": "driftloop-monitor-store", "optional": True}}] if pod is monitor else []
        assert container["envFrom"] == [{"secretRef": {"name": "driftloop-secrets"}}, *owner]
        assert {"name": "DRIFTLOOP_CONFIG", "value": "/etc/driftloop/driftloop.yaml"} in container["env"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        assert claims == {"registry": "driftloop-registry"}
        assert pod["securityContext"]["runAsNonRoot"] is True
    assert set(secret["stringData"]) == {"DRIFTLOOP_STORE__URL", "DRIFTLOOP_SERVING__ADMIN_TOKEN"}
    assert all(v == "" for v in secret["stringData"].values()), "no secret values in the repository"
    assert by_kind("PersistentVolumeClaim")["driftloop-registry"]["spec"]["accessModes"] == ["ReadWriteMany"]
    (job,) = by_kind("Job").values()
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["driftloop", "train"]


def test_configmap_carries_the_container_settings_file() -> None:
    config_map = by_kind("ConfigMap")["driftloop-config"]
    assert config_map["data"]["driftloop.yaml"] == (DEPLOY / "config" / "driftloop.yaml").read_text()


def test_k8s_and_compose_commands_exist_in_the_cli() -> None:
    from typer.main import get_command

    from driftloop.cli import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    for _, doc in manifests():
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        for container in (spec or {}).get("containers", []):
            assert container["args"][0] == "driftloop" and container["args"][1] in commands
    trainer = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["trainer"]["command"]
    assert shlex.split(trainer[2])[-2:] == ["driftloop", "train"] and "train" in commands


def trainer_check() -> str:
    """The Python that decides whether compose's trainer trains (exit 1: no champion yet)."""
    command = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["trainer"]["command"][2]
    return shlex.split(command.split("python -c ", 1)[1].split(" || ", 1)[0])[0]


def test_compose_trainer_trains_only_without_a_champion(tmp_path: Path) -> None:
    config = tmp_path / "driftloop.yaml"
    config.write_text(yaml.safe_dump({"registry": {"home": str(tmp_path / "registry")}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")} | {"DRIFTLOOP_CONFIG": str(config)}
    out = subprocess.run([sys.executable, "-c", trainer_check()], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 1, out.stderr  # an empty registry: train
