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

Errors: every answer, 5xx included, is counted by BentoML's ``bentoml_service_request_total
{endpoint, http_response_code}`` (its middleware sits outside :class:`service.gate.RequestGate`,
which answers every request that reaches it, a failed one with a 500). Beside it,
``driftloop_requests_shed_total{reason}`` says why requests were refused unanswered (503, 408)
and ``driftloop_internal_errors_total{exception}`` which exception a 500 came from (a bug to fix).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
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
