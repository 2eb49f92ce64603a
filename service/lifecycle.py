"""A serving worker's life: it dies with the process that started it; an answered request leaves no
timer; its request gate comes before BentoML's per-request middlewares.

BentoML's arbiter starts each worker in a session of its own, so a signal to ``driftloop
serve``'s process group never reaches the workers; an orphaned worker would go on answering with
``/readyz`` 200. :func:`die_with_parent` (called in every worker, :mod:`service.app`) stops the
worker when its parent goes. It lives with the service, so a Bento served by plain ``bentoml
serve`` has it too; ``driftloop serve`` (:mod:`driftloop.launch`) uses the same ``prctl`` for the
``bentoml serve`` process it starts.

:func:`cancel_request_timers` (called in every worker too) makes BentoML's per-request timeout
timer go with the request: unpatched, each answered request leaves one on the event loop for the
whole ``traffic.timeout``, which made a worker's memory grow with its throughput (issue 13, part 6;
``python -m bench.memory``).

:func:`gate_in_front` (applied when :mod:`service.app` is imported, before BentoML builds the app)
puts :class:`service.gate.RequestGate` in front of BentoML's own per-request middlewares, so that
``POST /predict``, which the gate answers, no longer pays for them (issue 15).

These two reach into BentoML's private modules, here and nowhere else, version-checked, each with
a test that fails when BentoML changes (tests/unit/test_request_timers.py, tests/unit/test_gate_in_front.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("driftloop.service")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    prctl.restype = ctypes.c_int
    return prctl


def die_with_parent(parent: int, *, grace_s: float, poll_s: float = 1.0,
                    deathsig: signal.Signals | None = signal.SIGTERM) -> threading.Thread:
    """Stop this process when its parent, ``parent`` (the pid it was started by, read as early as
    possible), exits: SIGTERM, so that its graceful shutdown runs; if it still runs ``grace_s``
    seconds later, it exits at once (exit status 1).

    On Linux the kernel sends ``deathsig`` the moment the parent dies (``PR_SET_PDEATHSIG``; None:
    not asked for). A watchdog thread also polls the parent pid every ``poll_s`` seconds: it
    sends the SIGTERM itself where the kernel did not (elsewhere than Linux, or a parent that died
    before this call), and enforces ``grace_s``. The kernel's signal follows the *thread* that
    forked this process, not its process: it suits parents that fork from their main thread, as
    BentoML's arbiter and ``driftloop serve`` do. Call this from the main thread: the kernel
    keeps the request with the calling thread.
    """
    signalled = False
    if deathsig is not None and (prctl := _prctl()) is not None:
        signalled = prctl(PR_SET_PDEATHSIG, int(deathsig), 0, 0, 0) == 0
    if os.getppid() != parent:  # gone already: the kernel had nobody to signal for
        signalled = False

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.warning("the parent process %d is gone: stopping this process (%d)", parent, os.getpid())
        if not signalled:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        log.error("still running %gs after its parent %d exited: process %d exits now", grace_s, parent,
                  os.getpid())
        logging.shutdown()
        os._exit(1)

    thread = threading.Thread(target=watch, name=f"die-with-parent-{parent}", daemon=True)
    thread.start()
    return thread


def cancel_request_timers() -> bool:
    """Cancel BentoML's request-timeout timer once the request is answered; True if it is (now) done.

    BentoML's ``TimeoutMiddleware`` (bentoml 1.4; the service's ``traffic.timeout``, 30 s here)
    schedules ``loop.call_later(timeout, ...)`` for every request and never cancels it. The timer
    handle, its future, bound method, arguments and copied context, and libuv's timer, about
    0.85 KB in all, outlive the answer by the whole timeout: a worker holds 30 s of its own
    throughput in them, 50-90 MB at the 2,000-3,300 one-row requests a second of a 2-core machine,
    and the loop pays for a heap of that many timers and for firing each one (``python -m
    bench.memory``: with this, the worker grows 8 MB instead of 56-92 MB in 45 s at 64
    connections, and spends about 17% less CPU per request, 7-32% over four paired rounds). The middleware's ``__call__`` is
    replaced by the same steps with the timer cancelled once the response has started (or the
    timeout fired): the answers, the 504 and what is cancelled when are unchanged.

    This reaches into BentoML's private module, here and nowhere else, and only for the versions
    it was written against (1.4.x, as ``pyproject.toml`` pins): for another version it does nothing
    and says so in the log. ``tests/unit/test_request_timers.py`` fails when BentoML stops leaving
    the timer behind, so that this can then go.
    """
    import bentoml
    from bentoml._internal.server.http import traffic
    from starlette.responses import JSONResponse

    middleware = traffic.TimeoutMiddleware
    if getattr(middleware.__call__, "cancels_timer", False):
        return True
    if not bentoml.__version__.startswith("1.4."):
        log.warning("bentoml %s: its request-timeout timers are left as they are (cancel_request_timers "
                    "knows 1.4.x only)", bentoml.__version__)
        return False

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            try:
                await waiter
            finally:  # the one change: the timer goes now, not ``timeout`` seconds later
                timer.cancel()
        except asyncio.TimeoutError:
            if fut.cancel():
                resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                    status_code=504)
                await resp(scope, receive, send)
        else:
            await fut  # wait for the future to finish

    __call__.cancels_timer = True  # type: ignore[attr-defined]
    __call__.original = middleware.__call__  # type: ignore[attr-defined]  # BentoML's, for the test that it leaks
    __call__.__qualname__ = f"{middleware.__qualname__}.__call__"
    middleware.__call__ = __call__  # type: ignore[method-assign]
    return True


def gate_in_front() -> bool:
    """Build BentoML's app with the middlewares that ask for it (a class attribute
    ``in_front_of_bentoml = True``: :class:`service.gate.RequestGate`) in front of BentoML's own;
    True if they are (now) put there.

    BentoML 1.4 (``ServiceAppFactory.middlewares``) stacks a service's ``add_asgi_middleware``
    middlewares *inside* its own: the traffic metrics (``bentoml_service_request_*``: four labelled
    series per request), OpenTelemetry, the access log, the request timeout (a task, a future and a
    timer per request) and its context. There is no supported way to put one in front of them,
    and on a one-row ``/predict`` they cost about a quarter of a worker's time (py-spy, ``python
    -m bench.serving --profile``). This wraps that property: the same middlewares, the opted-in
    ones moved first (Starlette's ``ServerErrorMiddleware`` stays outermost). Everything the gate
    passes on still goes through BentoML's stack as before; for what it answers itself the gate
    exports BentoML's traffic metrics under the same names and labels, and applies the request
    timeout itself (:class:`service.gate.RequestGate`).

    The gate stays where BentoML puts it (inside) when the access log or tracing is on (a log
    line and a span per request are what was asked for), and for a BentoML other than 1.4.x
    (logged); the gate finds out where it stands from the stack below it.
    """
    import bentoml
    from _bentoml_impl.server.app import ServiceAppFactory

    prop = ServiceAppFactory.middlewares
    if getattr(prop.fget, "gate_in_front", False):
        return True
    if not bentoml.__version__.startswith("1.4."):
        log.warning("bentoml %s: the request gate stays inside its middlewares (gate_in_front knows 1.4.x only)",
                    bentoml.__version__)
        return False
    original = prop.fget

    def middlewares(self: Any) -> list[Any]:
        stack = original(self)
        if not per_request_features_off():
            return stack
        front = [m for m in stack if getattr(m.cls, "in_front_of_bentoml", False)]
        return front + [m for m in stack if not any(m is f for f in front)]

    middlewares.gate_in_front = True  # type: ignore[attr-defined]
    middlewares.original = original  # type: ignore[attr-defined]  # BentoML's, for the test of its order
    ServiceAppFactory.middlewares = property(middlewares)  # type: ignore[method-assign,assignment]
    return True


def per_request_features_off() -> bool:
    """True when BentoML's access log is off and tracing excludes ``/predict`` (``driftloop serve``'s
    defaults: ``serving.access_log``, ``serving.tracing``)."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from opentelemetry.util.http import ExcludeList, parse_excluded_urls

    if BentoMLContainer.api_server_config.logging.access.enabled.get():
        return False
    urls = BentoMLContainer.config.tracing.excluded_urls.get()  # read as BentoML's tracing_excluded_urls reads it
    excluded = ExcludeList(urls) if isinstance(urls, list) else parse_excluded_urls(urls) if isinstance(urls, str) \
        else ExcludeList([])
    return bool(excluded.url_disabled("/predict"))
