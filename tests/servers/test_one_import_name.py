"""Installed, driftloop adds one import name to a user's environment: ``driftloop``. The
repository's top-level folders (models/, training/, monitoring/, service/) install as its
subpackages, so a user's own ``models.py`` or ``service/`` in the working directory never shadows
them, neither for the CLI nor for ``bentoml serve`` (which puts the working directory first on
``sys.path``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from driftloop.launch import ServiceProcess, free_port, write_config
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHADOWS = ("models", "training", "monitoring", "service")


def test_the_wheel_holds_one_top_level_name(tmp_path: Path) -> None:
    # built from a copy: an in-tree build would leave build/ and *.egg-info in the repository
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "var", "build", "*.egg-info",
                                                                "__pycache__", ".pytest_cache"))
    out = subprocess.run([str(BIN / "pip"), "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                          str(tmp_path), str(source)], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    [wheel] = tmp_path.glob("driftloop-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"driftloop", wheel.name.split("-py3")[0] + ".dist-info"}
    for module in ("models/registry.py", "training/train.py", "monitoring/store.py", "service/app.py",
                   "monitoring/migrations/script.py.mako", "monitoring/migrations/versions/0001_initial.py"):
        assert f"driftloop/{module}" in names


def _shadowing_workdir(root: Path) -> Path:
    """A user's project folder with its own modules named like the repository's folders; importing
    any of them fails loudly."""
    work = root / "work"
    for name in SHADOWS:
        package = work / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"raise ImportError('the user\\'s own {name} was imported')\n")
    (work / "models.py").write_text("raise ImportError('the user\\'s own models.py was imported')\n")
    (work / "service" / "app.py").write_text("raise ImportError('the user\\'s own service.app was imported')\n")
    return work


@pytest.mark.slow
def test_a_working_directory_with_its_own_models_and_service_trains_and_serves(tmp_path: Path) -> None:
    work = _shadowing_workdir(tmp_path)
    settings = make_settings(tmp_path, serving={"port": free_port()})
    config = write_config(settings, tmp_path / "driftloop.yaml")
    # ``python -c`` puts the working directory first on sys.path, as ``python -m`` and a notebook do
    cli = "import sys; from driftloop.cli import app; sys.argv[0] = 'driftloop'; app()"
    out = subprocess.run([sys.executable, "-c", cli, "train", "--config", str(config), "--promote"], cwd=work,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    with ServiceProcess(settings, config, log_path=tmp_path / "service.log", cwd=work) as service:
        row = {"income": 52000.0, "age": 41.0, "debt_ratio": 0.31, "credit_lines": 6.0, "region": "north",
               "employment": "salaried"}
        answer = httpx.post(f"{service.url}/predict", json={"rows": [row]}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == "v1"
    assert "the user's own" not in (tmp_path / "service.log").read_text()
