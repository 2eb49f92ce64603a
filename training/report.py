"""A trained model's report: permutation importance, ``report.json`` and its figures.

Everything here goes through the :class:`models.families.Trained` protocol (``predict``), never
scikit-learn's estimator API, so it works for every model family. matplotlib is imported only
when figures are drawn, and draws on its Agg canvas without touching pyplot's global state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from driftloop.models.files import jsonable, write_text_atomically
from driftloop.training import evaluate

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from driftloop.models.families import Trained

TASKS = ("classification", "regression")
MAX_SCATTER_POINTS = 5000  # regression scatter plots draw a fixed subsample beyond this
MAX_BARS = 30  # features in the importance chart
DPI = 110


# -- permutation importance ------------------------------------------------------------------------

def permutation_importance(model: Trained, x: pd.DataFrame, y: pd.Series, task: str, seed: int,
                           repeats: int = 5, max_rows: int = 2000) -> dict[str, dict[str, float]]:
    """How much the primary metric drops when one feature's values are shuffled.

    The metric is accuracy for classification and RMSE for regression (there the drop is the
    RMSE increase). Each repeat draws one row permutation and applies it to every column in turn,
    so a feature's result does not depend on the column order. Beyond ``max_rows`` rows a
    subsample is used; both the subsample and the permutations come from ``seed``.

    Returns ``{feature: {"mean": .., "std": ..}}`` (std over repeats), by mean descending.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if repeats < 1 or max_rows < 1:
        raise ValueError(f"repeats and max_rows must be at least 1, got {repeats} and {max_rows}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    if len(x) == 0:
        raise ValueError("permutation importance needs at least one row")

    rng = np.random.default_rng(seed)
    rows = np.arange(len(x))
    if len(x) > max_rows:
        rows = np.sort(rng.choice(len(x), size=max_rows, replace=False))
    x = x.iloc[rows].reset_index(drop=True)
    target = np.asarray(y)[rows]

    baseline = _score(task, target, model.predict(x))
    drops: dict[str, list[float]] = {str(col): [] for col in x.columns}
    work = x.copy()
    for _ in range(repeats):
        order = rng.permutation(len(x))
        for col in x.columns:
            work[col] = x[col].iloc[order].set_axis(x.index)  # keeps the column's dtype
            drops[str(col)].append(baseline - _score(task, target, model.predict(work)))
            work[col] = x[col]
    result = {name: {"mean": float(np.mean(d)), "std": float(np.std(d))} for name, d in drops.items()}
    return dict(sorted(result.items(), key=lambda item: (-item[1]["mean"], item[0])))


def _score(task: str, y_true: np.ndarray, y_pred: Any) -> float:
    """The primary metric, higher is better: accuracy, or minus the RMSE."""
    y_pred = np.asarray(y_pred)
    if task == "classification":
        return float(np.mean(y_pred == y_true))
    return -float(np.sqrt(np.mean((y_pred.astype(float) - y_true.astype(float)) ** 2)))


# -- the report --------------------------------------------------------------------------------

def write_report(out_dir: Path, version: str, task: str, y_true: Any, y_pred: Any, proba: np.ndarray | None,
                 labels: list[Any] | None, metrics: dict[str, float],
                 importance: dict[str, dict[str, float]]) -> dict[str, str]:
    """Write ``report.json`` and the figures of one model version's evaluation under ``out_dir``.

    Classification: the confusion matrix, and with ``proba`` (columns in the order of ``labels``)
    the ROC curve(s) (one-vs-rest per class beyond two classes; a class with no positive or no
    negative row has no curve) and a reliability diagram. Regression: residuals against
    predictions and predictions against truth. Both: the importance chart (when ``importance``
    is not empty). ``report.json`` holds the metrics, calibration table, confusion matrix or
    residual summary, the importance and the figures' file names.

    Returns ``{name: path}`` of every file written, ``report`` being ``report.json``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    report: dict[str, Any] = {"version": version, "task": task, "rows": int(len(y_true)),
                              "metrics": dict(metrics)}
    figures: dict[str, Path] = {}

    if task == "classification":
        labels = evaluate.plain_labels(labels if labels is not None else sorted(set(y_true.tolist())))
        matrix = evaluate.confusion_matrix(y_true, y_pred, labels)
        report["labels"] = labels
        report["confusion_matrix"] = {"labels": labels, "rows": "true", "columns": "predicted", "matrix": matrix}
        figures["confusion_matrix"] = _plot_confusion(out_dir / "confusion_matrix.png", version, labels, matrix)
        if proba is not None and len(y_true):
            proba = np.asarray(proba, dtype=float)
            report["calibration"] = evaluate.calibration(y_true, proba, labels)
            roc = _plot_roc(out_dir / "roc.png", version, y_true, proba, labels)
            if roc is not None:
                figures["roc"] = roc
            figures["reliability"] = _plot_reliability(out_dir / "reliability.png", version, report["calibration"])
    else:
        report["residuals"] = evaluate.residual_summary(y_true, y_pred)
        figures["residuals"] = _plot_residuals(out_dir / "residuals.png", version, y_true, y_pred)
        figures["predicted_vs_true"] = _plot_predicted_vs_true(out_dir / "predicted_vs_true.png", version,
                                                               y_true, y_pred)

    report["importance"] = importance
    if importance:
        figures["importance"] = _plot_importance(out_dir / "importance.png", version, task, importance)
    report["figures"] = {name: path.name for name, path in figures.items()}
    report_path = out_dir / "report.json"
    _write_json(report_path, report)
    return {"report": str(report_path)} | {name: str(path) for name, path in figures.items()}


def metrics_table(metrics: dict[str, float]) -> str:
    """An aligned plain-text table of ``metrics``, one per line, in the given order."""
    if not metrics:
        return "(no metrics)"
    values = {name: _format_value(value) for name, value in metrics.items()}
    name_width = max(len("metric"), *(len(name) for name in values))
    value_width = max(len("value"), *(len(v) for v in values.values()))
    lines = [f"{'metric':<{name_width}}  {'value':>{value_width}}", f"{'-' * name_width}  {'-' * value_width}"]
    lines += [f"{name:<{name_width}}  {value:>{value_width}}" for name, value in values.items()]
    return "\n".join(lines)


def _format_value(value: Any) -> str:
    if isinstance(value, bool | str) or value is None:
        return str(value)
    number = float(value)
    if not math.isfinite(number):
        return str(number)
    return f"{number:.4f}" if abs(number) < 1e9 else f"{number:.4g}"


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Strict JSON (NaN and infinity become null), written atomically."""
    write_text_atomically(path, json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")


# -- figures -----------------------------------------------------------------------------------

@contextmanager
def _figure(path: Path, title: str, *, nrows: int = 1, figsize: tuple[float, float] = (6.4, 5.2),
            height_ratios: list[float] | None = None) -> Iterator[list[Axes]]:
    """A figure on the Agg canvas (no display, no pyplot registry), saved to ``path`` and released."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig: Figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    try:
        axes = fig.subplots(nrows, 1, squeeze=False, sharex=nrows > 1,
                            gridspec_kw={"height_ratios": height_ratios} if height_ratios else None)[:, 0]
        fig.suptitle(title)
        yield list(axes)
        fig.savefig(path, dpi=DPI)
    finally:
        fig.clear()


def _plot_confusion(path: Path, version: str, labels: list[Any], matrix: list[list[int]]) -> Path:
    counts = np.asarray(matrix)
    size = max(5.0, 0.6 * len(labels) + 3.0)
    with _figure(path, f"{version}: confusion matrix ({int(counts.sum())} rows)", figsize=(size, size)) as (ax,):
        image = ax.imshow(counts, cmap="Blues", vmin=0)
        ax.figure.colorbar(image, ax=ax, label="rows")
        ticks = np.arange(len(labels))
        names = [str(label) for label in labels]
        ax.set_xticks(ticks, names, rotation=45 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
        ax.set_yticks(ticks, names)
        ax.set_xlabel("predicted label")
        ax.set_ylabel("true label")
        threshold = counts.max() / 2 if counts.size and counts.max() else 0
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=9,
                    color="white" if value > threshold else "black")
    return path


def _plot_roc(path: Path, version: str, y_true: np.ndarray, proba: np.ndarray, labels: list[Any]) -> Path | None:
    """ROC curve(s); None when no class has both positive and negative rows."""
    classes = [1] if len(labels) == 2 else list(range(len(labels)))
    curves = []
    for k in classes:
        positive = y_true == labels[k]
        if positive.all() or not positive.any():  # the curve is undefined
            continue
        fpr, tpr, _ = skm.roc_curve(positive, proba[:, k])
        name = f"{labels[k]}" if len(labels) == 2 else f"{labels[k]} vs rest"
        curves.append((fpr, tpr, f"{name} (AUC {skm.auc(fpr, tpr):.3f})"))
    if not curves:
        return None
    kind = f"positive class {labels[1]}" if len(labels) == 2 else "one-vs-rest"
    with _figure(path, f"{version}: ROC curve ({kind})") as (ax,):
        for fpr, tpr, name in curves:
            ax.plot(fpr, tpr, lw=1.6, label=name)
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right", fontsize=8)
    return path


def _plot_reliability(path: Path, version: str, figures: dict[str, Any]) -> Path:
    table = figures["bins"]
    lower = np.array([b["lower"] for b in table])
    width = np.array([b["upper"] - b["lower"] for b in table])
    filled = [i for i, b in enumerate(table) if b["count"]]
    title = f"{version}: reliability (ECE {figures['ece']:.3f}, Brier {figures['brier']:.3f})"
    with _figure(path, title, nrows=2, figsize=(6.4, 6.4), height_ratios=[3, 1]) as (ax, hist):
        ax.bar(lower[filled], [table[i]["accuracy"] for i in filled], width=width[filled], align="edge",
               edgecolor="black", color="tab:blue", alpha=0.75, label="accuracy")
        ax.plot([table[i]["confidence"] for i in filled], [table[i]["accuracy"] for i in filled], "o",
                color="tab:orange", label="accuracy at the mean confidence")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.03)
        ax.set_ylabel("accuracy")
        ax.legend(loc="upper left", fontsize=8)
        hist.bar(lower, [b["count"] for b in table], width=width, align="edge", edgecolor="black", color="grey")
        hist.set_xlabel("top-label confidence")
        hist.set_ylabel("rows")
    return path


def _plot_residuals(path: Path, version: str, y_true: np.ndarray, y_pred: np.ndarray) -> Path:
    pred, true, shown = _scatter_sample(y_pred, y_true)
    with _figure(path, f"{version}: residuals vs predicted{shown}") as (ax,):
        ax.scatter(pred, true - pred, s=8, alpha=0.5, color="tab:blue", edgecolors="none")
        ax.axhline(0, color="grey", ls="--", lw=1)
        ax.set_xlabel("predicted value")
        ax.set_ylabel("residual (true - predicted)")
    return path


def _plot_predicted_vs_true(path: Path, version: str, y_true: np.ndarray, y_pred: np.ndarray) -> Path:
    pred, true, shown = _scatter_sample(y_pred, y_true)
    with _figure(path, f"{version}: predicted vs true{shown}") as (ax,):
        ax.scatter(true, pred, s=8, alpha=0.5, color="tab:blue", edgecolors="none")
        low = float(min(true.min(), pred.min())) if len(true) else 0.0
        high = float(max(true.max(), pred.max())) if len(true) else 1.0
        ax.plot([low, high], [low, high], ls="--", color="grey", lw=1, label="perfect prediction")
        ax.set_xlabel("true value")
        ax.set_ylabel("predicted value")
        ax.legend(loc="upper left", fontsize=8)
    return path


def _scatter_sample(y_pred: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """At most MAX_SCATTER_POINTS points (a fixed subsample), and the title's note when sampled."""
    pred, true = y_pred.astype(float), y_true.astype(float)
    if len(pred) <= MAX_SCATTER_POINTS:
        return pred, true, ""
    keep = np.sort(np.random.default_rng(0).choice(len(pred), MAX_SCATTER_POINTS, replace=False))
    return pred[keep], true[keep], f" ({MAX_SCATTER_POINTS} of {len(pred)} rows)"


def _plot_importance(path: Path, version: str, task: str, importance: dict[str, dict[str, float]]) -> Path:
    ranked = sorted(importance.items(), key=lambda item: -item[1]["mean"])[:MAX_BARS]
    names = [name for name, _ in ranked][::-1]  # the most important at the top
    means = [v["mean"] for _, v in ranked][::-1]
    stds = [v["std"] for _, v in ranked][::-1]
    shown = f", top {len(ranked)} of {len(importance)}" if len(ranked) < len(importance) else ""
    metric = "accuracy drop" if task == "classification" else "RMSE increase"
    with _figure(path, f"{version}: permutation importance{shown}",
                 figsize=(6.4, max(3.0, 0.35 * len(names) + 1.5))) as (ax,):
        ax.barh(names, means, xerr=stds, color="tab:blue", ecolor="black", capsize=3)
        ax.axvline(0, color="grey", lw=1)
        ax.set_xlabel(f"{metric} when the feature is shuffled (mean ± std over repeats)")
        ax.set_ylabel("feature")
    return path
