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
    GET  /docs.json BentoML's OpenAPI document, with /predict's rows and answer described by the
                    served model's feature schema, and /model and /history (:mod:`service.openapi`)
    BentoML's own   /metrics /healthz /livez /readyz

Run it with ``driftloop serve`` (which sets ``DRIFTLOOP_CONFIG`` and a private ``BENTOML_HOME``) or
``bentoml serve driftloop.service.app:Driftloop``, or as a Bento (``deploy/bento.py``; ``bentoml
serve driftloop:latest``), which packs a model: served while no registry names a champion
(:mod:`service.packed`). Before any worker starts, ``bentoml serve`` checks the settings and the
packed model once in its own process and exits with one line if they cannot work
(:func:`service.packed.preflight`). Each worker builds its own :class:`Serving`
and the :class:`service.endpoint.Endpoint` over it in ``__init__``; nothing is loaded at import
time. Every route's answer, and every error's status, comes from that endpoint. Every request
first passes :class:`service.gate.RequestGate` (draining, overload, body limits), in front of
BentoML's own middlewares (:func:`service.lifecycle.gate_in_front`), which also answers ``POST
/predict`` itself; the other routes are BentoML's (the ``@bentoml.api`` methods)
or mounted Starlette routes (/model, /history, /docs.json). The gate and the mounted routes are
built with the app, before the service instance: ``__init__`` hands them its endpoint through
the :class:`service.endpoint.EndpointSlot` they were given.

A graceful stop (SIGTERM): readiness fails and new requests get 503 for ``serving.drain_s``,
then uvicorn lets the running requests finish, ``on_shutdown`` flushes the prediction log, and
the worker exits. A worker stops that way too when its parent, BentoML's arbiter, dies (killed,
say, with ``kill -9``): circus starts each worker in a session of its own, so nothing else would
reach it, and it would go on serving orphaned (:func:`driftloop.service.lifecycle.die_with_parent`).
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import os
import signal
from collections.abc import Callable
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from driftloop.models.errors import RegistryError
from driftloop.service.lifecycle import cancel_request_timers, die_with_parent, gate_in_front
from driftloop.service.endpoint import RETRY_AFTER_S, Endpoint, EndpointSlot, HttpError, http_error
from driftloop.service.gate import RequestGate
from driftloop.service.packed import BentoArgs, enter_workdir, load_config, load_packed, preflight

log = logging.getLogger("driftloop.service")

# In a worker, the arbiter that started it, read as BentoML loads this module (before the
# service is built): an arbiter that dies while the worker starts up is still noticed.
PARENT_PID = os.getppid()
# How long an orphaned worker's graceful stop may take beyond draining (running requests, the
# prediction log's flush) before it exits regardless.
ORPHAN_GRACE_S = 60.0

Scalar = int | float | str


class Label(BaseModel):
    request_id: Annotated[str, Field(min_length=1, max_length=64)]
    label: bool | Scalar  # bool first: `true` stays a boolean, which /feedback refuses (not read as 1)


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


def _error_response(error: HttpError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def info_routes(slot: EndpointSlot, base_spec: Callable[[], dict[str, Any]]) -> Starlette:
    """``GET /model``, ``GET /history`` and ``GET /docs.json`` (BentoML's document, ``base_spec``,
    described by the served model's schema), over the endpoint in ``slot``; mounted at ``/``,
    where they come before BentoML's own ``/docs.json``."""

    def endpoint() -> Endpoint:
        found = slot.endpoint
        if found is None:  # the worker is starting: BentoML does not route requests yet
            raise HttpError(503, "the service is starting", None, {"retry-after": RETRY_AFTER_S})
        return found

    async def model(request: Request) -> JSONResponse:
        try:
            return JSONResponse(endpoint().model())
        except HttpError as exc:
            return _error_response(exc)

    async def history(request: Request) -> JSONResponse:
        params = request.query_params
        try:
            return JSONResponse(await run_in_threadpool(endpoint().history, params.get("kind", "checks"),
                                                        params.get("limit", "100")))
        except HttpError as exc:
            return _error_response(exc)

    async def docs(request: Request) -> JSONResponse:
        try:
            return JSONResponse(endpoint().openapi(base_spec()))
        except HttpError as exc:
            return _error_response(exc)

    return Starlette(routes=[Route("/model", model, methods=["GET"]), Route("/history", history, methods=["GET"]),
                             Route("/docs.json", docs, methods=["GET"])])


# Hands each worker's Endpoint, built in Driftloop.__init__, to the gate and the info routes,
# which BentoML builds before the service instance.
ENDPOINT = EndpointSlot()

# The Bento's template arguments (set by deploy/bento.py at build time, restored by `bentoml serve`
# of the Bento) and the model it packs, declared the BentoML way; None outside a Bento.
ARGS = bentoml.use_arguments(BentoArgs)
PACKED = bentoml.models.BentoModel(ARGS.packed_model) if ARGS.packed_model else None


# BentoML's request timeout for the routes it serves; the gate's /predict applies the same one.
TIMEOUT_S = 30


@bentoml.service(name="driftloop", workers=1, traffic={"timeout": TIMEOUT_S})
class Driftloop:
    packed = PACKED  # resolved on first use: the model's entry in the Bento's model store

    @bentoml.on_deployment
    def _preflight() -> None:
        """In ``bentoml serve``'s own process, before any worker starts: one line and a non-zero
        exit for settings or a packed model that cannot work (:func:`service.packed.preflight`)."""
        preflight(PACKED)

    def __init__(self) -> None:
        from driftloop.models.onnx_model import providers_for
        from driftloop.models.registry import Registry
        from driftloop.monitoring.store import PredictionStore
        from driftloop.service.metrics import serving_metrics
        from driftloop.service.serving import Serving

        logging.getLogger("driftloop").setLevel(os.environ.get("DRIFTLOOP_LOG_LEVEL", "INFO"))
        # A fatal signal (SIGBUS from a store file made immutable under SQLite's mapped WAL index,
        # SIGSEGV in native code) ends the worker at once: leave its stack in the log, not silence.
        faulthandler.enable()
        if Driftloop.bento is not None:  # BentoML runs a Bento's workers in its source directory
            enter_workdir()
        settings = load_config()
        registry = Registry(settings.registry.home, settings.registry.project)
        self.serving = Serving(registry, PredictionStore(settings.store.url), serving_metrics(), settings.serving)
        # The Bento's own model serves while the registry names no champion (and a champion that
        # appears there replaces it: the watcher follows the pointer as usual).
        self.packed_model = None
        if PACKED is not None and registry.champion() is None:
            self.packed_model = load_packed(self.packed, providers_for(settings.serving.device)[1])
            self.serving.serve_packed(self.packed_model)
            log.warning("worker %d serves %s, the model packed in the Bento: %s names no champion",
                        os.getpid(), PACKED, registry.home.resolve())
        self.endpoint = Endpoint(self.serving, predict_token=settings.serving.predict_token,
                                 admin_token=settings.serving.admin_token, timeout_s=TIMEOUT_S)
        self.serving.start()
        ENDPOINT.attach(self.endpoint)
        self._drain_on_sigterm(settings.serving.drain_s)
        if bentoml.server_context.worker_index is not None:  # a worker of `bentoml serve`, not an in-process use
            die_with_parent(PARENT_PID, grace_s=settings.serving.drain_s + ORPHAN_GRACE_S)
        # BentoML's request-timeout middleware leaves a 30 s timer per request on the loop (about
        # 0.85 KB each: +48-82 MB at 2-3k req/s, bench/memory.py): cancelled once the answer starts.
        cancel_request_timers()
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
        ENDPOINT.detach()

    def _answer(self, ctx: bentoml.Context, action: Callable[[], dict[str, Any]], *, admin: bool = False) -> Any:
        """The JSON answer of ``action`` after the bearer check (``admin``: the admin token, else
        the predict token), or the error's. A ready Response: BentoML passes it through instead
        of re-validating it against the declared return type."""
        try:
            self.endpoint.authorize(ctx.request.headers.get("authorization"), admin=admin)
            return JSONResponse(action())
        except HttpError as exc:
            return _api_error(ctx, exc)

    @bentoml.api(route="/predict")
    async def predict(self, rows: list[dict[str, Any]], ctx: bentoml.Context) -> PredictResponse:
        """Predict one answer per row; every row gets a request id for later feedback. The rows'
        fields are the served model's features: see ``Row`` in this document."""
        # RequestGate answers POST /predict before BentoML routes it; this method answers the
        # same way, through the same Endpoint, if it is ever reached.
        try:
            self.endpoint.authorize(ctx.request.headers.get("authorization"))
            return JSONResponse(await self.endpoint.predict(rows))  # type: ignore[return-value]
        except HttpError as exc:
            return _api_error(ctx, exc)  # type: ignore[return-value]

    @bentoml.api(route="/feedback")
    def feedback(self, labels: Annotated[list[Label], Field(min_length=1, max_length=10_000)],
                 ctx: bentoml.Context) -> FeedbackResponse:
        """Record true labels of earlier predictions, by request id (the first label wins)."""
        return self._answer(ctx, lambda: self.endpoint.feedback([(item.request_id, item.label) for item in labels]))

    def _registry_endpoint(self) -> Endpoint:
        """The endpoint, for a change of the registry's pointers: refused (409) while this worker
        serves the Bento's packed model, which no registry names (read-only: nothing is written)."""
        if self.packed_model is not None and self.serving.model is self.packed_model:
            registry = self.serving.registry
            raise http_error(RegistryError(
                f"this worker serves {PACKED}, the model packed in the Bento, because {registry.home.resolve()} names "
                f"no champion of {registry.project!r}: promote and rollback change a registry's champion; "
                f"register and promote a version there (driftloop train, driftloop models promote) and "
                f"the workers swap to it"))
        return self.endpoint

    # -- admin: bearer token required (serving.admin_token) ------------------------------------
    @bentoml.api(route="/admin/promote")
    def admin_promote(self, version: str, ctx: bentoml.Context, reason: str = "promoted over HTTP") -> dict[str, Any]:
        """Make a registered version the champion (its checksums are verified first)."""
        return self._answer(ctx, lambda: self._registry_endpoint().promote(version, reason, _actor(ctx)), admin=True)

    @bentoml.api(route="/admin/rollback")
    def admin_rollback(self, ctx: bentoml.Context, reason: str = "rolled back over HTTP") -> dict[str, Any]:
        """Make the previous champion the champion again."""
        return self._answer(ctx, lambda: self._registry_endpoint().rollback(reason, _actor(ctx)), admin=True)

    @bentoml.api(route="/admin/reload")
    def admin_reload(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Re-read the champion pointer now in the worker that answers (the others poll)."""
        return self._answer(ctx, self.endpoint.reload, admin=True)

    @bentoml.api(route="/admin/retrain")
    def admin_retrain(self, ctx: bentoml.Context, reason: str = "requested over HTTP") -> dict[str, Any]:
        """Queue a retrain on the newest labelled windows; the monitor runs it."""
        return self._answer(ctx, lambda: self.endpoint.retrain(reason, _actor(ctx)), admin=True)


Driftloop.mount_asgi_app(info_routes(ENDPOINT, lambda: Driftloop.openapi_spec.asdict()), path="/")
Driftloop.add_asgi_middleware(RequestGate, slot=ENDPOINT)
# ... in front of BentoML's own middlewares (traffic metrics, tracing, access log, timeout), before
# BentoML builds the app: POST /predict, which the gate answers, does not pay for them.
gate_in_front()


def _api_error(ctx: bentoml.Context, error: HttpError) -> JSONResponse:
    """An error answer from an api method: BentoML gives an api that takes a ``ctx`` the status
    and headers of ``ctx.response`` whatever it returns, so they are set there too."""
    ctx.response.status_code = error.status
    ctx.response.metadata.update(error.headers)
    return _error_response(error)


def _actor(ctx: bentoml.Context) -> str:
    client = ctx.request.client
    return f"http:{client.host if client else 'unknown'}"
