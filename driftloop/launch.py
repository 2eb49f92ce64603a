"""Starting the real BentoML service as a process: for ``driftloop serve``, the demo and tests.

The service reads the same settings as its launcher: the launcher writes them to a YAML file
and passes its path in ``DRIFTLOOP_CONFIG``. ``BENTOML_HOME`` is a directory of the server's own
(a fresh temporary one): BentoML keeps its multi-process metrics there and clears it when a server
starts, so two servers (replicas sharing one registry volume, tests) must never share it. The
service reads its models from the registry by path (``registry.home``), not from BentoML's home.
"""

from __future__ import annotations

import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx
import yaml

from driftloop.settings import Settings

SERVICE = "driftloop.service.app:Driftloop"
SERVICE_NAME = "driftloop"


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
                    bentoml_home: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment for ``bentoml serve`` of the driftloop service (``bentoml_home``: the
    server's own BentoML home; a fresh temporary directory if not given)."""
    home = Path(bentoml_home or tempfile.mkdtemp(prefix="driftloop-serve-")).resolve()
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


class ServiceProcess:
    """A running ``bentoml serve``; a context manager that stops it gracefully (SIGTERM)."""

    def __init__(self, settings: Settings, config_path: Path, log_path: Path | None = None,
                 cwd: Path | None = None) -> None:
        self.settings = settings
        self.cwd = cwd  # the server's working directory (default: this process's)
        self.config_path = config_path
        self.log_path = log_path
        self.url = f"http://{settings.serving.host}:{settings.serving.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.bentoml_home: Path | None = None

    def start(self, ready_timeout: float = 60.0) -> ServiceProcess:
        self.bentoml_home = Path(tempfile.mkdtemp(prefix="driftloop-serve-"))
        argv, env = service_command(self.settings, self.config_path, self.bentoml_home)
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=self.cwd)
        try:
            self.wait_ready(ready_timeout)
        except BaseException:  # never leave a half-started server behind
            self.stop(timeout=10)
            raise
        return self

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
        if self.bentoml_home is not None:
            shutil.rmtree(self.bentoml_home, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> ServiceProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


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
