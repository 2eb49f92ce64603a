"""Data and prediction drift with Evidently 0.7: a window of logged rows against a version's reference.

Evidently's ``DataDriftPreset`` computes every column's drift three times (its column count,
one ``ValueDrift`` per column, and the rendered table), with histograms, correlations and plots
around each. A :class:`DriftBaseline` gives the same per-column answers with one call of the
same Evidently statistical test per column:

- prepared once per model version: the reference columns (media summaries computed, infinities
  and missing values dropped as Evidently drops them), their distinct-value counts, numeric
  columns sorted with their spread (Wasserstein), categories counted (Jensen-Shannon), the
  method and threshold of every column resolved by Evidently's own ``DataDriftOptions`` from the
  config, and the version's predictions on its reference (prediction drift);
- per window: the window's columns, Evidently's default method where none is configured (the
  rule of ``_get_default_stattest``: reference size <= 1000 -> K-S, chi-square or Z-test,
  larger -> Wasserstein or Jensen-Shannon, by type and distinct values), then that test itself
  (Wasserstein and Jensen-Shannon by Evidently's formulas on the prepared reference: a few
  milliseconds for a 500-row window of seven columns).

Scores, thresholds and verdicts are Evidently's (``tests/unit/test_drift.py`` checks them against the
preset; ``bench/drift.py`` times both). The HTML report, which needs the preset's widgets, is
built only when asked for (:meth:`DriftResult.save_html`: flagged windows).

Images and sequences: when the version's graph returns an ``embedding`` (CNN, GRU, LSTM), the
feature is judged on the embeddings of its rows with Evidently's embeddings drift methods (what
its ``EmbeddingsDrift`` metric computes; by default a classifier separating reference from window
rows, drift when its ROC AUC exceeds 0.55); otherwise through a few summary columns
(:func:`summarise`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from driftloop.adapters import evidently as ev
from driftloop.models.errors import ConfigError
from driftloop.models.schema import MEDIA_KINDS, FeatureSchema, as_array, plain_label

if TYPE_CHECKING:
    from driftloop.settings import DriftConfig

NUM, CAT = "num", "cat"  # Evidently's ColumnType values
PREDICTION = "prediction"  # the logged output column, and its key in the results
_SMALL_REFERENCE = 1000  # Evidently: up to this many reference values, a statistical test; beyond, a distance


def _evidently() -> None:
    ev.no_telemetry()  # Evidently's telemetry: never phone home


@dataclass(frozen=True)
class DriftResult:
    share: float  # drifted features / features
    drifted: list[str]
    columns: dict[str, dict[str, Any]]  # feature -> {method, score, threshold, drifted}
    prediction: dict[str, Any] | None = None  # the model's output column, same fields; None: no rows
    report: Callable[[], Any] | None = field(default=None, repr=False, compare=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def snapshot(self) -> Any:
        """Evidently's snapshot of the same comparison (``DataDriftPreset``), built on first use."""
        if "snapshot" not in self._cache:
            if self.report is None:
                raise ValueError("this result carries no report")
            self._cache["snapshot"] = self.report()
        return self._cache["snapshot"]

    def save_html(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.snapshot.save_html(str(path))
        return path


def summarise(values: pd.Series, kind: str, name: str) -> pd.DataFrame:
    """Images and sequences as a few numeric columns Evidently can compare: an image's mean
    intensity (brightness), spread (noise, contrast) and centre of mass (rotation, shift); a
    sequence's mean and spread per channel."""
    arrays = np.stack([as_array(v, np.float64) for v in values])
    if kind == "image":
        total = arrays.sum(axis=(1, 2))
        safe = np.where(total > 0, total, 1.0)
        rows = np.arange(arrays.shape[1])[None, :, None]
        cols = np.arange(arrays.shape[2])[None, None, :]
        return pd.DataFrame({
            f"{name}.mean": arrays.mean(axis=(1, 2)),
            f"{name}.std": arrays.std(axis=(1, 2)),
            f"{name}.row_centre": (arrays * rows).sum(axis=(1, 2)) / safe,
            f"{name}.col_centre": (arrays * cols).sum(axis=(1, 2)) / safe,
        })
    out = {}
    for c in range(arrays.shape[2]):
        out[f"{name}.ch{c}.mean"] = arrays[:, :, c].mean(axis=1)
        out[f"{name}.ch{c}.std"] = arrays[:, :, c].std(axis=1)
    return pd.DataFrame(out)


def frame_for_drift(frame: pd.DataFrame, schema: FeatureSchema, summaries: bool = True,
                    ) -> tuple[pd.DataFrame, dict[str, str]]:
    """The columns Evidently compares (media as summaries, or left out: ``summaries=False``) and
    each one's type (``num``/``cat``)."""
    columns: dict[str, pd.Series] = {}
    types: dict[str, str] = {}
    for feat in schema.features:
        col = frame[feat.name].reset_index(drop=True)
        if feat.kind in MEDIA_KINDS:
            if not summaries:
                continue
            summary = summarise(col, feat.kind, feat.name)
            columns.update(summary.items())
            types |= dict.fromkeys(summary.columns, NUM)
        elif feat.kind == "numeric":
            columns[feat.name] = col if col.dtype == np.float64 else pd.to_numeric(col).astype(float)
            types[feat.name] = NUM
        else:
            columns[feat.name] = col if col.dtype == pd.api.types.pandas_dtype(str) else col.astype(str)
            types[feat.name] = CAT
    return pd.DataFrame(columns, index=pd.RangeIndex(len(frame))), types


def prediction_type(task: str) -> str:
    """Regression predictions are numbers; classes, clusters and anomaly flags are categories."""
    return NUM if task == "regression" else CAT


def as_prediction(values: Any, kind: str) -> pd.Series:
    """Logged (JSON) or graph predictions as one comparable column: ``1`` and ``1.0`` alike."""
    series = pd.Series(np.asarray(values).reshape(-1) if not isinstance(values, pd.Series) else values.to_numpy())
    if kind == NUM:
        return pd.to_numeric(series).astype(float).rename(PREDICTION).reset_index(drop=True)
    if series.dtype.kind in "iu":  # integers: what _label makes of each, for the whole column at once
        return series.astype(str).rename(PREDICTION)
    return series.map(_label).rename(PREDICTION).reset_index(drop=True)


def _label(value: Any) -> str:
    """A class as the categorical value Evidently compares: ``1`` and ``1.0`` alike."""
    return str(plain_label(value))


# -- methods and thresholds: the config in Evidently's terms ---------------------------------------
def preset_options(config: DriftConfig | None, types: dict[str, str]) -> dict[str, Any]:
    """``DataDriftPreset`` keyword arguments for the config (``{}``: Evidently's defaults).

    Per-column settings name report columns (a feature, a media summary such as ``img.mean``,
    or ``prediction``); the prediction's own section applies to the ``prediction`` column.
    """
    if config is None:
        return {}
    per_method = {name: c.method for name, c in config.columns.items() if c.method and name in types}
    per_threshold = {name: c.threshold for name, c in config.columns.items()
                     if c.threshold is not None and name in types}
    if PREDICTION in types:
        if config.prediction.method and PREDICTION not in per_method:
            per_method[PREDICTION] = config.prediction.method
        if config.prediction.threshold is not None and PREDICTION not in per_threshold:
            per_threshold[PREDICTION] = config.prediction.threshold
    options = {"num_method": config.numeric.method, "cat_method": config.categorical.method,
               "num_threshold": config.numeric.threshold, "cat_threshold": config.categorical.threshold,
               "per_column_method": per_method or None, "per_column_threshold": per_threshold or None}
    return {key: value for key, value in options.items() if value is not None}


def _resolve(config: DriftConfig | None, types: dict[str, str]) -> dict[str, tuple[Any, float | None]]:
    """Column -> (configured Evidently StatTest or None, configured threshold or None), resolved
    by Evidently's ``DataDriftOptions`` exactly as the preset resolves them."""
    _evidently()
    if config is not None:
        unknown = sorted(set(config.columns) - set(types))
        if unknown:
            raise ConfigError(f"monitoring.drift.columns: unknown column {unknown[0]!r}; columns are {sorted(types)}")
    kw = preset_options(config, types)
    options = ev.drift_options(
        num_features_stattest=kw.get("num_method"), cat_features_stattest=kw.get("cat_method"),
        per_feature_stattest=kw.get("per_column_method"), num_features_threshold=kw.get("num_threshold"),
        cat_features_threshold=kw.get("cat_threshold"), per_feature_threshold=kw.get("per_column_threshold"))
    out = {}
    for name, kind in types.items():
        method = options.get_feature_stattest_func(name, kind)
        test = None
        if method is not None:
            try:
                test = ev.registered_stattest(method, kind)
            except ValueError as exc:  # Evidently lists the valid names
                where = ("columns." + name if config and name in config.columns
                         else "prediction" if name == PREDICTION and config and config.prediction.method
                         else "numeric" if kind == NUM else "categorical")
                raise ConfigError(f"monitoring.drift.{where}.method: {exc}") from None
        out[name] = (test, options.get_threshold(name, kind))
    return out


# -- the prepared reference ------------------------------------------------------------------------
def _clean(values: pd.Series) -> pd.Series:
    """What Evidently compares: infinities and missing values dropped."""
    if values.dtype.kind == "f":
        finite = np.isfinite(values.to_numpy())
        return values if finite.all() else values[finite]
    if isinstance(values.dtype, pd.StringDtype):  # strings: no infinity to drop
        return values.dropna() if values.hasnans else values
    return values.replace([-np.inf, np.inf], np.nan).dropna()


@dataclass(frozen=True)
class _Column:
    name: str
    kind: str  # num | cat
    reference: pd.Series  # cleaned
    distinct: int  # distinct reference values
    test: Any  # configured Evidently StatTest, or None: Evidently's default by type and size
    threshold: float | None  # configured, or None: the method's default
    sorted: np.ndarray | None = None  # numeric: the reference sorted (Wasserstein)
    spread: float = 0.0  # numeric: the reference's standard deviation, Evidently's way (Wasserstein's norm)
    # Jensen-Shannon on categories (every categorical column, numeric ones with few values): the
    # reference's distinct values and their counts
    categories: frozenset[Any] | None = None
    counts: dict[Any, int] | None = None

    def compare(self, current: pd.Series) -> dict[str, Any]:
        cur = _clean(current)
        if cur.empty:
            raise ValueError(f"column {self.name!r}: the window holds no finite value")
        if self.kind == NUM and not pd.api.types.is_numeric_dtype(cur):
            raise ValueError(f"column {self.name!r} in the window should contain numbers only")
        test = self.test or self._default_test(cur)
        if test.name == "wasserstein":  # Evidently's own formula, on the prepared sorted reference
            threshold = test.default_threshold if self.threshold is None else self.threshold
            score = _wasserstein(self.sorted, cur) / max(self.spread, 0.001)
            drifted = score >= threshold
        elif test.name == "jensenshannon" and self.counts is not None:  # ...on the prepared counts
            threshold = test.default_threshold if self.threshold is None else self.threshold
            score = _jensenshannon(self, cur)
            drifted = score >= threshold
        else:
            with np.errstate(divide="ignore"):  # chi-square, a category unseen in the reference: p = 0 (drift)
                result = test(self.reference, cur, ev.column_type(self.kind), self.threshold)
            score, drifted, threshold = result.drift_score, result.drifted, result.actual_threshold
        return {"method": test.display_name, "score": round(float(score), 6), "threshold": threshold,
                "drifted": bool(drifted)}

    def _default_test(self, current: pd.Series) -> Any:
        """Evidently's ``_get_default_stattest``, with the reference half of its distinct-value
        count prepared: the union with the window is only counted when it decides the method."""
        st = ev.default_stattests()
        small = len(self.reference) <= _SMALL_REFERENCE
        if not small and self.kind == CAT:
            return st.jensenshannon
        cut = 5 if self.kind == NUM else 2  # numeric: many values (K-S, Wasserstein) or few; categorical: chi or z
        distinct = self.distinct if self.distinct > cut else pd.concat([self.reference, current]).nunique()
        if self.kind == NUM and distinct > 5:
            return st.ks if small else st.wasserstein
        if not small:  # numeric with at most 5 values
            return st.jensenshannon
        return st.chi if distinct > 2 else st.z


def _jensenshannon(column: _Column, current: pd.Series) -> float:
    """Evidently's ``_jensenshannon`` where its ``get_binned_data`` counts values (categories, or
    numbers with at most 20 distinct reference values), on the reference's prepared counts: the
    same values in the same order (the union of the two samples' distinct values, built as
    Evidently builds it), so the same float."""
    from scipy.spatial import distance

    assert column.categories is not None and column.counts is not None
    counts = Counter(current.tolist())  # in order of first appearance, as ``unique`` gives them
    keys = list(column.categories | set(counts))
    n_ref, n_cur = len(column.reference), len(current)
    reference = np.array([column.counts.get(key, 0) / n_ref for key in keys])
    window = np.array([counts.get(key, 0) / n_cur for key in keys])
    return float(distance.jensenshannon(reference, window, None))


def _wasserstein(reference_sorted: np.ndarray, current: pd.Series) -> float:
    """``scipy.stats.wasserstein_distance(reference, current)``, the same operations in the same
    order (so the same float), with the reference sorted once instead of at every call."""
    cur = np.sort(current.to_numpy(dtype=float))
    merged = np.concatenate((reference_sorted, cur))
    merged.sort(kind="mergesort")
    deltas = np.diff(merged)
    points = merged[:-1]
    ref_cdf = reference_sorted.searchsorted(points, "right") / reference_sorted.size
    cur_cdf = cur.searchsorted(points, "right") / cur.size
    return float(np.vecdot(np.abs(ref_cdf - cur_cdf), deltas))


@dataclass(frozen=True)
class _Embeddings:
    """A network's embeddings of the reference rows, compared with Evidently's embedding drift
    methods (what its ``EmbeddingsDrift`` metric calls, without the t-SNE picture it draws)."""

    name: str  # the media feature's
    reference: pd.DataFrame  # one column per dimension: <name>.e0, <name>.e1, ...
    method: Any  # an Evidently embeddings DriftMethod

    def compare(self, current: np.ndarray) -> dict[str, Any]:
        cur = pd.DataFrame(np.asarray(current, dtype=float), columns=self.reference.columns)
        score, drifted, kind = self.method(cur, self.reference.copy())  # the model method adds a column
        threshold = None if getattr(self.method, "bootstrap", None) else getattr(self.method, "threshold", None)
        return {"method": f"embeddings {kind}", "score": round(float(score), 6), "threshold": threshold,
                "drifted": bool(drifted)}


def embeddings_method(config: DriftConfig | None, reference_rows: int) -> Any:
    """The configured Evidently embeddings drift method; Evidently's default otherwise: a
    classifier told to separate reference from window (ROC AUC > 0.55), bootstrapped below 1,000
    reference rows (``EmbeddingsDriftMetric.calculate``)."""
    methods = ev.embedding_drift_methods()

    chosen = config.embeddings if config is not None else None
    if chosen is None or (chosen.method is None and chosen.threshold is None and chosen.bootstrap is None):
        return methods.model(bootstrap=reference_rows < 1000)
    kwargs: dict[str, Any] = {"threshold": chosen.threshold, "bootstrap": chosen.bootstrap}
    if chosen.method in (None, "model") and chosen.bootstrap is None:
        kwargs["bootstrap"] = reference_rows < 1000
    if chosen.method == "ratio":
        kwargs.pop("bootstrap")  # the ratio method has none
    return getattr(methods, chosen.method or "model")(**{k: v for k, v in kwargs.items() if v is not None})


class DriftBaseline:
    """A model version's reference sample, prepared once and compared with every window.

    ``model`` (an :class:`~models.onnx_model.OnnxModel` of ``version``), when given, predicts the
    reference once: prediction drift compares those with the window's logged predictions of the
    rows that ``version`` answered. When its graph also returns an embedding (image and sequence
    networks), the image or sequence feature is judged on the embeddings of its rows instead of
    its summary columns: the reference's are computed once, each window's with the same model.
    The HTML report shows Evidently's ``EmbeddingsDrift`` only with ``report_embeddings`` (or when
    there is nothing else to show): its t-SNE picture takes about 30 s on 2,000 rows here.
    """

    def __init__(self, reference: pd.DataFrame, schema: FeatureSchema, config: DriftConfig | None = None, *,
                 version: str | None = None, model: Any = None, report_embeddings: bool = False) -> None:
        self.schema = schema
        self.config = config
        self.version = version
        self.model = model
        self.report_embeddings = report_embeddings
        self.embeddings: _Embeddings | None = None
        embedded = model is not None and getattr(model, "has_embedding", False) and len(schema.media) == 1
        self.frame, self.types = frame_for_drift(reference, schema, summaries=not embedded)
        if embedded:
            name = schema.media[0].name
            values = np.asarray(model.embed_frame(reference), dtype=float)
            columns = [f"{name}.e{i}" for i in range(values.shape[1])]
            self.embeddings = _Embeddings(name, pd.DataFrame(values, columns=columns),
                                          embeddings_method(config, len(reference)))
        if model is not None:
            kind = prediction_type(schema.task)
            self.frame[PREDICTION] = as_prediction(model.predict_frame(reference)[0], kind)
            self.types[PREDICTION] = kind
        resolved = _resolve(config, self.types)
        self._columns = {}
        for name, kind in self.types.items():
            ref = _clean(self.frame[name])
            if ref.empty:
                raise ValueError(f"column {name!r}: the reference holds no finite value")
            prepared: dict[str, Any] = {}
            distinct = int(ref.nunique())
            if kind == NUM:  # Wasserstein's inputs: the sorted reference and its spread (Evidently's np.std)
                prepared = {"sorted": np.sort(ref.to_numpy(dtype=float)), "spread": float(np.std(ref))}
            if kind == CAT or distinct <= 20:  # Jensen-Shannon's, where Evidently counts values
                prepared |= {"categories": frozenset(ref.unique()), "counts": dict(ref.value_counts())}
            self._columns[name] = _Column(name, kind, ref, distinct, *resolved[name], **prepared)

    @property
    def features(self) -> list[str]:
        """What the drift share counts: columns (features, media summaries) and embedded features."""
        names = [name for name in self.types if name != PREDICTION]
        return names + ([self.embeddings.name] if self.embeddings is not None else [])

    def check(self, window: pd.DataFrame) -> DriftResult:
        """The window's rows (features; and ``prediction``, ``model_version`` when logged)."""
        current, _ = frame_for_drift(window, self.schema, summaries=self.embeddings is None)
        columns = {name: self._columns[name].compare(current[name]) for name in self.types if name != PREDICTION}
        embedded = None
        if self.embeddings is not None:
            embedded = np.asarray(self.model.embed_frame(window), dtype=float)
            columns[self.embeddings.name] = self.embeddings.compare(embedded)
        prediction = None
        served = self._served_predictions(window)
        if served is not None:
            prediction = self._columns[PREDICTION].compare(served)
        drifted = [name for name in self.features if columns[name]["drifted"]]
        return DriftResult(len(drifted) / len(columns), drifted, columns, prediction,
                           report=lambda: self.report(current, served, embedded))

    def _served_predictions(self, window: pd.DataFrame) -> pd.Series | None:
        """The logged predictions of the rows this version answered, aligned with the window's
        rows (missing elsewhere: Evidently drops missing values before comparing)."""
        if PREDICTION not in self.types or PREDICTION not in window.columns:
            return None
        mine = np.ones(len(window), dtype=bool)
        if "model_version" in window.columns and self.version is not None:
            mine = (window["model_version"] == self.version).to_numpy()
        if not mine.any():
            return None
        if mine.all():  # the usual window: every row answered by this version
            return as_prediction(window[PREDICTION], self.types[PREDICTION]).set_axis(pd.RangeIndex(len(window)))
        values = as_prediction(window[PREDICTION][mine], self.types[PREDICTION])
        return values.set_axis(np.flatnonzero(mine)).reindex(range(len(window)))

    def report(self, current: pd.DataFrame, predictions: pd.Series | None = None,
               embedded: np.ndarray | None = None) -> Any:
        """Evidently's ``DataDriftPreset`` on the same columns with the same methods, and its
        ``EmbeddingsDrift`` on the embeddings (the snapshot, for its HTML)."""
        reference = self.frame
        if predictions is None:
            reference = reference.drop(columns=[PREDICTION], errors="ignore")
        else:
            current = current.assign(**{PREDICTION: predictions.to_numpy()})
        embeddings = None
        types = {n: self.types[n] for n in reference.columns if n in self.types}
        if self.embeddings is not None and embedded is not None and (self.report_embeddings or not types):
            emb = self.embeddings
            embeddings = {emb.name: (list(emb.reference.columns), emb.method)}
            reference = pd.concat([reference, emb.reference], axis=1)
            current = pd.concat([current, pd.DataFrame(embedded, columns=emb.reference.columns)], axis=1)
        return run_preset(reference, current, types, self.config, embeddings)


def run_preset(reference: pd.DataFrame, current: pd.DataFrame, types: dict[str, str],
               config: DriftConfig | None = None,
               embeddings: dict[str, tuple[list[str], Any]] | None = None) -> Any:
    """``Report([DataDriftPreset(...)], include_tests=True)`` on prepared frames: the snapshot;
    ``embeddings`` (name -> columns, Evidently drift method) add one ``EmbeddingsDrift`` each
    (``DataDriftPreset(embeddings=...)`` would ignore them)."""
    _evidently()
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.presets import DataDriftPreset

    embeddings = embeddings or {}
    definition = DataDefinition(numerical_columns=[n for n, k in types.items() if k == NUM],
                                categorical_columns=[n for n, k in types.items() if k == CAT],
                                embeddings={name: cols for name, (cols, _) in embeddings.items()} or None)
    ref = Dataset.from_pandas(reference, data_definition=definition)
    cur = Dataset.from_pandas(current, data_definition=definition)
    columns = list(types) if embeddings else None  # the embedding columns are not features
    metrics: list[Any] = [DataDriftPreset(columns=columns, **preset_options(config, types))] if types else []
    metrics += [EmbeddingsDrift(embeddings_name=name, drift_method=method) for name, (_, method) in embeddings.items()]
    return Report(metrics, include_tests=True).run(cur, ref)


def preset_columns(snapshot: Any) -> dict[str, dict[str, Any]]:
    """Per column of a preset's snapshot: method, score, threshold and verdict (its test status)."""
    result = snapshot.dict()
    status = {t["metric_config"]["metric_id"]: t["status"] for t in result.get("tests", []) if t.get("id") == "drift"}
    out: dict[str, dict[str, Any]] = {}
    for metric in result["metrics"]:
        cfg = metric["config"]
        if not cfg.get("type", "").endswith(":ValueDrift"):
            continue
        out[cfg["column"]] = {"method": cfg.get("method"), "score": round(float(metric["value"]), 6),
                              "threshold": cfg.get("threshold"), "drifted": status[metric["id"]] == "FAIL"}
    return out


def check_drift(reference: pd.DataFrame, current: pd.DataFrame, schema: FeatureSchema,
                config: DriftConfig | None = None) -> DriftResult:
    """One comparison without keeping the prepared reference (features only)."""
    return DriftBaseline(reference, schema, config).check(current)
