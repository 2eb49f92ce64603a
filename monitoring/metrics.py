"""The monitor's Prometheus metrics, on its own registry and ``/metrics`` port.

A private :class:`prometheus_client.CollectorRegistry` per monitor keeps tests and several
monitors in one process apart; :meth:`MonitorMetrics.serve` exposes it over HTTP.
"""

from __future__ import annotations

from typing import Any


class MonitorMetrics:
    def __init__(self) -> None:
        import prometheus_client as pc

        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.drift_share = pc.Gauge("driftloop_drift_share", "Share of drifted features in the last checked window.",
                                    registry=r)
        self.feature_drift = pc.Gauge("driftloop_feature_drift_score",
                                      "Evidently drift score per feature in the last checked window.",
                                      ["feature", "method"], registry=r)
        self.feature_drifted = pc.Gauge("driftloop_feature_drifted",
                                        "1 if the feature drifted in the last checked window.", ["feature"], registry=r)
        self.accuracy = pc.Gauge("driftloop_window_accuracy", "Accuracy on the labelled rows of the last window.",
                                 registry=r)
        self.label_coverage = pc.Gauge("driftloop_label_coverage", "Labelled share of the last checked window.",
                                       registry=r)
        self.window_rows = pc.Gauge("driftloop_window_rows", "Rows in the last checked window.", registry=r)
        self.checks = pc.Counter("driftloop_checks", "Monitoring windows checked, by decision.", ["decision"],
                                 registry=r)
        self.check_seconds = pc.Histogram("driftloop_check_duration_seconds", "Time to check one window.",
                                          buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.retrains = pc.Counter("driftloop_retrains", "Retraining jobs, by outcome.", ["outcome"], registry=r)
        self.retrain_seconds = pc.Histogram("driftloop_retrain_duration_seconds", "Retraining job duration.",
                                            buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 900), registry=r)
        self.champion = pc.Gauge("driftloop_champion", "1 for the champion version.", ["model_version"], registry=r)
        self.last_check = pc.Gauge("driftloop_last_check_timestamp_seconds", "When the last window was checked.",
                                   registry=r)
        self._server: Any = None

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        import prometheus_client as pc

        self._server, _ = pc.start_http_server(port, addr=host, registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def set_champion(self, version: str | None) -> None:
        self.champion.clear()
        if version:
            self.champion.labels(version).set(1)
