"""Processes: a server's processes die with whoever started them, and its temporary directory
goes with it (issue 13, part 5).

Under ``driftloop serve`` runs BentoML's arbiter (``bentoml serve``, circus) and under that the
workers, each in a session of its own: a signal to one process group reaches no further, so
without care a killed launcher left an arbiter, or a killed arbiter left workers, serving
orphaned. The first tests run :func:`driftloop.service.lifecycle.die_with_parent` in a bare process started
the way circus starts a worker; the others start real servers and kill them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from driftloop.launch import (OWNER_FILE, RUN_PREFIX, ServiceProcess, claim_run_directory, free_port,
                              remove_stale_run_directories, write_config)

from tests.conftest import make_settings
from tests.waiting import wait_until

# A process started like a BentoML worker (a session of its own) by a parent that does nothing
# else; it notes each SIGTERM in argv[1] and, with argv[2] == "ignore", goes on running.
CHILD = """
import os, signal, sys
from driftloop.service.lifecycle import die_with_parent

def on_term(signum, frame):
    with open(sys.argv[1], "a") as f:
        f.write("SIGTERM\\n")
    if sys.argv[2] != "ignore":
        sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
deathsig = signal.SIGTERM if sys.argv[3] == "signal" else None
die_with_parent(os.getppid(), grace_s=float(sys.argv[4]), poll_s=float(sys.argv[5]), deathsig=deathsig)
print("watching", flush=True)
while True:
    signal.pause()
"""
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], start_new_session=True)
print(child.pid, flush=True)
child.wait()
"""


def running(pid: int) -> bool:
    """``pid`` runs (a zombie, exited but not yet reaped by whoever inherited it, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(("how", "on_term", "grace_s", "poll_s"), [
    pytest.param("signal", "exit", 600.0, 600.0, id="the kernel's parent-death signal",
                 marks=pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")),
    # no signal asked for: the watchdog notices, sends SIGTERM, and when that is ignored exits at the end of the grace
    pytest.param("watchdog", "ignore", 0.5, 0.05, id="the watchdog, then the grace"),
])
def test_a_process_dies_with_its_killed_parent(tmp_path: Path, how: str, on_term: str, grace_s: float,
                                               poll_s: float) -> None:
    marker = tmp_path / "signals"
    child = 0
    with subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(marker), on_term, how, str(grace_s),
                           str(poll_s)], stdout=subprocess.PIPE, start_new_session=True) as parent:
        try:
            assert parent.stdout is not None
            child = int(parent.stdout.readline())
            assert parent.stdout.readline() == b"watching\n"
            assert running(child) and os.getsid(child) == child != os.getsid(parent.pid)  # out of the parent's reach
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait(10)
            # a 600 s poll: only the kernel's signal can stop it in time
            wait_until(lambda: not running(child), f"process {child} to stop after its parent was killed", 10)
            assert marker.read_text() == "SIGTERM\n"  # one SIGTERM: its graceful stop ran, or was asked for
        finally:  # nothing of this test survives it
            if parent.poll() is None:
                os.killpg(parent.pid, signal.SIGKILL)
            if child and running(child):
                os.kill(child, signal.SIGKILL)


def test_stale_run_directories_are_those_whose_owners_are_all_gone(tmp_path: Path) -> None:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()  # its pid runs no more
    dirs = {name: tmp_path / f"{RUN_PREFIX}{name}" for name in ("dead", "alive", "half", "elsewhere", "unclaimed",
                                                                "garbled")}
    for path in dirs.values():
        (path / "bentoml").mkdir(parents=True)
    claim_run_directory(dirs["dead"], [done.pid])
    claim_run_directory(dirs["alive"], [os.getpid()])
    claim_run_directory(dirs["half"], [done.pid, os.getpid()])  # a launcher gone, its server running
    (dirs["elsewhere"] / OWNER_FILE).write_text(f'{{"host": "another-host", "pids": [{done.pid}]}}')
    (dirs["garbled"] / OWNER_FILE).write_text('{"host": 3}')
    assert remove_stale_run_directories(tmp_path) == [dirs["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for n, p in dirs.items() if n != "dead")


# -- real servers ------------------------------------------------------------------------------
@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    """The servers' temporary directory (TMPDIR), short: BentoML puts Unix sockets in it."""
    path = Path(tempfile.mkdtemp(prefix="dl-proc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def server_processes(run_dir: Path) -> list[psutil.Process]:
    """The running processes of the server whose run directory is ``run_dir``: the arbiter and
    every worker (each has its BentoML home in its environment)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("BENTOML_HOME", "").startswith(str(run_dir)) and \
                    proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def serve(root: Path, tmp_dir: Path) -> tuple[subprocess.Popen[bytes], ServiceProcess, Path]:
    """``driftloop serve`` (one worker) in a process group of its own, ready; and its run directory."""
    # The file names another port and two workers: the command line's --port and --workers win
    # (the server would not be found ready on the port waited for otherwise).
    config = write_config(make_settings(root, serving={"port": free_port(), "workers": 2, "drain_s": 0.2}),
                          root / "driftloop.yaml")
    settings = make_settings(root, serving={"port": free_port(), "workers": 1, "drain_s": 0.2})
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")} | {"TMPDIR": str(tmp_dir)}
    before = set(tmp_dir.glob(RUN_PREFIX + "*"))
    with open(root / "serve.log", "wb") as log:
        cli = subprocess.Popen([str(Path(sys.executable).with_name("driftloop")), "serve", "--config", str(config),
                                "--port", str(settings.serving.port), "--workers", "1"],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    service = ServiceProcess(settings, log_path=root / "serve.log")
    service.proc = cli  # what wait_ready watches for an early exit
    try:
        service.wait_ready(60)
    except BaseException:
        os.killpg(cli.pid, signal.SIGTERM)
        cli.wait(30)
        raise
    (run_dir,) = set(tmp_dir.glob(RUN_PREFIX + "*")) - before
    return cli, service, run_dir


@pytest.mark.slow
def test_driftloop_serve_stops_cleanly_and_leaves_no_directory(champion_home: Path, tmp_path: Path,
                                                               tmp_dir: Path) -> None:
    shutil.copytree(champion_home / "bentoml", tmp_path / "bentoml")
    stale, unclaimed = tmp_dir / f"{RUN_PREFIX}killed", tmp_dir / f"{RUN_PREFIX}older"
    stale.mkdir()
    unclaimed.mkdir()
    claim_run_directory(stale, [2**22 + 1])  # above Linux's largest pid: never running
    cli, service, run_dir = serve(tmp_path, tmp_dir)
    processes = server_processes(run_dir)
    arbiter = psutil.Process(cli.pid).children()[0]
    assert {p.pid for p in processes} == {arbiter.pid} | {p.pid for p in arbiter.children()}
    assert len(processes) == 2 and not stale.exists() and unclaimed.exists()  # arbiter + worker; stale one gone
    # sessions of their own: a signal to driftloop serve's group reaches driftloop serve only
    assert len({os.getsid(p.pid) for p in [*processes, psutil.Process(cli.pid)]}) == 3
    cli.send_signal(signal.SIGTERM)
    assert cli.wait(30) == 0
    assert not run_dir.exists() and not server_processes(run_dir) and refused(service.settings.serving.port)


@pytest.mark.slow
@pytest.mark.parametrize("killed", ["driftloop serve", "driftloop serve and the arbiter"])
def test_killing_driftloop_serve_leaves_no_worker(champion_home: Path, tmp_path: Path, tmp_dir: Path,
                                                  killed: str) -> None:
    """``kill -9`` of driftloop serve's group: its arbiter gets SIGTERM from the kernel and stops
    its workers. With the arbiter killed as well, the workers stop on their own (as under a plain
    ``bentoml serve`` whose arbiter is killed)."""
    shutil.copytree(champion_home / "bentoml", tmp_path / "bentoml")
    cli, service, run_dir = serve(tmp_path, tmp_dir)
    processes = server_processes(run_dir)
    assert len(processes) == 2
    arbiter = psutil.Process(cli.pid).children()[0]
    os.killpg(cli.pid, signal.SIGKILL)
    if killed != "driftloop serve":
        os.killpg(arbiter.pid, signal.SIGKILL)
    cli.wait(10)
    wait_until(lambda: not server_processes(run_dir), "every server process to exit", 20)
    wait_until(lambda: refused(service.settings.serving.port), "the port to refuse connections", 5)
    # nobody was left to remove the run directory; the next start does
    assert run_dir.exists() and remove_stale_run_directories(tmp_dir) == [run_dir]
