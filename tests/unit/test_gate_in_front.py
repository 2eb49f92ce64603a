"""The request gate in front of BentoML's own middlewares (issue 15).

BentoML 1.4 stacks a service's ``add_asgi_middleware`` middlewares inside its own (traffic
metrics, tracing, access log, request timeout, context);
:func:`driftloop.service.lifecycle.gate_in_front` moves :class:`service.gate.RequestGate` first.
The first test shows BentoML's own order still putting the gate inside (when it fails, BentoML
has changed, and the patch should be looked at again); the others that the patch moves the gate
and nothing else, only with the access log and tracing off. The whole app, counting every answer
once under BentoML's metric names, is tests/http/test_service_inprocess.py.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

with warnings.catch_warnings():  # bentoml's SDK overrides a pydantic hook pydantic 2.11 deprecates
    warnings.filterwarnings("ignore", "The `__get_pydantic_core_schema__` method of the `BaseModel` class")
    from _bentoml_impl.server.app import ServiceAppFactory
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from driftloop.service import lifecycle
    from driftloop.service.app import Driftloop
    from driftloop.service.gate import RequestGate


@pytest.fixture
def factory() -> Iterator[Any]:
    """BentoML's app factory for the driftloop service, with its configuration loaded as
    ``to_asgi`` loads it (and loaded again, without the test's overrides, after)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    saved = copy.deepcopy(BentoMLContainer.config.get())  # inject_config merges into what is there

    def build() -> Any:
        BentoMLContainer.config.set(copy.deepcopy(saved))
        Driftloop.inject_config()
        return ServiceAppFactory(Driftloop)

    yield build
    BentoMLContainer.config.set(saved)


def classes(middlewares: list[Any]) -> list[type]:
    return [m.cls for m in middlewares]


def test_bentoml_stacks_a_service_middleware_inside_its_own(factory: Any) -> None:
    assert lifecycle.gate_in_front() is True  # applied (importing service.app applies it too)
    stack = classes(ServiceAppFactory.middlewares.fget.original(factory()))  # type: ignore[attr-defined]
    assert stack.index(RequestGate) > stack.index(RunnerTrafficMetricsMiddleware)
    assert stack.index(RequestGate) > stack.index(TimeoutMiddleware)


@pytest.mark.parametrize("off", [True, False])
def test_the_gate_goes_first_only_with_the_per_request_features_off(factory: Any, monkeypatch: pytest.MonkeyPatch,
                                                                     off: bool) -> None:
    built = factory()
    original = classes(ServiceAppFactory.middlewares.fget.original(built))  # type: ignore[attr-defined]
    monkeypatch.setattr(lifecycle, "per_request_features_off", lambda: off)
    patched = classes(built.middlewares)
    if off:
        assert patched == [RequestGate] + [cls for cls in original if cls is not RequestGate]
    else:
        assert patched == original


@pytest.mark.parametrize(("config", "off"), [
    ({"logging": {"access": {"enabled": False}}, "tracing": {"excluded_urls": [".*"]}}, True),  # driftloop serve's
    ({"logging": {"access": {"enabled": True}}, "tracing": {"excluded_urls": [".*"]}}, False),  # serving.access_log
    ({"logging": {"access": {"enabled": False}}}, False),  # serving.tracing: spans for every route
])
def test_the_per_request_features_are_read_from_bentomls_configuration(factory: Any, monkeypatch: pytest.MonkeyPatch,
                                                                       config: dict[str, Any], off: bool) -> None:
    monkeypatch.setenv("BENTOML_CONFIG_OVERRIDES", json.dumps({"services": {"driftloop": config}}))
    factory()
    assert lifecycle.per_request_features_off() is off


def test_the_patch_is_applied_once() -> None:
    assert lifecycle.gate_in_front() is True
    patched = ServiceAppFactory.middlewares
    assert lifecycle.gate_in_front() is True
    assert ServiceAppFactory.middlewares is patched
