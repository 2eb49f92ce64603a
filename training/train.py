"""Training, as a recipe: load -> split -> fit -> evaluate -> export -> check parity -> register."""

from __future__ import annotations

import hashlib
import logging
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.utils._param_validation import InvalidParameterError

from driftloop.models.errors import ConfigError
from driftloop.models.families import expected_anomaly_rate, fit_model
from driftloop.models.onnx_model import OnnxModel, check_parity
from driftloop.models.registry import ModelVersion, Registry
from driftloop.models.schema import SUPERVISED, FeatureSchema
from driftloop.training import data as data_mod
from driftloop.training import evaluate, guard, scenarios
from driftloop.training.report import permutation_importance, write_report
from driftloop.training.search import search

if TYPE_CHECKING:
    from driftloop.settings import Settings

log = logging.getLogger("driftloop.training")
LIBRARIES = ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy", "pandas", "bentoml", "torch",
             "lightgbm", "onnxmltools")


@dataclass(frozen=True)
class TrainResult:
    version: ModelVersion
    metrics: dict[str, float]
    seconds: float


def source_frame(settings: Settings) -> pd.DataFrame:
    """The initial data as given: the user's file, or the scenario's ``train`` period."""
    if settings.data.path is not None:
        columns = [*settings.features, *([settings.data.target] if settings.data.target else [])]
        return data_mod.load_frame(settings.data.path, columns, settings.data.timestamp)
    frame = scenarios.scenario_frame(settings.data.scenario, seed=settings.seed)
    return frame[frame["period"] == "train"].reset_index(drop=True)


def initial_frame(settings: Settings) -> pd.DataFrame:
    """The data the first model learns from (and ``window_and_original`` / ``reweighted``
    retraining too): :func:`source_frame` without the guard set's rows (``training/guard.py``),
    which is fixed here at first use."""
    source = source_frame(settings)
    return guard.without_guard(source, guard.guard_frame(settings, source), guard.guard_columns(settings))


def guard_frame(settings: Settings) -> pd.DataFrame | None:
    """The fixed guard set (None when ``retraining.guard`` configures none)."""
    return guard.guard_frame(settings)


Progress = Callable[[str], None]


@dataclass(frozen=True)
class Evaluation:
    """What the validation split showed: kept for the version's report."""

    y_true: Any
    y_pred: Any
    proba: Any
    importance: dict[str, dict[str, float]]


@dataclass(frozen=True)
class Fitted:
    """A trained, exported, parity-checked model that is not registered yet."""

    schema: FeatureSchema
    onnx_bytes: bytes
    metrics: dict[str, float]
    reference: pd.DataFrame
    metadata: dict[str, Any]
    seconds: float
    evaluation: Evaluation | None = None

    def model(self, name: str = "candidate") -> OnnxModel:
        """The exported graph in onnxruntime: what would serve it."""
        return OnnxModel.from_bytes(name, self.schema, self.onnx_bytes, self.metadata)


def fit(settings: Settings, frame: pd.DataFrame, warm_start: bytes | None = None,
        progress: Progress | None = None, *, sample_weight: np.ndarray | None = None,
        base: pd.DataFrame | None = None, reference: pd.DataFrame | None = None) -> Fitted:
    """split -> fit -> evaluate -> export -> check parity, on ``frame`` (features and target).

    ``warm_start``: an earlier version's ONNX graph to fine-tune from (neural kinds only).
    ``progress`` hears one line per finished step. For retraining (``training/retrain.py``):

    * ``sample_weight``: one weight per row of ``frame`` (importance weights); the rows of the
      training split keep theirs (see :func:`models.families.fit_model` for kinds that take none);
      the validation figures stay unweighted;
    * ``base``: rows always in the training split, before ``frame``'s (never validated): the
      original data under ``window_and_original``, so the validation rows stay the newest live ones;
    * ``reference``: the drift baseline to keep (default: a sample of ``frame``), e.g. the live
      inputs a reweighted model was adapted to.
    """
    started = time.perf_counter()
    step = _Steps(progress)
    supervised = settings.task in SUPERVISED
    target = settings.data.target if supervised else None  # unsupervised kinds learn from inputs only
    timestamp = settings.data.timestamp if settings.data.timestamp in frame.columns else None
    frame = frame.reset_index(drop=True)
    seen = frame if base is None else pd.concat([base, frame], ignore_index=True)
    labels = sorted(seen[target].unique().tolist()) if settings.task == "classification" else []
    schema = FeatureSchema.infer(seen, dict(settings.features), settings.task, target, tuple(labels))

    train, valid = data_mod.split(frame, settings.training.validation_fraction, timestamp, settings.seed)
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)[train.index.to_numpy()]
    n_base = 0 if base is None else len(base)
    step(f"split {len(frame)} rows: {len(train)} to train, {len(valid)} to validate"
         f"{' (time-ordered)' if timestamp else ' (shuffled)'}{f'; {n_base} more always trained on' if n_base else ''}")
    if base is not None:
        train = pd.concat([base, train], ignore_index=True)
        weights = None if weights is None else np.concatenate([np.ones(n_base), weights])
    params = dict(settings.model.params)
    found = None
    if settings.model.search is not None:  # unweighted: the search picks parameters, not the fit
        found = search(schema, settings.model.kind, params, settings.model.search, settings.seed,
                       train[schema.names], train[target], time_ordered=timestamp is not None)
        params |= found.best_params
        step(f"searched {found.candidates} candidates ({found.method}): best {found.best_params}, "
             f"{found.metric} {found.best_score:.4f}")
    try:
        model = fit_model(schema, settings.model.kind, params, settings.seed,
                          train[schema.names], train[target] if target else None, warm_start, sample_weight=weights)
    except InvalidParameterError as exc:  # a parameter value out of range, found at fit time
        raise ConfigError(f"model.params: {exc}") from None
    step(f"fit {settings.model.kind}{' (fine-tuned from the champion)' if warm_start else ''}"
         f"{' (importance-weighted)' if weights is not None else ''}")

    x_valid = valid[schema.names]
    y_valid = valid[target] if target else None
    preds, proba = model.predict(x_valid), model.predict_proba(x_valid)
    metrics = evaluate.score(settings.task, y_valid, preds, proba, labels, scores=model.scores(x_valid),
                             expected_anomaly_rate=expected_anomaly_rate(settings.model.params))
    importance: dict[str, dict[str, float]] = {}
    if y_valid is not None:  # what the model relies on: permutation importance on the validation rows
        importance = permutation_importance(model, x_valid, y_valid, settings.task, settings.seed, repeats=3,
                                            max_rows=1000)
    step("evaluated on the validation rows" + (f"; most important: {next(iter(importance))}" if importance else ""))

    onnx_bytes = model.to_onnx(schema)
    parity = check_parity(model, onnx_bytes, schema, valid)
    step(f"exported to ONNX ({len(onnx_bytes) / 1024:.0f} KiB); parity: max difference {parity.max_abs_diff:.1e}")

    pool = frame if reference is None else reference
    reference = pool[schema.names].sample(n=min(settings.training.reference_rows, len(pool)),
                                          random_state=settings.seed)
    metadata = {
        "kind": settings.model.kind,
        "params": params,
        "search": found.to_dict() if found else None,
        "metrics": metrics,
        # classifiers: top-class confidence -> chance of being right, from the validation rows; the
        # monitor estimates live accuracy with it before labels arrive
        "confidence_calibration": (evaluate.confidence_calibration(y_valid, proba, labels)
                                   if settings.task == "classification" and proba is not None and len(labels) > 1
                                   else None),
        "parity": parity.to_dict(),
        "rows": {"train": len(train), "validation": len(valid)},
        "data_fingerprint": fingerprint(seen[[*schema.names, *([target] if target else [])]]),
        "time_range": _time_range(seen, timestamp if base is None or timestamp in base.columns else None),
        "libraries": library_versions(),
        "code_revision": code_revision(),
        "seed": settings.seed,
        "warm_start": warm_start is not None,
        "importance": {name: round(v["mean"], 6) for name, v in importance.items()},
        "training_seconds": round(time.perf_counter() - started, 3),
    }
    return Fitted(schema, onnx_bytes, metrics, reference, metadata, time.perf_counter() - started,
                  Evaluation(y_valid, preds, proba, importance))


def register(registry: Registry, fitted: Fitted, *, trigger: str, parent: str | None = None,
             extra: dict[str, Any] | None = None) -> ModelVersion:
    """Store the version, then write its evaluation report beside the registry."""
    version = registry.register(fitted.onnx_bytes, fitted.schema, fitted.reference,
                                fitted.metadata | (extra or {}), trigger=trigger, parent=parent)
    log.info("registered %s (%s, %s): %s", version.tag, fitted.metadata["kind"], trigger, _fmt(fitted.metrics))
    if fitted.evaluation is not None and fitted.schema.task in SUPERVISED:
        ev = fitted.evaluation
        write_report(report_dir(registry, version.version), version.tag, fitted.schema.task, ev.y_true, ev.y_pred,
                     ev.proba, list(fitted.schema.labels) or None, fitted.metrics, ev.importance)
    return version


def report_dir(registry: Registry, version: str) -> Path:
    """Where a version's evaluation report lives: report.json and its PNG figures."""
    return registry.home / "driftloop" / registry.project / "reports" / version


class _Steps:
    """Times the recipe's steps and reports each as it finishes."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._last = time.perf_counter()

    def __call__(self, message: str) -> None:
        now = time.perf_counter()
        if self._progress is not None:
            self._progress(f"{message} [{now - self._last:.1f}s]")
        self._last = now


def train_version(settings: Settings, frame: pd.DataFrame, registry: Registry, *, trigger: str,
                  parent: str | None = None, extra: dict[str, Any] | None = None,
                  progress: Progress | None = None) -> TrainResult:
    """The whole recipe: fit the configured model on ``frame`` and register it (not promoted)."""
    fitted = fit(settings, frame, progress=progress)
    version = register(registry, fitted, trigger=trigger, parent=parent, extra=extra)
    return TrainResult(version, fitted.metrics, fitted.seconds)


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the rows' contents (array values, images and sequences, by their bytes)."""
    return hashlib.sha256(guard.row_hashes(frame).tobytes()).hexdigest()


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Python's and each named distribution's version ("absent" if not installed)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def code_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return rev or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _time_range(frame: pd.DataFrame, timestamp: str | None) -> list[str]:
    if not timestamp or frame.empty:
        return []
    return [str(frame[timestamp].min()), str(frame[timestamp].max())]


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
