"""The request gate: the ASGI layer in front of BentoML's routing, and the /predict fast path.

Every HTTP request of a worker passes :class:`RequestGate` (installed with BentoML's
``add_asgi_middleware``, its supported extension point). In order:

1. health and metrics (``/livez /healthz /readyz /metrics``) pass straight through;
2. draining (after SIGTERM): 503 with ``Retry-After`` and ``Connection: close``;
3. overload: with ``serving.max_in_flight`` requests already in this worker, 503 with
   ``Retry-After`` at once, instead of queueing the request behind the others;
4. the body: form media types get 415 (BentoML's form parser answers a malformed one with a
   500); more than ``serving.max_body_bytes`` gets 413;
5. ``POST /predict`` is answered here: JSON in, :meth:`Serving.prepare` (validation), the graph
   (inline, or batched for neural kinds), :meth:`Serving.answer` (request ids, prediction log,
   metrics), JSON out. Everything else goes on to BentoML (``/feedback``, ``/model``, admin).

Why /predict is answered here: BentoML's per-api machinery (a pydantic input model, a thread
hop through anyio's limiter, response headers looked up through its DI container) cost about
half of a worker's time on a one-row request (py-spy; see ``bench/serving.py``). The
``@bentoml.api`` method of the same name stays, so the OpenAPI document describes the route, and
shares :func:`predict_answer` with this path: one contract, one implementation.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from driftloop.models.errors import SchemaError
from driftloop.service.serving import NotReady, Serving, token_ok

PASS_THROUGH = frozenset({"/livez", "/healthz", "/readyz", "/metrics"})
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
INLINE_ROWS = 64  # larger unbatched requests run in a thread, off the event loop


class HttpError(Exception):
    """An answer other than 200: the status, the message and the field it is about."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.field, self.headers = status, field, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": str(self), "field": self.field}


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


async def predict_answer(serving: Serving, rows: list[Any]) -> dict[str, Any]:
    """The answer to one /predict request (raises NotReady, SchemaError)."""
    model, feeds = serving.prepare(rows)
    if serving.batched(model):
        preds, second = await serving.batcher.run(model, feeds, len(rows))
    elif len(rows) <= INLINE_ROWS:  # microseconds: a thread hop would cost more than the graph
        preds, second = model.predict(feeds)
        if serving.config.metrics:
            serving.metrics.batch_rows.observe(len(rows))
    else:
        return await asyncio.get_running_loop().run_in_executor(None, serving.predict, rows)
    return serving.answer(model, rows, preds, second)


class RequestGate:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.in_flight = 0
        self._service: Any = None

    def _current(self) -> Any:
        if self._service is None:
            import bentoml

            try:
                self._service = bentoml.get_current_service()
            except Exception:  # not instantiated yet (the worker is starting)
                return None
        return self._service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in PASS_THROUGH:
            await self.app(scope, receive, send)
            return
        service = self._current()
        serving: Serving | None = getattr(service, "serving", None)
        if serving is not None and serving.draining:
            serving.metrics.shed.labels("draining").inc()
            await _reply(send, HttpError(503, "the service is shutting down; retry on another replica", None,
                                         {"retry-after": "1", "connection": "close"}))
            return
        if serving is not None and self.in_flight >= serving.config.max_in_flight:
            serving.metrics.shed.labels("overloaded").inc()
            await _reply(send, HttpError(503, f"overloaded: {self.in_flight} requests in flight in this worker "
                                              f"(serving.max_in_flight); retry shortly", None, {"retry-after": "1"}))
            return
        self.in_flight += 1  # BentoML's bentoml_service_request_in_progress exports the same count
        try:
            await asyncio.sleep(0)  # let requests that arrived together all count as in flight
            await self._handle(scope, receive, send, service, serving)
        finally:
            self.in_flight -= 1

    async def _handle(self, scope: Any, receive: Any, send: Any, service: Any, serving: Serving | None) -> None:
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            media_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if media_type in FORM_TYPES:
                raise HttpError(415, f"Content-Type {media_type} is not accepted: send the body as "
                                     "application/json", "Content-Type")
            limit = serving.config.max_body_bytes if serving is not None else None
            body = await _read_body(receive, headers, limit)
        except HttpError as exc:
            await _reply(send, exc)
            return
        if body is None:  # the client went away
            return
        if scope["path"] != "/predict" or serving is None:
            await self.app(scope, _replay(body), send)
            return
        try:
            if service.predict_token is not None and not token_ok(
                    headers.get(b"authorization", b"").decode("latin-1"), service.predict_token):
                raise HttpError(401, "missing or wrong bearer token", "Authorization", {"www-authenticate": "Bearer"})
            answer = await predict_answer(serving, parse_predict_body(body))
        except HttpError as exc:
            await _reply(send, exc)
            return
        except SchemaError as exc:
            await _reply(send, HttpError(422, str(exc), exc.field))
            return
        except NotReady as exc:
            await _reply(send, HttpError(503, str(exc), None, {"retry-after": "1"}))
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
    payload = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
