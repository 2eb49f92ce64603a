"""Build the driftloop Bento with the registry's champion in it.

    .venv/bin/python deploy/bento.py [--config driftloop.yaml] [--project-root .]

Reads the settings (``--config`` or ``DRIFTLOOP_CONFIG``), finds the champion, verifies its
checksums, and runs ``bentoml build`` with ``deploy/bentofile.yaml`` plus the champion's tag as the
template argument ``packed_model`` (bento.yaml's ``args``), with ``BENTOML_HOME`` at the registry's
home, so the model comes out of the registry's store and the Bento lands beside it
(``<registry.home>/bentos``). The service declares that model (``BentoModel(args.packed_model)``,
:mod:`driftloop.service.packed`): BentoML ships it with the Bento and a worker serves it while no
registry names a champion. Prints the Bento's tag. The build context is the repository staged in
the installed layout (pyproject.toml's ``package-dir``: ``models/`` becomes ``driftloop/models/``,
...), so the Bento imports ``driftloop.service.app`` exactly as an installed driftloop does. Nothing is downloaded: the Python packages
are recorded, not resolved (``lock_packages: false``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import shutil
import tempfile
import tomllib
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent


def bentofile_with(champion_tag: str, version: str) -> dict:
    """deploy/bentofile.yaml with the champion as the Bento's packed model: a template argument,
    which BentoML records in bento.yaml and restores wherever the Bento is served (the service
    module reads it at import, before the model can be declared), and a label for people."""
    spec = yaml.safe_load((DEPLOY / "bentofile.yaml").read_text())
    spec["args"] = (spec.get("args") or {}) | {"packed_model": champion_tag}
    spec["labels"] = spec.get("labels", {}) | {"champion": version}
    return spec


def stage(project_root: Path, into: Path) -> Path:
    """Copy the project's packages into ``into`` in their installed layout (pyproject.toml's
    ``[tool.setuptools.package-dir]``), with the requirements file the bentofile names."""
    pyproject = tomllib.loads((project_root / "pyproject.toml").read_text())
    for package, folder in pyproject["tool"]["setuptools"]["package-dir"].items():
        shutil.copytree(project_root / folder, into / package.replace(".", "/"), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (into / "deploy").mkdir(exist_ok=True)
    shutil.copy2(project_root / "deploy" / "requirements-service.txt", into / "deploy")
    return into


def build(config: str | None, project_root: Path) -> str:
    from driftloop.models.registry import Registry
    from driftloop.settings import load_settings

    settings = load_settings(config)
    registry = Registry(settings.registry.home, settings.registry.project)
    champion = registry.champion()
    if champion is None:
        raise SystemExit(f"no champion in {settings.registry.home}: train and promote a model first")
    registry.verify(champion.version)  # every file's sha256, before it is shipped
    tag = registry.get(champion.version).tag
    bentoml = Path(sys.executable).with_name("bentoml")
    env = os.environ | {"BENTOML_HOME": str(Path(settings.registry.home).resolve()),
                        "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        context = stage(project_root, Path(tmp) / "context")
        bentofile = Path(tmp) / "bentofile.yaml"
        bentofile.write_text(yaml.safe_dump(bentofile_with(tag, champion.version), sort_keys=False))
        out = subprocess.run([str(bentoml), "build", "-f", str(bentofile), "--output", "tag", str(context)],
                             env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"bentoml build failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    bento_tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    print(json.dumps({"bento": bento_tag, "champion": tag, "bentoml_home": env["BENTOML_HOME"]}))
    return bento_tag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.environ.get("DRIFTLOOP_CONFIG"))
    parser.add_argument("--project-root", type=Path, default=DEPLOY.parent)
    args = parser.parse_args()
    build(args.config, args.project_root.resolve())


if __name__ == "__main__":
    main()
