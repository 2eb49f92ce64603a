"""The HTTP face of driftloop: a BentoML service over :class:`service.serving.Serving`.

    POST /predict   {"rows": [{feature: value, ...}, ...]}
                    -> {"model_version", "predictions", "probabilities" (classifiers), "request_ids"}
    POST /feedback  {"labels": [{"request_id": ..., "label": ...}, ...]}
                    -> {"accepted", "duplicates", "unknown_request_ids"}
    GET  /model     the serving version, its metrics and feature schema
    BentoML's own   /metrics /healthz /livez /readyz /docs.json

Run it with ``driftloop serve`` (which sets ``DRIFTLOOP_CONFIG`` and ``BENTOML_HOME``) or
``bentoml serve service.app:Driftloop``. Each worker builds its own :class:`Serving` in
``__init__``; nothing is loaded at import time.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import bentoml
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from models.errors import SchemaError
from service.serving import NotReady, Serving

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


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


async def _model_route(request: Request) -> JSONResponse:
    try:
        return JSONResponse(bentoml.get_current_service().serving.model_info())
    except NotReady as exc:
        return _error(503, str(exc))


info_app = Starlette(routes=[Route("/model", _model_route, methods=["GET"])])


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(name="driftloop", workers=1, traffic={"timeout": 30})
class Driftloop:
    def __init__(self) -> None:
        from driftloop.settings import load_settings
        from models.registry import Registry
        from monitoring.store import PredictionStore
        from service.metrics import serving_metrics

        logging.getLogger("driftloop").setLevel(os.environ.get("DRIFTLOOP_LOG_LEVEL", "INFO"))
        settings = load_settings(os.environ.get("DRIFTLOOP_CONFIG") or None)
        self.serving = Serving(
            Registry(settings.registry.home, settings.registry.project),
            PredictionStore(settings.store.url).create(),
            serving_metrics(),
            poll_interval_s=settings.serving.poll_interval_s,
            flush_interval_s=settings.serving.log_flush_interval_s,
            log_queue_rows=settings.serving.log_queue_rows,
            max_rows=settings.serving.max_rows,
        )
        self.serving.start()

    def __is_ready__(self) -> bool:
        return self.serving.ready()

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.serving.shutdown()

    @bentoml.api(route="/predict")
    def predict(self, rows: Annotated[list[dict[str, Any]], Field(examples=[[ROW_EXAMPLE]])]) -> PredictResponse:
        """Predict one answer per row; every row gets a request id for later feedback."""
        try:
            # A ready Response: BentoML passes it through instead of re-validating the model
            # against its schema; fields that do not apply to the task are left out.
            return JSONResponse(self.serving.predict(rows))  # type: ignore[return-value]
        except SchemaError as exc:
            return _error(422, str(exc), exc.field)  # type: ignore[return-value]
        except NotReady as exc:
            return _error(503, str(exc))  # type: ignore[return-value]

    @bentoml.api(route="/feedback")
    def feedback(self, labels: Annotated[list[Label], Field(min_length=1, max_length=10_000)]) -> FeedbackResponse:
        """Record true labels of earlier predictions, by request id (the first label wins)."""
        try:
            result = self.serving.feedback([(item.request_id, item.label) for item in labels])
        except SchemaError as exc:
            return _error(422, str(exc), exc.field)  # type: ignore[return-value]
        unknown = result["unknown_request_ids"]
        if unknown and not result["accepted"] and not result["duplicates"]:  # nothing usable: a client error
            body = result | {"error": f"unknown request_id(s): {', '.join(unknown[:5])}"
                                      f"{' ...' if len(unknown) > 5 else ''}", "field": "labels[].request_id"}
            return JSONResponse(body, status_code=404)  # type: ignore[return-value]
        return FeedbackResponse(**result)  # known ids are stored; any unknown ones are listed
