"""The ``driftloop`` command line: one Typer app; every command takes ``--config``."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from models.errors import DriftloopError

app = typer.Typer(help="driftloop: train, serve, watch, retrain.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
models_app = typer.Typer(help="The model registry: versions and the champion.", no_args_is_help=True)
app.add_typer(models_app, name="models")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (see README).",
                                                   envvar="DRIFTLOOP_CONFIG")]


def _settings(config: Path | None):  # noqa: ANN202
    from driftloop.settings import load_settings

    return load_settings(config)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _registry(settings):  # noqa: ANN001, ANN202
    from models.registry import Registry

    return Registry(settings.registry.home, settings.registry.project)


@app.command()
def train(config: ConfigOpt = None,
          promote: Annotated[bool, typer.Option(help="Make the new version champion (always if there is none).")] = False,
          ) -> None:
    """Train a model on the configured data, export it to ONNX, register it."""
    _logging()
    try:
        from training.train import initial_frame, train_version

        settings = _settings(config)
        registry = _registry(settings)
        champion = registry.champion()
        result = train_version(settings, initial_frame(settings), registry, trigger="manual" if champion else "initial",
                               parent=champion.version if champion else None)
        typer.echo(f"registered {result.version.tag} in {result.seconds:.1f}s")
        for name, value in result.metrics.items():
            typer.echo(f"  {name:<10} {value:.4f}")
        if promote or champion is None:
            registry.promote(result.version.version, actor=_actor(), reason="driftloop train")
            typer.echo(f"champion: {result.version.version}")
    except DriftloopError as exc:
        _fail(exc)


@app.command()
def serve(config: ConfigOpt = None) -> None:
    """Run the BentoML service (``bentoml serve``) in the foreground."""
    from driftloop.launch import service_command, write_config

    try:
        settings = _settings(config)
    except DriftloopError as exc:
        _fail(exc)
    path = write_config(settings, Path(settings.registry.home) / "serve-config.yaml")
    argv, env = service_command(settings, path)
    typer.echo(f"serving {settings.registry.project} on http://{settings.serving.host}:{settings.serving.port}")
    os.execvpe(argv[0], argv, env)


@app.command()
def monitor(config: ConfigOpt = None,
            once: Annotated[bool, typer.Option(help="Check the ready windows once and exit.")] = False) -> None:
    """Run the monitor: scheduled drift and accuracy checks that trigger retraining."""
    _logging()
    from monitoring.metrics import MonitorMetrics
    from monitoring.monitor import Monitor
    from monitoring.scheduler import build_scheduler
    from monitoring.store import PredictionStore

    try:
        settings = _settings(config)
        store = PredictionStore(settings.store.url).create()
        metrics = MonitorMetrics()
        mon = Monitor(settings, store, _registry(settings), metrics=metrics)
        if once:
            checks = mon.run_once()
            typer.echo(f"checked {len(checks)} window(s)")
            raise typer.Exit(1 if any(c["decision"] in ("alert", "retrain") for c in checks) else 0)
        if settings.monitoring.metrics_port:
            metrics.serve(settings.monitoring.metrics_port)
        scheduler = build_scheduler(mon, settings.monitoring.interval_s)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        scheduler.start()
        typer.echo(f"monitoring every {settings.monitoring.interval_s}s; metrics on "
                   f":{settings.monitoring.metrics_port or '-'}; Ctrl-C stops")
        stop.wait()
        scheduler.shutdown(wait=True)
        metrics.stop()
        store.close()
    except DriftloopError as exc:
        _fail(exc)


@app.command()
def demo(workdir: Annotated[Path, typer.Option(help="Where the demo keeps its registry, database and outputs.")]
         = Path("var/demo"),
         config: ConfigOpt = None) -> None:
    """Run the whole loop on the built-in scenario: train, serve, drift, retrain, promote."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # "skipped: already running" while a retrain runs
    from driftloop.demo import run_demo

    try:
        summary = run_demo(workdir, config)
    except DriftloopError as exc:
        _fail(exc)
    closed = summary["promotions"] and summary["requests_rows_failed"] == 0
    raise typer.Exit(0 if closed else 1)


@app.command()
def history(config: ConfigOpt = None,
            events: Annotated[bool, typer.Option(help="Show the audit events instead of the checks.")] = False) -> None:
    """The monitor's checks (one per window) or its audit events."""
    from monitoring.store import PredictionStore

    settings = _settings(config)
    store = PredictionStore(settings.store.url).create()
    if events:
        for e in store.events():
            typer.echo(f"{e['created_at']:%Y-%m-%d %H:%M:%S} {e['kind']:<18} window={e['window']} "
                       f"{json.dumps(e['detail'], default=str)[:160]}")
        return
    for c in store.checks():
        acc = "-" if c["accuracy"] is None else f"{c['accuracy']:.3f}"
        typer.echo(f"window {c['window']:>4} rows={c['rows']} drift={c['drift_share']:.2f} acc={acc} "
                   f"model={c['model_version']} {c['decision']} {c['outcome'] or ''}  {c['reason']}")


@models_app.command("list")
def models_list(config: ConfigOpt = None) -> None:
    """Every version, oldest first; * marks the champion."""
    registry = _registry(_settings(config))
    champion = registry.champion()
    for v in registry.versions():
        mark = "*" if champion and champion.version == v.version else " "
        acc = v.metrics.get("accuracy", v.metrics.get("rmse"))
        typer.echo(f"{mark} {v.version:<6} {v.created_at:%Y-%m-%d %H:%M:%S} {v.metadata.get('kind', ''):<20} "
                   f"{v.metadata.get('trigger', ''):<8} parent={v.metadata.get('parent') or '-':<6} "
                   f"{'' if acc is None else f'{acc:.4f}'}")


@models_app.command("show")
def models_show(version: str, config: ConfigOpt = None) -> None:
    """A version's metadata as JSON."""
    try:
        v = _registry(_settings(config)).get(version)
    except DriftloopError as exc:
        _fail(exc)
    typer.echo(json.dumps({"tag": v.tag, "created_at": str(v.created_at), "path": str(v.path)} | v.metadata,
                          indent=2, default=str))


@models_app.command("promote")
def models_promote(version: str, config: ConfigOpt = None,
                   reason: Annotated[str, typer.Option(help="Why: kept in the history.")] = "manual promotion",
                   ) -> None:
    """Make VERSION the champion (checksums are verified first)."""
    try:
        c = _registry(_settings(config)).promote(version, actor=_actor(), reason=reason)
    except DriftloopError as exc:
        _fail(exc)
    typer.echo(f"champion: {c.version}")


@models_app.command("rollback")
def models_rollback(config: ConfigOpt = None,
                    reason: Annotated[str, typer.Option(help="Why: kept in the history.")] = "manual rollback",
                    ) -> None:
    """Make the previous champion the champion again."""
    try:
        c = _registry(_settings(config)).rollback(actor=_actor(), reason=reason)
    except DriftloopError as exc:
        _fail(exc)
    typer.echo(f"champion: {c.version}")


def _actor() -> str:
    return os.environ.get("DRIFTLOOP_ACTOR") or os.environ.get("USER") or f"uid:{os.getuid()}"


def main() -> None:  # pragma: no cover
    sys.exit(app())
