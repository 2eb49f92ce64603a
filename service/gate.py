"""The request gate: the ASGI layer in front of BentoML, and the /predict fast path.

Every HTTP request of a worker passes :class:`RequestGate`, installed with BentoML's
``add_asgi_middleware`` and put in front of BentoML's own middlewares (traffic metrics,
OpenTelemetry, access log, request timeout, request context) by
:func:`service.lifecycle.gate_in_front`. In order:

1. health and metrics (``/livez /healthz /readyz /metrics``) pass straight through;
2. draining (after SIGTERM): 503 with ``Retry-After`` and ``Connection: close``;
3. overload: with ``serving.max_in_flight`` requests already in this worker, 503 with
   ``Retry-After`` at once, instead of queueing the request behind the others;
4. the body, read *before* the request takes one of those slots, so that clients that are slow
   or idle while uploading cannot starve the others: a declared media type other than JSON gets
   415 (``text/plain``; BentoML's form parser answers a malformed form with a 500); more than
   ``serving.max_body_bytes`` gets 413; a body that has not arrived whole within
   ``serving.body_timeout_s`` gets 408 with ``Connection: close`` (a client that declares more
   than it sends, or trickles; counted as ``driftloop_requests_shed_total{reason="body_timeout"}``);
   then the overload check again, and the slot;
5. ``POST /predict`` is answered here: the bearer token, JSON in (orjson), :meth:`Endpoint.predict`
   (validation, the graph inline or batched, request ids, prediction log, metrics, the service's
   ``traffic.timeout`` as a 504), JSON out. Everything else goes on to BentoML's middlewares and
   routes (``/feedback``, ``/model``, admin), the body already read handed on.

What BentoML's middlewares exported for a request, the gate exports for the requests it answers
itself (``/predict``, the refusals, a failed request's 500): ``bentoml_service_request_total``,
``..._duration_seconds``, ``..._in_progress`` and ``..._last_request_timestamp_seconds``, with
BentoML's own metric objects and labels (:class:`service.metrics.RequestMetrics`), so every
answer is counted once under the names the dashboards and alerts read. Where the gate stays
inside BentoML's middlewares (access log or tracing on; see ``gate_in_front``), BentoML counts
them and the gate does not.

Every request that reaches the gate gets an answer at once. An exception that escapes the
request path (a bug, here or in BentoML's routes) is logged with its traceback, counted in
``driftloop_internal_errors_total{exception}`` and answered 500 with a JSON error: BentoML's
``TimeoutMiddleware`` waits for the first message of an answer, so an exception that ended the
request before one left would hold the request for ``traffic.timeout`` (30 s) and end in
uvicorn's bare 500 ("ASGI callable returned without starting response"), counted nowhere. Hostile
JSON is refused before it can raise: nesting past the parser's recursion limit and integers of
more than 4,300 digits are 400s (``field: body``); numbers outside float32, lone surrogates and
over-long strings are 422s naming the field (:meth:`FeatureSchema.validate_rows`).

Why /predict is answered here, in front: BentoML's per-api machinery (a pydantic input model, a
thread hop through anyio's limiter, response headers looked up through its DI container) cost
about half of a worker's time on a one-row request, and its middlewares (four labelled metric
series, a task and a timer per request) a quarter of what was left (py-spy; see
``bench/serving.py``). The ``@bentoml.api`` method of the same name stays, so the route exists on
BentoML's side too, and both call the same :class:`service.endpoint.Endpoint`: one contract, one
error mapping.

The gate is built with the app, before the service instance: it gets the endpoint through the
:class:`service.endpoint.EndpointSlot` it is given (``add_asgi_middleware(RequestGate, slot=...)``),
which the service's ``__init__`` fills.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from timeit import default_timer
from typing import Any

import orjson

from driftloop.service.endpoint import RETRY_AFTER_S, Endpoint, EndpointSlot, HttpError, dumps
from driftloop.service.metrics import RequestMetrics, bentoml_request_metrics, serving_metrics

log = logging.getLogger("driftloop.service")

PASS_THROUGH = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})
_UNRESOLVED: Any = object()


def load_json(body: bytes) -> Any:
    """A request body's JSON, or a 400 naming what is wrong (``field: body``).

    orjson parses; whatever it refuses is parsed again by Python's parser, whose answer stands,
    so the outcome for a body is Python's: it takes lone surrogates (the schema's 422 names the
    field), NaN, and integers of up to 4,300 digits that orjson will not, and refuses more digits
    (ValueError) and nesting past the interpreter's recursion limit (RecursionError, about 1,000
    levels; a /predict body is 3 deep, 5 with images): both the client's error, never a 500.
    (orjson reads an integer past 64 bits as a float, where Python keeps an int: the schema
    takes or refuses the two alike.) Anything parsed that the model cannot take (a deep list
    where a number belongs, a 401-digit integer) is the schema's 422. No lower depth limit of
    our own: checking one means a scan of the body in Python, which costs more than the parse
    (1.3x to 1.7x on 100 to 10,000 rows), and refuses nothing the schema would take."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except RecursionError:
        raise HttpError(400, "Invalid JSON body: nested too deeply to parse (a /predict body is at most "
                             "5 levels deep)", "body") from None
    except ValueError as exc:  # malformed JSON, bad UTF-8, an integer of too many digits
        raise HttpError(400, f"Invalid JSON body: {exc}", "body") from None


def parse_predict_body(body: bytes) -> list[Any]:
    """``{"rows": [...]}`` from a request body, or an HttpError naming what is wrong."""
    data = load_json(body)
    if not isinstance(data, dict):
        raise HttpError(400, f"the body must be a JSON object with 'rows', got {type(data).__name__}", "body")
    if "rows" not in data:
        raise HttpError(400, "the body has no 'rows': send {\"rows\": [{feature: value, ...}, ...]}", "rows")
    rows = data["rows"]
    if not isinstance(rows, list):
        raise HttpError(400, f"'rows' must be a list of objects, got {type(rows).__name__}", "rows")
    return rows


class RequestGate:
    """``app``: the ASGI app behind (BentoML's); ``slot``: where the worker's service attaches its
    :class:`Endpoint` once built. Until then every request passes through (BentoML answers)."""

    in_front_of_bentoml = True  # service.lifecycle.gate_in_front puts it before BentoML's middlewares

    def __init__(self, app: Any, slot: EndpointSlot) -> None:
        self.app = app
        self.slot = slot
        self.in_flight = 0
        self._metrics: RequestMetrics | None = _UNRESOLVED
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()  # admitted, not started
        self._turn_taken = False

    @property
    def request_metrics(self) -> RequestMetrics | None:
        """BentoML's per-request series, when this gate answers in front of BentoML's traffic
        middleware; None when that middleware is outside the gate (it counts) or absent."""
        if self._metrics is _UNRESOLVED:
            self._metrics = bentoml_request_metrics(self.app)
            log.info("the request gate %s", "answers in front of BentoML's middlewares and counts its answers in "
                     "bentoml_service_request_*" if self._metrics is not None else
                     "has BentoML's traffic metrics outside it (or none): BentoML counts every answer")
        return self._metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in PASS_THROUGH:
            await self.app(scope, receive, send)
            return
        arrived = default_timer()
        metrics = self.request_metrics
        path = scope["path"]
        running = metrics is not None and path == "/predict" and self.slot.endpoint is not None
        if running:  # the gate answers it, whatever comes
            metrics.running(+1)
        state = [0, False]  # the status the gate answered with itself (0: passed on, or no answer); started

        async def send_tracked(message: dict[str, Any]) -> None:
            state[1] = True
            await send(message)

        try:
            state[0] = await self._gate(scope, receive, send_tracked)
        except Exception as exc:  # a bug: answered, logged and counted, never left to time out
            endpoint = self.slot.endpoint
            errors = endpoint.serving.metrics if endpoint is not None else serving_metrics()
            errors.internal_errors.labels(type(exc).__name__).inc()
            log.exception("%s %s failed", scope["method"], path)
            if state[1]:  # part of the answer is out: the server ends the connection
                raise
            state[0] = await _reply(send, HttpError(500, f"internal error ({type(exc).__name__}); the service "
                                                         "log has the details"))
        finally:
            if running:
                metrics.running(-1)
            if metrics is not None and state[0]:
                metrics.answered(path, state[0], arrived)

    async def _gate(self, scope: Any, receive: Any, send: Any) -> int:
        """The request's way through the gate: the status of the answer the gate sent itself, or 0
        (passed on to BentoML, or the client went away)."""
        endpoint = self.slot.endpoint
        if endpoint is not None and (refusal := self._refusal(endpoint)) is not None:
            return await _reply(send, refusal)
        headers = dict(scope["headers"])
        body = None
        if scope["method"] == "POST":  # read without a slot: a slow upload holds none
            try:
                body = await self._read(receive, headers, endpoint)
            except HttpError as exc:
                return await _reply(send, exc)
            if body is None:  # the client went away
                return 0
            if endpoint is not None and (refusal := self._refusal(endpoint)) is not None:
                return await _reply(send, refusal)  # the slots filled up (or draining began) meanwhile
        self.in_flight += 1  # BentoML's bentoml_service_request_in_progress exports the same count
        try:
            await self._turn()
            return await self._handle(scope, receive, send, headers, body, endpoint)
        finally:
            self.in_flight -= 1

    async def _turn(self) -> None:
        """Wait for this request's turn to start: one admitted request starts per turn of the
        event loop, in the order they were admitted, and the loop reads its sockets between two
        starts. So the requests that arrive meanwhile are counted (and the ones past
        ``max_in_flight`` refused) within about one request's time, instead of after every
        request admitted before them has run (what queued refusals for seconds at twice the
        saturation rate), and requests that arrived together all count as in flight first."""
        loop = asyncio.get_running_loop()
        if self._waiting or self._turn_taken:
            waiter = loop.create_future()
            self._waiting.append(waiter)
            await waiter
            return
        self._turn_taken = True
        loop.call_soon(self._pass_turn)
        await asyncio.sleep(0)  # as a waiter would: the requests read with this one count first

    def _pass_turn(self) -> None:
        """On the next turn of the loop: the next admitted request starts, or the turn is free."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # a request cancelled while waiting has no turn
                waiter.set_result(None)
                asyncio.get_running_loop().call_soon(self._pass_turn)
                return
        self._turn_taken = False

    def _refusal(self, endpoint: Endpoint) -> HttpError | None:
        """The 503 for a request that comes while draining or overloaded (counted), else None."""
        serving = endpoint.serving
        if serving.draining:
            serving.metrics.shed.labels("draining").inc()
            return HttpError(503, "the service is shutting down; retry on another replica", None,
                             {"retry-after": RETRY_AFTER_S, "connection": "close"})
        if self.in_flight >= serving.config.max_in_flight:
            serving.metrics.shed.labels("overloaded").inc()
            return HttpError(503, f"overloaded: {self.in_flight} requests in flight in this worker "
                                  f"(serving.max_in_flight); retry shortly", None, {"retry-after": RETRY_AFTER_S})
        return None

    async def _read(self, receive: Any, headers: dict[bytes, bytes], endpoint: Endpoint | None) -> bytes | None:
        """The whole body of a POST (None if the client went away), or the 415, 413 or 408."""
        media_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if media_type and media_type != "application/json" and not media_type.endswith("+json"):
            raise HttpError(415, f"Content-Type {media_type} is not accepted: send the body as "
                                 "application/json", "Content-Type")
        if endpoint is None:  # the worker is starting: BentoML answers
            return await _read_body(receive, headers, None, [])
        config = endpoint.serving.config
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(config.body_timeout_s):
                return await _read_body(receive, headers, config.max_body_bytes, chunks)
        except TimeoutError:
            endpoint.serving.metrics.shed.labels("body_timeout").inc()
            declared = headers.get(b"content-length", b"").decode("latin-1")
            of = f" of {declared} declared" if declared else ""
            raise HttpError(408, f"the body did not arrive within {config.body_timeout_s:g} s "
                                 f"(serving.body_timeout_s): {sum(map(len, chunks))}{of} bytes came", "body",
                            {"connection": "close"}) from None

    async def _handle(self, scope: Any, receive: Any, send: Any, headers: dict[bytes, bytes], body: bytes | None,
                      endpoint: Endpoint | None) -> int:
        if body is None:  # not a POST: the app reads whatever comes
            await self.app(scope, receive, send)
            return 0
        if scope["path"] != "/predict" or endpoint is None:
            await self.app(scope, _replay(body), send)
            return 0
        try:
            endpoint.authorize(headers.get(b"authorization", b"").decode("latin-1"))
            answer = await endpoint.predict(parse_predict_body(body))
        except HttpError as exc:
            return await _reply(send, exc)
        return await _send_json(send, 200, answer)


async def _read_body(receive: Any, headers: dict[bytes, bytes], limit: int | None,
                     chunks: list[bytes]) -> bytes | None:
    """The body's chunks into ``chunks`` (what came so far, should the read be cut short), then
    the whole body; None if the client disconnected; a 413 past ``limit``."""
    declared = headers.get(b"content-length")
    if limit is not None and declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"the body is {int(declared)} bytes; at most {limit} (serving.max_body_bytes)", "body")
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise HttpError(413, f"the body is over {limit} bytes (serving.max_body_bytes)", "body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Any:
    """A ``receive`` that hands the app the body already read, then waits like a live one."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # as a connection would until the client disconnects
        return {"type": "http.disconnect"}  # pragma: no cover

    return receive


async def _reply(send: Any, error: HttpError) -> int:
    body = error.body()
    payload = None
    if not error.extra:  # strings and None only: no NaN to look for (dumps' slower way for a null)
        try:
            payload = orjson.dumps(body)
        except TypeError:  # a string UTF-8 cannot encode: dumps escapes it
            pass
    return await _send_json(send, error.status, body, error.headers, payload)


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: dict[str, str] | None = None,
                     payload: bytes | None = None) -> int:
    """Send ``body`` (``payload``: already encoded) as the JSON answer; its status."""
    if payload is None:
        payload = dumps(body)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
    return status
