"""The feature schema: one description of a model's inputs that drives everything else.

It validates request rows, turns them into the ONNX graph's feeds, names the prediction-log
columns and tells Evidently which columns are numeric and which categorical.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from driftloop.models.errors import SchemaError
from driftloop.models.lazy import lazy_module

if TYPE_CHECKING:
    import pandas as pd
else:
    pd = lazy_module("pandas")  # training and the monitor use it here; a serving worker never imports it

FeatureKind = Literal["numeric", "categorical", "image", "sequence"]
Task = Literal["classification", "regression", "clustering", "anomaly"]
FEATURE_KINDS: tuple[str, ...] = ("numeric", "categorical", "image", "sequence")
MEDIA_KINDS: tuple[str, ...] = ("image", "sequence")  # arrays: image (height, width), sequence (steps, channels)
TASKS: tuple[str, ...] = ("classification", "regression", "clustering", "anomaly")
SUPERVISED: tuple[str, ...] = ("classification", "regression")
# How a value lies outside what training saw (FeatureSchema.outside_training_by_side): below the
# training minimum, above the maximum (numeric), a category training never saw (categorical). The
# words of a check's feature_scores[feature]["outside_training"] and of the monitor's metric
# driftloop_feature_outside_training_total{side}.
BELOW, ABOVE, UNSEEN = "below", "above", "unseen"
OUTSIDE_TRAINING = "outside_training"  # that key: {"rows": n, "below": n, "above": n} or {"rows": n, "unseen": n}
# The largest magnitude a graph's float32 input holds: a larger number (1e39, a 401-digit integer)
# would reach the graph as infinity, so the request boundary refuses it.
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_STRING_CHARS = 1_000  # the default cap on a category string (serving.max_string_chars)
# The name of a graph's scores (``GraphOutput.scores``, its second output) in a /predict answer,
# by task; None: the task's graph has no scores.
SCORES_FIELD: dict[str, str | None] = {
    "classification": "probabilities",  # (n, classes), in the order of the schema's labels
    "regression": None,
    "clustering": "distances",  # (n, clusters): distance to every cluster centre
    "anomaly": "anomaly_scores",  # (n,): higher is more anomalous; predictions are 1 = anomaly
}


def plain_label(value: Any) -> Any:
    """A label or a served prediction as one comparable value: ``1``, ``1.0``, ``np.int64(1)`` and
    ``np.float64(1.0)`` are all ``1``; other numbers are floats; everything else is itself (strings
    stay strings: ``"1"`` is not ``1``). Labels arrive as JSON, a column with gaps holds floats, and a
    graph answers numpy scalars: every comparison of labels with predictions goes through here."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def same_label(prediction: Any, label: Any) -> bool:
    """Whether a served prediction equals a label (see :func:`plain_label`)."""
    return plain_label(prediction) == plain_label(label)


@dataclass(frozen=True)
class Feature:
    name: str
    kind: FeatureKind
    categories: tuple[str, ...] = ()  # seen in training (categorical only)
    min: float | None = None  # observed in training (numeric, image, sequence)
    max: float | None = None
    shape: tuple[int, ...] = ()  # image: (height, width); sequence: (steps, channels)
    median: float | None = None  # in training (numeric): what ``missing_values: impute`` fills in

    @property
    def fill(self) -> float:
        """The value imputed for a missing numeric input (the training median; older versions,
        which did not record it, the middle of the training range)."""
        if self.median is not None:
            return self.median
        return ((self.min or 0.0) + (self.max or 0.0)) / 2.0


@dataclass(frozen=True)
class FeatureSchema:
    features: tuple[Feature, ...]
    task: Task
    target: str | None = None
    labels: tuple[Any, ...] = ()  # class labels, in the order of the probability columns
    _index: dict[str, Feature] = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {f.name: f for f in self.features})

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def media(self) -> list[Feature]:
        """Image and sequence features (array-valued)."""
        return [f for f in self.features if f.kind in MEDIA_KINDS]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "categorical"]

    # -- construction and persistence ---------------------------------------------------------
    @classmethod
    def infer(cls, frame: pd.DataFrame, kinds: dict[str, str], task: str,
              target: str | None, labels: tuple[Any, ...] = ()) -> FeatureSchema:
        """The schema of ``frame``'s columns named in ``kinds`` (name -> numeric|categorical)."""
        features = []
        for name, kind in kinds.items():
            if kind not in FEATURE_KINDS:
                raise SchemaError(f"feature {name!r}: kind must be one of {FEATURE_KINDS}, got {kind!r}")
            if name not in frame.columns:
                raise SchemaError(f"feature {name!r} is not a column of the data; columns: {list(frame.columns)}")
            col = frame[name]
            if kind == "numeric":
                values = pd.to_numeric(col, errors="coerce")
                if values.isna().any():
                    raise SchemaError(f"feature {name!r} is declared numeric but holds non-numeric or missing values")
                features.append(Feature(name, "numeric", min=float(values.min()), max=float(values.max()),
                                        median=float(values.median())))
            elif kind in MEDIA_KINDS:
                try:
                    arrays = np.stack([as_array(v) for v in col])
                except (TypeError, ValueError) as exc:
                    raise SchemaError(f"feature {name!r} is declared {kind} but its values are not arrays of "
                                      f"one shape: {exc}") from None
                if arrays.ndim != 3 or not np.isfinite(arrays).all():
                    raise SchemaError(f"feature {name!r}: each {kind} must be a finite 2-D array "
                                      f"({'height x width' if kind == 'image' else 'steps x channels'})")
                features.append(Feature(name, kind, min=float(arrays.min()), max=float(arrays.max()),  # type: ignore[arg-type]
                                        shape=tuple(int(d) for d in arrays.shape[1:])))
            else:
                cats = tuple(sorted(col.astype(str).unique()))
                features.append(Feature(name, "categorical", categories=cats))
        return cls(tuple(features), task=task, target=target, labels=tuple(labels))  # type: ignore[arg-type]

    def outside_training(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per numeric or categorical feature in ``frame``: which rows lie outside what training saw
        (a number below its minimum or above its maximum, a category it never saw; missing values
        are not counted). Where a window's rows are unfamiliar, the model extrapolates, and its
        confidence says less about how right it is (monitoring/policy.py)."""
        return {name: np.logical_or.reduce(list(sides.values()))
                for name, sides in self.outside_training_by_side(frame).items()}

    @property
    def training_sides(self) -> dict[str, tuple[str, ...]]:
        """The features :meth:`outside_training` judges, with how a value of each can lie outside
        training: a numeric feature with a recorded range ``below`` or ``above`` it, a categorical
        one with recorded categories ``unseen``. Other features (no range recorded, images,
        sequences) are not judged."""
        return {f.name: (BELOW, ABOVE) if f.kind == "numeric" else (UNSEEN,) for f in self.features
                if (f.kind == "numeric" and f.min is not None and f.max is not None)
                or (f.kind == "categorical" and f.categories)}

    def outside_training_by_side(self, frame: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
        """:meth:`outside_training` by side: per judged feature in ``frame`` (see
        :attr:`training_sides`), which rows lie below its training minimum and which above its
        maximum (numeric), or hold a category training never saw (categorical). Missing values
        (None, NaN, a number that does not parse) lie on no side. Vectorised: one pass per column."""
        out: dict[str, dict[str, np.ndarray]] = {}
        sides = self.training_sides
        for f in self.features:
            if f.name not in sides or f.name not in frame.columns:
                continue
            if f.kind == "numeric":
                values = pd.to_numeric(frame[f.name], errors="coerce").to_numpy(dtype=float)
                with np.errstate(invalid="ignore"):  # NaN compares False: on neither side
                    out[f.name] = {BELOW: values < f.min, ABOVE: values > f.max}
            else:
                column = frame[f.name]
                out[f.name] = {UNSEEN: (column.notna() & ~column.astype(str).isin(f.categories)).to_numpy()}
        return out

    def outside_training_counts(self, frame: pd.DataFrame) -> dict[str, dict[str, int]]:
        """Per judged feature in ``frame``: the rows judged (missing values included: they count
        as inside) and how many lay on each side of its training data (see
        :meth:`outside_training_by_side`), e.g. ``{"rows": 500, "below": 0, "above": 12}``."""
        return self.count_outside(self.outside_training_by_side(frame), len(frame))

    @staticmethod
    def count_outside(sides: dict[str, dict[str, np.ndarray]], rows: int) -> dict[str, dict[str, int]]:
        """:meth:`outside_training_by_side`'s masks (of ``rows`` rows) counted, per feature: the
        rows judged and the rows on each side (for callers that use the masks too)."""
        return {name: {"rows": rows} | {side: int(np.count_nonzero(mask)) for side, mask in masks.items()}
                for name, masks in sides.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "target": self.target,
            "labels": list(self.labels),
            "features": [asdict(f) | {"categories": list(f.categories), "shape": list(f.shape)} for f in self.features],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSchema:
        feats = tuple(
            Feature(f["name"], f["kind"], tuple(f.get("categories", ())), f.get("min"), f.get("max"),
                    tuple(f.get("shape", ())), f.get("median"))
            for f in data["features"]
        )
        return cls(feats, task=data["task"], target=data.get("target"), labels=tuple(data.get("labels", ())))

    # -- the request boundary -----------------------------------------------------------------
    def validate_rows(self, rows: Any, max_rows: int = 10_000, *, unknown_category: str = "accept",
                      missing_values: str = "reject", repairs: dict[str, int] | None = None,
                      max_string_chars: int = MAX_STRING_CHARS) -> dict[str, np.ndarray]:
        """Check request rows and return the ONNX feeds (one ``(n, 1)`` array per feature).

        Raises :class:`SchemaError` naming the row and the field for the first problem found.
        ``unknown_category``: ``accept`` passes a category unseen in training to the graph (its
        encoders treat it as none of the known ones) or ``reject`` refuses it. ``missing_values``:
        ``reject`` refuses a null, NaN or infinite numeric value, ``impute`` replaces it with the
        training median. ``repairs`` (if given) counts both, as ``"<kind>:<feature>"`` -> rows.

        Whatever the policies, a finite number beyond float32's range (``|x| > 3.4e38``) is refused,
        never imputed: it is a value the client sent, not a missing one, and the graph would see
        infinity. A category longer than ``max_string_chars``, or one that is not valid Unicode (a
        lone surrogate such as ``"\\ud800"``, which JSON can spell but UTF-8 cannot encode), is
        refused too: such strings would reach the graph, the prediction log and the drift reports.
        """
        if not isinstance(rows, list):
            raise SchemaError("'rows' must be a list of objects", field="rows")
        if not rows:
            raise SchemaError("'rows' is empty: send at least one row", field="rows")
        if len(rows) > max_rows:
            raise SchemaError(f"'rows' has {len(rows)} rows; at most {max_rows} per request", field="rows")
        columns: dict[str, list[Any]] = {name: [] for name in self._index}
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise SchemaError(f"rows[{i}] must be an object of feature values", field=f"rows[{i}]")
            if len(row) != len(self._index) or row.keys() != self._index.keys():
                missing = [n for n in self._index if n not in row]
                if missing:
                    raise SchemaError(f"rows[{i}] is missing feature {missing[0]!r}", field=f"rows[{i}].{missing[0]}")
                extra = [n for n in row if n not in self._index]
                raise SchemaError(f"rows[{i}] has unknown field {extra[0]!r}; features are {self.names}",
                                  field=f"rows[{i}].{extra[0]}")
            for name, feat in self._index.items():
                value = row[name]
                if feat.kind == "numeric":
                    if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
                        raise SchemaError(f"rows[{i}].{name} must be a number, got {type(value).__name__}",
                                          field=f"rows[{i}].{name}")
                    if value is None or not -FLOAT32_MAX <= value <= FLOAT32_MAX:  # one comparison when fine
                        if value is not None and (isinstance(value, int) or math.isfinite(value)):
                            raise SchemaError(f"rows[{i}].{name} is {_magnitude(value)}: outside the range of the "
                                              f"model's 32-bit inputs (at most {FLOAT32_MAX:.4g} either way)",
                                              field=f"rows[{i}].{name}")
                        if missing_values != "impute":
                            raise SchemaError(f"rows[{i}].{name} must be a finite number, got {value} "
                                              "(serving.missing_values: reject)", field=f"rows[{i}].{name}")
                        value = feat.fill
                        if repairs is not None:
                            repairs[f"imputed:{name}"] = repairs.get(f"imputed:{name}", 0) + 1
                elif feat.kind in MEDIA_KINDS:
                    value = _array(value, feat, f"rows[{i}].{name}")
                elif not isinstance(value, str):
                    raise SchemaError(f"rows[{i}].{name} must be a string category, got {type(value).__name__}",
                                      field=f"rows[{i}].{name}")
                elif ((len(value) > max_string_chars or not value.isascii())  # cheap first: almost always fine
                      and (problem := text_problem(value, f"rows[{i}].{name}", max_string_chars))):
                    raise SchemaError(problem, field=f"rows[{i}].{name}")
                elif feat.categories and value not in feat.categories:
                    if unknown_category == "reject":
                        raise SchemaError(f"rows[{i}].{name}: {value!r} is not a category seen in training "
                                          f"(serving.unknown_category: reject); known: {list(feat.categories)[:10]}",
                                          field=f"rows[{i}].{name}")
                    if repairs is not None:
                        repairs[f"unknown_category:{name}"] = repairs.get(f"unknown_category:{name}", 0) + 1
                columns[name].append(value)
        return self.feeds(columns)

    def feeds(self, columns: dict[str, Any] | pd.DataFrame) -> dict[str, np.ndarray]:
        """Columns (a frame or name -> values) as the graph's inputs: float32 or string ``(n, 1)``
        for tabular features, float32 ``(n, *shape)`` for images and sequences."""
        out = {}
        for feat in self.features:
            values = columns[feat.name]
            if feat.kind == "numeric":
                out[feat.name] = np.asarray(values, dtype=np.float32).reshape(-1, 1)
            elif feat.kind in MEDIA_KINDS:  # (n, height, width) or (n, steps, channels)
                out[feat.name] = np.stack([as_array(v) for v in values]).reshape(-1, *feat.shape)
            else:
                out[feat.name] = np.asarray(values, dtype=object).astype(str).astype(object).reshape(-1, 1)
        return out


def _magnitude(value: int | float) -> str:
    """A number too large for float32, for a message: a huge integer cannot become a float."""
    if isinstance(value, float):
        return f"{value:.4g}"
    try:
        return f"an integer of {len(str(abs(value)))} digits"
    except ValueError:  # over Python's 4,300-digit limit on int to str (JSON cannot send one)
        return "an integer of over 4300 digits"


def text_problem(text: str, where: str, max_chars: int) -> str | None:
    """Why a string from a request (``where``: its field) is refused, or None: longer than
    ``max_chars`` (``serving.max_string_chars``), or not valid Unicode text (a lone surrogate, which
    JSON can spell as ``"\\ud800"`` but UTF-8, and so the store and the graph, cannot encode)."""
    if len(text) > max_chars:
        return f"{where} is {len(text)} characters long; at most {max_chars} (serving.max_string_chars)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return (f"{where} is not valid Unicode text: it holds a lone surrogate (such as \\ud800), which UTF-8 "
                "cannot encode")
    return None


def _array(value: Any, feat: Feature, where: str) -> np.ndarray:
    """An image or sequence from JSON (nested lists of numbers), checked against the schema."""
    what = "height x width" if feat.kind == "image" else "steps x channels"
    article = "an image" if feat.kind == "image" else "a sequence"
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError):  # ragged lists
        raw = np.asarray([])
    if raw.dtype.kind not in "iuf" or raw.ndim != len(feat.shape):
        raise SchemaError(f"{where} must be {article}: nested lists of numbers ({what} = "
                          f"{' x '.join(map(str, feat.shape))})", field=where)
    array = raw.astype(np.float32)
    if array.shape != feat.shape:
        raise SchemaError(f"{where} has shape {list(array.shape)}; the model takes {list(feat.shape)} ({what})",
                          field=where)
    if not np.isfinite(array).all():
        raise SchemaError(f"{where} must hold finite numbers only", field=where)
    return array


def as_array(value: Any, dtype: Any = np.float32) -> np.ndarray:
    """An image or sequence as a 2-D array, from nested lists or from Parquet's arrays of arrays."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return np.stack([np.asarray(row, dtype=dtype) for row in value])
    return np.asarray(value, dtype=dtype)


def example_row(schema: FeatureSchema) -> dict[str, Any]:
    """A row the model accepts: training medians, first categories, arrays of the low end (the
    OpenAPI document's example, and the rows a loaded graph is warmed up with)."""
    row: dict[str, Any] = {}
    for feat in schema.features:
        if feat.kind == "numeric":
            row[feat.name] = round(feat.fill, 6)
        elif feat.kind == "categorical":
            row[feat.name] = feat.categories[0] if feat.categories else "a"
        else:
            row[feat.name] = np.full(feat.shape, float(feat.min or 0.0)).tolist()
    return row
