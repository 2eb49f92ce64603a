"""The prediction store: predictions, feedback labels, checks and events (SQLAlchemy Core).

SQLite by default; any SQLAlchemy URL (PostgreSQL) works by passing it. Tables:

``predictions``  one row per predicted row: request id, time, model version, inputs, output
``feedback``     the true label of a request id, whenever it arrives (first label wins)
``checks``       one row per monitoring window: drift and accuracy figures, the decision
``events``       the audit trail: drift/decay detected, retrain started/failed, promoted/rejected

The service writes predictions (through a buffered writer) and feedback; the monitor reads
windows of predictions joined with feedback and writes checks and events. Neither imports the
other: this module is their only meeting point.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import sqlalchemy as sa

metadata = sa.MetaData()

predictions = sa.Table(
    "predictions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(36), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("model_version", sa.String(64), nullable=False, index=True),
    sa.Column("features", sa.Text, nullable=False),  # JSON object: feature -> value
    sa.Column("prediction", sa.Text, nullable=False),  # JSON scalar
    sa.Column("confidence", sa.Float, nullable=True),  # top-class probability (classifiers)
)

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("label", sa.Text, nullable=False),  # JSON scalar
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)

checks = sa.Table(
    "checks", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("window", sa.Integer, nullable=False, unique=True),
    sa.Column("first_id", sa.Integer, nullable=False),
    sa.Column("last_id", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),  # the version that served most rows
    sa.Column("reference_version", sa.String(64), nullable=False),  # the drift baseline used
    sa.Column("drift_share", sa.Float, nullable=False),
    sa.Column("drifted_features", sa.Text, nullable=False),  # JSON list
    sa.Column("feature_scores", sa.Text, nullable=False),  # JSON: feature -> {method, score, threshold, drifted}
    sa.Column("labelled", sa.Integer, nullable=False),
    sa.Column("accuracy", sa.Float, nullable=True),  # on labelled rows (classification)
    sa.Column("champion_labelled", sa.Integer, nullable=False, default=0),  # ...that the champion answered
    sa.Column("champion_accuracy", sa.Float, nullable=True),  # what the decay test looks at
    sa.Column("decision", sa.String(32), nullable=False),  # the policy's: none, watch, cooldown, alert, retrain
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("outcome", sa.String(32), nullable=True),  # of a retrain: promoted, rejected, waiting, failed
    sa.Column("report_path", sa.Text, nullable=True),
    sa.Column("duration_s", sa.Float, nullable=False),
)

events = sa.Table(
    "events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False, index=True),
    sa.Column("window", sa.Integer, nullable=True),
    sa.Column("model_version", sa.String(64), nullable=True),
    sa.Column("detail", sa.Text, nullable=False),  # JSON object
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class FeedbackResult:
    accepted: int
    duplicates: list[str]  # already labelled: the first label is kept
    unknown: list[str]


class PredictionStore:
    """All reads and writes of the store, for the service and the monitor alike."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        self.engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self._created = False
        self._lock = threading.Lock()

    def create(self) -> PredictionStore:
        """Create missing tables (idempotent); returns self."""
        if url_path := _sqlite_path(self.url):
            import os

            os.makedirs(os.path.dirname(os.path.abspath(url_path)), exist_ok=True)
        metadata.create_all(self.engine)
        return self

    def close(self) -> None:
        self.engine.dispose()

    # -- predictions ------------------------------------------------------------------------
    def insert_predictions(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows of ``request_id, created_at, model_version, features, prediction, confidence``."""
        if not rows:
            return
        payload = [{
            "request_id": r["request_id"],
            "created_at": r["created_at"],
            "model_version": r["model_version"],
            "features": json.dumps(r["features"], separators=(",", ":")),
            "prediction": json.dumps(r["prediction"]),
            "confidence": r.get("confidence"),
        } for r in rows]
        with self.engine.begin() as conn:
            conn.execute(predictions.insert(), payload)

    def count_predictions(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one())

    def known_request_ids(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                q = sa.select(predictions.c.request_id).where(predictions.c.request_id.in_(chunk))
                found.update(conn.execute(q).scalars())
        return found

    # -- feedback ---------------------------------------------------------------------------
    def insert_feedback(self, labels: Sequence[tuple[str, Any]]) -> FeedbackResult:
        """Store labels of known request ids; the first label of a request id wins."""
        ids = [rid for rid, _ in labels]
        known = self.known_request_ids(ids)
        unknown = [rid for rid in ids if rid not in known]
        now = utcnow()
        with self.engine.begin() as conn:
            already = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                q = sa.select(feedback.c.request_id).where(feedback.c.request_id.in_(chunk))
                already.update(conn.execute(q).scalars())
            fresh, seen = [], set()
            duplicates = []
            for rid, label in labels:
                if rid not in known:
                    continue
                if rid in already or rid in seen:
                    duplicates.append(rid)
                    continue
                seen.add(rid)
                fresh.append({"request_id": rid, "label": json.dumps(label), "received_at": now})
            if fresh:
                conn.execute(feedback.insert(), fresh)
        return FeedbackResult(len(fresh), duplicates, unknown)

    # -- windows for the monitor ------------------------------------------------------------
    def window(self, after_id: int, limit: int) -> pd.DataFrame:
        """Up to ``limit`` predictions with id > ``after_id``, in id order, joined with labels.

        Columns: id, request_id, created_at, model_version, prediction, confidence, label
        (``None`` where no feedback yet), then one column per feature.
        """
        return self._joined(predictions.c.id > after_id, limit=limit)

    def rows_between(self, first_id: int, last_id: int) -> pd.DataFrame:
        """Every prediction with an id in ``[first_id, last_id]``, labelled or not, in id order."""
        return self._joined(predictions.c.id.between(first_id, last_id))

    def labelled_rows(self, first_id: int, last_id: int) -> pd.DataFrame:
        """Predictions with ids in ``[first_id, last_id]`` that have a label, in id order."""
        return self._joined(predictions.c.id.between(first_id, last_id), labelled_only=True)

    def _joined(self, where: Any, labelled_only: bool = False, limit: int | None = None) -> pd.DataFrame:
        on = predictions.c.request_id == feedback.c.request_id
        joined = predictions.join(feedback, on) if labelled_only else predictions.outerjoin(feedback, on)
        q = sa.select(predictions, feedback.c.label).select_from(joined).where(where).order_by(predictions.c.id)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return _frame(rows)

    # -- checks and events ------------------------------------------------------------------
    def last_check(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(checks).order_by(checks.c.window.desc()).limit(1)).mappings().first()
        return _check(row) if row else None

    def record_check(self, check: dict[str, Any]) -> None:
        row = dict(check)
        row["created_at"] = row.get("created_at") or utcnow()
        row["drifted_features"] = json.dumps(row["drifted_features"])
        row["feature_scores"] = json.dumps(row["feature_scores"])
        with self.engine.begin() as conn:
            conn.execute(checks.insert(), row)

    def checks(self, since_window: int = -1) -> list[dict[str, Any]]:
        q = sa.select(checks).where(checks.c.window > since_window).order_by(checks.c.window)
        with self.engine.connect() as conn:
            return [_check(r) for r in conn.execute(q).mappings()]

    def record_event(self, kind: str, detail: dict[str, Any], window: int | None = None,
                     model_version: str | None = None) -> int:
        """Append to the audit trail; returns the event's id."""
        with self.engine.begin() as conn:
            result = conn.execute(events.insert(), {"created_at": utcnow(), "kind": kind, "window": window,
                                                    "model_version": model_version,
                                                    "detail": json.dumps(detail, default=str)})
            return int(result.inserted_primary_key[0])

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(events).order_by(events.c.id)
        if kind:
            q = q.where(events.c.kind == kind)
        with self.engine.connect() as conn:
            return [dict(r) | {"detail": json.loads(r["detail"])} for r in conn.execute(q).mappings()]


def _frame(rows: Sequence[Any]) -> pd.DataFrame:
    base = ["id", "request_id", "created_at", "model_version", "prediction", "confidence", "label"]
    if not rows:
        return pd.DataFrame(columns=base)
    frame = pd.DataFrame([{
        "id": r["id"], "request_id": r["request_id"], "created_at": r["created_at"],
        "model_version": r["model_version"], "prediction": json.loads(r["prediction"]),
        "confidence": r["confidence"], "label": None if r["label"] is None else json.loads(r["label"]),
    } for r in rows], columns=base)
    feats = pd.DataFrame([json.loads(r["features"]) for r in rows])
    return pd.concat([frame, feats], axis=1)


def _check(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["drifted_features"] = json.loads(out["drifted_features"])
    out["feature_scores"] = json.loads(out["feature_scores"])
    return out


def _sqlite_path(url: str) -> str | None:
    prefix = "sqlite:///"
    if url.startswith(prefix) and ":memory:" not in url:
        return url[len(prefix):]
    return None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the monitor read while service workers write; NORMAL sync is durable across
    # process crashes (only a power loss can drop the last transactions).
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
