"""Shared fixtures. Everything a test writes lives under pytest's tmp_path; nothing is
downloaded; real servers are started once per session by the fixtures that need them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DRIFTLOOP_* variable from the caller's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("DRIFTLOOP_"):
            monkeypatch.delenv(key)


def make_settings(root: Path, **overrides: Any):  # noqa: ANN201
    """Settings with the registry, store and reports under ``root``."""
    from driftloop.settings import load_settings

    base: dict[str, Any] = {
        "registry": {"home": str(root / "bentoml")},
        "store": {"url": f"sqlite:///{root / 'driftloop.db'}"},
        "monitoring": {"reports_dir": str(root / "reports"), "metrics_port": 0},
    }
    for key, value in overrides.items():
        base[key] = base.get(key, {}) | value if isinstance(value, dict) else value
    return load_settings(None, **base)


@pytest.fixture
def settings(tmp_path: Path):  # noqa: ANN201
    return make_settings(tmp_path)


@pytest.fixture(scope="session")
def loans() -> pd.DataFrame:
    """The built-in scenario's default timeline (train, stable, covariate, concept)."""
    from training.scenarios import scenario_frame

    return scenario_frame("loans", seed=42)


@pytest.fixture(scope="session")
def champion_home(tmp_path_factory: pytest.TempPathFactory, loans: pd.DataFrame) -> Path:
    """A registry with v1 trained on the scenario's train period and promoted (trained once)."""
    from models.registry import Registry
    from training.train import train_version

    root = tmp_path_factory.mktemp("champion")
    settings = make_settings(root)
    registry = Registry(settings.registry.home, settings.registry.project)
    result = train_version(settings, loans[loans["period"] == "train"].reset_index(drop=True), registry,
                           trigger="initial")
    registry.promote(result.version.version, actor="test", reason="fixture")
    return root
