"""Alembic migrations of the driftloop store (``monitoring/store.py``).

:func:`upgrade` runs them (``PredictionStore.create``, ``driftloop db upgrade``); there is no
``alembic.ini``: the configuration is built here and Alembic runs on the store's own connection,
in one transaction, under a lock, so two processes starting on a fresh database do not both
create it (PostgreSQL: an advisory lock; SQLite: ``BEGIN IMMEDIATE``). PostgreSQL and SQLite
both roll DDL back with the transaction: a failed migration leaves the previous revision.

A database made by ``metadata.create_all`` before migrations existed (tables, no
``alembic_version``) is checked against revision 0001 and stamped with it, then upgraded; one
whose tables do not match is refused with the differences named.

A new revision: ``versions/NNNN_what.py`` with ``down_revision`` the previous one, and its tables
in :data:`SERVICE_PRIVILEGES`.

Two roles on PostgreSQL. The monitor connects as the tables' owner: it migrates, and it alone
writes the checks and the scheduler's tables. The service can connect as a role that may only
do what it does (:data:`SERVICE_PRIVILEGES`, applied by :func:`service_grants`, ``driftloop db
grants``): whoever gets the service's credentials cannot write the scheduler's jobs or leases.
Such a role starts on a store already at the newest revision (:func:`upgrade` only reads the
revision then, no lock, no DDL); on an older one it is refused with what to do.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from driftloop.monitoring.store import PredictionStore

BASELINE = "0001"  # the schema metadata.create_all used to make
LEGACY_TABLES = ("predictions", "feedback", "checks", "events")
# Columns of LEGACY_TABLES added by later revisions (0003, 0004)
ADDED_AFTER_BASELINE = {"checks": {"estimated_accuracy", "rmse", "mae", "champion_rmse", "champion_mae",
                                   "champion_squared_error_std", "unfamiliar_share"}}


# What the service's role may do on each table at the newest revision (PostgreSQL; nothing:
# no privilege at all). It logs predictions, the shadow's answers and feedback, records retrain
# requests and refused promotions as events, reads checks and events (GET /history) and the
# revision (PredictionStore.create). The scheduler's job store and leases are the monitor's.
SERVICE_PRIVILEGES: dict[str, tuple[str, ...]] = {
    "alembic_version": ("SELECT",),
    "predictions": ("SELECT", "INSERT"),
    "feedback": ("SELECT", "INSERT"),
    "shadow_predictions": ("SELECT", "INSERT"),
    "events": ("SELECT", "INSERT"),
    "checks": ("SELECT",),
    "apscheduler_jobs": (),
    "leases": (),
}
SEQUENCES = {"predictions": "predictions_id_seq", "checks": "checks_id_seq", "events": "events_id_seq"}  # SERIAL ids
_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's SQLSTATE


def service_grants(role: str) -> list[str]:
    """The SQL statements that give ``role`` (an existing PostgreSQL role) exactly
    :data:`SERVICE_PRIVILEGES`, taking back whatever else it had on these tables; run them in one
    transaction as the tables' owner, after every upgrade (a new table has no grants)."""
    if not _ROLE.fullmatch(role):
        from driftloop.monitoring.store import StoreError

        raise StoreError(f"role name {role!r}: lower-case letters, digits and _, not starting with a digit")
    quoted = f'"{role}"'
    statements = [f"REVOKE ALL ON {', '.join(SERVICE_PRIVILEGES)} FROM {quoted}",
                  f"REVOKE ALL ON SEQUENCE {', '.join(SEQUENCES.values())} FROM {quoted}"]
    for table, privileges in SERVICE_PRIVILEGES.items():
        if privileges:
            statements.append(f"GRANT {', '.join(privileges)} ON {table} TO {quoted}")
        if "INSERT" in privileges and table in SEQUENCES:  # the next id of a row it inserts
            statements.append(f"GRANT USAGE ON SEQUENCE {SEQUENCES[table]} TO {quoted}")
    return statements


def config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "driftloop.monitoring:migrations")
    return cfg


def head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config()).get_current_head()


def current(store: PredictionStore) -> str | None:
    """The database's revision; None for a database that has never been migrated."""
    with store.engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(store: PredictionStore, revision: str = "head") -> str:
    """Bring the database to ``revision`` (default: the newest); returns the revision reached."""
    from alembic import command
    from alembic.util import CommandError

    from driftloop.monitoring.store import StoreError

    target = head() if revision == "head" else revision
    with _privileged(store, "read the store's schema revision"):
        at = _quiet(lambda: current(store))
    if revision == "head" and at == target:
        return target  # the usual start: nothing to do, no lock taken, no DDL (a restricted role starts)
    cfg = config()
    with _privileged(store, f"migrate the store from revision {at or 'none'} to {target}"), _locked(store) as conn:
        cfg.attributes["connection"] = conn
        _adopt_legacy(conn, cfg)
        try:
            command.upgrade(cfg, revision)
        except CommandError as exc:
            raise StoreError(f"{_safe_url(store)}: cannot upgrade the store to {revision}: {exc} "
                             f"(this driftloop knows revisions up to {head()})") from None
    return target


@contextmanager
def _privileged(store: PredictionStore, what: str) -> Iterator[None]:
    """A PostgreSQL permission error as a :class:`StoreError` that says what to do."""
    from driftloop.monitoring.store import StoreError

    try:
        yield
    except sa.exc.DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        raise StoreError(f"{_safe_url(store)}: this role cannot {what} ({str(exc.orig).strip()}). A restricted "
                         "role (the service's) needs the owner to migrate first and grant it its privileges: "
                         "`driftloop db upgrade`, then `driftloop db grants --service-role NAME`, both with the "
                         "owner's URL") from None


def downgrade(store: PredictionStore, revision: str) -> None:
    from alembic import command

    cfg = config()
    with _locked(store) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _adopt_legacy(conn: sa.Connection, cfg: Any) -> None:
    """Stamp a pre-migration database with the baseline once its tables are checked."""
    from alembic import command

    from driftloop.monitoring.store import StoreError, metadata

    inspector = sa.inspect(conn)
    tables = set(inspector.get_table_names())
    if "alembic_version" in tables or not tables & set(LEGACY_TABLES):
        return
    problems = []
    for name in LEGACY_TABLES:
        if name not in tables:
            problems.append(f"table {name} is missing")
            continue
        have = {c["name"] for c in inspector.get_columns(name)}
        later = ADDED_AFTER_BASELINE.get(name, set())  # added by later revisions: either way is fine
        want = {c.name for c in metadata.tables[name].columns}
        if want - later - have:
            problems.append(f"{name} lacks {', '.join(sorted(want - later - have))}")
        if have - want:
            problems.append(f"{name} has unknown columns {', '.join(sorted(have - want))}")
    if problems:
        raise StoreError("the database has driftloop's tables but no migration history, and they do not match "
                         f"the first revision: {'; '.join(problems)}. Move it aside or fix it by hand.")
    command.stamp(cfg, BASELINE)


@contextmanager
def _locked(store: PredictionStore) -> Iterator[sa.Connection]:
    """A connection in a transaction that no other process can be migrating in at once."""
    from driftloop.monitoring.store import MIGRATION_LOCK

    if store.dialect == "sqlite":
        path = store.engine.url.database
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = sa.create_engine(store.engine.url, poolclass=sa.pool.NullPool, connect_args={"timeout": 60})
        # pysqlite's own transaction handling neither makes DDL transactional nor takes the write
        # lock up front: turn it off and begin with BEGIN IMMEDIATE ourselves.
        sa.event.listen(engine, "connect", _sqlite_migration_connection)
        sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        try:
            with engine.begin() as conn:
                yield conn
        finally:
            engine.dispose()
        return
    with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        yield conn


def _sqlite_migration_connection(dbapi_conn: Any, _: Any) -> None:
    """pysqlite's own transaction handling off (see :func:`_locked`); and incremental auto-vacuum,
    which SQLite takes only before the first table is made (on an older store this does nothing):
    store retention then gives freed pages back to the disk a slice at a time
    (monitoring/retention.py), where a full VACUUM would lock the store for minutes."""
    dbapi_conn.isolation_level = None
    dbapi_conn.execute("PRAGMA auto_vacuum = INCREMENTAL")


def _quiet(read: Any) -> Any:
    try:
        return read()
    except sa.exc.OperationalError:
        return None  # e.g. a SQLite file in a directory that does not exist yet


def _safe_url(store: PredictionStore) -> str:
    return store.engine.url.render_as_string(hide_password=True)
