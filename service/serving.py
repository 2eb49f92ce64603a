"""What a serving worker does, free of HTTP: predict, take feedback, follow the champion.

A request's path (:mod:`service.gate` receives it from HTTP): :meth:`Serving.prepare` takes the
current model (one attribute read, so a request never mixes two models) and validates the rows
against *that* model's schema; the ONNX graph runs (inline, or in a batch with other requests,
:mod:`service.batching`); :meth:`Serving.answer` hands the rows to the prediction-log writer and
returns the answer with the version that produced it. :meth:`Serving.predict` is the three in one.
:class:`PointerWatcher` polls the registry's champion pointer and swaps in a verified, warmed-up
model; a broken artifact is refused and the old model keeps serving.

Shadow mode. The same watcher follows the registry's shadow pointer the same way and loads the
shadow (verified, warmed up, on the champion's providers) into :attr:`Serving.shadow`; a shadow
that cannot be loaded is refused, logged and counted, and leaves no shadow (never a different
champion). The shadow never answers and never runs on the request path: the prediction-log
writer, once a batch of rows is committed, hands it to :meth:`Serving._score_shadow`, which
validates the logged inputs of the rows the champion answered against the *shadow's* schema (rows
it refuses are counted), runs the shadow's graph once on them and writes its answers to the
store's ``shadow_predictions``. Any error there is logged and counted; the logged rows are
already committed. Without the prediction log (``serving.prediction_log: false``) nothing is
scored and the shadow is not loaded: ``GET /model`` says so.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from driftloop.models.errors import DriftloopError, SchemaError
from driftloop.models.onnx_model import OnnxModel, providers_for
from driftloop.models.schema import FLOAT32_MAX, SCORES_FIELD, SUPERVISED, FeatureSchema, same_label, text_problem
from driftloop.models.registry import Registry
from driftloop.monitoring.store import FeedbackResult, LogRow, PredictionStore, log_row_bytes, unavailable, utcnow
from driftloop.service.batching import Batcher, batching_enabled
from driftloop.service.metrics import ServingMetrics
from driftloop.service.predlog import PredictionLogWriter
from driftloop.vocabulary import EventKind

if TYPE_CHECKING:
    from driftloop.settings import ServingConfig

log = logging.getLogger("driftloop.service")


class NotReady(DriftloopError):
    """No champion is loaded yet, or the worker is shutting down (503 with Retry-After)."""


class StoreUnavailable(NotReady):
    """The prediction store cannot take or find these labels now: retry later (503 with
    Retry-After). ``result``: what was done all the same (labels of other ids stored)."""

    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = result


def new_request_id(now: float | None = None) -> str:
    """A UUIDv7 (time-ordered): its first 48 bits are the issue time in milliseconds."""
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    h = "%032x" % value  # str(uuid.UUID(int=value)) without its checks: 2.7 instead of 4.4 us a row
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def request_id_age(request_id: str, now: float | None = None) -> float | None:
    """Seconds since a driftloop request id was issued; ``None`` if it is not one of ours."""
    try:
        value = uuid.UUID(request_id)
    except ValueError:
        return None
    if value.version != 7:
        return None
    return (time.time() if now is None else now) - (value.int >> 80) / 1000.0


def _named(pointer: Any) -> str | None:
    """The version a registry pointer (a Champion, a Shadow) names; None for no pointer."""
    return None if pointer is None else pointer.version


@dataclass
class _Pointer:
    """A registry pointer the watcher follows, and what it last loaded from it."""

    name: str  # "champion" or "shadow", for the log
    stamp: Callable[[], tuple[int, int] | None]  # the registry's cheap change detector
    read: Callable[[], str | None]  # the version it names now
    on_swap: Callable[..., None]  # given the loaded model (None: an optional pointer named nothing)
    on_refused: Callable[[str, Exception], None]
    optional: bool  # the shadow: nothing named, or a refused version, means no model at all
    seen: tuple[int, int] | None = None
    current: str | None = None
    fallback: bool = False  # current is an ancestor served because the named version could not load


class PointerWatcher:
    """Polls the registry's pointers, the champion's (and, given ``on_shadow``, the shadow's), and
    swaps the worker's model (its shadow) when one names another version."""

    def __init__(self, registry: Registry, on_swap: Callable[[OnnxModel], None],
                 on_refused: Callable[[str, Exception], None], interval_s: float,
                 providers: list[str] | None = None, *,
                 on_shadow: Callable[[OnnxModel | None], None] | None = None,
                 on_shadow_refused: Callable[[str, Exception], None] = lambda version, exc: None,
                 on_fallback: Callable[[str, str], None] | None = None) -> None:
        self._registry = registry
        self._on_fallback = on_fallback
        self._interval = interval_s
        self._providers = providers
        self._pointers = [_Pointer("champion", registry.pointer_stamp, lambda: _named(registry.champion()),
                                   on_swap, on_refused, optional=False)]
        if on_shadow is not None:
            self._pointers.append(_Pointer("shadow", registry.shadow_stamp, lambda: _named(registry.shadow()),
                                           on_shadow, on_shadow_refused, optional=True))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pointer-watcher", daemon=True)

    def start(self) -> None:
        self.check()  # load the champion before the worker reports ready
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def check(self, force: bool = False) -> None:
        """Look at each pointer once; swap if it names another version (``force``: even if the
        pointer file looks unchanged, e.g. to retry a version refused earlier)."""
        for pointer in self._pointers:
            self._follow(pointer, force)

    def _follow(self, pointer: _Pointer, force: bool) -> None:
        stamp = pointer.stamp()
        if stamp == pointer.seen and not force:
            return
        pointer.seen = stamp
        try:
            version = pointer.read()
        except Exception:  # a hand-edited shadow pointer: no shadow (an unreadable champion's raises)
            if not pointer.optional:
                raise
            log.exception("cannot read the %s pointer", pointer.name)
            version = None
        if version is None:
            if pointer.optional:
                self._drop(pointer)
            return
        if version == pointer.current and not force and not pointer.fallback:
            return  # (after a fallback, a pointer naming the served ancestor is a swap: it ends the fallback)
        try:
            model = self._registry.load(version, providers=self._providers)
        except Exception as exc:  # IntegrityError, ExportError, I/O: refuse (the old champion serves on)
            log.error("refused %s %s: %s", pointer.name, version, exc)
            pointer.on_refused(version, exc)
            if pointer.optional:
                self._drop(pointer)
            elif pointer.current is None:  # nothing served yet (a worker starting): an ancestor serves
                self._fall_back(pointer, version)
            return
        pointer.current, pointer.fallback = version, False
        pointer.on_swap(model)

    def _fall_back(self, pointer: _Pointer, refused: str) -> None:
        """A worker with no model whose champion cannot load serves the newest loadable version of
        the champion's lineage instead, and says so (log, ``driftloop_model_swaps_total{outcome=
        "fallback"}``, the ``DriftloopServingFallback`` alert). The pointer is left as it is: an
        operator decides; a new pointer write is tried as usual."""
        champion = self._registry.champion()
        for version in reversed(champion.lineage if champion else ()):
            try:
                model = self._registry.load(version, providers=self._providers)
            except Exception as exc:
                log.error("fallback: %s cannot load either: %s", version, exc)
                continue
            log.critical("the champion %s cannot be loaded: serving its predecessor %s instead until the "
                         "pointer changes (`driftloop models promote` or `rollback`)", refused, version)
            pointer.current, pointer.fallback = version, True
            pointer.on_swap(model)
            if self._on_fallback is not None:
                self._on_fallback(refused, version)
            return
        log.critical("the champion %s cannot be loaded and no version of its lineage can: nothing is served",
                     refused)

    @staticmethod
    def _drop(pointer: _Pointer) -> None:
        """An optional pointer names nothing usable: no model (said once)."""
        if pointer.current is not None:
            pointer.current = None
            pointer.on_swap(None)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:  # never let the watcher die: the next poll tries again
                log.exception("pointer watcher: poll failed")


class Serving:
    def __init__(self, registry: Registry, store: PredictionStore, metrics: ServingMetrics,
                 config: ServingConfig) -> None:
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.config = config
        self.model: OnnxModel | None = None
        self.packed: OnnxModel | None = None  # a Bento's own model, served while the registry names no champion
        self._batched_for: tuple[OnnxModel, bool] | None = None  # batched()'s answer for the model it was asked about
        self.shadow: OnnxModel | None = None  # scored beside the champion, off the request path
        self._shadow_refused: str | None = None  # why the shadow pointer's version is not loaded
        self.stopping = False  # shut down: nothing more is served
        self.draining = False  # SIGTERM received: readiness fails, new requests get 503
        self.flush_interval_s = config.log_flush_interval_s
        self.max_rows = config.max_rows
        self.device, providers = providers_for(config.device)
        self._counters: dict[tuple[str, str], Any] = {}
        self.writer = PredictionLogWriter(
            self._insert_logged, max_rows=config.log_queue_rows, flush_interval_s=config.log_flush_interval_s,
            on_written=self._logged, on_dropped=lambda n: metrics.log_rows.labels("dropped").inc(n),
            after_write=self._score_shadow, on_queue=metrics.log_queue.set, max_bytes=config.log_queue_bytes,
        ) if config.prediction_log else None
        self.batcher = Batcher(config.max_batch_rows, metrics.batch_rows.observe if config.metrics else lambda n: None)
        # No prediction log, nothing for a shadow to score: it is not even loaded.
        self.watcher = PointerWatcher(registry, self._swap, self._refused, config.poll_interval_s, providers,
                                       on_shadow=self._swap_shadow if self.writer is not None else None,
                                       on_shadow_refused=self._refused_shadow,
                                       on_fallback=self._fell_back)
        # Every outcome exported at 0 from the start: an alert on the increase of a counter needs
        # the series to exist before the first event.
        for child in (metrics.shed.labels("overloaded"), metrics.shed.labels("draining"),
                      metrics.log_rows.labels("written"), metrics.log_rows.labels("dropped"),
                      metrics.feedback.labels("unavailable"),
                      metrics.swaps.labels("done"), metrics.swaps.labels("refused"), metrics.swaps.labels("fallback"),
                      metrics.shadow_swaps.labels("done"), metrics.shadow_swaps.labels("refused"),
                      *(metrics.shadow_rows.labels(outcome) for outcome in ("scored", "refused", "failed"))):
            child.inc(0)

    def start(self) -> None:
        """Follow the champion; open the store, or, if it cannot be reached now, say so and go on:
        predictions are served and their rows wait in the log's buffer until it is back (the
        writer creates the schema then), feedback and history answer 503 meanwhile."""
        try:
            self.store.create()
        except Exception as exc:
            if (reason := unavailable(exc)) is None:
                raise  # not an outage (an unknown schema revision): refuse to start
            log.error("worker %d: the prediction store is unavailable at start (%s); serving anyway, "
                      "log rows wait in memory until it is back", os.getpid(), reason)
        self.watcher.start()

    def serve_packed(self, model: OnnxModel) -> None:
        """Serve ``model`` (a Bento's packed model, verified and warmed up by the caller) while the
        registry names no champion: call it before :meth:`start`. The watcher follows the pointer
        as usual and swaps to the registry's champion as soon as it names one."""
        self._swap(model)
        self.packed = model  # GET /model says so while it serves

    def ready(self) -> bool:
        return self.model is not None and not self.stopping and not self.draining

    def drain(self) -> None:
        """The first step of a graceful stop: readiness fails and new requests are refused (503);
        requests already running finish."""
        if not self.draining:
            log.info("worker %d draining: readiness fails, new requests get 503", os.getpid())
        self.draining = True

    def shutdown(self) -> None:
        """Fail readiness, stop following the champion, write every buffered log row."""
        self.draining = self.stopping = True
        self.watcher.stop()
        self.batcher.close()
        if self.writer is not None:
            self.writer.close()
        if self.model is not None:
            self.metrics.model_workers.labels(self.model.version, self.device).set(0)
        if self.shadow is not None:
            self.metrics.shadow_model.labels(self.shadow.version).set(0)
        self.store.close()

    # -- the request path ---------------------------------------------------------------------
    def prepare(self, rows: Any) -> tuple[OnnxModel, dict[str, np.ndarray]]:
        """The model that answers this request and the request's rows as its feeds (validated
        against that model's schema and the input policies); raises NotReady or SchemaError."""
        model = self.model  # one read: the whole request uses this version
        if model is None or self.stopping:
            raise NotReady("no champion model is loaded yet" if model is None else "the service is shutting down")
        repairs: dict[str, int] = {}
        feeds = model.schema.validate_rows(rows, self.max_rows, unknown_category=self.config.unknown_category,
                                           missing_values=self.config.missing_values, repairs=repairs,
                                           max_string_chars=self.config.max_string_chars)
        for key, n in repairs.items():  # rare: unknown categories accepted, values imputed
            kind, _, feature = key.partition(":")
            self.metrics.input_repairs.labels(feature, kind).inc(n)
        return model, feeds

    def batched(self, model: OnnxModel) -> bool:
        """Whether this model's requests go through the batcher (``serving.batching``)."""
        cached = self._batched_for  # asked on every request: 2.7% of a worker's time when worked out each time
        if cached is None or cached[0] is not model:
            cached = self._batched_for = (model, batching_enabled(self.config.batching, model))
        return cached[1]

    def predict(self, rows: Any) -> dict[str, Any]:
        """One request, start to end, in the calling thread (no batching)."""
        model, feeds = self.prepare(rows)
        return self.run(model, feeds, rows)

    def run(self, model: OnnxModel, feeds: dict[str, np.ndarray], rows: list[Any]) -> dict[str, Any]:
        """The graph on prepared ``feeds`` in the calling thread, then :meth:`answer`."""
        preds, scores = model.predict(feeds)
        if self.config.metrics:
            self.metrics.batch_rows.observe(len(preds))
        return self.answer(model, rows, preds, scores)

    def answer(self, model: OnnxModel, rows: list[Any], preds: np.ndarray, scores: np.ndarray | None) -> dict[str, Any]:
        """Request ids, the prediction log and the metrics for one request; its JSON answer."""
        predictions = preds.tolist()
        ids = [new_request_id() for _ in predictions]
        if self.writer is not None:  # encoded here, once: the writer's thread only hands tuples to the driver
            logged = self.store.log_rows(ids, utcnow(), model.version, rows, predictions,
                                         _confidence(model.schema.task, scores, len(ids)))
            self.writer.submit(logged, row_bytes=-(-sum(map(log_row_bytes, logged)) // len(logged)))
        if self.config.metrics:
            self._count(model.version, predictions)
        answer: dict[str, Any] = {"model_version": model.version, "predictions": predictions, "request_ids": ids}
        field = scores_field(model.schema.task)
        if field is not None and scores is not None:
            answer[field] = np.round(scores.astype(np.float64), 6).tolist()
        return answer

    def feedback(self, labels: list[tuple[str, Any]]) -> dict[str, Any]:
        """Store labels by request id. Never loses one silently: a store that cannot be written
        is a 503 for the whole request (nothing stored, retry it); ids that may still wait in a
        prediction-log buffer because the store is out or stuck are a 503 for those ids (the
        others' labels are stored; a retry of the whole request finds them as duplicates), never
        "unknown" (a 404 would make the client drop a label whose prediction exists)."""
        _check_labels(labels, self.model, self.config.max_string_chars)
        count = self.metrics.feedback.labels
        try:
            result = self._store_feedback(labels)
        except Exception as exc:
            if (reason := unavailable(exc)) is None:
                raise
            count("unavailable").inc(len(labels))
            raise StoreUnavailable(f"the prediction store is unavailable ({reason}): no label was stored; "
                                   "retry later") from exc
        waiting = self._not_logged_yet(result.unknown)
        unknown = [rid for rid in result.unknown if rid not in frozenset(waiting)] if waiting else result.unknown
        count("accepted").inc(result.accepted)
        count("duplicate").inc(len(result.duplicates))
        count("unknown").inc(len(unknown))
        answer = {"accepted": result.accepted, "duplicates": result.duplicates, "unknown_request_ids": unknown}
        if waiting:
            count("unavailable").inc(len(waiting))
            listed = ", ".join(waiting[:5]) + (" ..." if len(waiting) > 5 else "")
            raise StoreUnavailable(
                f"request_id(s) not in the prediction log yet (the store is out or stuck, their rows wait "
                f"in a buffer): {listed}; retry later (the other labels of this request are stored)",
                answer | {"pending_request_ids": waiting})
        return answer

    def _store_feedback(self, labels: list[tuple[str, Any]]) -> FeedbackResult:
        result = self.store.insert_feedback(labels)
        unknown = result.unknown
        # A prediction reaches the store within one flush interval of any worker. Ids we issued
        # that recently may still be in a buffer: flush ours, give the others one interval.
        fresh = [rid for rid in unknown if (age := request_id_age(rid)) is not None and age < 2 * self.flush_interval_s + 1]
        if fresh:
            if self.writer is not None and self.writer.behind_since() is None:  # an out or stuck store: no use waiting
                self.writer.flush(timeout=5)
            time.sleep(self.flush_interval_s)
            wanted = set(fresh)
            retry = self.store.insert_feedback([(rid, lab) for rid, lab in labels if rid in wanted])
            unknown = [rid for rid in unknown if rid not in wanted] + retry.unknown
            result = type(result)(result.accepted + retry.accepted, result.duplicates + retry.duplicates, unknown)
        return result

    def _not_logged_yet(self, unknown: list[str]) -> list[str]:
        """The unknown ids that may be ours still waiting to be written: issued (by their UUIDv7
        time) since this worker's writer has been failing or stuck. Another worker's buffer is
        not seen here; its ids get the one-interval grace of :meth:`_store_feedback` only."""
        since = self.writer.behind_since() if self.writer is not None and unknown else None
        if since is None:
            return []
        now = time.time()
        return [rid for rid in unknown if (age := request_id_age(rid, now)) is not None and -1.0 <= age <= now - since]

    def model_info(self) -> dict[str, Any]:
        model = self.model
        if model is None:
            raise NotReady("no champion model is loaded yet")
        meta = model.metadata
        return {
            "model_version": model.version,
            "project": self.registry.project,
            "kind": meta.get("kind"),
            "task": model.schema.task,
            "trigger": meta.get("trigger"),
            "parent": meta.get("parent"),
            "metrics": meta.get("metrics", {}),
            "schema": model.schema.to_dict(),
            "providers": model.providers,
            "device": self.device,
            "batching": self.batched(model),
            # registry: the champion pointer's version; bento: the model the Bento packs (no champion yet)
            "source": "bento" if model is self.packed else "registry",
            "shadow": self._shadow_info(),
            "worker_pid": os.getpid(),
        }

    def _shadow_info(self) -> dict[str, Any] | None:
        """``/model``'s ``shadow``: null without a shadow, else its version, its role (``candidate``:
        judged for promotion; ``watch``: the previous champion, watching the new one) and whether
        this worker scores the prediction log with it (and if not, why)."""
        shadow, pointer = self.shadow, self.registry.shadow()
        if shadow is not None:  # the pointer may have moved on since this worker loaded it
            role = str(pointer.role) if pointer is not None and pointer.version == shadow.version else None
            return {"model_version": shadow.version, "role": role, "scoring": True}
        if pointer is None:
            return None
        why = ("serving.prediction_log is false: a shadow scores the logged rows, so none are scored"
               if self.writer is None else self._shadow_refused or "not loaded yet")
        return {"model_version": pointer.version, "role": str(pointer.role), "scoring": False, "reason": why}

    # -- admin actions (the HTTP layer checks the token first) ---------------------------------
    def reload(self) -> dict[str, Any]:
        """Re-read the champion and shadow pointers now, in this worker (the others poll within their
        interval); a version refused earlier is tried again."""
        self.watcher.check(force=True)
        return {"model_version": self.model.version if self.model else None, "worker_pid": os.getpid()}

    def promote(self, version: str, reason: str, actor: str) -> dict[str, Any]:
        try:
            champion = self.registry.promote(version, actor=actor, reason=reason)
        except DriftloopError as exc:  # unknown, broken or unloadable: the pointer did not move
            self.metrics.swaps.labels("refused").inc()
            self.store.record_event(EventKind.PROMOTION_REFUSED, {"version": version, "actor": actor,
                                                                  "reason": reason, "error": str(exc)})
            raise
        self.watcher.check()
        return {"champion": champion.version, "promoted_at": champion.promoted_at}

    def rollback(self, reason: str, actor: str) -> dict[str, Any]:
        champion = self.registry.rollback(actor=actor, reason=reason)
        self.watcher.check()
        return {"champion": champion.version, "promoted_at": champion.promoted_at}

    def request_retrain(self, reason: str, actor: str) -> dict[str, Any]:
        """Ask the monitor for a retrain on the newest labelled windows (the service never trains)."""
        event_id = self.store.record_event(EventKind.RETRAIN_REQUESTED, {"reason": reason, "actor": actor})
        return {"request": event_id, "status": "queued for the monitor's next run"}

    # -- swaps ----------------------------------------------------------------------------------
    def _swap(self, model: OnnxModel) -> None:
        old = self.model
        self.model = model  # atomic: in-flight requests keep the model they already read
        self.metrics.swaps.labels("done").inc()
        self.metrics.fallback_workers.set(0)  # a fallback sets it again right after this swap
        self.metrics.model_workers.labels(model.version, self.device).set(1)
        if old is not None and old.version != model.version:
            self.metrics.model_workers.labels(old.version, self.device).set(0)
        log.info("worker %d now serves %s (was %s)", os.getpid(), model.version, old.version if old else None)

    def _fell_back(self, refused: str, served: str) -> None:
        """The champion ``refused`` cannot load and this worker serves ``served`` from its lineage
        (:meth:`PointerWatcher._fall_back`): counted, and shown until a champion loads again."""
        self.metrics.swaps.labels("fallback").inc()
        self.metrics.fallback_workers.set(1)

    def _swap_shadow(self, model: OnnxModel | None) -> None:
        old = self.shadow
        self.shadow = model  # atomic, as the champion: a batch being scored keeps the one it read
        if model is not None:
            self._shadow_refused = None
            self.metrics.shadow_swaps.labels("done").inc()
            self.metrics.shadow_model.labels(model.version).set(1)
        if old is not None and (model is None or old.version != model.version):
            self.metrics.shadow_model.labels(old.version).set(0)
        log.info("worker %d now scores with shadow %s (was %s)", os.getpid(), model.version if model else None,
                 old.version if old else None)

    def _refused_shadow(self, version: str, exc: Exception) -> None:
        self._shadow_refused = f"refused {version}: {exc}"
        self.metrics.shadow_swaps.labels("refused").inc()

    def _score_shadow(self, batch: list[LogRow]) -> None:
        """The prediction-log writer's after-write step (its thread, the rows are committed): the
        shadow scores the batch's rows that the champion answered, in one graph run, and its
        answers go to the store. Rows its schema refuses are counted; errors are logged and
        counted, never raised. The logged features are JSON text (:data:`LogRow`): parsed here,
        in one ``json.loads`` of the batch, only when there is a shadow."""
        shadow, champion = self.shadow, self.model  # one read each, as a request does
        if shadow is None or champion is None or shadow.version == champion.version:
            return
        rows = [r for r in batch if r[2] == champion.version]  # r[2]: the model version
        if not rows:
            return
        count = self.metrics.shadow_rows.labels
        pending = len(rows)  # rows neither refused nor scored yet: they failed if anything raises
        try:
            features = json.loads("[" + ",".join(r[3] for r in rows) + "]")  # r[3]: the features' JSON
            kept, feeds = _accepted(shadow.schema, features, self.config)
            if len(kept) < len(rows):
                count("refused").inc(len(rows) - len(kept))
            pending = len(kept)
            if kept:
                start = time.perf_counter()
                preds, scores = shadow.predict(feeds)
                self.metrics.shadow_seconds.observe(time.perf_counter() - start)
                confidence = _confidence(shadow.schema.task, scores, len(kept))
                self.store.insert_shadow_predictions([
                    {"request_id": rows[i][0], "model_version": shadow.version, "prediction": pred,
                     "confidence": conf} for i, pred, conf in zip(kept, preds.tolist(), confidence)])
        except Exception:
            log.exception("shadow %s: scoring %d logged rows failed", shadow.version, pending)
            count("failed").inc(pending)
            return
        count("scored").inc(pending)

    def _insert_logged(self, rows: list[LogRow]) -> None:
        """The writer's insert: the schema first if the store was out when this worker started."""
        self.store.create()
        self.store.insert_logged(rows)

    def _logged(self, rows: int) -> None:
        self.metrics.log_rows.labels("written").inc(rows)

    def _refused(self, version: str, exc: Exception) -> None:
        self.metrics.swaps.labels("refused").inc()

    def _count(self, version: str, predictions: list[Any]) -> None:
        """Predicted rows by class (cluster, anomaly flag); regression values are not labels.
        The labelled counters are cached: a label lookup costs more than the increment."""
        regression = self.model is not None and self.model.schema.task == "regression"
        counts = {"": len(predictions)} if regression else Counter(map(str, predictions))
        for value, n in counts.items():
            child = self._counters.get((version, value))
            if child is None:
                child = self._counters[(version, value)] = self.metrics.predictions.labels(version, value)
            child.inc(n)


def scores_field(task: str) -> str | None:
    """The name of the graph's scores in a /predict answer (None: the task has none)."""
    return SCORES_FIELD[task]


def _confidence(task: str, scores: np.ndarray | None, n: int) -> list[float | None]:
    """The number logged beside each prediction: top-class probability (classification),
    distance to the chosen cluster (clustering), anomaly score (anomaly)."""
    if scores is None:
        return [None] * n
    if task == "classification":
        return scores.max(axis=1).tolist()
    if task == "clustering":
        return scores.min(axis=1).tolist()
    return np.asarray(scores, dtype=np.float64).reshape(-1).tolist()


def _accepted(schema: FeatureSchema, rows: list[Any], config: ServingConfig) -> tuple[list[int], dict[str, np.ndarray]]:
    """Which logged feature rows ``schema`` takes, under the serving input policies, and their
    feeds: one pass when it takes them all (the usual case), else row by row to find the others."""
    def feeds(subset: list[Any]) -> dict[str, np.ndarray]:
        return schema.validate_rows(subset, len(subset), unknown_category=config.unknown_category,
                                    missing_values=config.missing_values, max_string_chars=config.max_string_chars)

    try:
        return list(range(len(rows))), feeds(rows)
    except SchemaError:
        pass
    kept = []
    for i, row in enumerate(rows):
        try:
            feeds([row])
        except SchemaError:
            continue
        kept.append(i)
    return kept, feeds([rows[i] for i in kept]) if kept else {}


def _check_labels(labels: list[tuple[str, Any]], model: OnnxModel | None, max_string_chars: int) -> None:
    """Refuse (a SchemaError naming ``labels[i].label``) what no label can be: a boolean, unless the
    model's classes are booleans (JSON's ``true`` is not the class ``1``, though Python counts it
    as one); a number that is not finite or lies outside float32's range (no model answers one); a
    string over ``max_string_chars`` or not valid Unicode. Then, with a model loaded, what its task
    cannot take: a class the classifier does not have, a regressor's label that is not a number."""
    schema = model.schema if model is not None else None
    boolean_classes = schema is not None and any(isinstance(c, bool) for c in schema.labels)
    for i, (_, label) in enumerate(labels):
        where = f"labels[{i}].label"
        if isinstance(label, bool):
            if not boolean_classes:
                classes = f"; classes are {list(schema.labels)}" if schema is not None and schema.labels else ""
                raise SchemaError(f"{where} is {str(label).lower()}: a boolean is not a class label{classes}",
                                  field=where)
        elif isinstance(label, (int, float)):
            if not -FLOAT32_MAX <= label <= FLOAT32_MAX:  # NaN and infinities fail it too
                raise SchemaError(f"{where} must be a finite number within float32's range "
                                  f"(at most {FLOAT32_MAX:.4g} either way)", field=where)
        elif isinstance(label, str) and (problem := text_problem(label, where, max_string_chars)):
            raise SchemaError(problem, field=where)
    if schema is None or schema.task not in SUPERVISED:  # a label is whatever the user knows (a confirmed anomaly)
        return
    for i, (_, label) in enumerate(labels):
        if schema.task == "classification":
            if schema.labels and not any(same_label(label, known) for known in schema.labels):
                raise SchemaError(f"labels[{i}].label: {label!r} is not a class of the model; "
                                  f"classes are {list(schema.labels)}", field=f"labels[{i}].label")
        elif isinstance(label, bool) or not isinstance(label, (int, float)):
            raise SchemaError(f"labels[{i}].label must be a number for a regression model", field=f"labels[{i}].label")

