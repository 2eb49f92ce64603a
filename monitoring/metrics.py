"""The monitor's Prometheus metrics, on its own registry and ``/metrics`` port.

A private :class:`prometheus_client.CollectorRegistry` per monitor keeps tests and several
monitors in one process apart; :meth:`MonitorMetrics.serve` exposes it over HTTP.

Every labelled counter starts with all its known label values at 0, so the first failed
retrain is an increase Prometheus can see (a series that appears already at 1 has no
``increase()``); ``deploy/prometheus/rules`` alert on these names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from driftloop.models.schema import ABOVE, BELOW, OUTSIDE_TRAINING, UNSEEN
from driftloop.vocabulary import COUNTED_OUTCOMES, Check, Decision, Signal, Trigger

CONFIDENCE = "confidence"  # driftloop_estimated_accuracy's method: the champion's calibrated confidence
ROLLBACK_WATCH = "watch"  # driftloop_rollbacks_total's reason: the promotion watch (monitoring/watch.py)
# driftloop_window_error's and driftloop_expected_error's metrics: a regressor's RMSE (what its decay
# test and the gate compare) and MAE; a classifier's error rate (1 - accuracy), so that one panel
# shows every supervised champion's error
RMSE, MAE, ERROR_RATE = "rmse", "mae", "error_rate"
# driftloop_pictures_total's kinds (a window's Evidently snapshot into the workspace, a flagged
# window's HTML report: monitoring/workspace.py Pictures) and outcomes
SNAPSHOT, REPORT = "snapshot", "report"
DRAWN, FAILED, DROPPED = "drawn", "failed", "dropped"
SIDES = (BELOW, ABOVE, UNSEEN)  # driftloop_feature_outside_training_total's sides (models/schema.py)


class MonitorMetrics:
    def __init__(self) -> None:
        import prometheus_client as pc

        self.registry = pc.CollectorRegistry()
        r = self.registry
        self.drift_share = pc.Gauge("driftloop_drift_share", "Share of drifted features in the last checked window.",
                                    registry=r)
        self.drift_threshold = pc.Gauge("driftloop_drift_share_threshold",
                                        "monitoring.drift_share: the drift share that flags a window.", registry=r)
        self.feature_drift = pc.Gauge("driftloop_feature_drift_score",
                                      "Evidently drift score per feature in the last checked window.",
                                      ["feature", "method"], registry=r)
        self.feature_drifted = pc.Gauge("driftloop_feature_drifted",
                                        "1 if the feature drifted in the last checked window.", ["feature"], registry=r)
        self.signal = pc.Gauge("driftloop_window_signal",
                               "1 if the last checked window raised the signal (drift, decay), as the policy judged.",
                               ["signal"], registry=r)
        self.accuracy = pc.Gauge("driftloop_window_accuracy", "Accuracy on the labelled rows of the last window.",
                                 registry=r)
        self.error = pc.Gauge("driftloop_window_error", "Error on the labelled rows of the last window, by metric "
                              "(regression: rmse, mae; classification: error_rate, 1 - accuracy).", ["metric"],
                              registry=r)
        # Labelled, so that neither appears (as a misleading 0) before it has a value.
        self.expected_accuracy = pc.Gauge("driftloop_expected_accuracy",
                                          "The accuracy the champion should reach live (validation, pooled with "
                                          "the gate's holdout): the baseline decay is measured against.",
                                          ["model_version"], registry=r)
        self.expected_error = pc.Gauge("driftloop_expected_error",
                                       "The error the champion should show live, by metric (regression: rmse, its "
                                       "validation RMSE pooled with the gate's holdout, the baseline decay is "
                                       "measured against; classification: error_rate, 1 - expected accuracy).",
                                       ["model_version", "metric"], registry=r)
        self.estimated_accuracy = pc.Gauge("driftloop_estimated_accuracy",
                                           "Accuracy estimated without labels for the newest window (confidence: the "
                                           "champion's top-class probabilities mapped through the calibration learnt "
                                           "on its validation rows).", ["method"], registry=r)
        self.label_coverage = pc.Gauge("driftloop_label_coverage", "Labelled share of the last checked window.",
                                       registry=r)
        self.window_rows = pc.Gauge("driftloop_window_rows", "Rows in the last checked window.", registry=r)
        # Counters, not a gauge of the last window: a monitor catching up checks many windows between
        # two scrapes, and the share over any range is their ratio (rate(outside) / rate(checked)).
        self.outside_training = pc.Counter("driftloop_feature_outside_training",
                                           "Checked rows the champion answered whose feature value lay outside "
                                           "its training data, by feature and side (below: under the training "
                                           "minimum, above: over the maximum, unseen: a category training never "
                                           "saw); missing values are not counted. Divided by "
                                           "driftloop_feature_checked_rows_total: the share.",
                                           ["feature", "side"], registry=r)
        self.checked_rows = pc.Counter("driftloop_feature_checked_rows",
                                       "Checked rows the champion answered, judged against each feature's training "
                                       "range or categories (numeric features with a recorded range, categorical "
                                       "ones with recorded categories).", ["feature"], registry=r)
        self.checks = pc.Counter("driftloop_checks", "Monitoring windows checked, by decision.", ["decision"],
                                 registry=r)
        self.check_seconds = pc.Histogram("driftloop_check_duration_seconds", "Time to check one window.",
                                          buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.retrains = pc.Counter("driftloop_retrains", "Retraining jobs, by outcome.", ["outcome"], registry=r)
        self.retrain_jobs = pc.Counter("driftloop_retrain_jobs", "Retraining jobs run, by what triggered them "
                                       "(drift, decay, manual, follow_up, schedule) and their outcome.",
                                       ["trigger", "outcome"], registry=r)
        self.retrain_seconds = pc.Histogram("driftloop_retrain_duration_seconds", "Retraining job duration.",
                                            buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 900), registry=r)
        self.rollbacks = pc.Counter("driftloop_rollbacks", "Champions the monitor rolled back to their predecessor, "
                                    "by reason (watch: significantly worse than its predecessor on the live rows "
                                    "both answered).", ["reason"], registry=r)
        self.champion = pc.Gauge("driftloop_champion", "1 for the champion version.", ["model_version"], registry=r)
        self.pictures = pc.Counter("driftloop_pictures", "Checked windows' pictures, drawn after the check by a "
                                   "background worker, by kind (snapshot: into the Evidently workspace; report: a "
                                   "flagged window's HTML report) and outcome (drawn, failed, dropped: the queue was "
                                   "full). Never part of a decision.", ["kind", "outcome"], registry=r)
        self.pictures_pending = pc.Gauge("driftloop_pictures_pending", "Checked windows whose pictures wait to be "
                                         "drawn.", registry=r)
        self.backlog_skipped = pc.Counter("driftloop_backlog_skipped_rows", "Logged rows a monitor far behind left "
                                          "unchecked to check the newest monitoring.max_backlog_windows windows first "
                                          "(the backlog_skipped event says which).", registry=r)
        self.last_check = pc.Gauge("driftloop_last_check_timestamp_seconds", "When the last window was checked.",
                                   registry=r)
        for decision in Decision:
            self.checks.labels(decision)
        for outcome in COUNTED_OUTCOMES:  # shadow: judged later, and counted again as its verdict
            self.retrains.labels(outcome)
            for trigger in Trigger:
                if trigger != Trigger.INITIAL:  # the first training is no monitor's job
                    self.retrain_jobs.labels(trigger, outcome)
        self.rollbacks.labels(ROLLBACK_WATCH)
        for kind in (SNAPSHOT, REPORT):
            for outcome in (DRAWN, FAILED, DROPPED):
                self.pictures.labels(kind, outcome)
        self.set_signals(())
        self._server: Any = None

    def serve(self, port: int, host: str | None = None) -> None:
        import prometheus_client as pc

        self._server, _ = pc.start_http_server(port, addr=host or "127.0.0.1", registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def set_champion(self, version: str | None) -> None:
        self.champion.clear()
        if version:
            self.champion.labels(version).set(1)

    def set_expected_accuracy(self, version: str, accuracy: float | None) -> None:
        self.expected_accuracy.clear()
        if accuracy is not None:
            self.expected_accuracy.labels(version).set(accuracy)

    def set_expected_error(self, version: str, *, rmse: float | None, accuracy: float | None) -> None:
        """The champion's expected error: its RMSE (regression), else 1 - its expected accuracy."""
        self.expected_error.clear()
        if rmse is not None:
            self.expected_error.labels(version, RMSE).set(rmse)
        elif accuracy is not None:
            self.expected_error.labels(version, ERROR_RATE).set(1 - accuracy)

    def set_window_error(self, check: Check) -> None:
        """The window's error by metric; a window without labels leaves the last one (as accuracy)."""
        figures = {RMSE: check.rmse, MAE: check.mae,
                   ERROR_RATE: None if check.accuracy is None else 1 - check.accuracy}
        for metric, value in figures.items():
            if value is not None:
                self.error.labels(metric).set(value)

    def set_signals(self, signals: Iterable[str]) -> None:
        raised = set(signals)
        for signal in Signal:  # suspected: decay, from confidence, before labels
            self.signal.labels(signal).set(1 if signal in raised else 0)

    def set_features(self, scores: dict[str, dict[str, Any]]) -> None:
        """Per-feature drift of the last window; features no longer checked disappear."""
        self.feature_drift.clear()
        self.feature_drifted.clear()
        for feature, col in scores.items():
            self.feature_drift.labels(feature, col["method"] or "").set(col["score"])
            self.feature_drifted.labels(feature).set(1 if col["drifted"] else 0)

    def track_features(self, sides: dict[str, tuple[str, ...]]) -> None:
        """The served champion's judged features (``FeatureSchema.training_sides``: feature -> its
        sides) at 0 in the out-of-training counters, so that their first rows outside training
        are an increase Prometheus sees and the share exists from the start. Features of earlier
        champions stay (counters; they just stop growing)."""
        for feature, feature_sides in sides.items():
            self.checked_rows.labels(feature)
            for side in feature_sides:
                self.outside_training.labels(feature, side)

    def count_outside_training(self, scores: dict[str, dict[str, Any]]) -> None:
        """A check's rows outside the champion's training data, from its ``feature_scores``
        (``outside_training``: ``{"rows", "below", "above"}`` or ``{"rows", "unseen"}``)."""
        for feature, col in scores.items():
            counts = col.get(OUTSIDE_TRAINING)
            if counts is None:  # not judged: the prediction, an image, a feature without a range
                continue
            self.checked_rows.labels(feature).inc(counts["rows"])
            for side in SIDES:
                if side in counts:
                    self.outside_training.labels(feature, side).inc(counts[side])

    def observe_check(self, check: Check, signals: Iterable[str], *, threshold: float,
                      expected_accuracy: float | None, champion: str | None, now: float,
                      expected_rmse: float | None = None) -> None:
        """A checked window's figures: drift, accuracy (or error), label coverage, the decision,
        and the champion (read after the window's retrain, if any); ``threshold`` is
        ``monitoring.drift_share``, ``expected_*`` the checked champion's (regression: RMSE)."""
        self.drift_share.set(check.drift_share)
        self.drift_threshold.set(threshold)
        self.set_features(check.feature_scores)
        self.count_outside_training(check.feature_scores)
        self.set_signals(signals)
        if check.accuracy is not None:
            self.accuracy.set(check.accuracy)
        self.set_expected_accuracy(check.reference_version, expected_accuracy)
        self.set_window_error(check)
        self.set_expected_error(check.reference_version, rmse=expected_rmse, accuracy=expected_accuracy)
        if check.estimated_accuracy is not None:  # classifiers: from the champion's calibrated confidence
            self.estimated_accuracy.labels(CONFIDENCE).set(check.estimated_accuracy)
        self.label_coverage.set(check.labelled / check.rows)
        self.window_rows.set(check.rows)
        self.checks.labels(check.decision).inc()
        self.check_seconds.observe(check.duration_s)
        self.last_check.set(now)
        self.set_champion(champion)
