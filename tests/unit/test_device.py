"""serving.device: the device name and onnxruntime providers, and the BentoML resources they imply."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from driftloop.launch import bentoml_config
from driftloop.models.errors import ExportError
from driftloop.models.onnx_model import providers_for

from tests.conftest import make_settings

CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]
WITH_GPU = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(("device", "available", "expected"), [
    ("cpu", WITH_GPU, ("cpu", ["CPUExecutionProvider"])),
    ("auto", CPU_ONLY, ("cpu", ["CPUExecutionProvider"])),
    ("auto", WITH_GPU, ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])),
    ("cuda", WITH_GPU, ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])),
])
def test_providers_for(monkeypatch: pytest.MonkeyPatch, device: str, available: list[str],
                       expected: tuple[str, list[str]]) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    assert providers_for(device) == expected


def test_cuda_without_a_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: CPU_ONLY)
    with pytest.raises(ExportError, match="serving.device is cuda.*gpu extra"):
        providers_for("cuda")


def test_this_machine_serves_on_what_onnxruntime_offers() -> None:
    """Not mocked: the real onnxruntime of this environment decides ``auto``."""
    device, providers = providers_for("auto")
    assert device == ("cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu")
    assert providers[-1] == "CPUExecutionProvider"


def test_a_gpu_service_asks_bentoml_for_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: WITH_GPU)
    assert bentoml_config(make_settings(tmp_path, serving={"device": "auto"}))["resources"] == {"gpu": 1}
    assert "resources" not in bentoml_config(make_settings(tmp_path, serving={"device": "cpu"}))
