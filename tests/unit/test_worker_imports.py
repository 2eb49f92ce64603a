"""A serving worker imports what serving needs, not what training and the monitor need.

In a fresh interpreter the service is built as a BentoML worker builds it (``Driftloop.to_asgi()``,
whose lifespan runs ``Driftloop.__init__``: settings, registry, prediction store, ``Serving.start()``
loading the champion) and answers one ``POST /predict``; none of the learning, reporting and frame
libraries (:data:`bench.footprint.NOT_IN_A_WORKER`) may have been imported by then. Each costs every
worker memory and start-up time: ``python -m bench.footprint`` measures a worker.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from bench.footprint import worker_in_process
from driftloop.launch import write_config
from tests.conftest import make_settings


def test_a_serving_worker_imports_no_learning_or_reporting_library(champion_home: Path, tmp_path: Path) -> None:
    shutil.copytree(champion_home / "bentoml", tmp_path / "bentoml")
    config = write_config(make_settings(tmp_path), tmp_path / "driftloop.yaml")
    row = {"income": 52000.0, "age": 41.0, "debt_ratio": 0.31, "credit_lines": 6.0, "region": "north",
           "employment": "salaried"}
    worker = worker_in_process(config, row, tmp_path)
    assert worker["status"] == 200 and worker["answer"]["model_version"] == "v1", worker["answer"]
    assert worker["not_in_a_worker"] == [], f"a serving worker imported {worker['not_in_a_worker']}"
    # ...and the modules it does need are the ones it served with
    assert {"driftloop.service.serving", "driftloop.models.registry", "onnxruntime", "sqlalchemy"} <= set(
        worker["modules"])


def test_a_lazy_module_is_imported_at_its_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from driftloop.models.lazy import lazy_module

    (tmp_path / "driftloop_lazy_probe.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = lazy_module("driftloop_lazy_probe")
    try:
        assert "driftloop_lazy_probe" not in sys.modules  # named, not imported
        assert probe.VALUE == 42
        assert sys.modules["driftloop_lazy_probe"].VALUE == 42  # imported now, as any import
        with pytest.raises(AttributeError, match="no attribute 'MISSING'"):
            probe.MISSING  # noqa: B018
        with pytest.raises(AttributeError, match="imported lazily"):
            probe.VALUE = 1
    finally:
        sys.modules.pop("driftloop_lazy_probe", None)
