"""Leases: a named lock in the store's database that at most one process holds at a time.

A lease is a row of ``leases``: its holder (``host:pid:nonce``) and when it expires, by the
database's clock (so the hosts' clocks do not matter). Taking it is one conditional UPDATE
("mine, free or expired" -> mine until now + ``ttl_s``), atomic on PostgreSQL (row lock, the
condition re-checked after waiting) and on SQLite (one writer). The holder renews it every
``ttl_s / 3``; a holder that dies stops renewing and another takes over once it expires, within
``ttl_s`` plus one poll. ``epoch`` grows by one at every change of holder: a fencing token
(events record it). Works the same on SQLite and PostgreSQL; nothing depends on a connection
staying open, so it survives connection pools and restarts of the database server.

A holder also keeps a local deadline: the monotonic time of the last successful renewal's
start plus ``ttl_s * SAFETY``. Past it, :attr:`held` is False even if the database could not
be asked (a partition), so a cut-off holder stops before the lease can be taken from it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from driftloop.monitoring.store import PredictionStore, StoreError, leases

log = logging.getLogger("driftloop.lease")
SAFETY = 0.8  # share of ttl_s a holder trusts a renewal for (the rest absorbs delays and clock rate)
SCHEDULER = "scheduler"
RETRAIN = "retrain"


@dataclass(frozen=True)
class LeaseState:
    name: str
    owner: str | None  # None: free
    epoch: int
    expires_in_s: float  # negative: expired
    acquired_at: float | None  # epoch seconds, the database's clock

    @property
    def active(self) -> bool:
        return self.owner is not None and self.expires_in_s > 0


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(self, store: PredictionStore, name: str, ttl_s: float, owner: str | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.store = store
        self.name = name
        self.ttl_s = ttl_s
        self.owner = owner or new_owner()
        self.epoch: int | None = None
        self._deadline = 0.0  # monotonic
        self._now = _db_now(store.dialect)

    @property
    def held(self) -> bool:
        """Held by us and renewed recently enough (local view: no database round trip)."""
        return time.monotonic() < self._deadline

    def acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours; extend it. True if ours now."""
        self._ensure_row()
        now = self._now
        ours = leases.c.owner == self.owner
        stmt = (leases.update()
                .where(leases.c.name == self.name, sa.or_(ours, leases.c.owner.is_(None), leases.c.expires_at < now))
                .values(owner=self.owner, expires_at=now + self.ttl_s,
                        epoch=sa.case((ours, leases.c.epoch), else_=leases.c.epoch + 1),
                        acquired_at=sa.case((ours, leases.c.acquired_at), else_=now)))
        return self._write(stmt)

    def renew(self) -> bool:
        """Extend our lease; False if someone else holds it now (we lost it)."""
        stmt = (leases.update().where(leases.c.name == self.name, leases.c.owner == self.owner)
                .values(expires_at=self._now + self.ttl_s))
        return self._write(stmt)

    def release(self) -> None:
        """Give it up at once (a clean stop): a standby takes over on its next poll."""
        self._deadline = 0.0
        with self.store.engine.begin() as conn:
            self._bound_waits(conn)
            conn.execute(leases.update().where(leases.c.name == self.name, leases.c.owner == self.owner)
                         .values(owner=None, expires_at=0.0))

    def state(self) -> LeaseState:
        return read_state(self.store, self.name)

    def _write(self, stmt: sa.Update) -> bool:
        started = time.monotonic()
        with self.store.engine.begin() as conn:
            self._bound_waits(conn)
            ok = conn.execute(stmt).rowcount == 1
            if ok:
                self.epoch = int(conn.execute(sa.select(leases.c.epoch).where(leases.c.name == self.name)).scalar_one())
        self._deadline = started + self.ttl_s * SAFETY if ok else 0.0
        return ok

    def _bound_waits(self, conn: sa.Connection) -> None:
        """A lease write waits for a lock no longer than a renewal interval (PostgreSQL): a holder
        whose renewal is stuck behind someone else's lock gets an error, keeps trying until its
        deadline and stops then, instead of waiting past it while still counting as the holder."""
        if self.store.dialect == "postgresql":
            ms = str(max(int(self.ttl_s / 3 * 1000), 100))
            conn.execute(sa.text("SELECT set_config('lock_timeout', :ms, true), "
                                 "set_config('statement_timeout', :ms, true)"), {"ms": ms})

    def _ensure_row(self) -> None:
        with self.store.engine.begin() as conn:
            self._bound_waits(conn)
            conn.execute(self.store._insert(leases).on_conflict_do_nothing(index_elements=["name"]),
                         {"name": self.name, "owner": None, "epoch": 0, "acquired_at": None, "expires_at": 0.0})


def read_state(store: PredictionStore, name: str) -> LeaseState:
    now = _db_now(store.dialect)
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(leases, (leases.c.expires_at - now).label("left"))
                           .where(leases.c.name == name)).mappings().first()
    if row is None:
        return LeaseState(name, None, 0, 0.0, None)
    return LeaseState(name, row["owner"], int(row["epoch"]), float(row["left"]), row["acquired_at"])


class Heartbeat:
    """Renews a lease every ``ttl_s / 3`` in a thread; ``on_tick`` runs after each renewal,
    ``on_lost`` once when the lease is gone (taken, or not renewed in time)."""

    def __init__(self, lease: Lease, on_tick=lambda: None, on_lost=lambda: None) -> None:  # noqa: ANN001
        self.lease = lease
        self.on_tick = on_tick
        self.on_lost = on_lost
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.name}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease.ttl_s / 3):
            try:
                renewed = self.lease.renew()
            except sa.exc.SQLAlchemyError as exc:  # the database is unreachable: keep trying until the deadline
                log.warning("lease %s: renewal failed: %s", self.lease.name, exc)
                renewed = self.lease.held
            if not renewed or not self.lease.held:
                log.error("lease %s: lost (owner %s)", self.lease.name, self.lease.owner)
                self.lost.set()
                self.on_lost()
                return
            try:
                self.on_tick()
            except Exception:  # noqa: BLE001 - a failing callback must not stop the renewals
                log.exception("lease %s: on_tick failed", self.lease.name)


@contextmanager
def holding(store: PredictionStore, name: str, ttl_s: float) -> Iterator[Lease]:
    """Hold lease ``name`` for the block (renewed meanwhile), or raise :class:`LeaseBusy` at once."""
    lease = Lease(store, name, ttl_s)
    if not lease.acquire():
        raise LeaseBusy(name, lease.state())
    beat = Heartbeat(lease).start()
    try:
        yield lease
    finally:
        beat.stop()
        lease.release()


class LeaseBusy(StoreError):
    def __init__(self, name: str, state: LeaseState) -> None:
        super().__init__(f"lease {name!r} is held by {state.owner} for {max(state.expires_in_s, 0):.1f}s more")
        self.state = state


def _db_now(dialect: str) -> sa.ColumnElement[float]:
    """Seconds since the epoch by the database's clock."""
    if dialect == "postgresql":
        return sa.literal_column("extract(epoch from clock_timestamp())", sa.Float)
    if dialect == "sqlite":
        return sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)", sa.Float)
    raise StoreError(f"leases need SQLite or PostgreSQL, not {dialect!r}")
