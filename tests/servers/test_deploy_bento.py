"""``bentoml build`` of deploy/bentofile.yaml (through deploy/bento.py) on a registry with a champion:
it builds without the network, the Bento names the champion and carries its verified files when
exported, and its source is enough to import the service."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import make_settings

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
    assert [m["tag"] for m in info["models"]] == ["loans:v1"] == [bento["built"]["champion"]]
    assert info["labels"] == {"project": "driftloop", "champion": "v1"}


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
