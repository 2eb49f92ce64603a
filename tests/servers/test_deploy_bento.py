"""``bentoml build`` of deploy/bentofile.yaml (through deploy/bento.py) on a registry with a champion:
it builds without the network, the Bento declares the champion as its packed model and carries its
verified files when exported, and its source is enough to import the service. ``bentoml serve`` of
the Bento serves the packed model where no registry names a champion (until one does), and exits
at once with one line when the settings or the packed model cannot work."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from driftloop.launch import free_port, stop_process
from tests.conftest import make_settings
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PACKAGES = ("driftloop",)  # one import name: driftloop.service, driftloop.models, ...


def offline() -> list[str]:
    """A prefix that runs a command without any network (a fresh network namespace) where this
    machine allows it (root, util-linux): then 'nothing is downloaded' is checked, not assumed."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True, check=False).returncode == 0:
        return [unshare, "-n"]
    return []


@pytest.fixture(scope="module")
def bento(champion_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bento")
    shutil.copytree(champion_home / "bentoml", root / "bentoml")
    settings = make_settings(root)
    config = root / "driftloop.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    out = subprocess.run([*offline(), sys.executable, str(ROOT / "deploy" / "bento.py"), "--config", str(config)],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    built = json.loads(out.stdout.strip().splitlines()[-1])
    name, version = built["bento"].split(":")
    return {"root": root, "home": root / "bentoml", "tag": built["bento"], "built": built,
            "dir": root / "bentoml" / "bentos" / name / version, "env": env}


def test_the_bento_names_the_champion(bento: dict[str, Any]) -> None:
    info = yaml.safe_load((bento["dir"] / "bento.yaml").read_text())
    assert info["service"] == "driftloop.service.app:Driftloop" and info["name"] == "driftloop"
    # the template argument the service reads, and the model the service declares with it
    assert info["args"] == {"packed_model": "loans:v1"}
    assert [m["tag"] for s in info["services"] for m in s["models"]] == ["loans:v1"] == [bento["built"]["champion"]]
    assert info["labels"] == {"project": "driftloop", "champion": "v1"}
    assert not info.get("envs")  # no config file is needed (nor named) to serve it


def test_exported_bento_carries_the_champion_s_verified_files(bento: dict[str, Any], tmp_path: Path) -> None:
    archive = tmp_path / "driftloop.bento"
    env = bento["env"] | {"BENTOML_HOME": str(bento["home"]), "BENTOML_DO_NOT_TRACK": "true"}
    out = subprocess.run([*offline(), str(BIN / "bentoml"), "export", bento["tag"], str(archive)],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    model_dir = bento["home"] / "models" / "loans" / "v1"
    with tarfile.open(archive) as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
        for file in ("model.onnx", "reference.parquet"):
            member = tar.extractfile(f"./models/loans/v1/{file}")
            assert member is not None
            assert hashlib.sha256(member.read()).digest() == hashlib.sha256((model_dir / file).read_bytes()).digest()
    assert not any(n.startswith("src/tests") for n in names)
    assert not {n.split("/")[1] for n in names if n.startswith("src/") and n.count("/") > 1} - set(PACKAGES)


def test_bento_source_is_enough_to_import_the_service(bento: dict[str, Any]) -> None:
    src = bento["dir"] / "src"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import driftloop.service.app, driftloop.monitoring.store; from driftloop.settings import load_settings; load_settings(None);"
        f"mods = [m for n, m in sys.modules.items() if n.split('.')[0] in {PACKAGES!r}];"
        "bad = [m.__name__ for m in mods if not (getattr(m, '__file__', None) or sys.argv[1]).startswith(sys.argv[1])];"
        "assert not bad, bad; print(len(mods))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(src)], capture_output=True, text=True,
                         env=bento["env"], cwd=bento["root"], timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert int(out.stdout.strip()) > 10
    assert not (src / "driftloop" / "training").exists()  # no training code


def test_bento_requirements_are_the_service_image_s(bento: dict[str, Any]) -> None:
    def requirements(text: str) -> set[str]:
        return {line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()}

    shipped = requirements((bento["dir"] / "env" / "python" / "requirements.txt").read_text())
    wanted = requirements((ROOT / "deploy" / "requirements-service.txt").read_text())
    assert wanted <= shipped


def test_compose_trainer_skips_a_registry_with_a_champion(bento: dict[str, Any]) -> None:
    from tests.unit.test_deploy_files import trainer_check

    env = bento["env"] | {"DRIFTLOOP_CONFIG": str(bento["root"] / "driftloop.yaml")}
    out = subprocess.run([sys.executable, "-c", trainer_check()], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr


# -- bentoml serve of the Bento --------------------------------------------------------------------
TOKEN = "bento-admin-token-0123456789"


@contextmanager
def bentoml_serve(bento: dict[str, Any], home: Path, cwd: Path, env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """``bentoml serve <the Bento's tag>`` as a user runs it, from ``cwd``, with ``BENTOML_HOME`` at
    ``home`` and ``env`` added; its output in ``cwd/serve.log``. Stopped (its process group) after."""
    port = free_port()
    log = cwd / "serve.log"
    with open(log, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([str(BIN / "bentoml"), "serve", bento["tag"], "--host", "127.0.0.1", "--port", str(port)],
                                cwd=cwd, env=bento["env"] | {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"} | env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield {"proc": proc, "log": log, "url": f"http://127.0.0.1:{port}"}
    finally:
        stop_process(proc, 20)


def running(server: dict[str, Any]) -> None:
    code = server["proc"].poll()
    assert code is None, f"bentoml serve exited with {code}:\n{server['log'].read_text()}"


def ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def test_a_bento_serves_its_packed_model_until_a_registry_names_a_champion(
        bento: dict[str, Any], champion_home: Path, loans: pd.DataFrame, tmp_path: Path) -> None:
    """From a directory whose settings name no registry with a champion (a registry home that does
    not exist, a fresh SQLite store; both relative): /predict answers with the packed version,
    promote is refused (409) and writes nothing, the store is where the relative path says and
    nothing is written into the Bento. Then a registry with a champion appears at registry.home: it
    wins, the worker swaps to its champion, and the admin endpoints work on it again."""
    from driftloop.models.registry import Registry
    from driftloop.training import scenarios

    packed = yaml.safe_load((bento["dir"] / "bento.yaml").read_text())["args"]["packed_model"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "driftloop.yaml").write_text(yaml.safe_dump({
        "registry": {"home": "registry"}, "store": {"url": "sqlite:///store/driftloop.db"},
        "serving": {"poll_interval_s": 0.2}}))
    rows = loans[loans["period"] == "stable"][list(scenarios.FEATURES)].head(3).to_dict(orient="records")
    source = sorted(p.name for p in (bento["dir"] / "src").iterdir())
    admin = {"authorization": f"Bearer {TOKEN}"}
    env = {"DRIFTLOOP_CONFIG": "driftloop.yaml", "DRIFTLOOP_SERVING__ADMIN_TOKEN": TOKEN}
    with bentoml_serve(bento, bento["home"], run, env) as server, \
            httpx.Client(base_url=server["url"], timeout=30) as client:
        wait_until(lambda: ready(client), "the Bento's server to be ready", 120, 0.1, alive=lambda: running(server))
        answer = client.post("/predict", json={"rows": rows})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == packed.split(":")[1] == "v1"
        assert len(answer.json()["predictions"]) == 3
        assert client.get("/model").json()["source"] == "bento"

        refused = client.post("/admin/promote", json={"version": "v1"}, headers=admin)
        assert refused.status_code == 409, refused.text
        assert f"serves {packed}, the model packed in the Bento" in refused.json()["error"]
        assert not (run / "registry").exists()  # read-only: the refused promotion wrote nothing
        assert (run / "store" / "driftloop.db").is_file()  # relative to where bentoml serve runs...
        assert sorted(p.name for p in (bento["dir"] / "src").iterdir()) == source  # ...not inside the Bento

        # A registry appears, its champion a version the Bento does not pack (v2, imported from v1).
        staging = tmp_path / "staging"
        shutil.copytree(champion_home / "bentoml", staging)
        registry = Registry(staging, "loans")
        second = registry.import_(registry.export("v1", tmp_path / "v1.tar.gz"), actor="test").version
        registry.promote(second, actor="test", reason="a registry appears")
        staging.rename(run / "registry")  # whole at once, as a mounted volume would be
        wait_until(lambda: client.post("/predict", json={"rows": rows}).json().get("model_version") == second,
                   f"the worker to swap to the registry's champion {second}", 30, 0.1, alive=lambda: running(server))
        assert client.get("/model").json()["source"] == "registry"
        rolled = client.post("/admin/rollback", json={}, headers=admin)
        assert rolled.status_code == 200 and rolled.json()["champion"] == "v1", rolled.text


@pytest.mark.parametrize("case", ["missing config", "unknown key", "tampered model"])
def test_what_would_stop_every_worker_stops_bentoml_serve_with_one_line(
        bento: dict[str, Any], tmp_path: Path, case: str) -> None:
    """A config file that does not exist or is invalid, or a packed model whose file no longer matches
    its checksum: ``bentoml serve`` prints one line naming it and exits non-zero, before any worker
    starts (not workers failing and being restarted forever)."""
    home, env = bento["home"], {}
    if case == "missing config":
        config = tmp_path / "absent.yaml"
        env["DRIFTLOOP_CONFIG"] = str(config)
        expected = f"driftloop: config file '{config}' does not exist (DRIFTLOOP_CONFIG)"
    elif case == "unknown key":
        config = tmp_path / "driftloop.yaml"
        config.write_text(yaml.safe_dump({"model": {"depth": 3}}))
        env["DRIFTLOOP_CONFIG"] = str(config)
        expected = f"driftloop: invalid configuration in {config}: model.depth: unknown key (DRIFTLOOP_CONFIG)"
    else:
        home = tmp_path / "bentoml"
        shutil.copytree(bento["home"], home, ignore=shutil.ignore_patterns("prometheus_multiproc_dir"))
        with open(home / "models" / "loans" / "v1" / "reference.parquet", "ab") as fh:
            fh.write(b"x")
        expected = "driftloop: refusing the Bento's packed model: loans:v1: reference.parquet checksum mismatch"
    with bentoml_serve(bento, home, tmp_path, env) as server:
        try:
            code = server["proc"].wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"bentoml serve still runs after 90 s:\n{server['log'].read_text()}")
    out = server["log"].read_text()
    ours = [line for line in out.splitlines() if line.startswith("driftloop: ")]
    assert code != 0, out
    assert len(ours) == 1 and ours[0].startswith(expected), out
    assert "Starting production" not in out and "entry_service" not in out  # no arbiter, no worker
