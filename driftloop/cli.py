"""The ``driftloop`` command line: one Typer app; every command takes ``--config``."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from driftloop.models.errors import DriftloopError
from driftloop.vocabulary import Check, Decision, EventKind, Job, Trigger

app = typer.Typer(help="driftloop: train, serve, watch, retrain.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
models_app = typer.Typer(help="The model registry: versions and the champion.", no_args_is_help=True)
app.add_typer(models_app, name="models")
jobs_app = typer.Typer(help="The monitor's scheduled jobs (kept in the store's database).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
db_app = typer.Typer(help="The store's database: schema migrations, the service's role.", no_args_is_help=True)
app.add_typer(db_app, name="db")
shadow_app = typer.Typer(help="The shadow: a candidate that serving workers score live traffic with beside the "
                              "champion (which still answers).", no_args_is_help=True)
app.add_typer(shadow_app, name="shadow")

def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"driftloop {version('driftloop')}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """driftloop: train, serve, watch, retrain."""


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file (see README).",
                                                   envvar="DRIFTLOOP_CONFIG")]


def _settings(config: Path | None):  # noqa: ANN202
    """The settings of ``--config`` (or DRIFTLOOP_CONFIG); without either, the defaults, and a line
    on stderr saying which project, registry and store they mean (a command that finds nothing
    there should not look like an empty project of one's own)."""
    from driftloop.settings import load_settings

    settings = load_settings(config)
    if config is None:
        typer.secho(f"no --config (nor DRIFTLOOP_CONFIG): the defaults, project {settings.registry.project!r} "
                    f"(data: {settings.data.path or 'the built-in ' + settings.data.scenario + ' scenario'}), "
                    f"registry {settings.registry.home}, store {_safe_url(settings.store.url)}",
                    fg=typer.colors.YELLOW, err=True)
    return settings


def _safe_url(url: str) -> str:
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(an invalid URL)"


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


# Third-party loggers that speak at INFO about their own routine (APScheduler: two lines per job
# run, most of an idle monitor's output; Alembic: a line per migration step at every start).
QUIET_LOGGERS = ("apscheduler", "alembic", "httpx", "urllib3")


def _logging(verbose: bool = False) -> None:
    """driftloop's own lines at INFO (DEBUG with ``verbose``); third parties' at WARNING unless ``verbose``."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def _registry(settings):  # noqa: ANN001, ANN202
    from driftloop.models.registry import Registry

    return Registry(settings.registry.home, settings.registry.project)


@app.command()
def train(config: ConfigOpt = None,
          promote: Annotated[bool, typer.Option(help="Make the new version champion (always if there is none).")] = False,
          ) -> None:
    """Train a model on the configured data, export it to ONNX, register it."""
    logging.basicConfig(level=logging.WARNING, format="  %(message)s")
    logging.getLogger("driftloop.progress").setLevel(logging.INFO)  # a neural fit's epochs
    try:
        from driftloop.training.report import metrics_table
        from driftloop.training.train import initial_frame, report_dir, train_version

        settings = _settings(config)
        registry = _registry(settings)
        champion = registry.champion()
        frame = initial_frame(settings)
        typer.echo(f"training {settings.model.kind} ({settings.task}) on {len(frame)} rows")
        result = train_version(settings, frame, registry, trigger=Trigger.MANUAL if champion else Trigger.INITIAL,
                               parent=champion.version if champion else None,
                               progress=lambda line: typer.echo(f"  {line}"))
        typer.echo(f"registered {result.version.tag} in {result.seconds:.1f}s")
        typer.echo(metrics_table(result.metrics))
        report = report_dir(registry, result.version.version)
        if report.exists():
            typer.echo(f"report: {report}")
        if promote or champion is None:
            registry.promote(result.version.version, actor=_actor(), reason="driftloop train")
            typer.echo(f"champion: {result.version.version}")
    except DriftloopError as exc:
        _fail(exc)


@app.command()
def serve(config: ConfigOpt = None,
          host: Annotated[Optional[str], typer.Option(help="Listen on this address (default: serving.host).")] = None,
          port: Annotated[Optional[int], typer.Option(min=1, max=65535,
                                                      help="Listen on this port (default: serving.port).")] = None,
          workers: Annotated[Optional[int], typer.Option(min=1, max=64,
                                                         help="Worker processes (default: serving.workers).")] = None,
          ) -> None:
    """Run the BentoML service (bentoml serve) in the foreground, until a signal stops it.

    SIGINT/SIGTERM/SIGHUP are passed on and the service drains; if this process is killed, the
    service stops too (see driftloop.launch). Its temporary directory goes with it."""
    from driftloop.launch import ServiceProcess

    try:
        settings = _settings(config)
        given = {key: value for key, value in (("host", host), ("port", port), ("workers", workers)) if value is not None}
        if given:
            settings = settings.model_copy(update={"serving": settings.serving.model_copy(update=given)})
        _port_free(settings.serving.host, settings.serving.port)
    except DriftloopError as exc:
        _fail(exc)
    typer.echo(f"serving {settings.registry.project} on http://{settings.serving.host}:{settings.serving.port} "
               f"({settings.serving.workers} worker{'s' if settings.serving.workers != 1 else ''})")
    raise typer.Exit(ServiceProcess(settings, foreground=True).run())


def _port_free(host: str, port: int) -> None:
    """One line instead of BentoML's traceback when the address is taken (or cannot be had)."""
    import errno
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the server will bind: SO_REUSEADDR ignores connections of a stopped server still in
        # TIME_WAIT, and Linux still refuses a port another socket listens on.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            why = ("is in use (another process listens there): stop it, or choose another with --port or "
                   "serving.port") if exc.errno == errno.EADDRINUSE else f"cannot be used: {exc.strerror}"
            raise DriftloopError(f"serving address {host}:{port} {why}") from None


@app.command()
def monitor(config: ConfigOpt = None,
            once: Annotated[bool, typer.Option(help="Check the ready windows once and exit.")] = False,
            verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                                  help="Debug lines, and APScheduler's and Alembic's own.")] = False,
            ) -> None:
    """Run the monitor: scheduled drift and accuracy checks that trigger retraining."""
    _logging(verbose)
    from driftloop.monitoring.metrics import MonitorMetrics
    from driftloop.monitoring.monitor import Monitor
    from driftloop.monitoring.scheduler import ActiveScheduler, exclusive_retrainer
    from driftloop.monitoring.store import PredictionStore
    from driftloop.training.retrain import retrain

    try:
        settings = _settings(config)
        store = PredictionStore(settings.store.url).create()
        metrics = MonitorMetrics()
        registry = _registry(settings)
        retrainer = exclusive_retrainer(retrain, store, settings.scheduler.lease_s)

        def make_monitor() -> Monitor:
            return Monitor(settings, store, registry, metrics=metrics, retrainer=retrainer)

        if once:
            checks = make_monitor().run_once()
            typer.echo(f"checked {len(checks)} window(s)")
            raise typer.Exit(1 if any(c.decision in (Decision.ALERT, Decision.RETRAIN) for c in checks) else 0)
        if settings.monitoring.metrics_port:
            metrics.serve(settings.monitoring.metrics_port, settings.monitoring.metrics_host)
        active = ActiveScheduler(store, make_monitor, settings.monitoring.interval_s, settings.scheduler.lease_s)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        typer.echo(f"monitoring every {settings.monitoring.interval_s}s as {active.lease.owner} (one active monitor "
                   f"per database; lease {settings.scheduler.lease_s:g}s); metrics on "
                   f":{settings.monitoring.metrics_port or '-'}; Ctrl-C stops")
        active.run(stop)
        metrics.stop()
        store.close()
    except DriftloopError as exc:
        _fail(exc)


@contextmanager
def _store(config: Path | None, migrate: bool = True):  # noqa: ANN202
    """The configured store (migrated to the newest revision unless ``migrate`` is False), closed after."""
    from driftloop.monitoring.store import PredictionStore

    store = PredictionStore(_settings(config).store.url)
    try:
        yield store.create() if migrate else store
    finally:
        store.close()


@jobs_app.command("list")
def jobs_list(config: ConfigOpt = None) -> None:
    """Every job, its schedule and next run; and which monitor is active."""
    from driftloop.adapters.apscheduler import describe_trigger
    from driftloop.monitoring.lease import SCHEDULER, read_state
    from driftloop.monitoring.scheduler import list_jobs

    try:
        with _store(config) as store:
            jobs = list_jobs(store)
            lease = read_state(store, SCHEDULER)
    except DriftloopError as exc:
        _fail(exc)
    if not jobs:
        typer.echo("no jobs yet: `driftloop monitor` adds them on its first start")
    for job in jobs:
        when = "paused" if job.next_run_time is None else f"next {job.next_run_time:%Y-%m-%d %H:%M:%S %Z}"
        typer.echo(f"{job.id:<16} {when:<30} {describe_trigger(job.trigger):<28} {job.name}")
    if lease.active:
        typer.echo(f"active monitor: {lease.owner} (lease epoch {lease.epoch}, {lease.expires_in_s:.1f}s left)")
    else:
        typer.echo("active monitor: none (jobs run when `driftloop monitor` starts)")


JobName = Annotated[str, typer.Argument(metavar="NAME", help="The job: " + "; ".join(
    f"{job.value}: {job.describe}" for job in Job) + ".")]


@jobs_app.command("pause")
def jobs_pause(name: JobName, config: ConfigOpt = None) -> None:
    """Stop running NAME until it is resumed (kept across monitor restarts)."""
    _job_command("pause", name, config)


@jobs_app.command("resume")
def jobs_resume(name: JobName, config: ConfigOpt = None) -> None:
    """Run NAME on its schedule again."""
    _job_command("resume", name, config)


@jobs_app.command("run")
def jobs_run(name: JobName, config: ConfigOpt = None) -> None:
    """Make NAME due now: the active monitor runs it within scheduler.lease_s / 3 seconds."""
    _job_command("run", name, config)


def _job_command(action: str, name: str, config: Path | None) -> None:
    from driftloop.monitoring import scheduler as sched

    do = {"pause": sched.pause_job, "resume": sched.resume_job, "run": sched.run_job_now}[action]
    try:
        with _store(config) as store:
            job = do(store, name)
            store.record_event(EventKind.job(action), {"job": name, "actor": _actor()})
    except DriftloopError as exc:
        _fail(exc)
    when = "paused" if job.next_run_time is None else f"next run {job.next_run_time:%Y-%m-%d %H:%M:%S %Z}"
    typer.echo(f"{name}: {when}")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None,
               revision: Annotated[str, typer.Option(help="Target revision.")] = "head") -> None:
    """Create the store's tables or migrate them to REVISION (the newest by default)."""
    from driftloop.monitoring import migrations

    try:
        with _store(config, migrate=False) as store:
            before = migrations.current(store)
            after = migrations.upgrade(store, revision)
    except DriftloopError as exc:
        _fail(exc)
    typer.echo(f"store at revision {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@db_app.command("current")
def db_current(config: ConfigOpt = None) -> None:
    """The store's schema revision and the newest this driftloop knows."""
    from driftloop.monitoring import migrations

    try:
        with _store(config, migrate=False) as store:
            typer.echo(f"revision {migrations.current(store) or 'none'} (newest: {migrations.head()})")
    except DriftloopError as exc:
        _fail(exc)


@db_app.command("prune")
def db_prune(config: ConfigOpt = None,
             dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would go; delete and write "
                                                                     "nothing.")] = False,
             vacuum: Annotated[bool, typer.Option("--vacuum", help="SQLite: then VACUUM, giving the freed space "
                                                                   "back to the disk. It locks the store while it "
                                                                   "runs: the service's writes wait.")] = False,
             ) -> None:
    """Delete what monitoring.retention no longer keeps, as the monitor's store_retention job does:
    old prediction-log rows (archived first with archive_dir), checks, events, HTML reports and
    Evidently snapshots; never what the monitor still needs (README "Retention")."""
    from driftloop.monitoring.retention import prune, vacuum as vacuum_store

    try:
        settings = _settings(config)
        with _store(config) as store:
            result = prune(store, settings, dry_run=dry_run)
            if not dry_run and (result.total or result.archived):
                store.record_event(EventKind.STORE_PRUNED, result.to_dict() | {"actor": _actor()})
            freed = vacuum_store(store) if vacuum and not dry_run else None
    except DriftloopError as exc:
        _fail(exc)
    typer.echo(result.describe())
    if vacuum and not dry_run:
        typer.echo("vacuum: PostgreSQL's autovacuum reuses the space; nothing to do" if freed is None
                   else f"vacuum: {freed / 1e6:.1f} MB given back to the disk")


@db_app.command("grants")
def db_grants(service_role: Annotated[str, typer.Option(help="The service's PostgreSQL role (it must exist).")],
              config: ConfigOpt = None,
              apply: Annotated[bool, typer.Option(help="Run them on the configured store (the owner's URL) "
                                                       "instead of printing them.")] = False) -> None:
    """The SQL that lets SERVICE_ROLE do only what the service does (PostgreSQL): log predictions,
    shadow answers, feedback and events, read checks and events; nothing on the scheduler's jobs or
    leases. Run as the tables' owner after every "driftloop db upgrade":
    driftloop db grants --service-role NAME | psql OWNER_URL (or add --apply)."""
    import sqlalchemy as sa

    from driftloop.monitoring import migrations

    try:
        statements = migrations.service_grants(service_role)
        if apply:
            with _store(config) as store:
                if store.dialect != "postgresql":
                    raise DriftloopError(f"the store is {store.dialect}: roles and grants are PostgreSQL's")
                with store.engine.begin() as conn:
                    for statement in statements:
                        conn.exec_driver_sql(statement)
    except DriftloopError as exc:
        _fail(exc)
    except sa.exc.DBAPIError as exc:  # no such role, not the tables' owner: nothing was granted
        _fail(DriftloopError(f"cannot grant {service_role} its privileges: {str(exc.orig).strip()}"))
    if apply:
        typer.echo(f"{service_role}: privileges of the service granted ({len(statements)} statements)")
        return
    typer.echo(f"-- what the service's role may do on the store at revision {migrations.head()} "
               "(driftloop db grants)\nBEGIN;\n" + "".join(f"{statement};\n" for statement in statements) + "COMMIT;")


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
def predict(source: Annotated[Path, typer.Argument(help="A CSV or Parquet file with the model's feature columns "
                                                       "(other columns pass through).")],
            out: Annotated[Path, typer.Option("--out", "-o", help="Where the scored rows go (.csv or .parquet).")],
            config: ConfigOpt = None,
            version: Annotated[Optional[str], typer.Option(help="Score with this version (default: the "
                                                                "champion).")] = None,
            log: Annotated[bool, typer.Option("--log/--no-log", help="Write the rows to the prediction log, "
                                              "monitored like live traffic (request ids in the output).")] = False,
            ) -> None:
    """Score a file offline with the champion's ONNX graph: the same validation as POST /predict."""
    from driftloop.service.batch import score_file

    try:
        result = score_file(_settings(config), source, out, log=log, version=version)
    except DriftloopError as exc:
        _fail(exc)
    typer.echo(f"scored {result.rows} rows with {result.model_version} in {result.seconds:.1f}s -> {result.out}"
               + (f"; {result.logged} rows in the prediction log" if log else ""))


@app.command()
def history(config: ConfigOpt = None,
            events: Annotated[bool, typer.Option(help="Show the audit events instead of the checks.")] = False,
            limit: Annotated[int, typer.Option(min=1, help="The newest N (oldest first).")] = 100,
            as_json: Annotated[bool, typer.Option("--json", help="One JSON document, as GET /history "
                                                  "answers.")] = False) -> None:
    """The monitor's checks (one per window: figures, decision, why) or its audit events."""
    from driftloop.models.files import jsonable
    from driftloop.monitoring.store import PredictionStore

    settings = _settings(config)
    store = PredictionStore(settings.store.url).create()
    if events:
        records = store.events(limit=limit)
        if as_json:
            typer.echo(json.dumps({"events": jsonable(records)}, indent=2))
            return
        for e in records:
            typer.echo(_event_line(e))
        return
    checks = store.checks(limit=limit)
    if as_json:
        typer.echo(json.dumps({"checks": jsonable([c.to_dict() for c in checks])}, indent=2))
        return
    for c in checks:  # the reason whole, waiting reasons included
        outside = "-" if c.unfamiliar_share is None else f"{c.unfamiliar_share:.1%}"  # outside training ranges
        typer.echo(f"window {c.window:>4} rows={c.rows} drift={c.drift_share:.2f} outside={outside} "
                   f"{_performance(c, settings.task)} "
                   f"model={c.model_version} {c.decision} {c.outcome or ''}  {c.reason}")


def _performance(check: Check, task: str) -> str:
    """A check's figures on its labelled rows: ``acc=``, or a regressor's ``rmse= mae=`` ("-": no labels)."""
    def shown(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    if task == "regression":
        return f"rmse={shown(check.rmse, '.4g')} mae={shown(check.mae, '.4g')}"
    return f"acc={shown(check.accuracy, '.3f')}"


# Shown first, as key=value, when an event has them: what a retrain was and where it belongs
# (a follow-up's series and step, monitoring/follow_up.py); the rest follows as JSON.
EVENT_HEADLINE = ("trigger", "series", "step", "labelled", "candidate", "series_ended")


def _event_line(event: dict[str, Any]) -> str:
    """One audit event on one line: time, kind, window, its headline fields, then the rest of its detail."""
    detail = event["detail"]
    shown = [k for k in EVENT_HEADLINE if detail.get(k) is not None]
    head = " ".join(f"{k}={detail[k]}" if k != "series_ended" else f"series ended ({detail[k]})" for k in shown)
    rest = json.dumps({k: v for k, v in detail.items() if k not in shown}, default=str)  # whole: why a retrain waits
    return (f"{event['created_at']:%Y-%m-%d %H:%M:%S} {event['kind']:<20} window={event['window']} "
            f"{head + ' ' if head else ''}{rest}")


@app.command()
def bench(rows: Annotated[int, typer.Option(min=10, help="Training rows per model.")] = 3000,
          kinds: Annotated[Optional[str], typer.Option(help="Comma-separated kinds (default: every family).")] = None,
          repeats: Annotated[int, typer.Option(min=1, help="Timed one-row calls; the batch gets a fifth.")] = 50,
          batch: Annotated[int, typer.Option(min=1, help="Rows of the batch (and held-out rows for parity).")]
          = 1024,
          quick: Annotated[bool, typer.Option("--quick", help="Fewer epochs for the neural kinds.")] = False,
          json_file: Annotated[Optional[Path], typer.Option("--json", help="Write every figure to this file.")]
          = None) -> None:
    """Benchmark every model family: training time, ONNX size, latency (native vs onnxruntime), parity."""
    logging.basicConfig(level=logging.WARNING)
    from driftloop.training.benchmark import run_benchmark

    names = [k.strip() for k in kinds.split(",") if k.strip()] if kinds else None
    try:
        result = run_benchmark(rows=rows, kinds=names, repeats=repeats, batch=batch, quick=quick,
                               progress=lambda line: typer.echo(f"  {line}", err=True))
    except DriftloopError as exc:
        _fail(exc)
    typer.echo(result.table())
    if json_file is not None:
        typer.echo(f"figures: {result.write_json(json_file)}")
    raise typer.Exit(1 if any(not r.ok for r in result.results) else 0)


@models_app.command("list")
def models_list(config: ConfigOpt = None) -> None:
    """Every version, oldest first; * marks the champion."""
    settings = _settings(config)
    registry = _registry(settings)
    champion = registry.champion()
    versions = registry.versions()
    if not versions:
        typer.echo(f"no versions in project {settings.registry.project!r} (registry {settings.registry.home}): "
                   "driftloop train makes the first")
    for v in versions:
        mark = "*" if champion and champion.version == v.version else " "
        name = next((m for m in ("accuracy", "rmse", "silhouette") if m in v.metrics), None)
        rows = (v.metadata.get("rows") or {}).get("validation")
        figure = "" if name is None else f"{name} {v.metrics[name]:.4f}" + (f" on {rows} validation rows" if rows else "")
        typer.echo(f"{mark} {v.version:<6} {v.created_at:%Y-%m-%d %H:%M:%S} {v.metadata.get('kind', ''):<20} "
                   f"{v.metadata.get('trigger', ''):<9} parent={v.metadata.get('parent') or '-':<6} {figure}")


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
    """Make VERSION the champion (it is loaded first: checksums, the graph, a warm-up run)."""
    try:
        c = _registry(_settings(config)).promote(version, actor=_actor(), reason=reason)
    except DriftloopError as exc:
        _refused(config, version, reason, exc)
        _fail(exc)
    typer.echo(f"champion: {c.version}")


def _refused(config: Path | None, version: str, reason: str, exc: DriftloopError) -> None:
    """A refused promotion into the audit trail, as the service's /admin/promote records it; a store
    that cannot be reached is said, and the refusal stands."""
    from driftloop.vocabulary import EventKind

    try:
        with _store(config) as store:
            store.record_event(EventKind.PROMOTION_REFUSED, {"version": version, "actor": _actor(), "reason": reason,
                                                             "error": str(exc)})
    except Exception as store_exc:  # noqa: BLE001 - the promotion's error is the one to report
        typer.echo(f"(the refusal could not be recorded in the store: {store_exc})", err=True)


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


@models_app.command("diff")
def models_diff(a: Annotated[str, typer.Argument(metavar="V1")], b: Annotated[str, typer.Argument(metavar="V2")],
                config: ConfigOpt = None,
                as_json: Annotated[bool, typer.Option("--json", help="Machine output (JSON).")] = False) -> None:
    """V1 and V2 side by side: metrics with the rows they were measured on (a delta only between
    figures of the same rows; the retrain gate's pair when one was judged against the other),
    model, schema changes and feature importance."""
    try:
        diff = _registry(_settings(config)).diff(a, b)
    except DriftloopError as exc:
        _fail(exc)
    if as_json:
        from driftloop.models.files import jsonable

        typer.echo(json.dumps(jsonable(diff), indent=2, default=str, allow_nan=False))
        return
    for line in _diff_lines(diff):
        typer.echo(line)


@models_app.command("export")
def models_export(version: str, file: Annotated[Path, typer.Argument(help="A .tar.gz, .tgz or .zip to write.")],
                  config: ConfigOpt = None,
                  force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.")] = False) -> None:
    """Write VERSION (verified first) and its metadata to one archive FILE."""
    try:
        registry = _registry(_settings(config))
        path = registry.export(version, file, overwrite=force)
    except DriftloopError as exc:
        _fail(exc)
    typer.echo(f"exported {registry.project}:{version} to {path} ({path.stat().st_size} bytes)")


@models_app.command("import")
def models_import(file: Annotated[Path, typer.Argument(help="An archive written by driftloop models export.")],
                  config: ConfigOpt = None) -> None:
    """Verify every checksum in FILE, then register it as a new version (not promoted)."""
    try:
        mv = _registry(_settings(config)).import_(file, actor=_actor())
    except DriftloopError as exc:
        _fail(exc)
    origin = mv.metadata["imported_from"]
    typer.echo(f"imported {origin['project']}:{origin['version']} (exported {origin['exported_at']}) as {mv.tag}")


@models_app.command("prune")
def models_prune(keep_ancestors: Annotated[int, typer.Option(min=0, help="Earlier champions to keep (rollbacks).")],
                 keep_candidates: Annotated[int, typer.Option(min=0, help="Newest other versions to keep.")],
                 config: ConfigOpt = None,
                 dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be deleted.")] = False,
                 reason: Annotated[str, typer.Option(help="Why: kept in the history.")] = "manual prune",
                 ) -> None:
    """Delete versions that are not the champion, a recent earlier champion or a recent candidate."""
    try:
        registry = _registry(_settings(config))
        plan = registry.retention_plan(keep_ancestors, keep_candidates)
        deleted = registry.prune(keep_ancestors, keep_candidates, dry_run, actor=_actor(), reason=reason)
    except DriftloopError as exc:
        _fail(exc)
    verb = "would delete" if dry_run else "deleted"
    for v in deleted:
        typer.echo(f"{verb} {v:<6} {plan.delete.get(v, '')}")
    for v, why in plan.keep.items():
        typer.echo(f"kept {v:<6} {why}")
    typer.echo(f"{len(deleted)} version(s) {'would be ' if dry_run else ''}deleted")


@shadow_app.command("show")
def shadow_show(config: ConfigOpt = None) -> None:
    """The shadow version, when it was set, by whom and why ("no shadow" if none)."""
    try:
        s = _registry(_settings(config)).shadow()
    except DriftloopError as exc:
        _fail(exc)
    typer.echo("no shadow" if s is None else f"shadow: {s.version}, {s.role} (set {s.set_at} by {s.actor}: {s.reason})")


@shadow_app.command("set")
def shadow_set(version: str, config: ConfigOpt = None,
               reason: Annotated[str, typer.Option(help="Why: kept in the history.")] = "manual shadow",
               ) -> None:
    """Score live traffic with VERSION beside the champion (checksums are verified first)."""
    try:
        s = _registry(_settings(config)).set_shadow(version, actor=_actor(), reason=reason)
    except DriftloopError as exc:
        _fail(exc)
    typer.echo(f"shadow: {s.version}")


@shadow_app.command("clear")
def shadow_clear(config: ConfigOpt = None,
                 reason: Annotated[str, typer.Option(help="Why: kept in the history.")] = "manual clear",
                 ) -> None:
    """Stop scoring with the shadow (nothing to do if there is none)."""
    try:
        s = _registry(_settings(config)).clear_shadow(actor=_actor(), reason=reason)
    except DriftloopError as exc:
        _fail(exc)
    typer.echo("no shadow" if s is None else f"shadow cleared (was {s.version})")


def _diff_lines(diff: dict) -> list[str]:
    """The diff as an aligned table: the rows each side's metrics were measured on, one row per
    metric with its set and rows (a delta only between figures of the same rows), the gate's pair
    when one side was judged against the other, then each field, schema change and feature."""
    rows: list[tuple[str, ...]] = [("", diff["a"], diff["b"], "delta")]
    rows += _evaluation_rows(diff)
    rows += _gate_rows(diff)
    rows.append(("model",))
    for f in diff["fields"]:
        a, b = (_cell(x, field=f["name"]) for x in (f["a"], f["b"]))
        rows.append((f"  {f['name'].replace('_', ' ')}", a, b, "" if f["same"] else "changed"))
    schema = diff["schema"]
    rows.append(("schema",) if not schema["same"] else ("schema", "", "", "identical"))
    rows += [(f"  {f['name'].replace('_', ' ')}", _cell(f["a"]), _cell(f["b"]), "changed") for f in schema["fields"]]
    rows += [(f"  {f['name']}", "-", f["kind"], "added") for f in schema["features_added"]]
    rows += [(f"  {f['name']}", f["kind"], "-", "removed") for f in schema["features_removed"]]
    for f in schema["features_changed"]:
        if "kind" in f:
            rows.append((f"  {f['name']}", f["kind"]["a"], f["kind"]["b"], "kind"))
        elif "range" in f:
            rows.append((f"  {f['name']}", *(_range(f["range"][k]) for k in "ab"), "range"))
        else:
            plus, minus = f["categories_added"], f["categories_removed"]
            change = " ".join([*(f"+{c}" for c in plus[:6]), *(f"-{c}" for c in minus[:6])])
            more = len(plus) + len(minus) - min(len(plus), 6) - min(len(minus), 6)
            rows.append((f"  {f['name']}", "categorical", "categorical", change + (f" (+{more} more)" if more else "")))
    if diff["importance"] is not None:
        rows.append(("importance",))
        rows += [(f"  {m['name']}", _cell(m["a"]), _cell(m["b"]), _delta(m["delta"])) for m in diff["importance"]]
    elif diff["importance_recorded"]:
        rows.append(("importance", "", "", f"recorded for {', '.join(diff['importance_recorded'])} only"))
    widths = [max(len(r[i]) for r in rows if len(r) > 1) for i in range(4)]  # one-cell rows: headings
    return [("  ".join(c.ljust(w) for c, w in zip(r, widths))).rstrip() if len(r) > 1 else r[0] for r in rows]


def _evaluation_rows(diff: dict) -> list[tuple[str, ...]]:
    """What each side's metrics were measured on, then the metrics: "not comparable (why)" in place
    of a delta unless both are of the same rows."""
    ev = diff["evaluation"]
    rows: list[tuple[str, ...]] = [("metrics, each measured on",)]
    for side in "ab":
        e = ev[side]
        rows.append((f"  {diff[side]}: {e.get('description') or e.get('set')}{_fingerprint(e.get('fingerprint'))}",))
    rows.append(("  the same rows: the deltas compare them" if ev["same_rows"]
                 else f"  {ev['why']}: the two sides' figures do not compare, so no delta",))
    for m in diff["metrics"]:
        name = m["name"] + (f" ({m['average']})" if m["average"] else "")
        # averages that differ: each side's in its cell
        averages = {side: None if m["average"] else (ev[side].get("averages") or {}).get(m["name"]) for side in "ab"}
        cells = [_figure(m[side], m["set"][side], m["rows"][side], averages[side]) for side in "ab"]
        both = m["a"] is not None and m["b"] is not None
        rows.append((f"  {name}", *cells, _delta(m["delta"]) if m["comparable"] or not both
                     else f"not comparable ({m['why']})"))
    return rows


def _gate_rows(diff: dict) -> list[tuple[str, ...]]:
    """The retrain gate's pair, when one side was judged against the other on the same rows."""
    gate = diff.get("gate")
    if gate is None:
        return []
    rows: list[tuple[str, ...]] = [(f"gate: {gate['candidate']} judged against {gate['champion']} on the same rows, "
                                    f"{gate['description']}{_fingerprint(gate.get('fingerprint'))}",)]
    what = f"{gate['set']}, importance-weighted" if gate["weighted"] else gate["set"]
    for m in gate["metrics"]:
        name = m["name"] + (f" ({m['average']})" if m["average"] else "")
        rows.append((f"  {name}", *(_figure(m[side], what, gate["rows"]) for side in "ab"), _delta(m["delta"])))
    guard = gate.get("guard")
    if guard is not None:
        cells = (_figure(guard[side], "guard", guard["rows"]) for side in "ab")
        rows.append((f"  {guard['metric']}, guard set", *cells, _delta(guard["delta"])))
    return rows


def _fingerprint(digest: str | None) -> str:
    return f"; fingerprint {digest[:12]}" if digest else ""  # a sha256 prefix; --json has it whole


def _figure(value: object, on: str | None, rows: int | None, average: str | None = None) -> str:
    """A metric with the set and rows it was measured on: ``0.9123 (validation, 84 rows)``."""
    if value is None:
        return "-"
    where = ", ".join(x for x in (on, None if rows is None else f"{rows} rows", average) if x)
    return f"{_cell(value)} ({where})" if where else _cell(value)


def _cell(value: object, field: str = "") -> str:
    if value is None or value == [] or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if field == "data_fingerprint" and isinstance(value, str):
        return value[:12]  # a sha256 prefix; --json has it whole
    if field == "time_range" and isinstance(value, list) and len(value) == 2:
        return f"{value[0]} .. {value[1]}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _delta(value: float | None) -> str:
    return "" if value is None else f"{value:+.4f}"


def _range(bounds: list) -> str:
    def num(x: object) -> str:
        return "?" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)

    return f"numeric {num(bounds[0])} .. {num(bounds[1])}"


def _actor() -> str:
    return os.environ.get("DRIFTLOOP_ACTOR") or os.environ.get("USER") or f"uid:{os.getuid()}"


def main() -> None:  # pragma: no cover
    sys.exit(app())
