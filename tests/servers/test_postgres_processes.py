"""Two ``bentoml serve`` services and two ``driftloop monitor`` processes on one PostgreSQL
database: every prediction logged once, every window checked once with no gap, one active
monitor, and a takeover when the active one is killed (SIGKILL) in the middle of the traffic."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from driftloop.launch import free_port
from driftloop.launch import ServiceProcess, write_config
from driftloop.monitoring.lease import SCHEDULER, read_state
from driftloop.monitoring.store import PredictionStore
from driftloop.training import scenarios

from tests.conftest import make_settings
from tests.servers.test_scheduler import owner_pid, start_monitor
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
WINDOW, LEASE_S, BATCH = 200, 3.0, 10


def send(urls: list[str], rows: list[dict], ids: list[str]) -> None:
    """``rows`` split over the services, two client threads each, ``BATCH`` rows a request."""
    chunks = [rows[i:i + BATCH] for i in range(0, len(rows), BATCH)]
    errors: list[str] = []

    def client(k: int) -> None:
        with httpx.Client(base_url=urls[k % len(urls)], timeout=30) as c:
            for chunk in chunks[k::2 * len(urls)]:
                r = c.post("/predict", json={"rows": chunk})
                if r.status_code != 200:
                    errors.append(r.text)
                else:
                    ids.extend(r.json()["request_ids"])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(2 * len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_two_services_and_two_monitors_share_one_database(pg_url: str, champion_home: Path, loans: pd.DataFrame,
                                                          tmp_path: Path) -> None:
    store = PredictionStore(pg_url).create()
    common = {"store": {"url": pg_url}, "scheduler": {"lease_s": LEASE_S},
              "monitoring": {"interval_s": 0.5, "window_rows": WINDOW, "min_label_coverage": 0.0}}

    def settings_for(name: str, **extra: dict):  # noqa: ANN202
        root = tmp_path / name
        shutil.copytree(champion_home / "bentoml", root / "bentoml")  # BentoML: one server per home
        return make_settings(root, registry={"home": str(root / "bentoml")}, **common, **extra)

    monitor_config = write_config(settings_for("monitor"), tmp_path / "monitor.yaml")
    services = [ServiceProcess(s, write_config(s, tmp_path / f"service-{i}.yaml"), log_path=tmp_path / f"service-{i}.log")
                for i, s in enumerate(settings_for(f"service-{i}", serving={"port": free_port(), "workers": 1})
                                      for i in range(2))]
    monitors = []
    rows = loans[loans["period"] == "stable"][list(scenarios.FEATURES)].head(2000).to_dict(orient="records")
    ids: list[str] = []
    try:
        monitors.append(start_monitor(monitor_config, tmp_path / "monitor-0.log"))
        first = wait_until(lambda: owner_pid(store), timeout=90, what="the first monitor active")
        monitors.append(start_monitor(monitor_config, tmp_path / "monitor-1.log"))
        starting = [threading.Thread(target=s.start, kwargs={"ready_timeout": 120}) for s in services]
        for t in starting:
            t.start()
        for t in starting:
            t.join()
        wait_until(lambda: b"standby" in (tmp_path / "monitor-1.log").read_bytes(), timeout=90,
                   what="the second monitor in standby")
        urls = [s.url for s in services]

        send(urls, rows[:1000], ids)
        wait_until(lambda: len(store.checks()) >= 1000 // WINDOW, timeout=120, what="phase 1 windows checked")
        assert owner_pid(store) == first
        monitors[0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: owner_pid(store) == monitors[1].pid, timeout=3 * LEASE_S, what="the takeover")
        takeover = time.monotonic() - killed
        print(f"takeover after SIGKILL: {takeover:.2f}s (lease {LEASE_S}s)")
        assert takeover < LEASE_S + LEASE_S / 3 + 1.0

        send(urls, rows[1000:], ids)
        wait_until(lambda: len(store.checks()) >= len(rows) // WINDOW, timeout=120, what="phase 2 windows checked")
        for s in services:
            s.stop()  # graceful: the prediction logs are flushed

        # No lost or duplicated prediction rows.
        assert len(ids) == len(set(ids)) == len(rows)
        frame = store.rows_between(0, 10**9)
        assert len(frame) == len(rows) and set(frame["request_id"]) == set(ids)
        # Every window checked once, in order, contiguous: no row skipped, none counted twice.
        checks = store.checks()
        assert [c.window for c in checks] == list(range(len(rows) // WINDOW))
        ordered = sorted(frame["id"])
        for c, start in zip(checks, range(0, len(rows), WINDOW)):
            assert (c.first_id, c.last_id, c.rows) == (ordered[start], ordered[start + WINDOW - 1], WINDOW)
        # One active monitor at a time: the first, then the second after the kill.
        owners = [int(e["detail"]["owner"].split(":")[1]) for e in store.events("scheduler_active")]
        assert owners == [first, monitors[1].pid]
        monitors[1].send_signal(signal.SIGTERM)
        assert monitors[1].wait(60) == 0 and not read_state(store, SCHEDULER).active
    finally:
        for s in services:
            s.stop()
        for p in monitors:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        store.close()
