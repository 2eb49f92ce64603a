"""The HTTP face of driftloop: a BentoML service over :class:`service.serving.Serving`.

    POST /predict   {"rows": [{feature: value, ...}, ...]}
                    -> {"model_version", "predictions", "probabilities" (classifiers), "request_ids"}
    POST /feedback  {"labels": [{"request_id": ..., "label": ...}, ...]}
                    -> {"accepted", "duplicates", "unknown_request_ids"}
    GET  /model     the serving version, its metrics and feature schema; ``shadow``: null, or the
                    shadow version and whether this worker scores the prediction log with it
    GET  /history   the monitor's decisions with their evidence (?kind=checks|events&limit=N)
    POST /admin/promote {"version", "reason"} | /admin/rollback {"reason"} | /admin/reload
         | /admin/retrain {"reason"}: bearer token (serving.admin_token) required
    BentoML's own   /metrics /healthz /livez /readyz /docs.json

Run it with ``driftloop serve`` (which sets ``DRIFTLOOP_CONFIG`` and a private ``BENTOML_HOME``) or
``bentoml serve service.app:Driftloop``. Each worker builds its own :class:`Serving` in
``__init__``; nothing is loaded at import time. Every request first passes
:class:`service.gate.RequestGate` (draining, overload, body limits), which also answers
``POST /predict`` itself; the other routes are BentoML's.

A graceful stop (SIGTERM): readiness fails and new requests get 503 for ``serving.drain_s``,
then uvicorn lets the running requests finish, ``on_shutdown`` flushes the prediction log, and
the worker exits.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import os
import signal
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from driftloop.models.errors import DriftloopError, RegistryError, SchemaError, UnknownVersion
from driftloop.service.gate import RequestGate, predict_answer
from driftloop.service.serving import NotReady, Serving, token_ok

log = logging.getLogger("driftloop.service")

Scalar = int | float | str
ROW_EXAMPLE = {"income": 52000.0, "age": 41.0, "debt_ratio": 0.31, "credit_lines": 6.0,
               "region": "north", "employment": "salaried"}


class Label(BaseModel):
    request_id: Annotated[str, Field(min_length=1, max_length=64)]
    label: Scalar


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[Scalar]  # class, value, cluster id, or 1 = anomaly / 0 = normal
    probabilities: list[list[float]] | None = None  # classification
    distances: list[list[float]] | None = None  # clustering: to every cluster centre
    anomaly_scores: list[float] | None = None  # anomaly: higher is more anomalous
    request_ids: list[str]


class FeedbackResponse(BaseModel):
    accepted: int
    duplicates: list[str]
    unknown_request_ids: list[str]


def _error(status: int, message: str, field: str | None = None, ctx: bentoml.Context | None = None) -> JSONResponse:
    """An error answer. BentoML gives an api that takes a ``ctx`` the status of ``ctx.response``
    whatever it returns, so the status is set there too."""
    if ctx is not None:
        ctx.response.status_code = status
    return JSONResponse({"error": message, "field": field}, status_code=status)


async def _model_route(request: Request) -> JSONResponse:
    try:
        return JSONResponse(bentoml.get_current_service().serving.model_info())
    except NotReady as exc:
        return _error(503, str(exc))


HISTORY_KINDS = ("checks", "events")


async def _history_route(request: Request) -> Response:
    """The monitor's decisions with their evidence: ``?kind=checks`` (one per window: drift and
    accuracy figures, per-feature scores, the decision and its reason) or ``?kind=events`` (the
    audit trail: retrains, promotions, rejections, failures); the newest ``limit`` (100, at most
    1000), oldest first. The same records as ``driftloop history``."""
    kind = request.query_params.get("kind", "checks")
    if kind not in HISTORY_KINDS:
        return _error(422, f"kind must be one of {list(HISTORY_KINDS)}, got {kind!r}", "kind")
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        return _error(422, f"limit must be a whole number from 1 to 1000, got {raw!r}", "limit")
    store = bentoml.get_current_service().serving.store
    records = await run_in_threadpool(store.checks if kind == "checks" else store.events)
    body = json.dumps({kind: _json_safe(records[-int(raw):])}, allow_nan=False)
    return Response(body, media_type="application/json")


def _json_safe(value: Any) -> Any:
    """Times as ISO 8601, non-finite numbers (a score Evidently could not compute) as null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


info_app = Starlette(routes=[Route("/model", _model_route, methods=["GET"]),
                             Route("/history", _history_route, methods=["GET"])])
@bentoml.asgi_app(info_app, path="/")
@bentoml.service(name="driftloop", workers=1, traffic={"timeout": 30})
class Driftloop:
    def __init__(self) -> None:
        from driftloop.settings import load_settings
        from driftloop.models.registry import Registry
        from driftloop.monitoring.store import PredictionStore
        from driftloop.service.metrics import serving_metrics

        logging.getLogger("driftloop").setLevel(os.environ.get("DRIFTLOOP_LOG_LEVEL", "INFO"))
        settings = load_settings(os.environ.get("DRIFTLOOP_CONFIG") or None)
        self.admin_token = settings.serving.admin_token
        self.predict_token = settings.serving.predict_token
        self.serving = Serving(Registry(settings.registry.home, settings.registry.project),
                               PredictionStore(settings.store.url).create(), serving_metrics(), settings.serving)
        self.serving.start()
        self._drain_on_sigterm(settings.serving.drain_s)
        # Everything loaded so far (BentoML, onnxruntime, pandas, the model) lives as long as the
        # worker: keep it out of the garbage collector's full passes, which otherwise walk it all
        # and stall requests (the p99 spikes of the serving benchmark).
        gc.collect()
        gc.freeze()

    def _drain_on_sigterm(self, drain_s: float) -> None:
        """Put draining in front of uvicorn's own SIGTERM handling: BentoML builds the service on
        the worker's event loop, after uvicorn installed its handler, so that handler is chained."""
        try:
            loop = asyncio.get_running_loop()
            previous = signal.getsignal(signal.SIGTERM)
        except RuntimeError:  # not on an event loop (an in-process use): nothing to chain
            return
        if not callable(previous):
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            if self.serving.draining:  # a second SIGTERM: stop draining, shut down now
                previous(signum, frame)
                return
            self.serving.drain()
            loop.call_soon_threadsafe(loop.call_later, drain_s, previous, signum, None)

        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread
            log.warning("SIGTERM is not chained in this worker: no drain period before shutdown")

    def __is_ready__(self) -> bool:
        return self.serving.ready()

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.serving.shutdown()

    def _denied(self, ctx: bentoml.Context, admin: bool) -> JSONResponse | None:
        """None if the request may go on; else the 401/403 answer."""
        token = self.admin_token if admin else self.predict_token
        if token is None:
            return _error(403, "admin endpoints are disabled: set serving.admin_token "
                               "(DRIFTLOOP_SERVING__ADMIN_TOKEN)", ctx=ctx) if admin else None
        if token_ok(ctx.request.headers.get("authorization"), token):
            return None
        ctx.response.metadata["WWW-Authenticate"] = "Bearer"
        return _error(401, "missing or wrong bearer token", "Authorization", ctx=ctx)

    @bentoml.api(route="/predict")
    async def predict(self, rows: Annotated[list[dict[str, Any]], Field(examples=[[ROW_EXAMPLE]])],
                      ctx: bentoml.Context) -> PredictResponse:
        """Predict one answer per row; every row gets a request id for later feedback."""
        # RequestGate answers POST /predict before BentoML routes it; this method documents the
        # route in the OpenAPI schema and answers the same way if it is ever reached.
        if self.predict_token is not None and (denied := self._denied(ctx, admin=False)):
            return denied  # type: ignore[return-value]
        try:
            # A ready Response: BentoML passes it through instead of re-validating the model
            # against its schema; fields that do not apply to the task are left out.
            return JSONResponse(await predict_answer(self.serving, rows))  # type: ignore[return-value]
        except SchemaError as exc:
            return _error(422, str(exc), exc.field, ctx)  # type: ignore[return-value]
        except NotReady as exc:
            return _error(503, str(exc), ctx=ctx)  # type: ignore[return-value]

    @bentoml.api(route="/feedback")
    def feedback(self, labels: Annotated[list[Label], Field(min_length=1, max_length=10_000)],
                 ctx: bentoml.Context) -> FeedbackResponse:
        """Record true labels of earlier predictions, by request id (the first label wins)."""
        if self.predict_token is not None and (denied := self._denied(ctx, admin=False)):
            return denied  # type: ignore[return-value]
        try:
            result = self.serving.feedback([(item.request_id, item.label) for item in labels])
        except SchemaError as exc:
            return _error(422, str(exc), exc.field, ctx)  # type: ignore[return-value]
        unknown = result["unknown_request_ids"]
        if unknown and not result["accepted"] and not result["duplicates"]:  # nothing usable: a client error
            body = result | {"error": f"unknown request_id(s): {', '.join(unknown[:5])}"
                                      f"{' ...' if len(unknown) > 5 else ''}", "field": "labels[].request_id"}
            ctx.response.status_code = 404
            return JSONResponse(body, status_code=404)  # type: ignore[return-value]
        return FeedbackResponse(**result)  # known ids are stored; any unknown ones are listed

    # -- admin: bearer token required (serving.admin_token) ------------------------------------
    def _admin(self, ctx: bentoml.Context, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if denied := self._denied(ctx, admin=True):
            return denied  # type: ignore[return-value]
        try:
            return JSONResponse(action())  # type: ignore[return-value]
        except DriftloopError as exc:  # unknown version, nothing to roll back to, a refused artifact
            status = 404 if isinstance(exc, UnknownVersion) else 409 if isinstance(exc, RegistryError) else 422
            return _error(status, str(exc), ctx=ctx)  # type: ignore[return-value]

    @bentoml.api(route="/admin/promote")
    def admin_promote(self, version: str, ctx: bentoml.Context, reason: str = "promoted over HTTP") -> dict[str, Any]:
        """Make a registered version the champion (its checksums are verified first)."""
        return self._admin(ctx, lambda: self.serving.promote(version, reason, actor=_actor(ctx)))

    @bentoml.api(route="/admin/rollback")
    def admin_rollback(self, ctx: bentoml.Context, reason: str = "rolled back over HTTP") -> dict[str, Any]:
        """Make the previous champion the champion again."""
        return self._admin(ctx, lambda: self.serving.rollback(reason, actor=_actor(ctx)))

    @bentoml.api(route="/admin/reload")
    def admin_reload(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Re-read the champion pointer now in the worker that answers (the others poll)."""
        return self._admin(ctx, self.serving.reload)

    @bentoml.api(route="/admin/retrain")
    def admin_retrain(self, ctx: bentoml.Context, reason: str = "requested over HTTP") -> dict[str, Any]:
        """Queue a retrain on the newest labelled windows; the monitor runs it."""
        return self._admin(ctx, lambda: self.serving.request_retrain(reason, actor=_actor(ctx)))


Driftloop.add_asgi_middleware(RequestGate)


def _actor(ctx: bentoml.Context) -> str:
    client = ctx.request.client
    return f"http:{client.host if client else 'unknown'}"
