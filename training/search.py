"""Hyperparameter search from config (``model.search``), reproducible by seed.

scikit-learn families use scikit-learn's own searches (``GridSearchCV`` or
``RandomizedSearchCV``) over the whole pipeline, with ``TimeSeriesSplit`` folds when the rows are
time-ordered (always validate on the future) and shuffled ``KFold`` otherwise. Other families
(the PyTorch networks, LightGBM) get a small search of the same shape: every candidate is fitted
on the older part of the training rows, with its own early stopping, and scored on the newest
part. Either way the winner's parameters are merged into ``model.params`` and the caller fits
the final model on all its training rows.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from driftloop.models.errors import ConfigError
from driftloop.models.families import FAMILIES, build_pipeline, fit_model
from driftloop.models.schema import SUPERVISED, FeatureSchema
from driftloop.training import evaluate

if TYPE_CHECKING:
    from driftloop.settings import SearchConfig


@dataclass(frozen=True)
class SearchResult:
    best_params: dict[str, Any]
    best_score: float
    metric: str
    candidates: int
    method: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"best_params": self.best_params, "best_score": self.best_score, "metric": self.metric,
                "candidates": self.candidates, "method": self.method, "seconds": round(self.seconds, 3)}

    def describe(self) -> str:
        return (f"searched {self.candidates} candidates ({self.method}): best {self.best_params}, "
                f"{self.metric} {self.best_score:.4f}")


def candidates(space: dict[str, list[Any]], method: str, iterations: int, seed: int) -> list[dict[str, Any]]:
    """Every combination (grid) or ``iterations`` of them drawn without replacement (random)."""
    names = sorted(space)
    grid = [dict(zip(names, values)) for values in itertools.product(*(space[n] for n in names))]
    if method == "grid" or len(grid) <= iterations:
        return grid
    picks = np.random.default_rng(seed).choice(len(grid), size=iterations, replace=False)
    return [grid[i] for i in sorted(picks)]


def search(schema: FeatureSchema, kind: str, base: dict[str, Any], config: SearchConfig, seed: int,
           x: pd.DataFrame, y: pd.Series, time_ordered: bool) -> SearchResult:
    """The best parameters for ``kind`` on ``(x, y)``; ``base`` holds the fixed ones."""
    if schema.task not in SUPERVISED:
        raise ConfigError(f"model.search: {schema.task} has no labels to score candidates; remove the search")
    started = time.perf_counter()
    metric, higher_is_better = evaluate.primary(schema.task)
    family = FAMILIES[kind]
    if family.build is not None:
        return _sklearn_search(schema, kind, base, config, seed, x, y, time_ordered, metric, started)
    tried = candidates(config.params, config.method, config.iterations, seed)
    n_hold = max(1, int(len(x) * 0.2))
    order = np.arange(len(x)) if time_ordered else np.random.default_rng(seed).permutation(len(x))
    fit_idx, hold_idx = order[:-n_hold], order[-n_hold:]
    best: tuple[float, dict[str, Any]] | None = None
    for params in tried:
        model = fit_model(schema, kind, base | params, seed, x.iloc[fit_idx], y.iloc[fit_idx])
        x_hold, y_hold = x.iloc[hold_idx], y.iloc[hold_idx]
        value = evaluate.score(schema.task, y_hold, model.predict(x_hold), model.predict_proba(x_hold),
                               list(schema.labels) or None)[metric]
        key = value if higher_is_better else -value
        if best is None or key > best[0]:
            best = (key, params)
    assert best is not None
    score = best[0] if higher_is_better else -best[0]
    return SearchResult(best[1], float(score), metric, len(tried), f"{config.method} (newest 20% held out)",
                        time.perf_counter() - started)


def _sklearn_search(schema: FeatureSchema, kind: str, base: dict[str, Any], config: SearchConfig, seed: int,
                    x: pd.DataFrame, y: pd.Series, time_ordered: bool, metric: str, started: float) -> SearchResult:
    from sklearn.model_selection import GridSearchCV, KFold, RandomizedSearchCV, TimeSeriesSplit

    pipeline = build_pipeline(schema, kind, base, seed)
    space = {f"model__{name}": values for name, values in config.params.items()}
    unknown = [n for n in config.params if n not in pipeline.named_steps["model"].get_params()]
    if unknown:
        raise ConfigError(f"model.search.params: {kind!r} has no parameter(s) {unknown}")
    cv = TimeSeriesSplit(n_splits=config.folds) if time_ordered else KFold(config.folds, shuffle=True,
                                                                           random_state=seed)
    scoring = "accuracy" if metric == "accuracy" else "neg_root_mean_squared_error"
    if config.method == "grid":
        finder: Any = GridSearchCV(pipeline, space, scoring=scoring, cv=cv, n_jobs=1, error_score="raise")
        n = len(candidates(config.params, "grid", 0, seed))
    else:
        finder = RandomizedSearchCV(pipeline, space, n_iter=min(config.iterations,
                                                                len(candidates(config.params, "grid", 0, seed))),
                                    scoring=scoring, cv=cv, n_jobs=1, random_state=seed, error_score="raise")
        n = finder.n_iter
    finder.fit(x, y)
    best = {name.removeprefix("model__"): value for name, value in finder.best_params_.items()}
    score = float(finder.best_score_) if metric == "accuracy" else -float(finder.best_score_)
    method = f"{config.method}, {config.folds} {'time-series' if time_ordered else 'shuffled'} folds"
    return SearchResult(best, score, metric, n, method, time.perf_counter() - started)
