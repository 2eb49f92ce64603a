"""BentoML's request-timeout timer goes with the request (issue 13, part 6).

BentoML's ``TimeoutMiddleware`` leaves a ``loop.call_later`` handle per request for the whole
``traffic.timeout``; :func:`driftloop.service.lifecycle.cancel_request_timers` cancels it once the
answer has started. These tests drive the middleware directly, on asyncio's loop, with a
stand-in ASGI app: the first one shows BentoML's own code still leaving the timers (when it
fails, BentoML has fixed it and the patch can go), the others that the patch leaves none and
changes nothing else.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from driftloop.service.lifecycle import cancel_request_timers

REQUESTS = 200


async def answer(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def pending_timers() -> int:
    """The middleware's timer handles alive and not cancelled (asyncio keeps them until they fire;
    a fired one held only by a cycle, a timed-out request's traceback, is collected first)."""
    gc.collect()
    return sum(1 for o in gc.get_objects()
               # type(), not isinstance(): the latter reads __class__, which some objects (torch's
               # deprecated proxies, once torch is imported) answer with a warning
               if type(o) is asyncio.TimerHandle and not o.cancelled() and "_set_timer_out" in repr(o))


def serve(app: Any, requests: int = REQUESTS, timeout: float = 30.0) -> tuple[list[int], int]:
    """``requests`` requests through a TimeoutMiddleware over ``app``: each answer's status, and the
    timers still pending after the last one."""
    middleware = TimeoutMiddleware(app, timeout=timeout)

    async def run() -> tuple[list[int], int]:
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        before = pending_timers()
        for _ in range(requests):
            await middleware({"type": "http", "method": "POST", "path": "/predict"}, receive, send)
        return statuses, pending_timers() - before

    return asyncio.run(run())


@pytest.fixture
def bentoml_call(monkeypatch: pytest.MonkeyPatch) -> Any:
    """BentoML's own ``__call__`` on the class for one test (whatever patched it before), put back after."""
    current = TimeoutMiddleware.__call__
    monkeypatch.setattr(TimeoutMiddleware, "__call__", getattr(current, "original", current))
    return TimeoutMiddleware.__call__


def test_bentoml_leaves_a_timer_per_request(bentoml_call: Any) -> None:
    statuses, pending = serve(answer)
    assert statuses == [200] * REQUESTS
    assert pending == REQUESTS  # one handle per answered request, alive for traffic.timeout


def test_patched_middleware_leaves_none(bentoml_call: Any) -> None:
    assert cancel_request_timers() is True
    assert TimeoutMiddleware.__call__ is not bentoml_call
    statuses, pending = serve(answer)
    assert statuses == [200] * REQUESTS
    assert pending == 0


def test_patch_is_applied_once(bentoml_call: Any) -> None:
    assert cancel_request_timers() is True
    patched = TimeoutMiddleware.__call__
    assert cancel_request_timers() is True
    assert TimeoutMiddleware.__call__ is patched
    assert patched.original is bentoml_call  # type: ignore[attr-defined]


def test_a_slow_request_still_gets_504_and_is_cancelled(bentoml_call: Any) -> None:
    cancel_request_timers()
    cancelled: list[bool] = []

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        await answer(scope, receive, send)

    statuses, pending = serve(slow, requests=2, timeout=0.05)
    assert statuses == [504, 504]
    assert cancelled == [True, True]
    assert pending == 0
