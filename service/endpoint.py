"""The service's answers, free of any web framework, and the one mapping of errors to HTTP.

:class:`Endpoint` is what every route calls: :class:`service.gate.RequestGate` for ``POST
/predict`` (the fast path), the ``@bentoml.api`` methods of :mod:`service.app` for ``/feedback``
and ``/admin/*`` (and ``/predict`` should the gate ever pass it on), and the mounted routes for
``GET /model``, ``GET /history`` and ``GET /docs.json``. Each of its methods raises only
:class:`HttpError`: a driftloop error becomes one through :func:`http_error`, the one place that
knows which status each error gets:

    SchemaError          422, naming the field
    NotReady             503 with Retry-After (StoreUnavailable: what was stored all the same)
    the store is out     503 with Retry-After (down, unreachable, locked past its timeout, read-only)
    UnknownVersion       404
    RegistryError        409 (nothing to roll back to, a refused artifact)
    other DriftloopError 422
    bearer token         401 with ``WWW-Authenticate: Bearer`` (missing or wrong),
                         403 (admin endpoints disabled: no ``serving.admin_token``)

The answers about the request itself rather than its meaning come from
:class:`service.gate.RequestGate`: 400 (a body that is not JSON), 408 (a body too slow to
arrive), 413, 415, the 503s of shedding, and 500 for any exception that escapes (counted).

:class:`EndpointSlot` is how the endpoint reaches the parts BentoML builds before the service
instance exists (see its docstring).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson

from driftloop.models.errors import DriftloopError, RegistryError, SchemaError, UnknownVersion
from driftloop.models.files import jsonable

if TYPE_CHECKING:
    from pydantic import SecretStr

    from driftloop.service.serving import Serving

# The serving machinery (the store's SQLAlchemy, onnxruntime, the OpenAPI document) is imported where
# it is used, not here: `bentoml serve` imports this module (through service/app.py) in its own
# process too, which only defines the routes, and a worker's start waits for that import.

INLINE_ROWS = 64  # larger unbatched requests run in a thread, off the event loop
RETRY_AFTER_S = "1"


class HttpError(Exception):
    """An answer other than 200: the status, the message and the field it is about (``extra``:
    more fields of the JSON body)."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.field, self.headers, self.extra = status, field, headers or {}, extra or {}

    def body(self) -> dict[str, Any]:
        return self.extra | {"error": str(self), "field": self.field}


def http_error(exc: DriftloopError) -> HttpError:
    """The HTTP answer to a driftloop error (the table in this module's docstring)."""
    from driftloop.service.serving import NotReady

    if isinstance(exc, SchemaError):
        return HttpError(422, str(exc), exc.field)
    if isinstance(exc, NotReady):
        return HttpError(503, str(exc), None, {"retry-after": RETRY_AFTER_S}, getattr(exc, "result", None))
    if isinstance(exc, UnknownVersion):
        return HttpError(404, str(exc))
    if isinstance(exc, RegistryError):
        return HttpError(409, str(exc))
    return HttpError(422, str(exc))


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except DriftloopError as exc:
        raise http_error(exc) from exc
    except Exception as exc:
        from driftloop.monitoring.store import unavailable

        why = unavailable(exc)
        if why is None:  # not the store being out: passed on as it is
            raise
        raise HttpError(503, f"the prediction store is unavailable ({why}); retry later", None,
                        {"retry-after": RETRY_AFTER_S}) from exc


def token_ok(header: str | None, token: SecretStr | None) -> bool:
    """``Authorization: Bearer <token>`` against the configured secret, in constant time."""
    if token is None:
        return False
    scheme, _, given = (header or "").partition(" ")
    match = hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())
    return scheme.lower() == "bearer" and match


class Endpoint:
    """One worker's answers to every route, over its :class:`Serving`.

    ``predict_token`` (optional) guards ``/predict`` and ``/feedback``; ``admin_token`` guards
    ``/admin/*``, which are disabled (403) without it. ``timeout_s`` (the service's
    ``traffic.timeout``): a prediction that waits longer for the batcher or a thread is cancelled
    and answered 504, as BentoML's timeout middleware answers the routes it serves.
    """

    def __init__(self, serving: Serving, *, predict_token: SecretStr | None = None,
                 admin_token: SecretStr | None = None, timeout_s: float | None = None) -> None:
        self.serving = serving
        self._predict_token = predict_token
        self._admin_token = admin_token
        self.timeout_s = timeout_s

    # -- the bearer token ----------------------------------------------------------------------
    def authorize(self, authorization: str | None, *, admin: bool = False) -> None:
        """Let the request go on, or raise the 401/403 answer (``authorization``: the header)."""
        token = self._admin_token if admin else self._predict_token
        if token is None:
            if admin:
                raise HttpError(403, "admin endpoints are disabled: set serving.admin_token "
                                     "(DRIFTLOOP_SERVING__ADMIN_TOKEN)")
            return
        if not token_ok(authorization, token):
            raise HttpError(401, "missing or wrong bearer token", "Authorization", {"www-authenticate": "Bearer"})

    # -- prediction and feedback ---------------------------------------------------------------
    async def predict(self, rows: Any) -> dict[str, Any]:
        """The answer to one /predict request: validation against the serving model's schema,
        the graph (inline, batched for neural kinds, or in a thread for large requests), then
        request ids, the prediction log and the metrics."""
        serving = self.serving
        with _mapped():
            model, feeds = serving.prepare(rows)  # validated once, whichever way the graph runs
            batched = serving.batched(model)
            if not batched and len(rows) <= INLINE_ROWS:  # microseconds: a thread hop would cost more
                return serving.run(model, feeds, rows)  # than the graph; nothing awaited, no timer needed
            try:
                async with asyncio.timeout(self.timeout_s):
                    if batched:
                        preds, scores = await serving.batcher.run(model, feeds, len(rows))
                        return serving.answer(model, rows, preds, scores)
                    return await asyncio.get_running_loop().run_in_executor(None, serving.run, model, feeds, rows)
            except TimeoutError:
                raise HttpError(504, f"Not able to process the request in {self.timeout_s:g} seconds") from None

    def feedback(self, labels: list[tuple[str, Any]]) -> dict[str, Any]:
        """Store labels by request id; 404 when none of them could be used (every id unknown)."""
        with _mapped():
            result = self.serving.feedback(labels)
        unknown = result["unknown_request_ids"]
        if unknown and not result["accepted"] and not result["duplicates"]:  # nothing usable: a client error
            listed = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise HttpError(404, f"unknown request_id(s): {listed}", "labels[].request_id", extra=result)
        return result  # known ids are stored; any unknown ones are listed

    # -- reading -------------------------------------------------------------------------------
    def model(self) -> dict[str, Any]:
        """``GET /model``: the serving version, its metrics and schema, the shadow."""
        with _mapped():
            return self.serving.model_info()

    def history(self, kind: str = "checks", limit: str = "100") -> dict[str, Any]:
        """``GET /history``: the monitor's checks (one per window: drift and accuracy figures, a
        regressor's RMSE and MAE, the decision and its reason) or events (the audit trail), the newest ``limit`` (at most
        1000), oldest first, as JSON-safe values. Reads the store: call it off the event loop."""
        from driftloop.service.openapi import HISTORY_KINDS

        if kind not in HISTORY_KINDS:
            raise HttpError(422, f"kind must be one of {list(HISTORY_KINDS)}, got {kind!r}", "kind")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise HttpError(422, f"limit must be a whole number from 1 to 1000, got {limit!r}", "limit")
        store = self.serving.store
        with _mapped():
            if kind == "checks":  # the newest limit only: never every check ever stored
                records = [check.to_dict() for check in store.checks(limit=int(limit))]  # Checks; events are dicts
            else:
                records = store.events(limit=int(limit))
        return {kind: jsonable(records)}

    def openapi(self, base: dict[str, Any]) -> dict[str, Any]:
        """``GET /docs.json``: BentoML's document of this service, with the request rows and the
        answer of ``/predict`` described by the serving model's schema (a generic row before
        a model is loaded), and ``GET /model`` and ``GET /history`` added."""
        from driftloop.service.openapi import served_spec

        model = self.serving.model
        return served_spec(base, None if model is None else model.schema, self.serving.config,
                           project=self.serving.registry.project)

    # -- admin (after ``authorize(..., admin=True)``) --------------------------------------------
    def promote(self, version: str, reason: str, actor: str) -> dict[str, Any]:
        with _mapped():
            return self.serving.promote(version, reason, actor=actor)

    def rollback(self, reason: str, actor: str) -> dict[str, Any]:
        with _mapped():
            return self.serving.rollback(reason, actor=actor)

    def reload(self) -> dict[str, Any]:
        with _mapped():
            return self.serving.reload()

    def retrain(self, reason: str, actor: str) -> dict[str, Any]:
        with _mapped():
            return self.serving.request_retrain(reason, actor=actor)


class EndpointSlot:
    """Where a worker's :class:`Endpoint` is handed to the parts built before it.

    BentoML builds the ASGI middleware stack (:class:`service.gate.RequestGate`) and the mounted
    routes when the app is created, and the service instance, which owns the endpoint, only
    later (its ``__init__`` runs in the app's lifespan startup). One slot is passed to both at
    definition time (``add_asgi_middleware(RequestGate, slot=...)``); the service's ``__init__``
    attaches its endpoint and its shutdown detaches it. Until then :attr:`endpoint` is None.
    """

    def __init__(self) -> None:
        self._endpoint: Endpoint | None = None

    @property
    def endpoint(self) -> Endpoint | None:
        return self._endpoint

    def attach(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    def detach(self) -> None:
        self._endpoint = None


def dumps(body: Any) -> bytes:
    """A JSON body: compact, UTF-8, no NaN (an answer with one is a bug, not a number). A string
    UTF-8 cannot encode (a lone surrogate a client sent, echoed in an error's ``field``) is written
    as JSON's ``\\ud800`` escape instead.

    orjson writes it; what orjson will not write (a lone surrogate, a key that is not a string,
    a type it does not know) or writes as ``null`` (orjson writes NaN as null) is written by
    Python's encoder instead, which refuses NaN with a ValueError: answers with a ``null`` in
    them, errors' ``"field": null`` among them, take that slower way."""
    try:
        payload = orjson.dumps(body)
    except TypeError:
        return _dumps(body)
    return _dumps(body) if b"null" in payload else payload


def _dumps(body: Any) -> bytes:
    text = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()

