"""The prediction store: predictions, feedback labels, checks and events (SQLAlchemy Core).

SQLite by default; any SQLAlchemy URL (PostgreSQL) works by passing it. Tables:

``predictions``  one row per predicted row: request id, time, model version, inputs, output
``feedback``     the true label of a request id, whenever it arrives (first label wins)
``checks``       one row per monitoring window: drift and accuracy (or error) figures, the decision
                 (read and written as :class:`driftloop.vocabulary.Check`)
``events``       the audit trail: drift/decay detected, retrain started/failed, promoted/rejected
``shadow_predictions``  the shadow's answer to a logged request the champion answered (shadow mode)

``leases``       who holds the scheduler's (and the retrain's) lock (``monitoring/lease.py``)

The service writes predictions (through a buffered writer), the shadow's predictions (scored by
that writer after each batch, see :mod:`service.serving`) and feedback; the monitor reads windows
of predictions joined with feedback, and the shadow's rows joined with both, and writes checks and
events. Neither imports the
other: this module is their only meeting point. APScheduler keeps its jobs in the same database
(``apscheduler_jobs``). The schema is created and upgraded by Alembic (``monitoring/migrations``)
in :meth:`PredictionStore.create` or ``driftloop db upgrade``.

Log order. The monitor reads windows as "the next N rows with an id above the last window's",
which is only safe if a row can never become visible after a row with a higher id. With several
writers an autoincrement id is taken at insert time and made visible at commit, so a
transaction that took id 100 and commits after another took and committed 101..600 would be
skipped by a scan that already moved past 600. Writers therefore take ids and commit in one
order: on PostgreSQL every prediction insert takes a transaction-scoped advisory lock first
(``LOG_ORDER_LOCK``, released at commit, after the rows are visible), so ids grow in commit
order; SQLite gets the same from its single writer lock. Batches are one transaction per flush
of a service worker's writer, so the serialisation costs a few milliseconds per flush.

Shadow rows are not in that order: a batch's shadow rows are committed after its predictions, in
a transaction of their own (a shadow failure never touches the log), so a shadow row can become
visible after a shadow row of a prediction with a higher id. :meth:`PredictionStore.shadow_rows`
takes ``after_id`` to skip rows, not as a cursor to resume an incremental scan from.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import sqlalchemy as sa

from driftloop.models.errors import DriftloopError
from driftloop.models.lazy import lazy_module
from driftloop.vocabulary import Check, Outcome

if TYPE_CHECKING:
    import pandas as pd
else:
    pd = lazy_module("pandas")  # the monitor's windows; a serving worker only writes, and never imports it

metadata = sa.MetaData()
UPDATABLE_CHECK_FIELDS = ("outcome", "reason")  # what PredictionStore.update_check may change
LOG_ORDER_LOCK = 0x6472_6C6F_6731  # PostgreSQL advisory lock key ("drlog1") serialising prediction inserts
MIGRATION_LOCK = 0x6472_6C6D_6731  # ...and migrations ("drlmg1"), so two processes never migrate at once

# A prediction row as the serving worker's log queues it and :meth:`PredictionStore.insert_logged`
# writes it: the values of ``LOG_ROW_COLUMNS``, the JSON already encoded and the time already in
# the database's form (:meth:`PredictionStore.log_rows` makes them). A tuple of strings and
# numbers: about 290 bytes plus its JSON (a dict row with the request's feature dict took 1.2 KB
# for 6 features), and nothing the garbage collector has to follow.
LogRow = tuple[str, Any, str, str, str, float | None]
LOG_ROW_COLUMNS = ("request_id", "created_at", "model_version", "features", "prediction", "confidence")
LOG_ROW_OVERHEAD_BYTES = 330  # a queued LogRow's memory beyond its JSON text (measured: 282 + the deque's slot)


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
    # The policy's (vocabulary.Decision): none, suspect, watch, cooldown, alert, retrain
    sa.Column("decision", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    # Of the retrain it decided (vocabulary.Outcome): promoted, rejected, waiting, shadow, failed, running,
    # shadow_pending; NULL when it decided none
    sa.Column("outcome", sa.String(32), nullable=True),
    sa.Column("report_path", sa.Text, nullable=True),
    sa.Column("duration_s", sa.Float, nullable=False),
    sa.Column("estimated_accuracy", sa.Float, nullable=True),  # without labels, estimated (revision 0003)
    # Regression (revision 0004): the errors on the labelled rows, and on the champion's with the
    # spread of its squared errors (what the decay test looks at)
    sa.Column("rmse", sa.Float, nullable=True),
    sa.Column("mae", sa.Float, nullable=True),
    sa.Column("champion_rmse", sa.Float, nullable=True),
    sa.Column("champion_mae", sa.Float, nullable=True),
    sa.Column("champion_squared_error_std", sa.Float, nullable=True),
    # Share of the champion's rows in the window outside its training ranges or categories
    sa.Column("unfamiliar_share", sa.Float, nullable=True),
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

shadow_predictions = sa.Table(
    "shadow_predictions", metadata,
    sa.Column("request_id", sa.String(36), nullable=False),  # predictions.request_id (no constraint)
    sa.Column("model_version", sa.String(64), nullable=False),  # the shadow's version
    sa.Column("prediction", sa.Text, nullable=False),  # JSON scalar
    sa.Column("confidence", sa.Float, nullable=True),  # as predictions.confidence, by the shadow
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),  # when the shadow scored it
    # The version first: the index also serves "every row of this shadow" (shadow_rows).
    sa.PrimaryKeyConstraint("model_version", "request_id", name="pk_shadow_predictions"),
)

leases = sa.Table(
    "leases", metadata,
    sa.Column("name", sa.String(64), primary_key=True),  # "scheduler", "retrain"
    sa.Column("owner", sa.String(128), nullable=True),  # host:pid:nonce of the holder; NULL: free
    sa.Column("epoch", sa.Integer, nullable=False),  # +1 at every change of holder (a fencing token)
    sa.Column("acquired_at", sa.Float, nullable=True),  # epoch seconds by the database's clock
    sa.Column("expires_at", sa.Float, nullable=False),  # the holder must renew before this
)


class StoreError(DriftloopError):
    """The database cannot be used as a driftloop store (unknown schema, unknown revision)."""


# What the database raises when it cannot be used right now (down, unreachable, locked, read-only,
# its file gone): a reason to retry later, never a client's mistake. The service answers these 503
# with Retry-After (service/endpoint.py) and its prediction-log writer keeps the rows and retries.
UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError)

# SQLite errors that leave a pooled connection useless after the cause is gone: a connection that
# met a read-only file stays read-only, one whose file was replaced keeps the old one. Treated as
# disconnects: SQLAlchemy throws the pool's connections away and the next use opens fresh ones.
_SQLITE_STALE = ("readonly database", "disk i/o error", "unable to open database file", "no such table",
                 "file is not a database", "database disk image is malformed")


def unavailable(exc: BaseException) -> str | None:
    """Why the store is unavailable, in one line (None: ``exc`` is not such an error)."""
    if not isinstance(exc, UNAVAILABLE):
        return None
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 (SQLAlchemy's default would be psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


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
        self.url = url = normalize_url(url)
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True  # a restarted server: reconnect instead of failing a request
        # Parameters stay out of error messages: they are users' features, and a failed batch
        # would print thousands of them into the log at every retry.
        self.engine = sa.create_engine(url, hide_parameters=True, **kwargs)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            sa.event.listen(self.engine, "handle_error", _sqlite_stale)
            path = self.engine.url.database
            if path and path != ":memory:" and not path.startswith("file:"):
                # Open the file, never create it: a store whose file was moved away is unavailable
                # (and retried), not silently replaced by an empty database that takes the rows.
                # Only the migrations (PredictionStore.create) create the file.
                sa.event.listen(self.engine, "do_connect", _sqlite_existing(os.path.abspath(path)))
        self._created = False

    def create(self) -> PredictionStore:
        """Create or upgrade the schema to the newest migration (idempotent); returns self."""
        if not self._created:
            from driftloop.monitoring.migrations import upgrade

            upgrade(self)
            self._created = True
        return self

    def close(self) -> None:
        self.engine.dispose()

    # -- predictions ------------------------------------------------------------------------
    def insert_predictions(self, rows: Sequence[dict[str, Any]], conn: sa.Connection | None = None) -> None:
        """Rows of ``request_id, created_at, model_version, features, prediction, confidence``, in
        one transaction of their own, or in ``conn``'s (its commit makes them visible)."""
        created, confidence = self._log_binds
        self.insert_logged([(r["request_id"], created(r["created_at"]), r["model_version"],
                             _compact_json(r["features"]), json.dumps(r["prediction"]), confidence(r.get("confidence")))
                            for r in rows], conn)

    def log_rows(self, request_ids: Sequence[str], created_at: datetime, model_version: str,
                 features: Sequence[Any], predictions: Sequence[Any],
                 confidences: Sequence[float | None]) -> list[LogRow]:
        """One request's rows as :meth:`insert_logged` takes them (:data:`LogRow`): the JSON encoded
        and the time in the database's form once, here (a serving worker calls this on the request
        path, so its log writer only hands tuples to the driver). What is stored is what
        :meth:`insert_predictions` stores for the same rows."""
        created, confidence = self._log_binds
        when = created(created_at)
        return [(rid, when, model_version, _compact_json(f), json.dumps(p), confidence(c))
                for rid, f, p, c in zip(request_ids, features, predictions, confidences)]

    def insert_logged(self, rows: Sequence[LogRow], conn: sa.Connection | None = None) -> None:
        """Rows made by :meth:`log_rows`, in one transaction of their own, or in ``conn``'s.

        The tuples go to the driver as they are: SQLite's ``executemany``, PostgreSQL's ``COPY``
        (psycopg). SQLAlchemy's per-row parameter processing (about 20 us a row, holding the GIL
        a serving worker's event loop needs; psycopg's ``executemany`` about 10) is done once per
        request in :meth:`log_rows` instead. Errors are SQLAlchemy's as for any other statement
        (``UNAVAILABLE`` for an outage; stale SQLite connections are thrown away)."""
        if not rows:
            return
        if conn is not None:
            self._write_predictions(conn, rows)
            return
        with self.engine.begin() as conn:
            self._write_predictions(conn, rows)

    def _write_predictions(self, conn: sa.Connection, rows: Sequence[LogRow]) -> None:
        if self.dialect == "postgresql":  # ids in commit order: see "Log order" above
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOG_ORDER_LOCK})
            if self.engine.dialect.driver == "psycopg":  # (an explicit postgresql+psycopg2:// URL: executemany)
                self._copy_predictions(conn, rows)
                return
        conn.exec_driver_sql(self._log_insert_sql, rows if isinstance(rows, list) else list(rows))

    def _copy_predictions(self, conn: sa.Connection, rows: Sequence[LogRow]) -> None:
        """PostgreSQL: the rows in one ``COPY ... FROM STDIN`` in ``conn``'s transaction (psycopg's
        ``write_row`` adapts the tuples in C). A driver error is raised as SQLAlchemy would raise it
        (``sa.exc.OperationalError`` for a server that went away), so callers see one kind of error."""
        dialect = self.engine.dialect
        sql = f"COPY predictions ({', '.join(LOG_ROW_COLUMNS)}) FROM STDIN"
        try:
            with conn.connection.dbapi_connection.cursor() as cursor, cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
        except dialect.loaded_dbapi.Error as exc:
            raise sa.exc.DBAPIError.instance(sql, None, exc, dialect.loaded_dbapi.Error, hide_parameters=True,
                                             dialect=dialect) from exc

    @functools.cached_property
    def _log_binds(self) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        """What SQLAlchemy does to ``created_at`` and ``confidence`` before the driver sees them
        (SQLite: the time as its text, the number as a float; PostgreSQL: nothing)."""
        def bind(column: sa.Column[Any]) -> Callable[[Any], Any]:
            process = column.type._cached_bind_processor(self.engine.dialect)
            return process if process is not None else _same
        return bind(predictions.c.created_at), bind(predictions.c.confidence)

    @functools.cached_property
    def _log_insert_sql(self) -> str:
        mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(self.engine.dialect.paramstyle)
        if mark is None:
            raise StoreError(f"unsupported database driver {self.engine.dialect.driver!r} (parameter style "
                             f"{self.engine.dialect.paramstyle}): driftloop runs on SQLite and PostgreSQL (psycopg)")
        return (f"INSERT INTO predictions ({', '.join(LOG_ROW_COLUMNS)}) "
                f"VALUES ({', '.join([mark] * len(LOG_ROW_COLUMNS))})")

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
                # Another process may label the same id between our read and this insert: its
                # label came first, ours is a duplicate (never an IntegrityError).
                insert = self._insert(feedback).on_conflict_do_nothing(index_elements=["request_id"])
                written = set(conn.execute(insert.returning(feedback.c.request_id), fresh).scalars())
                if len(written) < len(fresh):
                    duplicates += [r["request_id"] for r in fresh if r["request_id"] not in written]
                    fresh = [r for r in fresh if r["request_id"] in written]
        return FeedbackResult(len(fresh), duplicates, unknown)

    def _insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT (with ``on_conflict_do_nothing``): PostgreSQL or SQLite."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            raise StoreError(f"unsupported database {self.dialect!r}: driftloop runs on SQLite and PostgreSQL")
        return insert(table)

    # -- windows for the monitor ------------------------------------------------------------
    def window(self, after_id: int, limit: int, *, request_ids: bool = True) -> pd.DataFrame:
        """Up to ``limit`` predictions with id > ``after_id``, in id order, joined with labels.

        Columns: id, request_id, created_at, model_version, prediction, confidence, label
        (``None`` where no feedback yet), then one column per feature. ``request_ids=False`` (the
        monitor's checks, which never read it): without the request_id column.
        """
        return self._joined(predictions.c.id > after_id, limit=limit, request_ids=request_ids)

    def rows_between(self, first_id: int, last_id: int) -> pd.DataFrame:
        """Every prediction with an id in ``[first_id, last_id]``, labelled or not, in id order."""
        return self._joined(predictions.c.id.between(first_id, last_id))

    def labelled_rows(self, first_id: int, last_id: int) -> pd.DataFrame:
        """Predictions with ids in ``[first_id, last_id]`` that have a label, in id order."""
        return self._joined(predictions.c.id.between(first_id, last_id), labelled_only=True)

    def count_rows(self, first_id: int, last_id: int, *, labelled: bool = True) -> tuple[int, int | None]:
        """How many predictions with ids in ``[first_id, last_id]`` there are (only those with a
        label, by default), and the highest such id (None: none); one COUNT query."""
        q = sa.select(sa.func.count(), sa.func.max(predictions.c.id)).where(
            predictions.c.id.between(first_id, last_id))
        if labelled:
            q = q.select_from(predictions.join(feedback, predictions.c.request_id == feedback.c.request_id))
        with self.engine.connect() as conn:
            count, last = conn.execute(q).one()
        return int(count), None if last is None else int(last)

    def id_before_newest(self, rows: int) -> int | None:
        """The id below the newest ``rows`` predictions (exactly ``rows`` have a higher id), or
        None when there are not more than that many: one step down the primary key's index."""
        q = sa.select(predictions.c.id).order_by(predictions.c.id.desc()).limit(1).offset(rows)
        with self.engine.connect() as conn:
            found = conn.execute(q).scalar()
        return None if found is None else int(found)

    # -- shadow mode ------------------------------------------------------------------------
    def insert_shadow_predictions(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows of ``request_id, model_version`` (the shadow's), ``prediction, confidence`` and
        optionally ``created_at`` (default now), in one transaction; a row already there (same
        request id and version) is kept as it is."""
        if not rows:
            return
        now = utcnow()
        payload = [{"request_id": r["request_id"], "model_version": r["model_version"],
                    "prediction": json.dumps(r["prediction"]), "confidence": r.get("confidence"),
                    "created_at": r.get("created_at") or now} for r in rows]
        insert = self._insert(shadow_predictions).on_conflict_do_nothing(index_elements=["model_version", "request_id"])
        with self.engine.begin() as conn:
            conn.execute(insert, payload)

    def shadow_rows(self, version: str, after_id: int = 0) -> pd.DataFrame:
        """The logged rows that shadow ``version`` scored, with id > ``after_id``, in id order,
        joined with labels.

        Columns: id, request_id, created_at, model_version (the champion that answered),
        prediction (the champion's), shadow_prediction, shadow_confidence, label (``None`` where no
        feedback yet). A batch's shadow rows are committed just after its predictions: see "Log
        order" above before using ``after_id`` as a cursor.
        """
        shadow = shadow_predictions
        joined = shadow.join(predictions, predictions.c.request_id == shadow.c.request_id).outerjoin(
            feedback, feedback.c.request_id == shadow.c.request_id)
        q = (sa.select(predictions.c.id, predictions.c.request_id, predictions.c.created_at,
                       predictions.c.model_version, predictions.c.prediction,
                       shadow.c.prediction.label("shadow_prediction"), shadow.c.confidence.label("shadow_confidence"),
                       feedback.c.label)
             .select_from(joined).where(shadow.c.model_version == version, predictions.c.id > after_id)
             .order_by(predictions.c.id))
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        columns = ["id", "request_id", "created_at", "model_version", "prediction", "shadow_prediction",
                   "shadow_confidence", "label"]
        return pd.DataFrame([{
            "id": r["id"], "request_id": r["request_id"], "created_at": r["created_at"],
            "model_version": r["model_version"], "prediction": json.loads(r["prediction"]),
            "shadow_prediction": json.loads(r["shadow_prediction"]), "shadow_confidence": r["shadow_confidence"],
            "label": _label(r["label"]),
        } for r in rows], columns=columns)

    def _joined(self, where: Any, labelled_only: bool = False, limit: int | None = None,
                request_ids: bool = True) -> pd.DataFrame:
        """The rows as :func:`_frame` builds them. Only the columns it needs are read; SQLite's times
        come as their stored text, parsed for the whole column at once (SQLAlchemy would parse
        them one row at a time: a tenth of a window's check)."""
        on = predictions.c.request_id == feedback.c.request_id
        joined = predictions.join(feedback, on) if labelled_only else predictions.outerjoin(feedback, on)
        created: Any = predictions.c.created_at
        if self.dialect == "sqlite":
            created = sa.type_coerce(created, sa.String).label("created_at")
        columns = [predictions.c.id, *([predictions.c.request_id] if request_ids else []), created,
                   predictions.c.model_version, predictions.c.features, predictions.c.prediction,
                   predictions.c.confidence, feedback.c.label]
        q = sa.select(*columns).select_from(joined).where(where).order_by(predictions.c.id)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return _frame(rows, request_ids=request_ids)

    # -- checks and events ------------------------------------------------------------------
    def last_check(self) -> Check | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(checks).order_by(checks.c.window.desc()).limit(1)).mappings().first()
        return _check(row) if row else None

    def record_check(self, check: Check) -> None:
        """One window's check (its ``id`` is the store's; ``created_at`` defaults to now). Empty
        fields are left to the column's NULL, so a store one migration behind (without
        ``estimated_accuracy``, or a classifier's check without the regression errors) still takes a
        check that has none."""
        row = {k: v for k, v in check.to_dict().items() if v is not None and k != "id"}
        row["created_at"] = row.get("created_at") or utcnow()
        row["decision"] = str(row["decision"])
        if "outcome" in row:
            row["outcome"] = str(row["outcome"])
        row["drifted_features"] = json.dumps(row["drifted_features"])
        row["feature_scores"] = json.dumps(row["feature_scores"])
        with self.engine.begin() as conn:
            conn.execute(checks.insert(), row)

    def update_check(self, window: int, **fields: Any) -> None:
        """Change a recorded check's ``outcome`` and/or ``reason`` (e.g. a retrain retried later).
        Raises KeyError if no check has that window, TypeError for other fields."""
        unknown = set(fields) - set(UPDATABLE_CHECK_FIELDS)
        if unknown or not fields:
            raise TypeError(f"update_check takes {' and/or '.join(UPDATABLE_CHECK_FIELDS)}, got {sorted(fields)}")
        if fields.get("outcome") is not None:
            fields["outcome"] = str(Outcome(fields["outcome"]))
        with self.engine.begin() as conn:
            result = conn.execute(checks.update().where(checks.c.window == window).values(**fields))
        if result.rowcount == 0:
            raise KeyError(f"no check recorded for window {window}")

    def checks(self, since_window: int = -1, outcome: Outcome | None = None, limit: int | None = None) -> list[Check]:
        """Checks after ``since_window`` in window order; only those with ``outcome`` if given; only
        the newest ``limit`` of them if given (still oldest first): what start-up and ``/history``
        read, never every check ever stored."""
        q = sa.select(checks).where(checks.c.window > since_window)
        if outcome is not None:
            q = q.where(checks.c.outcome == str(outcome))
        q = q.order_by(checks.c.window) if limit is None else q.order_by(checks.c.window.desc()).limit(limit)
        with self.engine.connect() as conn:
            found = [_check(r) for r in conn.execute(q).mappings()]
        return found if limit is None else found[::-1]

    def record_event(self, kind: str, detail: dict[str, Any], window: int | None = None,
                     model_version: str | None = None) -> int:
        """Append to the audit trail (``kind``: an :class:`~driftloop.vocabulary.EventKind`); returns
        the event's id."""
        with self.engine.begin() as conn:
            result = conn.execute(events.insert(), {"created_at": utcnow(), "kind": str(kind), "window": window,
                                                    "model_version": model_version,
                                                    "detail": json.dumps(detail, default=str)})
            return int(result.inserted_primary_key[0])

    def events(self, kind: str | Iterable[str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """The audit trail in id order; only events of ``kind`` (one kind, or several) if given;
        only the newest ``limit`` of them if given (still oldest first)."""
        q = sa.select(events)
        if isinstance(kind, str):
            if kind:
                q = q.where(events.c.kind == str(kind))
        elif kind is not None:
            q = q.where(events.c.kind.in_([str(k) for k in kind]))
        q = q.order_by(events.c.id) if limit is None else q.order_by(events.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            found = [dict(r) | {"detail": json.loads(r["detail"])} for r in conn.execute(q).mappings()]
        return found if limit is None else found[::-1]

    # -- retention (monitoring/retention.py decides what goes) -------------------------------
    def checks_of(self, windows: Iterable[int]) -> list[Check]:
        """The checks of ``windows`` (those recorded), in window order."""
        wanted = sorted(set(windows))
        if not wanted:
            return []
        q = sa.select(checks).where(checks.c.window.in_(wanted)).order_by(checks.c.window)
        with self.engine.connect() as conn:
            return [_check(r) for r in conn.execute(q).mappings()]


def _frame(rows: Sequence[Any], request_ids: bool = True) -> pd.DataFrame:
    """``rows`` of :meth:`PredictionStore._joined` as a frame: the base columns, then one column per
    feature. Each JSON column is parsed in one ``json.loads`` of the column as a JSON array (one
    call instead of one per row: the same values); times given as text (SQLite) are parsed as a
    column, to the naive datetimes SQLAlchemy would give."""
    base = ["id", *(["request_id"] if request_ids else []), "created_at", "model_version", "prediction",
            "confidence", "label"]
    if not rows:
        return pd.DataFrame(columns=base)
    values = dict(zip([*base[:-3], "features", *base[-3:]], zip(*rows)))
    created = values["created_at"]
    if isinstance(created[0], str):
        values["created_at"] = pd.to_datetime(list(created), format="ISO8601")
    values["prediction"] = _json_column(values["prediction"])
    values["label"] = _json_column(["null" if label is None else label for label in values["label"]])
    feats = pd.DataFrame(_json_column(values.pop("features")))
    return pd.concat([pd.DataFrame({name: values[name] for name in base}, columns=base), feats], axis=1)


_compact_json = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(..., separators=...) builds one per call


def _same(value: Any) -> Any:
    return value


def log_row_bytes(row: LogRow) -> int:
    """About what a queued :data:`LogRow` costs in memory (its JSON is ASCII: one byte a character)."""
    return LOG_ROW_OVERHEAD_BYTES + len(row[3]) + len(row[4])


def _json_column(texts: Sequence[str]) -> list[Any]:
    """JSON texts (one per row) parsed at once."""
    return json.loads("[" + ",".join(texts) + "]")


def _label(stored: str | None) -> Any:
    return None if stored is None else json.loads(stored)


def _check(row: Any) -> Check:
    out = dict(row)
    out["drifted_features"] = json.loads(out["drifted_features"])
    out["feature_scores"] = json.loads(out["feature_scores"])
    return Check.from_row(out)


def as_utc(value: Any) -> datetime:
    """A timestamp read back from the store as an aware UTC datetime (SQLite returns naive ones)."""
    ts = pd.Timestamp(value).to_pydatetime()
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


def _sqlite_stale(ctx: sa.engine.ExceptionContext) -> None:
    if isinstance(ctx.original_exception, sqlite3.OperationalError):
        message = str(ctx.original_exception).lower()
        if any(marker in message for marker in _SQLITE_STALE):
            ctx.is_disconnect = True


def _sqlite_existing(path: str) -> Any:
    def connect(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, **cparams)

    return connect


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the monitor read while service workers write; NORMAL sync is durable across
    # process crashes (only a power loss can drop the last transactions).
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
