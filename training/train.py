"""Training, as a recipe: load -> split -> search -> fit -> evaluate -> export and check parity ->
metadata -> register."""

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

from driftloop.adapters.sklearn import InvalidParameterError
from driftloop.models.errors import ConfigError
from driftloop.models.families import Trained, expected_anomaly_rate, fit_model
from driftloop.models.onnx_model import OnnxModel, Parity, check_parity
from driftloop.models.registry import ModelVersion, Registry
from driftloop.models.schema import SUPERVISED, FeatureSchema
from driftloop.training import data as data_mod
from driftloop.training import evaluate, guard, scenarios
from driftloop.training.report import permutation_importance, write_report
from driftloop.training.search import SearchResult, search
from driftloop.vocabulary import Trigger

if TYPE_CHECKING:
    from driftloop.settings import ModelConfig, Settings

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
        return data_mod.load_frame(settings.data.path, columns, settings.data.timestamp, settings.data.target)
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
class Origin:
    """Where the rows handed to :func:`fit` came from: what a version's record of its evaluation
    rows names (``metadata["evaluation"]["source"]``), so that "0.91 on 15 rows" says which 15."""

    data: str  # initial (the data file or the scenario) | live (rows the service logged)
    name: str  # "file loans.csv", "scenario loans", "the prediction log"
    ids: np.ndarray | None = None  # live rows: each row's prediction id (None: not known)

    @classmethod
    def initial(cls, settings: Settings) -> Origin:
        """The initial data: the configured file, or the built-in scenario."""
        path = settings.data.path
        return cls("initial", f"file {path}" if path is not None else f"scenario {settings.data.scenario}")

    @classmethod
    def live(cls, ids: Any = None) -> Origin:
        return cls("live", "the prediction log", None if ids is None else np.asarray(ids))

    def source(self, positions: Any) -> dict[str, Any]:
        """The record of the rows at ``positions`` of the frame: where they came from and, for
        live rows, the first and last prediction id among them."""
        out: dict[str, Any] = {"data": self.data, "name": self.name}
        if self.ids is not None and len(positions):
            ids = self.ids[np.asarray(positions)]
            out["prediction_ids"] = [int(ids.min()), int(ids.max())]
        return out


def describe_source(source: dict[str, Any]) -> str:
    """``source`` (:meth:`Origin.source`) in words: "initial data, scenario loans", "live, prediction
    ids 1201..1260"."""
    if source.get("data") == "live":
        ids = source.get("prediction_ids")
        return "live" + (f", prediction ids {ids[0]}..{ids[1]}" if ids else "")
    return f"initial data, {source.get('name')}"


def rows_fingerprint(rows: pd.DataFrame, columns: list[str]) -> str:
    """sha256 of ``rows``' ``columns`` (the features and the target), whatever their order: two
    versions' figures are comparable when, and only when, their evaluation rows have the same one."""
    hashes = np.sort(guard.row_hashes(rows[columns]))
    return hashlib.sha256(hashes.tobytes()).hexdigest()


@dataclass(frozen=True)
class Evaluation:
    """What the validation split showed: the metrics, and what the version's report draws."""

    metrics: dict[str, float]
    y_true: Any
    y_pred: Any
    proba: Any
    importance: dict[str, dict[str, float]]

    def describe(self) -> str:
        return "evaluated on the validation rows" + (f"; most important: {next(iter(self.importance))}"
                                                     if self.importance else "")


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
        base: pd.DataFrame | None = None, reference: pd.DataFrame | None = None,
        origin: Origin | None = None) -> Fitted:
    """split -> search -> fit -> evaluate -> export and check parity -> metadata, on ``frame``
    (features and target).

    ``warm_start``: an earlier version's ONNX graph to fine-tune from (neural kinds only).
    ``progress`` hears one line per finished step. For retraining (``training/retrain.py``):

    * ``sample_weight``: one weight per row of ``frame`` (importance weights); the rows of the
      training split keep theirs (see :func:`models.families.fit_model` for kinds that take none);
      the validation figures stay unweighted;
    * ``base``: rows always in the training split, before ``frame``'s (never validated): the
      original data under ``window_and_original``, so the validation rows stay the newest live ones;
    * ``reference``: the drift baseline to keep (default: a sample of ``frame``), e.g. the live
      inputs a reweighted model was adapted to;
    * ``origin``: where ``frame``'s rows came from (default: the initial data), for the record of
      the validation rows (``metadata["evaluation"]``).
    """
    started = time.perf_counter()
    step = _Steps(progress)
    data = learning_data(settings, frame, base)
    rows = split_rows(data, settings.training.validation_fraction, settings.seed, sample_weight)
    step(rows.describe())
    params, found = search_params(settings.model, settings.seed, data, rows.train)
    if found is not None:
        step(found.describe())
    model = fit_estimator(settings.model.kind, params, settings.seed, data, rows, warm_start)
    step(f"fit {settings.model.kind}{' (fine-tuned from the champion)' if warm_start else ''}"
         f"{' (importance-weighted)' if rows.weights is not None else ''}")
    evaluation = evaluate_model(model, data, rows.valid, settings.seed, expected_anomaly_rate(settings.model.params))
    step(evaluation.describe())
    onnx_bytes, parity = export_checked(model, data.schema, rows.valid)
    step(f"exported to ONNX ({len(onnx_bytes) / 1024:.0f} KiB); parity: max difference {parity.max_abs_diff:.1e}")
    kept = reference_sample(data.frame if reference is None else reference, data.schema.names,
                            settings.training.reference_rows, settings.seed)
    metadata = version_metadata(data, rows, evaluation, parity, kind=settings.model.kind, params=params,
                                found=found, seed=settings.seed, warm_start=warm_start is not None, started=started,
                                origin=origin or Origin.initial(settings))
    return Fitted(data.schema, onnx_bytes, evaluation.metrics, kept, metadata, time.perf_counter() - started,
                  evaluation)


# -- the steps of fit --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LearningData:
    """The rows :func:`fit` was handed, and the schema they define."""

    frame: pd.DataFrame  # the rows to split, index reset
    base: pd.DataFrame | None  # rows always trained on, before ``frame``'s
    seen: pd.DataFrame  # ``base`` then ``frame``: what the schema and the fingerprint describe
    schema: FeatureSchema
    target: str | None  # None: unsupervised kinds learn from inputs only
    timestamp: str | None  # the time column, when ``frame`` has it: the split keeps time order

    @property
    def labels(self) -> list[Any]:
        return list(self.schema.labels)


def learning_data(settings: Settings, frame: pd.DataFrame, base: pd.DataFrame | None = None) -> LearningData:
    """``frame`` (and ``base``) with the columns the settings name, and the schema inferred from them."""
    target = settings.data.target if settings.task in SUPERVISED else None
    timestamp = settings.data.timestamp if settings.data.timestamp in frame.columns else None
    frame = frame.reset_index(drop=True)
    seen = frame if base is None else pd.concat([base, frame], ignore_index=True)
    labels = sorted(seen[target].unique().tolist()) if settings.task == "classification" else []
    schema = FeatureSchema.infer(seen, dict(settings.features), settings.task, target, tuple(labels))
    return LearningData(frame, base, seen, schema, target, timestamp)


@dataclass(frozen=True)
class Split:
    """The training rows (``base``'s first) and the validation rows (``frame``'s only)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    weights: np.ndarray | None  # one per row of ``train`` (``base``'s rows weigh 1)
    n_base: int  # the first rows of ``train`` that came from ``base``
    time_ordered: bool

    def describe(self) -> str:
        split = len(self.train) - self.n_base
        return (f"split {split + len(self.valid)} rows: {split} to train, {len(self.valid)} to validate"
                f"{' (time-ordered)' if self.time_ordered else ' (shuffled)'}"
                f"{f'; {self.n_base} more always trained on' if self.n_base else ''}")


def split_rows(data: LearningData, validation_fraction: float, seed: int,
               sample_weight: np.ndarray | None = None) -> Split:
    """Validation rows from ``data.frame`` (the newest when time-ordered); ``data.base`` is all
    trained on. Each training row keeps its ``sample_weight``."""
    train, valid = data_mod.split(data.frame, validation_fraction, data.timestamp, seed)
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)[train.index.to_numpy()]
    n_base = 0 if data.base is None else len(data.base)
    if data.base is not None:
        train = pd.concat([data.base, train], ignore_index=True)
        weights = None if weights is None else np.concatenate([np.ones(n_base), weights])
    return Split(train, valid, weights, n_base, data.timestamp is not None)


def search_params(model: ModelConfig, seed: int, data: LearningData,
                  train: pd.DataFrame) -> tuple[dict[str, Any], SearchResult | None]:
    """``model.params``, with the best of ``model.search`` merged over them when one is configured.
    Unweighted: the search picks parameters, not the fit."""
    params = dict(model.params)
    if model.search is None:
        return params, None
    found = search(data.schema, model.kind, params, model.search, seed, train[data.schema.names],
                   train[data.target], time_ordered=data.timestamp is not None)
    return params | found.best_params, found


def fit_estimator(kind: str, params: dict[str, Any], seed: int, data: LearningData, rows: Split,
                  warm_start: bytes | None = None) -> Trained:
    """The ``kind`` family fitted on the training rows (with their weights)."""
    train = rows.train
    try:
        return fit_model(data.schema, kind, params, seed, train[data.schema.names],
                         train[data.target] if data.target else None, warm_start, sample_weight=rows.weights)
    except InvalidParameterError as exc:  # a parameter value out of range, found at fit time
        raise ConfigError(f"model.params: {exc}") from None


def evaluate_model(model: Trained, data: LearningData, valid: pd.DataFrame, seed: int,
                   expected_rate: float) -> Evaluation:
    """The task's metrics on the validation rows and, with labels, permutation importance: what
    the model relies on."""
    task = data.schema.task
    x = valid[data.schema.names]
    y = valid[data.target] if data.target else None
    preds, proba = model.predict(x), model.predict_proba(x)
    metrics = evaluate.score(task, y, preds, proba, data.labels, scores=model.scores(x),
                             expected_anomaly_rate=expected_rate)
    importance: dict[str, dict[str, float]] = {}
    if y is not None:
        importance = permutation_importance(model, x, y, task, seed, repeats=3, max_rows=1000)
    return Evaluation(metrics, y, preds, proba, importance)


def export_checked(model: Trained, schema: FeatureSchema, valid: pd.DataFrame) -> tuple[bytes, Parity]:
    """The ONNX graph, and its agreement with the native model on ``valid`` (raises
    :class:`~models.errors.ExportError` beyond tolerance)."""
    onnx_bytes = model.to_onnx(schema)
    return onnx_bytes, check_parity(model, onnx_bytes, schema, valid)


def reference_sample(pool: pd.DataFrame, names: list[str], rows: int, seed: int) -> pd.DataFrame:
    """The drift baseline kept with the version: up to ``rows`` rows of ``pool``'s features."""
    return pool[names].sample(n=min(rows, len(pool)), random_state=seed)


def version_metadata(data: LearningData, rows: Split, evaluation: Evaluation, parity: Parity, *, kind: str,
                     params: dict[str, Any], found: SearchResult | None, seed: int, warm_start: bool,
                     started: float, origin: Origin) -> dict[str, Any]:
    """What is stored beside the graph: how it was made, from what, and how well it did."""
    return {
        "kind": kind,
        "params": params,
        "search": found.to_dict() if found else None,
        "metrics": evaluation.metrics,
        # what "metrics" were measured on: the set, its rows, where they came from, their fingerprint
        "evaluation": evaluation_record(data, rows, origin),
        # classifiers: top-class confidence -> chance of being right, from the validation rows; the
        # monitor estimates live accuracy with it before labels arrive
        "confidence_calibration": _confidence_calibration(data, evaluation),
        # regressors only: the validation rows' squared errors (mean, spread), the baseline the
        # monitor's decay test measures a window's against
        **_squared_errors(data, evaluation),
        "parity": parity.to_dict(),
        "rows": {"train": len(rows.train), "validation": len(rows.valid)},
        "data_fingerprint": fingerprint(data.seen[_row_columns(data)]),
        "time_range": _time_range(data.seen, data.timestamp
                                  if data.base is None or data.timestamp in data.base.columns else None),
        "libraries": library_versions(),
        "code_revision": code_revision(),
        "seed": seed,
        "warm_start": warm_start,
        "importance": {name: round(v["mean"], 6) for name, v in evaluation.importance.items()},
        "training_seconds": round(time.perf_counter() - started, 3),
    }


def evaluation_record(data: LearningData, rows: Split, origin: Origin) -> dict[str, Any]:
    """``metadata["evaluation"]``: the validation rows the version's ``metrics`` were measured on.

    ``set`` (``validation``), ``rows``, ``source`` (:meth:`Origin.source`), ``description`` (in
    words), ``fingerprint`` (:func:`rows_fingerprint`) and ``averages`` (:func:`evaluate.averages`).
    Each version validates on its own split of its own data, so two versions' metrics are rarely
    measured on the same rows; the fingerprint says when they are (``models diff``)."""
    valid = rows.valid
    source = origin.source(valid.index)
    which = f"the newest {len(valid)} rows" if rows.time_ordered else f"{len(valid)} random rows"
    return {"set": "validation", "rows": len(valid), "source": source,
            "description": f"{which} of its training data, split off for validation ({describe_source(source)})",
            "fingerprint": rows_fingerprint(valid, _row_columns(data)),
            "averages": evaluate.averages(data.schema.task, len(data.labels))}


def _row_columns(data: LearningData) -> list[str]:
    return [*data.schema.names, *([data.target] if data.target else [])]


def _confidence_calibration(data: LearningData, evaluation: Evaluation) -> dict[str, Any] | None:
    if data.schema.task != "classification" or evaluation.proba is None or len(data.labels) < 2:
        return None
    return evaluate.confidence_calibration(evaluation.y_true, evaluation.proba, data.labels)


def _squared_errors(data: LearningData, evaluation: Evaluation) -> dict[str, Any]:
    """``{"squared_errors": {"mean", "std"}}`` for a regressor with validation rows, else nothing
    (the key is absent: versions from before it, and other tasks, have no such baseline)."""
    if data.schema.task != "regression" or evaluation.y_true is None or len(evaluation.y_true) == 0:
        return {}
    figures = evaluate.errors(evaluation.y_true, evaluation.y_pred)
    return {"squared_errors": {"mean": figures["mse"], "std": figures["squared_error_std"]}}


# -- registering -------------------------------------------------------------------------------------

def register(registry: Registry, fitted: Fitted, *, trigger: Trigger, parent: str | None = None,
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
    return registry.project_dir / "reports" / version


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


def train_version(settings: Settings, frame: pd.DataFrame, registry: Registry, *, trigger: Trigger,
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
