"""Histogram gradient boosting: LightGBM inside a scikit-learn pipeline, exported to ONNX in one graph.

scikit-learn's own ``HistGradientBoosting*`` cannot be exported here: skl2onnx 1.20 writes a
Python ``False`` into the ``nodes_missing_value_tracks_true`` ints of every leaf, which protobuf 7
refuses ("Field onnx.AttributeProto.ints: Expected an int, got a boolean"). LightGBM is the same
algorithm (histogram-binned, leaf-wise trees); onnxmltools converts it and we register that
converter into skl2onnx, so the preprocessing and the booster land in a single graph with the
same inputs and outputs as every other family (``label``, and ``probabilities`` as a plain tensor).

Exact parity with the float32 graph takes two steps, both here:

* the native model sees what the graph sees: numeric features are rounded to float32 before
  ``fit``, ``predict`` and ``predict_proba`` (the graph's inputs are float32);
* every numeric split threshold is rounded *down* to a float32 after training. For a float32
  input ``x``, ``x <= t`` holds exactly when ``x <= float32_down(t)``, so the booster's decisions
  do not change, and the graph (which stores thresholds as float32) takes the same branches.
  Rounding to nearest instead flips a split whenever a value sits just above a threshold that
  rounds up: timestamps or large amounts stored as floats hit that in practice.

lightgbm, onnxmltools and skl2onnx are imported only inside the functions that need them.
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any

import numpy as np
import pandas as pd

from driftloop.models.errors import ConfigError, ExportError
from driftloop.models.families import SklearnModel, preprocessor
from driftloop.models.schema import FeatureSchema

KIND = "lightgbm"  # the ``model.kind`` users write (models/families.py): what the errors name
TASKS = ("classification", "regression")
DEFAULTS: dict[str, Any] = {
    "n_estimators": 200,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "n_jobs": 1,
    "verbose": -1,  # LightGBM prints nothing
}
# Objectives (LightGBM's canonical names) that onnxmltools converts with parity; measured.
# Not: multiclassova (converted with softmax), cross_entropy, fair, mape (refused by the converter).
EXPORTABLE_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "classification": ("binary", "multiclass"),
    "regression": ("regression", "regression_l1", "huber", "quantile", "poisson", "gamma", "tweedie"),
}


class BoostingModel(SklearnModel):
    """A fitted ``Pipeline([pre, LGBMClassifier|LGBMRegressor])`` that feeds the booster the
    float32 values its ONNX graph will receive."""

    def __init__(self, pipeline: Any, task: str, numeric: list[str]) -> None:
        super().__init__(pipeline, task)
        self.numeric = list(numeric)

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return self.pipeline.predict(as_float32(x, self.numeric))

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray | None:
        if self.task != "classification":
            return None
        return self.pipeline.predict_proba(as_float32(x, self.numeric))

    def to_onnx(self, schema: FeatureSchema) -> bytes:
        from driftloop.models.onnx_model import export_onnx

        register_converters()
        return export_onnx(self.pipeline, schema)


def fit_boosting(schema: FeatureSchema, x: pd.DataFrame, y: pd.Series, params: dict[str, Any], seed: int,
                 warm_start: bytes | None = None, sample_weight: np.ndarray | None = None) -> BoostingModel:
    """Fit LightGBM on ``schema``'s features (numeric passed through, categorical one-hot encoded);
    ``sample_weight``: one weight per row, LightGBM's own."""
    from sklearn.pipeline import Pipeline

    if warm_start is not None:
        raise ConfigError(f"model.warm_start: {KIND!r} cannot fine-tune; only neural kinds can")
    if schema.task not in TASKS:
        raise ConfigError(f"model.kind: {KIND!r} does not support task {schema.task!r}; it supports {TASKS}")
    import lightgbm

    estimator_cls = lightgbm.LGBMClassifier if schema.task == "classification" else lightgbm.LGBMRegressor
    known = accepted_params(estimator_cls)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"model.params: unknown parameter(s) {unknown} for {KIND!r} (LightGBM); "
                          f"known: {sorted(known)}")
    if params.get("boosting_type") == "rf":
        raise ConfigError("model.params.boosting_type: 'rf' cannot be exported to ONNX faithfully; "
                          "use 'gbdt', 'dart' or 'goss'")
    estimator = estimator_cls(**(DEFAULTS | {"random_state": seed} | params))
    pipeline = Pipeline([("pre", preprocessor(schema, scaled=False)), ("model", estimator)])
    try:
        pipeline.fit(as_float32(x, schema.numeric), y,
                     **({} if sample_weight is None else {"model__sample_weight": sample_weight}))
    except lightgbm.basic.LightGBMError as exc:  # a parameter value LightGBM checks at fit time
        raise ConfigError(f"model.params: LightGBM refused them: {exc}") from None
    text = estimator.booster_.model_to_string()
    objective = model_objective(text)
    if objective not in EXPORTABLE_OBJECTIVES[schema.task]:
        raise ConfigError(f"model.params.objective: {objective!r} cannot be exported to ONNX; "
                          f"{schema.task} supports {list(EXPORTABLE_OBJECTIVES[schema.task])}")
    estimator.booster_.model_from_string(float32_thresholds(text))
    return BoostingModel(pipeline, schema.task, schema.numeric)


def accepted_params(estimator_cls: type) -> set[str]:
    """The scikit-learn API's parameter names (LightGBM's own aliases are refused: typos would
    otherwise be ignored with a warning)."""
    names = {p.name for p in inspect.signature(estimator_cls.__init__).parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    return names | {"verbose"}


def model_objective(text: str) -> str:
    """LightGBM's canonical objective name in a model text (aliases resolved: ``l2`` -> ``regression``)."""
    found = re.search(r"^objective=(\S+)", text, re.M)
    return found.group(1) if found else "custom"


def as_float32(x: pd.DataFrame, numeric: list[str]) -> pd.DataFrame:
    """``x`` with its numeric columns rounded to float32 (held as float64): what the graph sees."""
    return x.assign(**{name: x[name].to_numpy(dtype=np.float32).astype(np.float64) for name in numeric})


def _float32_down(value: float) -> str:
    """The largest float32 not above ``value``, written so it reads back exactly."""
    with np.errstate(over="ignore"):
        f = np.float32(value)
    if float(f) > value:
        f = np.nextafter(f, np.float32(-np.inf))
    return repr(float(f))


def float32_thresholds(text: str) -> str:
    """A LightGBM model text with every numeric split threshold rounded down to a float32.

    On float32 inputs the model predicts exactly as before, and its ONNX graph, whose thresholds
    are float32, branches exactly like it. Categorical splits are left alone. The ``tree_sizes``
    header (each tree's length in bytes) is recomputed; a text whose sizes do not add up as
    expected is refused here, since a malformed model aborts the process in LightGBM's loader.
    """
    starts = [m.start() for m in re.finditer(r"^Tree=\d+$", text, re.M)]
    end = text.find("\nend of trees\n")
    header = re.search(r"^tree_sizes=(.*)$", text, re.M)
    if not starts or end < 0 or header is None:
        raise ExportError("LightGBM's model text has no trees or no tree_sizes header: cannot round thresholds")
    end += 1
    blocks = [text[a:b] for a, b in zip(starts, [*starts[1:], end], strict=True)]
    if [len(b.encode()) for b in blocks] != [int(v) for v in header.group(1).split()]:
        raise ExportError("LightGBM's model text does not match its tree_sizes header: cannot round thresholds")
    blocks = [_round_block(b) for b in blocks]
    sizes = "tree_sizes=" + " ".join(str(len(b.encode())) for b in blocks)
    return text[:header.start()] + sizes + text[header.end():starts[0]] + "".join(blocks) + text[end:]


def _round_block(block: str) -> str:
    lines = block.split("\n")
    at = {line.split("=", 1)[0]: i for i, line in enumerate(lines) if "=" in line}
    if "threshold" not in at:  # a tree that is a single leaf
        return block
    kinds = [int(v) for v in lines[at["decision_type"]].removeprefix("decision_type=").split()]
    values = lines[at["threshold"]].removeprefix("threshold=").split()
    lines[at["threshold"]] = "threshold=" + " ".join(
        v if k & 1 else _float32_down(float(v)) for k, v in zip(kinds, values, strict=True))
    return "\n".join(lines)


@functools.cache
def register_converters() -> None:
    """Teach skl2onnx LightGBM's estimators (onnxmltools' converter), once per process."""
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    # skl2onnx's classifier shapes: label (n,) and probabilities (n, classes) once zipmap is off
    update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
                                convert_lightgbm, options={"nocl": [True, False], "zipmap": [True, False, "columns"]})
    update_registered_converter(LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
                                convert_lightgbm, options={"split": None})
