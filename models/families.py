"""Model families: config ``model.kind`` -> a fitted model that can export itself to ONNX.

Every family is a :class:`Family` in :data:`FAMILIES`; tests discover them from there.
:func:`fit_model` is the one entry point: it returns a :class:`Trained` model, whose native
``predict``/``predict_proba`` the parity check compares with its own ONNX graph. Every graph
starts with the same preprocessing (scaling numeric, one-hot encoding categorical features),
so it takes raw features. scikit-learn families are pipelines; neural ones live in
:mod:`models.neural` (PyTorch is imported only when such a model is trained).

The table itself imports no learning library: the settings check ``model.kind`` against it and
a serving worker reads it (:func:`service.batching.batching_enabled`), neither of which fits a
model. scikit-learn is imported when an estimator or a pipeline is built (:func:`_sk`), the
other libraries by their fitters.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from driftloop.models.errors import ConfigError
from driftloop.models.schema import FeatureSchema

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.base import BaseEstimator
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline


class Trained(Protocol):
    """A fitted model of any family."""

    def predict(self, x: pd.DataFrame) -> np.ndarray: ...

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray | None: ...  # None unless a classifier

    def scores(self, x: pd.DataFrame) -> np.ndarray | None: ...  # distances (clustering), anomaly scores

    def to_onnx(self, schema: FeatureSchema) -> bytes: ...


# (schema, x, y, params, seed, warm_start) -> Trained; a Family with weighted=True also takes sample_weight=
Fitter = Callable[..., Trained]


@dataclass(frozen=True)
class Family:
    kind: str
    tasks: tuple[str, ...]
    build: Callable[[str, dict[str, Any], int], BaseEstimator] | None = None  # scikit-learn: (task, params, seed)
    # Trees split on raw values: scaling them only adds float32 rounding that can flip a split
    # in the ONNX graph. Distance and linear models need it.
    scaled: bool = True
    fitter: Fitter | None = None  # any other family: (schema, x, y, params, seed, warm_start) -> Trained
    neural: bool = False  # can fine-tune from the champion's graph (warm start)
    inputs: str = "tabular"  # or "image" / "sequence": one array feature
    weighted: bool = False  # its fitter takes sample_weight (scikit-learn families: read from fit's signature)


class SklearnModel:
    """A fitted scikit-learn pipeline as a :class:`Trained` model."""

    def __init__(self, pipeline: Pipeline, task: str) -> None:
        self.pipeline = pipeline
        self.task = task

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        if self.task == "anomaly":  # scikit-learn says -1 for an outlier; we say 1 = anomaly
            return (self.pipeline.predict(x) == -1).astype(np.int64)
        return self.pipeline.predict(x)

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray | None:
        return self.pipeline.predict_proba(x) if self.task == "classification" else None

    def scores(self, x: pd.DataFrame) -> np.ndarray | None:
        if self.task == "clustering":
            return self.pipeline.transform(x)
        if self.task == "anomaly":
            return -self.pipeline.decision_function(x)
        return None

    def to_onnx(self, schema: FeatureSchema) -> bytes:
        from driftloop.models.onnx_model import export_onnx

        return export_onnx(self.pipeline, schema)


def _sk(name: str) -> Callable[..., BaseEstimator]:
    """scikit-learn's estimator ``name`` (``"<module>.<Class>"`` under ``sklearn``), imported when
    one is built: calling the result as the class builds one."""
    module, cls = name.rsplit(".", 1)

    def build(*args: Any, **params: Any) -> BaseEstimator:
        return getattr(importlib.import_module(f"sklearn.{module}"), cls)(*args, **params)

    build.__qualname__ = build.__name__ = cls
    return build


def _by_task(classifier: Callable[..., BaseEstimator], regressor: Callable[..., BaseEstimator],
             seeded: bool = True) -> Callable[[str, dict[str, Any], int], BaseEstimator]:
    def build(task: str, params: dict[str, Any], seed: int) -> BaseEstimator:
        cls = classifier if task == "classification" else regressor
        extra = {"random_state": seed} if seeded else {}
        return cls(**(extra | params))
    return build


def _only(estimator: Callable[..., BaseEstimator], seeded: bool) -> Callable[[str, dict[str, Any], int], BaseEstimator]:
    def build(task: str, params: dict[str, Any], seed: int) -> BaseEstimator:
        return estimator(**(({"random_state": seed} if seeded else {}) | params))
    return build


CLS_REG = ("classification", "regression")
DEFAULT_CONTAMINATION = 0.05  # isolation_forest: "auto" flagged 40% of the loans data as anomalies


def expected_anomaly_rate(params: dict[str, Any]) -> float:
    """The share of rows an anomaly model is meant to flag (its ``contamination``)."""
    value = params.get("contamination", DEFAULT_CONTAMINATION)
    return DEFAULT_CONTAMINATION if value == "auto" else float(value)


FAMILIES: dict[str, Family] = {f.kind: f for f in (
    Family("linear_regression", ("regression",), _only(_sk("linear_model.LinearRegression"), seeded=False)),
    Family("ridge", ("regression",), _only(_sk("linear_model.Ridge"), seeded=True)),
    Family("logistic_regression", ("classification",),
           _only(lambda **kw: _sk("linear_model.LogisticRegression")(**({"max_iter": 1000} | kw)), seeded=True)),
    Family("decision_tree", CLS_REG, _by_task(_sk("tree.DecisionTreeClassifier"), _sk("tree.DecisionTreeRegressor")),
           scaled=False),
    Family("random_forest", CLS_REG, _by_task(
        lambda **kw: _sk("ensemble.RandomForestClassifier")(**({"n_estimators": 100, "n_jobs": 1} | kw)),
        lambda **kw: _sk("ensemble.RandomForestRegressor")(**({"n_estimators": 100, "n_jobs": 1} | kw))),
        scaled=False),
    Family("gradient_boosting", CLS_REG, _by_task(_sk("ensemble.GradientBoostingClassifier"),
                                                  _sk("ensemble.GradientBoostingRegressor")), scaled=False),
    # SVC(probability=True) is deprecated in scikit-learn 1.9: calibrate explicitly instead.
    Family("svm", CLS_REG, _by_task(
        lambda random_state=None, **kw: _sk("calibration.CalibratedClassifierCV")(
            _sk("svm.SVC")(random_state=random_state, **kw), ensemble=False),
        lambda random_state=None, **kw: _sk("svm.SVR")(**kw))),
    Family("knn", CLS_REG, _by_task(_sk("neighbors.KNeighborsClassifier"), _sk("neighbors.KNeighborsRegressor"),
                                    seeded=False)),
    Family("kmeans", ("clustering",),
           _only(lambda **kw: _sk("cluster.KMeans")(**({"n_clusters": 4, "n_init": 4} | kw)), seeded=True)),
    Family("isolation_forest", ("anomaly",),
           _only(lambda **kw: _sk("ensemble.IsolationForest")(**({"contamination": DEFAULT_CONTAMINATION} | kw)),
                 seeded=True), scaled=False),
)}


def _mlp(schema: FeatureSchema, x: pd.DataFrame, y: pd.Series, params: dict[str, Any], seed: int,
         warm_start: bytes | None) -> Trained:
    from driftloop.models.neural import fit_mlp  # torch only when a neural model is trained

    return fit_mlp(schema, x, y, params, seed, warm_start)


def _autoencoder(schema: FeatureSchema, x: pd.DataFrame, y: pd.Series | None, params: dict[str, Any], seed: int,
                 warm_start: bytes | None) -> Trained:
    from driftloop.models.neural import fit_autoencoder

    return fit_autoencoder(schema, x, y, params, seed, warm_start)


def _lightgbm(schema: FeatureSchema, x: pd.DataFrame, y: pd.Series | None, params: dict[str, Any], seed: int,
              warm_start: bytes | None, sample_weight: np.ndarray | None = None) -> Trained:
    from driftloop.models.boosting import fit_boosting  # lightgbm and onnxmltools only when used

    return fit_boosting(schema, x, y, params, seed, warm_start, sample_weight=sample_weight)


# Histogram gradient boosting: scikit-learn's HistGradientBoosting* do not convert with
# skl2onnx 1.20 under protobuf 7 (a bool in an int attribute), LightGBM via onnxmltools does.
FAMILIES["lightgbm"] = Family("lightgbm", CLS_REG, fitter=_lightgbm, weighted=True)


def _array_net(kind: str) -> Fitter:
    def fit(schema: FeatureSchema, x: pd.DataFrame, y: pd.Series | None, params: dict[str, Any], seed: int,
            warm_start: bytes | None) -> Trained:
        from driftloop.models.array_nets import fit_array_net

        return fit_array_net(kind, schema, x, y, params, seed, warm_start)
    return fit


FAMILIES["cnn"] = Family("cnn", ("classification",), fitter=_array_net("cnn"), neural=True, inputs="image")
FAMILIES["gru"] = Family("gru", CLS_REG, fitter=_array_net("gru"), neural=True, inputs="sequence")
FAMILIES["lstm"] = Family("lstm", CLS_REG, fitter=_array_net("lstm"), neural=True, inputs="sequence")
FAMILIES["mlp"] = Family("mlp", CLS_REG, fitter=_mlp, neural=True)
FAMILIES["autoencoder"] = Family("autoencoder", ("anomaly",), fitter=_autoencoder, neural=True)


def family_of(kind: str, task: str) -> Family:
    family = FAMILIES.get(kind)
    if family is None:
        raise ConfigError(f"model.kind: unknown kind {kind!r}; available: {sorted(FAMILIES)}")
    if task not in family.tasks:
        raise ConfigError(f"model.kind: {kind!r} does not support task {task!r}; it supports {family.tasks}")
    return family


def preprocessor(schema: FeatureSchema, scaled: bool = True) -> ColumnTransformer:
    """Scale numeric features (unless ``scaled`` is False), one-hot encode categorical ones."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    transformers: list[tuple[str, Any, list[str]]] = []
    if schema.numeric:
        transformers.append(("num", StandardScaler() if scaled else "passthrough", schema.numeric))
    if schema.categorical:
        transformers.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), schema.categorical))
    return ColumnTransformer(transformers)


def fit_model(schema: FeatureSchema, kind: str, params: dict[str, Any] | None, seed: int,
              x: pd.DataFrame, y: pd.Series | None, warm_start: bytes | None = None,
              sample_weight: np.ndarray | None = None) -> Trained:
    """Fit the ``kind`` family on features ``x`` and target ``y`` (None for unsupervised tasks);
    neural families may start from the weights in ``warm_start`` (an earlier version's graph).

    ``sample_weight`` (one per row): passed to the estimator's ``fit`` where it takes one
    (scikit-learn estimators whose ``fit`` has ``sample_weight``, LightGBM); every other kind
    (k-nearest neighbours, the neural ones) learns from :func:`resample` of the rows instead, the
    one fallback: as many rows drawn with replacement, each with probability proportional to its
    weight, deterministic with ``seed``.
    """
    from sklearn.utils.validation import has_fit_parameter

    family = family_of(kind, schema.task)
    if warm_start is not None and not family.neural:
        raise ConfigError(f"model.warm_start: {kind!r} cannot fine-tune; only neural kinds can")
    pipeline = build_pipeline(schema, kind, params, seed) if family.fitter is None else None
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if weights is not None:
        takes = family.weighted if pipeline is None else has_fit_parameter(pipeline.named_steps["model"],
                                                                            "sample_weight")
        if not takes:
            x, y = resample(x, y, weights, seed)
            weights = None
    if pipeline is None:
        try:
            return family.fitter(schema, x, y, dict(params or {}), seed, warm_start,
                                 **({} if weights is None else {"sample_weight": weights}))
        except TypeError as exc:
            raise ConfigError(f"model.params: {kind!r} ({schema.task}) refused them: {exc}") from None
    fit_params = {} if weights is None else {"model__sample_weight": weights}
    pipeline.fit(x, y, **fit_params) if y is not None else pipeline.fit(x, **fit_params)
    return SklearnModel(pipeline, schema.task)


def resample(x: pd.DataFrame, y: pd.Series | None, sample_weight: np.ndarray, seed: int
             ) -> tuple[pd.DataFrame, pd.Series | None]:
    """``len(x)`` rows drawn with replacement, with probability proportional to ``sample_weight``
    (``seed``-deterministic), kept in their original order: weights for kinds that take none."""
    w = np.asarray(sample_weight, dtype=np.float64)
    if len(w) != len(x) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"sample_weight: {len(w)} finite, non-negative weights with a positive sum needed "
                         f"for {len(x)} rows")
    picked = np.sort(np.random.default_rng(seed).choice(len(x), size=len(x), replace=True, p=w / w.sum()))
    return x.iloc[picked].reset_index(drop=True), None if y is None else y.iloc[picked].reset_index(drop=True)


def build_pipeline(schema: FeatureSchema, kind: str, params: dict[str, Any] | None = None,
                   seed: int = 42) -> Pipeline:
    """An unfitted pipeline: preprocessing for ``schema``'s features, then the ``kind`` model."""
    from sklearn.pipeline import Pipeline

    family = family_of(kind, schema.task)
    if family.build is None:
        raise ConfigError(f"model.kind: {kind!r} is not a scikit-learn family")
    try:
        model = family.build(schema.task, dict(params or {}), seed)
    except TypeError as exc:  # a parameter this estimator does not take
        raise ConfigError(f"model.params: {kind!r} ({schema.task}) refused them: {exc}") from None
    return Pipeline([("pre", preprocessor(schema, family.scaled)), ("model", model)])


def unfit(kind: str, task: str, features: dict[str, str]) -> str | None:
    """Why model kind ``kind`` cannot learn ``task`` from ``features`` (name -> kind), or None:
    tabular kinds (the scikit-learn ones, LightGBM, the MLP) take numeric and categorical features;
    ``cnn`` exactly one image, ``gru``/``lstm`` exactly one sequence. The settings refuse a
    tournament kind that cannot (driftloop/settings.py); the retrain's tournament asks again."""
    family = FAMILIES[kind]
    if task not in family.tasks:
        return f"{kind} does not learn task {task!r} (only {', '.join(family.tasks)})"
    media = sorted({k for k in features.values() if k in ("image", "sequence")})
    if family.inputs == "tabular" and media:
        return f"{kind} takes numeric and categorical features, not {' or '.join(media)}"
    if family.inputs != "tabular" and (len(features) != 1 or media != [family.inputs]):
        return f"{kind} takes exactly one {family.inputs} feature"
    return None
