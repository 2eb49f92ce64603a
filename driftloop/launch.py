"""Starting the real BentoML service as a process: for ``driftloop serve``, the demo and tests.

The service reads the same settings as its launcher: the launcher writes them to a YAML file
and passes its path in ``DRIFTLOOP_CONFIG``. ``BENTOML_HOME`` is a directory of the server's own
(a fresh temporary one): BentoML keeps its multi-process metrics there and clears it when a server
starts, so two servers (replicas sharing one registry volume, tests) must never share it. The
service reads its models from the registry by path (``registry.home``), not from BentoML's home.

Processes: the launcher (``driftloop serve``, a test) starts ``bentoml serve``, BentoML's arbiter
(circus), in a session of its own; the arbiter starts each worker in a session of its own too
(circus calls ``setsid``), so signals to a process group never reach past the process that got
them, and a killed arbiter used to leave its workers serving, orphaned. Each worker therefore
dies with its arbiter (:func:`driftloop.service.lifecycle.die_with_parent`, called in the worker), and the arbiter of
``driftloop serve`` with ``driftloop serve`` (``foreground``). A server's temporary directory
(:func:`run_directory`) is removed when it stops, and by the next start if its owners were killed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from driftloop.service.lifecycle import PR_SET_PDEATHSIG, _prctl
from driftloop.settings import Settings

SERVICE = "driftloop.service.app:Driftloop"
SERVICE_NAME = "driftloop"
RUN_PREFIX = "driftloop-serve-"  # a server's own directory under the temporary directory
OWNER_FILE = "owner.json"  # in it: the host and the pids (launcher, server) it belongs to

log = logging.getLogger("driftloop.launch")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_config(settings: Settings, path: Path) -> Path:
    """The settings as a YAML file a service process can load; tokens are left out (they travel
    in the service's environment, see :func:`service_command`)."""
    data = settings.model_dump(mode="json", exclude={"serving": {"admin_token", "predict_token"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def bentoml_config(settings: Settings) -> dict[str, Any]:
    """The BentoML service configuration driftloop's settings imply.

    BentoML's access log (a log line per request) and OpenTelemetry spans cost about half of a
    worker's time on one-row requests (py-spy, see the serving benchmark); both are off unless
    asked for. Request counts and latencies stay in ``/metrics``.
    """
    config: dict[str, Any] = {"workers": settings.serving.workers,
                              "logging": {"access": {"enabled": settings.serving.access_log}}}
    if not settings.serving.tracing:
        config["tracing"] = {"excluded_urls": [".*"]}
    from driftloop.models.onnx_model import providers_for

    if providers_for(settings.serving.device)[0] == "cuda":  # raises for cuda without a GPU
        config["resources"] = {"gpu": 1}
    return config


def service_command(settings: Settings, config_path: Path,
                    bentoml_home: Path) -> tuple[list[str], dict[str, str]]:
    """argv and environment for ``bentoml serve`` of the driftloop service (``bentoml_home``: the
    server's own BentoML home, in its :func:`run_directory`)."""
    home = Path(bentoml_home).resolve()
    # The file carries the merged settings; other DRIFTLOOP_* variables would only shadow it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_") or k == "DRIFTLOOP_LOG_LEVEL"}
    env.update({
        "DRIFTLOOP_CONFIG": str(Path(config_path).resolve()),
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "DO_NOT_TRACK": "1",
        "BENTOML_CONFIG_OVERRIDES": json.dumps({"services": {SERVICE_NAME: bentoml_config(settings)}}),
    })
    for name in ("admin_token", "predict_token"):
        token = getattr(settings.serving, name)
        if token is not None:
            env[f"DRIFTLOOP_SERVING__{name.upper()}"] = token.get_secret_value()
    bentoml = Path(sys.executable).with_name("bentoml")
    argv = [str(bentoml), "serve", SERVICE, "--host", settings.serving.host, "--port", str(settings.serving.port)]
    return argv, env


def run_directory() -> Path:
    """A fresh directory for one server (its config file and BentoML home), owned by this process
    (:func:`claim_run_directory`). Directories whose owners are all gone, left by killed
    launchers, are removed first (:func:`remove_stale_run_directories`)."""
    remove_stale_run_directories()
    path = Path(tempfile.mkdtemp(prefix=RUN_PREFIX))
    claim_run_directory(path, [os.getpid()])
    return path


def claim_run_directory(path: Path, pids: list[int]) -> None:
    """Record who uses ``path``: it is stale once none of ``pids`` runs on this host."""
    (path / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pids": pids}))


def remove_stale_run_directories(tmp: Path | None = None) -> list[Path]:
    """Remove the run directories under ``tmp`` (default: the temporary directory) whose owners,
    on this host, have all exited; returns them. A directory without a readable owner file (being
    created, or left by an older driftloop, whose server may still use it) is left alone, and so
    is one claimed on another host (another container's pids mean nothing here)."""
    removed = []
    for path in Path(tmp or tempfile.gettempdir()).glob(RUN_PREFIX + "*"):
        try:
            owner = json.loads((path / OWNER_FILE).read_text())
            host, pids = owner["host"], [int(pid) for pid in owner["pids"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if host == socket.gethostname() and not any(_running(pid) for pid in pids):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    """``pid`` runs: a zombie (exited, not yet reaped by whoever inherited it) does not."""
    import psutil  # BentoML's dependency

    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process
        return True


class ServiceProcess:
    """A running ``bentoml serve``; a context manager that stops it gracefully (SIGTERM).

    Its output goes to ``log_path``, or with ``foreground`` to this process's own stdout and
    stderr (``driftloop serve``); else nowhere. ``foreground`` also makes the server stop
    (SIGTERM from the kernel) when this process dies, however it dies: start such a server from
    the main thread (the signal follows the thread that started it). ``config_path``: the
    settings file the server reads; None writes ``settings`` into the server's run directory.
    """

    def __init__(self, settings: Settings, config_path: Path | None = None, log_path: Path | None = None,
                 cwd: Path | None = None, *, foreground: bool = False) -> None:
        self.settings = settings
        self.cwd = cwd  # the server's working directory (default: this process's)
        self.config_path = config_path
        self.log_path = log_path
        self.foreground = foreground
        self.url = f"http://{settings.serving.host}:{settings.serving.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.run_dir: Path | None = None  # see run_directory; removed by stop()
        self.bentoml_home: Path | None = None

    def spawn(self) -> ServiceProcess:
        """Start the server without waiting for it (see :meth:`start`)."""
        self.run_dir = run_directory()
        self.bentoml_home = self.run_dir / "bentoml"
        config_path = self.config_path or write_config(self.settings, self.run_dir / "driftloop.yaml")
        argv, env = service_command(self.settings, config_path, self.bentoml_home)
        output: IO[bytes] | int | None = None if self.foreground else subprocess.DEVNULL
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            output = self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=output, stderr=None if output is None else subprocess.STDOUT,
                                     start_new_session=True, cwd=self.cwd,
                                     preexec_fn=_die_with_launcher() if self.foreground else None)
        claim_run_directory(self.run_dir, [os.getpid(), self.proc.pid])
        return self

    def start(self, ready_timeout: float = 60.0) -> ServiceProcess:
        self.spawn()
        try:
            self.wait_ready(ready_timeout)
        except BaseException:  # never leave a half-started server behind
            self.stop(timeout=10)
            raise
        return self

    def run(self) -> int:
        """Serve until the server exits; returns its exit status (128 + the signal's number if a
        signal ended it). SIGINT and SIGTERM to this process are passed on to the server, SIGHUP
        as SIGTERM (circus reads SIGHUP as "reload"); the server drains and stops."""
        def forward(signum: int, frame: Any) -> None:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

        self.spawn()
        assert self.proc is not None
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            code = self.proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()
        return code if code >= 0 else 128 - code

    def wait_ready(self, timeout: float) -> float:
        """Seconds until every worker serves a model; raises if the process died or time ran out.

        ``/readyz`` answers from whichever worker is up first, so it is followed by the
        ``driftloop_model_workers`` gauge, which counts the workers holding a model.
        """
        started = time.monotonic()
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() - started < timeout:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"the service exited with code {self.proc.returncode}; see {self.log_path}")
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200 and \
                            self.workers_serving(client) >= self.settings.serving.workers:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"the service was not ready within {timeout:.0f}s; see {self.log_path}")

    def workers_serving(self, client: httpx.Client | None = None) -> int:
        """Workers holding a model (all versions together)."""
        return sum(self.workers_by_version(client).values())

    def workers_by_version(self, client: httpx.Client | None = None) -> dict[str, int]:
        text = (client or httpx).get(f"{self.url}/metrics", timeout=5.0).text
        out: dict[str, int] = {}
        for line in text.splitlines():
            if line.startswith("driftloop_model_workers{"):
                version = line.split('model_version="', 1)[1].split('"', 1)[0]
                count = int(float(line.rsplit(" ", 1)[1]))
                if count:
                    out[version] = count
        return out

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, timeout)
        if self._log:
            self._log.close()
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> ServiceProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _die_with_launcher() -> Callable[[], None]:
    """A ``preexec_fn`` giving the server SIGTERM when its launcher (this process) dies; resolved
    here, before the fork, so that the child only makes the call."""
    launcher, prctl = os.getpid(), _prctl()

    def preexec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != launcher:  # died before the call: nobody will send the signal
            os._exit(1)

    return preexec


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM a child started with ``start_new_session=True``; if it has not exited after
    ``timeout`` seconds, SIGKILL its whole process group."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
