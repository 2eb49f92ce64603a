"""Model families: config ``model.kind`` -> a scikit-learn pipeline with preprocessing inside.

Every family is a :class:`Family` in :data:`FAMILIES`; tests discover them from there. The
pipeline always starts with the same preprocessing (scaling numeric, one-hot encoding
categorical features), so the exported ONNX graph takes raw features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sklearn import ensemble, linear_model, neighbors, svm, tree
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from models.errors import ConfigError
from models.schema import FeatureSchema


@dataclass(frozen=True)
class Family:
    kind: str
    tasks: tuple[str, ...]
    build: Callable[[str, dict[str, Any], int], BaseEstimator]  # (task, params, seed) -> estimator
    # Trees split on raw values: scaling them only adds float32 rounding that can flip a split
    # in the ONNX graph. Distance and linear models need it.
    scaled: bool = True


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
FAMILIES: dict[str, Family] = {f.kind: f for f in (
    Family("linear_regression", ("regression",), _only(linear_model.LinearRegression, seeded=False)),
    Family("ridge", ("regression",), _only(linear_model.Ridge, seeded=True)),
    Family("logistic_regression", ("classification",),
           _only(lambda **kw: linear_model.LogisticRegression(**({"max_iter": 1000} | kw)), seeded=True)),
    Family("decision_tree", CLS_REG, _by_task(tree.DecisionTreeClassifier, tree.DecisionTreeRegressor),
           scaled=False),
    Family("random_forest", CLS_REG, _by_task(
        lambda **kw: ensemble.RandomForestClassifier(**({"n_estimators": 100, "n_jobs": 1} | kw)),
        lambda **kw: ensemble.RandomForestRegressor(**({"n_estimators": 100, "n_jobs": 1} | kw))), scaled=False),
    Family("gradient_boosting", CLS_REG, _by_task(ensemble.GradientBoostingClassifier,
                                                  ensemble.GradientBoostingRegressor), scaled=False),
    # SVC(probability=True) is deprecated in scikit-learn 1.9: calibrate explicitly instead.
    Family("svm", CLS_REG, _by_task(
        lambda random_state=None, **kw: CalibratedClassifierCV(svm.SVC(random_state=random_state, **kw),
                                                               ensemble=False),
        lambda random_state=None, **kw: svm.SVR(**kw))),
    Family("knn", CLS_REG, _by_task(neighbors.KNeighborsClassifier, neighbors.KNeighborsRegressor,
                                    seeded=False)),
)}


def build_pipeline(schema: FeatureSchema, kind: str, params: dict[str, Any] | None = None,
                   seed: int = 42) -> Pipeline:
    """An unfitted pipeline: preprocessing for ``schema``'s features, then the ``kind`` model."""
    family = FAMILIES.get(kind)
    if family is None:
        raise ConfigError(f"model.kind: unknown kind {kind!r}; available: {sorted(FAMILIES)}")
    if schema.task not in family.tasks:
        raise ConfigError(f"model.kind: {kind!r} does not support task {schema.task!r}; it supports {family.tasks}")
    transformers = []
    if schema.numeric:
        transformers.append(("num", StandardScaler() if family.scaled else "passthrough", schema.numeric))
    if schema.categorical:
        transformers.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), schema.categorical))
    try:
        model = family.build(schema.task, dict(params or {}), seed)
    except TypeError as exc:  # a parameter this estimator does not take
        raise ConfigError(f"model.params: {kind!r} ({schema.task}) refused them: {exc}") from None
    return Pipeline([("pre", ColumnTransformer(transformers)), ("model", model)])
