"""driftloop's serving metrics, exported on BentoML's own ``/metrics``.

Created on first use, never at import: BentoML points ``PROMETHEUS_MULTIPROC_DIR`` at a
per-server directory before its workers start, and a metric created earlier would be missing
from the multi-process view. With several workers, counters are summed across workers and
``driftloop_model_workers`` counts the live workers serving each version (``livesum``).

Shadow mode (:mod:`service.serving`): ``driftloop_shadow_rows_total{outcome}`` counts logged rows
the shadow scored, refused (its schema would not take them) or failed on (graph or store error);
``driftloop_shadow_model{model_version}`` is 1 for the shadow that live workers score with
(``livemax``: 1 however many workers); ``driftloop_shadow_graph_seconds`` times the shadow's graph,
one observation per prediction-log batch; ``driftloop_shadow_swaps_total{outcome}`` counts shadow
loads done and refused (a broken artifact), apart from the champion's swaps.

Errors: every answer, 5xx included, is counted in BentoML's ``bentoml_service_request_total
{endpoint, http_response_code}``: by BentoML's traffic middleware for what the gate passes on, and
by :class:`service.gate.RequestGate` itself, through :class:`RequestMetrics`, for what it answers
(``/predict``, its refusals, and a failed request's 500), whose series are BentoML's own. Beside it,
``driftloop_requests_shed_total{reason}`` says why requests were refused unanswered (503, 408)
and ``driftloop_internal_errors_total{exception}`` which exception a 500 came from (a bug to fix).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from timeit import default_timer
from typing import Any


@dataclass(frozen=True)
class ServingMetrics:
    predictions: Any  # Counter{model_version, predicted_class}: predicted rows
    feedback: Any  # Counter{outcome}: labels accepted, duplicate, unknown, unavailable (503: the store is out)
    swaps: Any  # Counter{outcome}: champion swaps done, refused, or fallback (an ancestor serves), per worker
    model_workers: Any  # Gauge{model_version, device}: workers serving each version
    fallback_workers: Any  # Gauge: workers serving an ancestor because the champion cannot load
    log_rows: Any  # Counter{outcome}: prediction-log rows written or dropped
    log_queue: Any  # Gauge: rows waiting in the prediction-log buffers
    batch_rows: Any  # Histogram: rows per graph run (one request, or a batch of several)
    shed: Any  # Counter{reason}: requests refused unanswered: 503 (overloaded, draining), 408 (body_timeout)
    internal_errors: Any  # Counter{exception}: requests answered 500 because an exception escaped the request path
    input_repairs: Any  # Counter{feature, kind}: unknown categories accepted, missing values imputed
    shadow_rows: Any  # Counter{outcome}: logged rows the shadow scored, refused, failed on
    shadow_model: Any  # Gauge{model_version}: 1 for the shadow loaded by live workers
    shadow_seconds: Any  # Histogram: seconds of the shadow's graph per prediction-log batch
    shadow_swaps: Any  # Counter{outcome}: shadow loads done or refused, per worker


@functools.cache
def serving_metrics() -> ServingMetrics:
    import prometheus_client as pc

    return ServingMetrics(
        predictions=pc.Counter("driftloop_predictions", "Predicted rows by model version and predicted class.",
                               ["model_version", "predicted_class"]),
        feedback=pc.Counter("driftloop_feedback_labels", "Feedback labels received, by outcome (accepted, duplicate, unknown, unavailable: answered 503 because the store "
                             "could not take them, to be sent again).", ["outcome"]),
        swaps=pc.Counter("driftloop_model_swaps", "Champion swaps attempted by service workers, by outcome.",
                         ["outcome"]),
        model_workers=pc.Gauge("driftloop_model_workers", "Service workers serving each model version, by device.",
                               ["model_version", "device"], multiprocess_mode="livesum"),
        fallback_workers=pc.Gauge("driftloop_fallback_workers", "Service workers serving an earlier version "
                                  "because the champion the pointer names cannot be loaded.",
                                  multiprocess_mode="livesum"),
        log_rows=pc.Counter("driftloop_prediction_log_rows", "Prediction-log rows, by outcome (written, dropped).",
                            ["outcome"]),
        log_queue=pc.Gauge("driftloop_prediction_log_queue_rows", "Prediction-log rows waiting to be written.",
                           multiprocess_mode="livesum"),
        batch_rows=pc.Histogram("driftloop_batch_rows", "Rows per run of the model's graph.",
                                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)),
        shed=pc.Counter("driftloop_requests_shed", "Requests refused before they were handled, by reason: 503 "
                        "(overloaded, draining) or 408 (body_timeout: the body did not arrive in time).", ["reason"]),
        internal_errors=pc.Counter("driftloop_internal_errors", "Requests answered 500 because an unexpected "
                                   "exception escaped the request path, by exception type.", ["exception"]),
        input_repairs=pc.Counter("driftloop_input_repairs", "Input values repaired by policy: unknown categories "
                                 "accepted, missing values imputed.", ["feature", "kind"]),
        shadow_rows=pc.Counter("driftloop_shadow_rows", "Prediction-log rows given to the shadow model, by outcome "
                               "(scored, refused by its schema, failed).", ["outcome"]),
        shadow_model=pc.Gauge("driftloop_shadow_model", "1 for the shadow version that live service workers score "
                              "with.", ["model_version"], multiprocess_mode="livemax"),
        shadow_seconds=pc.Histogram("driftloop_shadow_graph_seconds", "Seconds of the shadow model's graph per "
                                    "prediction-log batch.",
                                    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)),
        shadow_swaps=pc.Counter("driftloop_shadow_swaps", "Shadow model loads by service workers, by outcome.",
                                ["outcome"]),
    )


class RequestMetrics:
    """BentoML's per-request series, for the requests :class:`service.gate.RequestGate` answers in
    front of BentoML's middlewares (:func:`service.lifecycle.gate_in_front`): the very metric
    objects of BentoML's ``RunnerTrafficMetricsMiddleware`` (``middleware``, the one below the gate),
    so names, help, labels and the multi-process files are BentoML's, and the dashboards and alerts
    read them unchanged:

        bentoml_service_request_total{endpoint, service_name, service_version, http_response_code, runner_name}
        bentoml_service_request_duration_seconds (the same labels; BentoML's buckets)
        bentoml_service_request_in_progress{endpoint, service_name, service_version, runner_name}
        bentoml_service_last_request_timestamp_seconds{service_name, service_version, runner_name}

    recorded as that middleware records them (the duration from the request's arrival at the
    gate to its last body message), with the label children of ``/predict`` looked up once. Two
    writes fewer per request than BentoML's (each a lock and a write to the multi-process file):
    the in-progress gauge of ``/predict`` is *set* to the gate's own count (:meth:`running`)
    when that count leaves or reaches 0, else at most every ``every_s`` seconds, and the
    last-request timestamp at most every ``every_s`` seconds (so it is up to that much early).
    """

    every_s = 0.1

    def __init__(self, middleware: Any) -> None:
        from bentoml._internal.context import server_context

        if not middleware._is_setup:
            middleware._setup()
        self.total = middleware.metrics_request_total
        self.duration = middleware.metrics_request_duration
        self.in_progress = middleware.metrics_request_in_progress
        self.skip_paths = tuple(middleware.skip_paths)
        self.names = {"service_name": server_context.bento_name, "service_version": server_context.bento_version,
                      "runner_name": server_context.service_name}
        self.stamp = middleware.metrics_last_request_timestamp.labels(**self.names)
        self._stamped = 0.0
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._predicting = self.in_progress.labels(endpoint="/predict", **self.names)
        self._running = 0
        self._shown = 0.0

    def running(self, change: int) -> None:
        """``/predict`` requests in progress: +1 as the gate takes one, -1 as it has answered it."""
        self._running += change
        now = default_timer()
        if self._running == 0 or (change > 0 and self._running == 1) or now - self._shown >= self.every_s:
            self._predicting.set(self._running)
            self._shown = now

    def answered(self, endpoint: str, status: int, started: float) -> None:
        """One answer of ``status`` to a request that arrived at ``started`` (``default_timer()``)."""
        children = self._children.get((endpoint, status))
        if children is None:
            labels = {"endpoint": endpoint, "http_response_code": status} | self.names
            children = (self.total.labels(**labels), self.duration.labels(**labels))
            if endpoint == "/predict":
                self._children[(endpoint, status)] = children
        now = default_timer()
        if now - self._stamped >= self.every_s and not endpoint.startswith(self.skip_paths):
            self.stamp.set(time.time() - (now - started))  # when it arrived, as BentoML stamps
            self._stamped = now
        children[0].inc()
        children[1].observe(max(now - started, 0.0))


def bentoml_request_metrics(app: Any, depth: int = 32) -> RequestMetrics | None:
    """:class:`RequestMetrics` over the BentoML traffic middleware in the ASGI stack below ``app``
    (following each middleware's ``app``), or None when there is none below it: the gate sits
    inside BentoML's middlewares (which then count every request) or metrics are off."""
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    for _ in range(depth):
        if isinstance(app, RunnerTrafficMetricsMiddleware):
            return RequestMetrics(app)
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None
