"""Training data and settings for any (kind, task) pair, shared by the family tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.models.families import FAMILIES
from tests.conftest import make_settings
from driftloop.training import scenarios

QUICK = {"mlp": {"hidden": [16], "epochs": 40, "patience": 5},
         "autoencoder": {"hidden": [8, 4], "epochs": 40, "patience": 5},
         "cnn": {"channels": [8, 16], "hidden": [32], "epochs": 30, "patience": 5},
         "gru": {"units": 16, "hidden": [16], "epochs": 30, "patience": 5},
         "lstm": {"units": 16, "hidden": [16], "epochs": 30, "patience": 5},
         "svm": {"C": 10.0}}


def regression_target(frame: pd.DataFrame, inputs: str) -> pd.Series:
    """A learnable number for regression on each kind of input."""
    if inputs == "sequence":  # the machine's average current draw
        return pd.Series([float(np.mean(np.asarray(s)[:, 2])) * 10.0 for s in frame["signal"]], index=frame.index)
    return frame["income"] * (1.0 - frame["debt_ratio"]) / 10.0 + np.where(frame["region"] == "east", 800.0, 0.0)


def case(kind: str, task: str, root: Path, train_rows: int = 600,
         **overrides: Any) -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    """(training rows, fresh post-drift rows, settings) for ``kind`` on ``task``."""
    inputs = FAMILIES[kind].inputs
    name = {"tabular": "loans", "image": "digits", "sensor": "sensors", "sequence": "sensors"}[inputs]
    frame = scenarios.scenario_frame(name, seed=11)
    drifted = {"loans": "covariate", "digits": "noise", "sensors": "regime"}[name]
    train = frame[frame["period"] == "train"].head(train_rows).reset_index(drop=True)
    fresh = frame[frame["period"] == drifted].head(400).reset_index(drop=True)
    extra: dict[str, Any] = {"task": task, "data": {"scenario": name}}
    if task == "regression":
        for part in (train, fresh):
            part["amount"] = regression_target(part, inputs)
        extra["data"] = {"scenario": name, "target": "amount"}
        if inputs == "tabular":
            extra["features"] = dict(scenarios.FEATURES)
        else:
            extra["features"] = dict(scenarios.SCENARIOS[name].features)
    settings = make_settings(root, model={"kind": kind, "params": QUICK.get(kind, {})}, **(extra | overrides))
    return train, fresh, settings
