"""The demo: the whole loop on the built-in ``loans`` scenario, with real parts.

train v1 -> ``bentoml serve`` (2 workers) + the monitor's scheduler -> replay the scenario's
live periods as HTTP requests (labels follow later through /feedback) -> the monitor detects
the covariate shift and the concept change, retrains, the gate promotes, every worker swaps
-> a table per window, a summary, a PNG plot and the detecting check's Evidently report.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from driftloop.launch import ServiceProcess, free_port, write_config
from driftloop.settings import Settings, load_settings
from driftloop.models.registry import Registry
from driftloop.monitoring.metrics import MonitorMetrics
from driftloop.monitoring.monitor import Monitor
from driftloop.monitoring.scheduler import build_scheduler
from driftloop.monitoring.store import PredictionStore
from driftloop.training import scenarios
from driftloop.training.train import train_version
from driftloop.vocabulary import JOB_OUTCOMES, Check, Decision, EventKind, Outcome, Trigger

ALARMS = (Decision.RETRAIN, Decision.ALERT)  # a window that detected a change
FLAGGED = (Decision.WATCH, Decision.ALERT, Decision.RETRAIN)  # marked on the plot
# A retrain's end in the audit trail (the job's outcome, or its failure) -> that outcome
RETRAIN_ENDS = {EventKind.retrain(o): o for o in (*JOB_OUTCOMES, Outcome.FAILED)}


def demo_settings(workdir: Path, config: Path | None = None, **overrides: Any) -> Settings:
    """The demo's settings: everything under ``workdir``, quick monitoring, two workers."""
    defaults: dict[str, Any] = {
        "registry": {"home": str(workdir / "bentoml")},
        "store": {"url": f"sqlite:///{workdir / 'driftloop.db'}"},
        "serving": {"port": free_port(), "workers": 2, "poll_interval_s": 0.25},
        "monitoring": {"interval_s": 0.5, "window_rows": 500, "reports_dir": str(workdir / "reports"),
                       "metrics_port": 0},
    }
    for key, value in overrides.items():
        defaults[key] = defaults.get(key, {}) | value if isinstance(value, dict) else value
    return load_settings(config, **defaults)


@dataclass
class Traffic:
    """What the replay saw: every answer's version, failures, and labels waiting to be sent."""

    sent: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    first_seen: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Replay:
    def __init__(self, url: str, live: pd.DataFrame, features: list[str], target: str, *,
                 batch_rows: int = 25, label_delay_batches: int = 4, concurrency: int = 4,
                 rows_per_second: float = 1000.0) -> None:
        self.url = url
        self.live = live
        self.features = features
        self.target = target
        self.batch_rows = batch_rows
        self.delay = label_delay_batches
        self.concurrency = concurrency
        self.interval = batch_rows / rows_per_second
        self.traffic = Traffic()
        self.client = httpx.Client(base_url=url, timeout=30.0,
                                   limits=httpx.Limits(max_connections=concurrency + 2))
        self._pending: list[list[dict[str, Any]]] = []  # label batches not yet sent, oldest first

    def close(self) -> None:
        self.client.close()

    def _predict(self, batch: pd.DataFrame) -> list[dict[str, Any]]:
        rows = batch[self.features].to_dict(orient="records")
        try:
            resp = self.client.post("/predict", json={"rows": rows})
        except httpx.HTTPError as exc:
            return self._fail(len(rows), f"{type(exc).__name__}: {exc}")
        if resp.status_code != 200:
            return self._fail(len(rows), f"HTTP {resp.status_code}: {resp.text[:200]}")
        body = resp.json()
        with self.traffic.lock:
            self.traffic.sent += len(rows)
            self.traffic.versions[body["model_version"]] += len(rows)
            self.traffic.first_seen.setdefault(body["model_version"], time.time())
        return [{"request_id": rid, "label": int(y)} for rid, y in zip(body["request_ids"], batch[self.target])]

    def _fail(self, n: int, why: str) -> list[dict[str, Any]]:
        with self.traffic.lock:
            self.traffic.failed += n
            self.traffic.failures.append(why)
        return []

    def send_window(self, window: pd.DataFrame) -> None:
        """A window's rows as /predict requests at a fixed rate (open loop, up to ``concurrency``
        in flight); the labels follow a few batches later."""
        batches = [window.iloc[i:i + self.batch_rows] for i in range(0, len(window), self.batch_rows)]
        start = time.monotonic()
        with cf.ThreadPoolExecutor(self.concurrency) as pool:
            futures = []
            for i, batch in enumerate(batches):
                time.sleep(max(0.0, start + i * self.interval - time.monotonic()))  # the offered rate
                futures.append(pool.submit(self._predict, batch))
            for labels in (f.result() for f in futures):
                self._pending.append(labels)
                while len(self._pending) > self.delay:
                    self._send_labels(self._pending.pop(0))

    def flush_labels(self) -> None:
        while self._pending:
            self._send_labels(self._pending.pop(0))

    def _send_labels(self, labels: list[dict[str, Any]]) -> None:
        if not labels:
            return
        resp = self.client.post("/feedback", json={"labels": labels})
        if resp.status_code != 200:
            self._fail(0, f"feedback HTTP {resp.status_code}: {resp.text[:200]}")


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _print_row(check: Check, period: str) -> None:
    drifted = ",".join(check.drifted_features) or "-"
    event = str(check.decision) if check.decision != Decision.NONE else ""
    if check.outcome:
        event += f" -> {check.outcome}"
    print(f"{check.window:>6} {period:<10} {check.rows:>5} {check.drift_share:>6.2f}  "
          f"{drifted[:46]:<46} {_fmt(check.accuracy):>6} {check.labelled / check.rows:>6.0%}  "
          f"{check.model_version:<7} {event}", flush=True)


def run_demo(workdir: Path = Path("var/demo"), config: Path | None = None,
             windows: dict[str, int] | None = None) -> dict[str, Any]:
    """Run the loop end to end; returns the summary (also printed)."""
    t0 = time.time()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    settings = demo_settings(workdir, config)
    window_rows = settings.monitoring.window_rows
    sizes = {"stable": 2, "covariate": 6, "concept": 5} | (windows or {})
    frame = scenarios.generate(scenarios.loans_periods(window=window_rows, **sizes), seed=settings.seed)
    features, target = list(settings.features), settings.data.target
    assert target is not None

    print(f"driftloop demo: scenario 'loans', {window_rows}-row windows: " +
          ", ".join(f"{k} {v}" for k, v in sizes.items()) + f"; work dir {workdir}")
    registry = Registry(settings.registry.home, settings.registry.project)
    first = train_version(settings, frame[frame["period"] == "train"].reset_index(drop=True), registry,
                          trigger=Trigger.INITIAL)
    registry.promote(first.version.version, actor="demo", reason="initial model")
    print(f"trained {first.version.tag} ({settings.model.kind}) in {first.seconds:.1f}s: "
          f"validation accuracy {first.metrics['accuracy']:.3f}; champion")

    store = PredictionStore(settings.store.url).create()
    config_path = write_config(settings, workdir / "driftloop.yaml")
    service = ServiceProcess(settings, config_path, log_path=workdir / "service.log")
    started = time.monotonic()
    service.start()
    print(f"service ready at {service.url} with {settings.serving.workers} workers in "
          f"{time.monotonic() - started:.1f}s")

    live = frame[frame["period"] != "train"].reset_index(drop=True)
    period_of_window = [live["period"].iloc[i] for i in range(0, len(live), window_rows)]
    print(f"{'window':>6} {'period':<10} {'rows':>5} {'drift':>6}  {'drifted features':<46} "
          f"{'acc':>6} {'labels':>6}  {'serving':<7} event")
    checks: list[Check] = []
    monitor = Monitor(settings, store, registry, metrics=MonitorMetrics(),
                      on_check=lambda c: (checks.append(c), _print_row(c, period_of_window[c.window])))
    scheduler = build_scheduler(monitor, settings.monitoring.interval_s)
    scheduler.start()
    replay = Replay(service.url, live, features, target)
    try:
        for w in range(len(period_of_window)):
            replay.send_window(live.iloc[w * window_rows:(w + 1) * window_rows])
            _wait_for(lambda: len(checks) >= w, f"the check of window {w - 1}")  # at most one window ahead
        replay.flush_labels()
        _wait_for(lambda: len(checks) >= len(period_of_window), "the last check")
        scheduler.shutdown(wait=True)  # the run that checked the last window ends (a follow-up may promote)
        final = registry.champion().version
        _wait_for(lambda: service.workers_by_version() == {final: settings.serving.workers},
                  f"every worker serving {final}")
        workers = service.workers_by_version()
    finally:
        replay.close()
        if scheduler.running:
            scheduler.shutdown(wait=True)
        service.stop()
        monitor.flush(timeout=120)  # the reports and snapshots the checks queued, before the summary copies one
    summary = summarize(checks, store, registry, replay.traffic, sizes, workers, time.time() - t0)
    _report(summary, checks, period_of_window, store, workdir)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    store.close()
    return summary


def _wait_for(condition: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f}s")
        time.sleep(0.05)


WATCH_ENDS = (EventKind.WATCH_KEPT, EventKind.WATCH_ROLLED_BACK)


def summarize(checks: list[Check], store: PredictionStore, registry: Registry, traffic: Traffic,
              sizes: dict[str, int], workers: dict[str, int], seconds: float) -> dict[str, Any]:
    onset = {"covariate": sizes["stable"], "concept": sizes["stable"] + sizes["covariate"]}
    retrains = [e for e in store.events() if e["kind"] in RETRAIN_ENDS]
    detections = {}
    for name, start in onset.items():
        end = start + sizes[name]
        hit = next((c for c in checks if start <= c.window < end and c.decision in ALARMS), None)
        early = [c.window for c in checks if c.window < start and c.decision in ALARMS and (name == "covariate")]
        detections[name] = {"onset_window": start, "detected_window": hit.window if hit else None,
                            "delay_windows": (hit.window - start) if hit else None,
                            "signals": hit.reason if hit else None, "alarms_before_onset": early}
    promoted_at = {h["version"]: pd.Timestamp(h["promoted_at"]).timestamp() for h in registry.history()
                   if h["action"] == "promote"}
    promotions = []
    for event in retrains:
        d = event["detail"]
        if event["kind"] == EventKind.RETRAIN_PROMOTED:
            after = next((c for c in checks if c.window > event["window"] and c.model_version == d["candidate"]),
                         None)
            before = next((c for c in checks if c.window == event["window"]), None)
            promotions.append({
                "window": event["window"], "from": d["champion"], "to": d["candidate"],
                "trigger": d.get("trigger") or "",
                "gate": f"{d['metric']} {d['champion_score']:.3f} -> {d['candidate_score']:.3f} "
                        f"on {d['holdout_rows']} held-out rows",
                "accuracy_before": before.accuracy if before else None,
                "accuracy_after": after.accuracy if after else None,
                "first_answer_after_s": round(traffic.first_seen[d["candidate"]] - promoted_at[d["candidate"]], 3)
                if d["candidate"] in traffic.first_seen else None,
            })
    champion = registry.champion()
    return {
        "seconds": round(seconds, 1),
        "requests_rows_served": traffic.sent,
        "requests_rows_failed": traffic.failed,
        "failures": traffic.failures[:5],
        "rows_by_version": dict(traffic.versions),
        "windows_checked": len(checks),
        "detections": detections,
        "retrains": [{"window": e["window"], "outcome": RETRAIN_ENDS[e["kind"]], "trigger": e["detail"].get("trigger"),
                      "reason": e["detail"].get("reason")} for e in retrains],
        "watches": [{"window": e["window"], "kind": e["kind"], "reason": e["detail"].get("reason")}
                    for e in store.events() if e["kind"] in WATCH_ENDS],
        "promotions": promotions,
        "final_champion": champion.version if champion else None,
        "workers_by_version": workers,
        "logged_predictions": store.count_predictions(),
    }


def _report(summary: dict[str, Any], checks: list[Check], periods: list[str],
            store: PredictionStore, workdir: Path) -> None:
    print("\nsummary")
    for name, d in summary["detections"].items():
        if d["detected_window"] is None:
            print(f"  {name}: began at window {d['onset_window']}, NOT detected")
        else:
            print(f"  {name}: began at window {d['onset_window']}, detected at window {d['detected_window']} "
                  f"({d['delay_windows']} windows later): {d['signals']}")
    for p in summary["promotions"]:
        trigger = f" by a {p['trigger'].replace('_', '-')} retrain" if p.get("trigger") else ""
        print(f"  window {p['window']}: {p['from']} -> {p['to']} promoted{trigger} ({p['gate']}); live accuracy "
              f"{_fmt(p['accuracy_before'])} before, {_fmt(p['accuracy_after'])} after; first answer from "
              f"{p['to']} {_fmt(p['first_answer_after_s'], '.2f')}s after promotion")
    rejected = [r for r in summary["retrains"] if r["outcome"] != Outcome.PROMOTED]
    for r in rejected:
        why = f": {r['reason'][:150]}" if r.get("reason") else ""
        print(f"  window {r['window']}: {(r.get('trigger') or '').replace('_', '-')} retrain {r['outcome']}{why}")
    for w in summary["watches"]:  # the promotion watch's verdicts (retraining.watch)
        print(f"  window {w['window']}: {w['kind'].replace('_', ' ')}: {(w['reason'] or '')[:150]}")
    print(f"  requests: {summary['requests_rows_served']} rows served, {summary['requests_rows_failed']} failed; "
          f"{summary['logged_predictions']} rows in the prediction log")
    print(f"  champion {summary['final_champion']}; workers per version at the end: {summary['workers_by_version']}")
    detecting = next((c for c in checks if c.decision in ALARMS and c.report_path), None)
    if detecting:
        shutil.copy(detecting.report_path, workdir / "drift-report.html")
        print(f"  Evidently report of the detecting check (window {detecting.window}): {workdir / 'drift-report.html'}")
    if (workdir / "reports" / "evidently").is_dir():
        print(f"  every window's Evidently snapshot: evidently ui --workspace {workdir / 'reports' / 'evidently'}")
    plot = _plot(checks, periods, workdir / "loop.png")
    print(f"  plot: {plot}\n  took {summary['seconds']:.0f}s")


def _plot(checks: list[Check], periods: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    w = [c.window for c in checks]
    ax.plot(w, [c.accuracy for c in checks], "o-", color="tab:blue", label="live accuracy (labelled rows)")
    ax.plot(w, [c.drift_share for c in checks], "s--", color="tab:orange", label="drift share (Evidently)")
    for i, name in enumerate(periods):
        if i == 0 or periods[i - 1] != name:
            ax.axvline(i - 0.5, color="grey", lw=0.8)
            ax.text(i - 0.45, 1.02, name, color="grey", fontsize=9)
    for c in checks:
        if c.outcome == Outcome.PROMOTED:
            ax.annotate("retrained,\npromoted", (c.window, c.accuracy or 0.5),
                        textcoords="offset points", xytext=(0, -38), ha="center", fontsize=8, color="tab:green",
                        arrowprops={"arrowstyle": "->", "color": "tab:green"})
        elif c.decision in FLAGGED:
            ax.plot([c.window], [c.drift_share], "x", color="tab:red", ms=9)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("monitoring window")
    ax.set_title("driftloop demo: accuracy and drift per window (x: flagged window)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
