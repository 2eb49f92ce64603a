"""Shared fixtures. Everything a test writes lives under pytest's tmp_path; nothing is
downloaded; real servers are started once per session by the fixtures that need them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


TIERS = ("unit", "http", "servers", "loop")  # one folder each; described in pyproject.toml's markers


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test carries its tier's marker, from the folder it lives in (tests/<tier>/):
    ``pytest -m unit``, ``pytest tests/servers``."""
    root = Path(__file__).parent
    for item in items:
        tier = Path(item.fspath).relative_to(root).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in a tier folder: {sorted(TIERS)}")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DRIFTLOOP_* variable from the caller's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("DRIFTLOOP_"):
            monkeypatch.delenv(key)


def make_settings(root: Path, **overrides: Any):  # noqa: ANN201
    """Settings with the registry, store and reports under ``root``."""
    from driftloop.settings import load_settings

    base: dict[str, Any] = {
        "registry": {"home": str(root / "bentoml")},
        "store": {"url": f"sqlite:///{root / 'driftloop.db'}"},
        # No Evidently workspace unless a test asks (half a second per window): tests/servers/test_workspace.py does
        "monitoring": {"reports_dir": str(root / "reports"), "metrics_port": 0, "workspace": {"enabled": False}},
    }
    for key, value in overrides.items():
        base[key] = base.get(key, {}) | value if isinstance(value, dict) else value
    return load_settings(None, **base)


@pytest.fixture
def settings(tmp_path: Path):  # noqa: ANN201
    return make_settings(tmp_path)


@pytest.fixture(scope="session")
def loans() -> pd.DataFrame:
    """The built-in scenario's default timeline (train, stable, covariate, concept)."""
    from driftloop.training.scenarios import scenario_frame

    return scenario_frame("loans", seed=42)


@pytest.fixture(scope="session")
def champion_home(tmp_path_factory: pytest.TempPathFactory, loans: pd.DataFrame) -> Path:
    """A registry with v1 trained on the scenario's train period and promoted (trained once)."""
    from driftloop.models.registry import Registry
    from driftloop.training.train import train_version

    root = tmp_path_factory.mktemp("champion")
    settings = make_settings(root)
    registry = Registry(settings.registry.home, settings.registry.project)
    result = train_version(settings, loans[loans["period"] == "train"].reset_index(drop=True), registry,
                           trigger="initial")
    registry.promote(result.version.version, actor="test", reason="fixture")
    return root


# -- PostgreSQL: one throw-away server per test session, one database per test -------------------
class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory (``initdb``), on a free port."""

    def __init__(self, bindir: Path) -> None:
        import socket
        import tempfile

        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="driftloop-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # initdb and the server refuse to run as root: run them as the `postgres` user then.
        self.as_user: list[str] = []
        if os.getuid() == 0:
            import pwd
            import shutil

            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.as_user = [shutil.which("runuser") or "runuser", "-u", "postgres", "--"]
        self.admin_url = f"postgresql+psycopg://driftloop@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        import subprocess

        proc = subprocess.run([*self.as_user, *argv], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}{log}")

    def start(self) -> PostgresServer:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "driftloop", "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")
        # Durability off: a test database is thrown away (fsync alone costs seconds per test on a busy disk).
        return self.resume()

    def resume(self) -> PostgresServer:
        """Start the server on its existing data (after :meth:`pause`)."""
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")
        return self

    def pause(self) -> None:
        """Stop the server as an outage would (every connection cut), keeping its data. A fast
        shutdown, not an immediate one: with synchronous_commit off (above) an immediate one
        loses the last commits it acknowledged, which no client could survive."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        import shutil

        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import uuid

        import sqlalchemy as sa

        name = f"t_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        return f"postgresql+psycopg://driftloop@127.0.0.1:{self.port}/{name}"

    def drop_database(self, url: str) -> None:
        import sqlalchemy as sa

        name = url.rsplit("/", 1)[1]
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: Debian's /usr/lib/postgresql/N/bin (newest), else PATH."""
    import shutil

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres():  # noqa: ANN201
    """The session's PostgreSQL server. Without PostgreSQL: skipped, but a failure under CI=true."""
    bindir = postgres_bindir()
    if bindir is None:
        reason = "PostgreSQL is not installed (no initdb): run scripts/system-deps.sh"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer):  # noqa: ANN201
    """A fresh PostgreSQL database for one test, dropped after it."""
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store's URL on each backend: a SQLite file under tmp_path, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sub' / 'store.db'}"
    return request.getfixturevalue("pg_url")
