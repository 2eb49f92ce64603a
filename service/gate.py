"""The request gate: the ASGI layer in front of BentoML's routing, and the /predict fast path.

Every HTTP request of a worker passes :class:`RequestGate` (installed with BentoML's
``add_asgi_middleware``, its supported extension point). In order:

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
5. ``POST /predict`` is answered here: the bearer token, JSON in, :meth:`Endpoint.predict`
   (validation, the graph inline or batched, request ids, prediction log, metrics), JSON out.
   Everything else goes on to BentoML (``/feedback``, ``/model``, admin).

Every request that reaches the gate gets an answer at once. An exception that escapes the
request path (a bug, here or in BentoML's routes) is logged with its traceback, counted in
``driftloop_internal_errors_total{exception}`` and answered 500 with a JSON error. That is not
only politeness: BentoML's ``TimeoutMiddleware``, outside this one, waits for the first message
of an answer, so an exception that ended the request before one left used to hold the request
for ``traffic.timeout`` (30 s) and end in uvicorn's bare 500 ("ASGI callable returned without
starting response"), counted nowhere. Hostile JSON is refused before it can raise: nesting past
the parser's recursion limit and integers of more than 4,300 digits are 400s (``field: body``);
numbers outside float32, lone surrogates and over-long strings are 422s naming the field
(:meth:`FeatureSchema.validate_rows`).

Why /predict is answered here: BentoML's per-api machinery (a pydantic input model, a thread
hop through anyio's limiter, response headers looked up through its DI container) cost about
half of a worker's time on a one-row request (py-spy; see ``bench/serving.py``). The
``@bentoml.api`` method of the same name stays, so the route exists on BentoML's side too, and
both call the same :class:`service.endpoint.Endpoint`: one contract, one error mapping.

The gate is built with the app, before the service instance: it gets the endpoint through the
:class:`service.endpoint.EndpointSlot` it is given (``add_asgi_middleware(RequestGate, slot=...)``),
which the service's ``__init__`` fills.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from driftloop.service.endpoint import RETRY_AFTER_S, Endpoint, EndpointSlot, HttpError, dumps
from driftloop.service.metrics import serving_metrics

log = logging.getLogger("driftloop.service")

PASS_THROUGH = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})


def load_json(body: bytes) -> Any:
    """A request body's JSON, or a 400 naming what is wrong (``field: body``). Python's parser
    itself refuses integers of more than 4,300 digits (ValueError) and nesting past the
    interpreter's recursion limit (RecursionError, about 1,000 levels; a /predict body is 3 deep,
    5 with images): both are the client's error, never a 500. Anything it does take that the model
    cannot (a deep list where a number belongs, a 401-digit integer) is the schema's 422. No lower
    depth limit of our own: checking one means a scan of the body in Python, which costs more than
    the parse (1.3x to 1.7x on 100 to 10,000 rows), and refuses nothing the schema would take."""
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

    def __init__(self, app: Any, slot: EndpointSlot) -> None:
        self.app = app
        self.slot = slot
        self.in_flight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in PASS_THROUGH:
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._gate(scope, receive, send_tracked)
        except Exception as exc:  # a bug: answered, logged and counted, never left to time out
            endpoint = self.slot.endpoint
            metrics = endpoint.serving.metrics if endpoint is not None else serving_metrics()
            metrics.internal_errors.labels(type(exc).__name__).inc()
            log.exception("%s %s failed", scope["method"], scope["path"])
            if started:  # part of the answer is out: the server ends the connection
                raise
            await _reply(send, HttpError(500, f"internal error ({type(exc).__name__}); the service log has "
                                              "the details"))

    async def _gate(self, scope: Any, receive: Any, send: Any) -> None:
        endpoint = self.slot.endpoint
        if endpoint is not None and (refusal := self._refusal(endpoint)) is not None:
            await _reply(send, refusal)
            return
        headers = dict(scope["headers"])
        body = None
        if scope["method"] == "POST":  # read without a slot: a slow upload holds none
            try:
                body = await self._read(receive, headers, endpoint)
            except HttpError as exc:
                await _reply(send, exc)
                return
            if body is None:  # the client went away
                return
            if endpoint is not None and (refusal := self._refusal(endpoint)) is not None:
                await _reply(send, refusal)  # the slots filled up (or draining began) meanwhile
                return
        self.in_flight += 1  # BentoML's bentoml_service_request_in_progress exports the same count
        try:
            await asyncio.sleep(0)  # let requests that arrived together all count as in flight
            await self._handle(scope, receive, send, headers, body, endpoint)
        finally:
            self.in_flight -= 1

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
                      endpoint: Endpoint | None) -> None:
        if body is None:  # not a POST: the app reads whatever comes
            await self.app(scope, receive, send)
            return
        if scope["path"] != "/predict" or endpoint is None:
            await self.app(scope, _replay(body), send)
            return
        try:
            endpoint.authorize(headers.get(b"authorization", b"").decode("latin-1"))
            answer = await endpoint.predict(parse_predict_body(body))
        except HttpError as exc:
            await _reply(send, exc)
            return
        await _send_json(send, 200, answer)


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


async def _reply(send: Any, error: HttpError) -> None:
    await _send_json(send, error.status, error.body(), error.headers)


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = dumps(body)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
