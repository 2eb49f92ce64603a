"""driftloop's serving metrics, exported on BentoML's own ``/metrics``.

Created on first use, never at import: BentoML points ``PROMETHEUS_MULTIPROC_DIR`` at a
per-server directory before its workers start, and a metric created earlier would be missing
from the multi-process view. With several workers, counters are summed across workers and
``driftloop_model_workers`` counts the live workers serving each version (``livesum``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServingMetrics:
    predictions: Any  # Counter{model_version, predicted_class}: predicted rows
    feedback: Any  # Counter{outcome}: labels accepted, duplicate, unknown
    swaps: Any  # Counter{outcome}: model swaps done or refused, per worker
    model_workers: Any  # Gauge{model_version}: workers serving each version
    log_rows: Any  # Counter{outcome}: prediction-log rows written or dropped
    log_queue: Any  # Gauge: rows waiting in the prediction-log buffers


@functools.cache
def serving_metrics() -> ServingMetrics:
    import prometheus_client as pc

    return ServingMetrics(
        predictions=pc.Counter("driftloop_predictions", "Predicted rows by model version and predicted class.",
                               ["model_version", "predicted_class"]),
        feedback=pc.Counter("driftloop_feedback_labels", "Feedback labels received, by outcome.", ["outcome"]),
        swaps=pc.Counter("driftloop_model_swaps", "Champion swaps attempted by service workers, by outcome.",
                         ["outcome"]),
        model_workers=pc.Gauge("driftloop_model_workers", "Service workers serving each model version.",
                               ["model_version"], multiprocess_mode="livesum"),
        log_rows=pc.Counter("driftloop_prediction_log_rows", "Prediction-log rows, by outcome (written, dropped).",
                            ["outcome"]),
        log_queue=pc.Gauge("driftloop_prediction_log_queue_rows", "Prediction-log rows waiting to be written.",
                           multiprocess_mode="livesum"),
    )
