"""The request gate: the ASGI layer in front of BentoML's routing, and the /predict fast path.

Every HTTP request of a worker passes :class:`RequestGate` (installed with BentoML's
``add_asgi_middleware``, its supported extension point). In order:

1. health and metrics (``/livez /healthz /readyz /metrics``) pass straight through;
2. draining (after SIGTERM): 503 with ``Retry-After`` and ``Connection: close``;
3. overload: with ``serving.max_in_flight`` requests already in this worker, 503 with
   ``Retry-After`` at once, instead of queueing the request behind the others;
4. the body: form media types get 415 (BentoML's form parser answers a malformed one with a
   500); more than ``serving.max_body_bytes`` gets 413;
5. ``POST /predict`` is answered here: the bearer token, JSON in, :meth:`Endpoint.predict`
   (validation, the graph inline or batched, request ids, prediction log, metrics), JSON out.
   Everything else goes on to BentoML (``/feedback``, ``/model``, admin).

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
from typing import Any

from driftloop.service.endpoint import RETRY_AFTER_S, Endpoint, EndpointSlot, HttpError, dumps

PASS_THROUGH = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def parse_predict_body(body: bytes) -> list[Any]:
    """``{"rows": [...]}`` from a request body, or an HttpError naming what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"Invalid JSON body: {exc}", "body") from None
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
        endpoint = self.slot.endpoint
        if endpoint is not None and (refusal := self._refusal(endpoint)) is not None:
            await _reply(send, refusal)
            return
        self.in_flight += 1  # BentoML's bentoml_service_request_in_progress exports the same count
        try:
            await asyncio.sleep(0)  # let requests that arrived together all count as in flight
            await self._handle(scope, receive, send, endpoint)
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

    async def _handle(self, scope: Any, receive: Any, send: Any, endpoint: Endpoint | None) -> None:
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            media_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if media_type in FORM_TYPES:
                raise HttpError(415, f"Content-Type {media_type} is not accepted: send the body as "
                                     "application/json", "Content-Type")
            limit = endpoint.serving.config.max_body_bytes if endpoint is not None else None
            body = await _read_body(receive, headers, limit)
        except HttpError as exc:
            await _reply(send, exc)
            return
        if body is None:  # the client went away
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


async def _read_body(receive: Any, headers: dict[bytes, bytes], limit: int | None) -> bytes | None:
    declared = headers.get(b"content-length")
    if limit is not None and declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"the body is {int(declared)} bytes; at most {limit} (serving.max_body_bytes)", "body")
    chunks: list[bytes] = []
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
