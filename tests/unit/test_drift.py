"""The prepared drift check gives Evidently's own answers: every column's method, threshold, score
and verdict equal those of a ``DataDriftPreset`` run on the same data, whatever method Evidently
picks (K-S, chi-square, Z-test up to 1,000 reference values; Wasserstein, Jensen-Shannon above),
with configured methods and thresholds, and for the model's output column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop.settings import DriftConfig, DriftMethod
from driftloop.models.errors import ConfigError
from driftloop.models.schema import FeatureSchema
from driftloop.monitoring.drift import PREDICTION, DriftBaseline, check_drift, preset_columns, run_preset

KINDS = {"amount": "numeric", "rating": "numeric", "flag": "numeric", "region": "categorical",
         "member": "categorical"}


def tabular(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """Five columns, one per default method family: continuous, 3 values, 2 values, 4 categories,
    2 categories; ``shift`` moves every one of them."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "amount": rng.normal(100.0 + 8.0 * shift, 15.0, n),
        "rating": rng.choice([1.0, 2.0, 3.0], n, p=[0.5 - 0.2 * shift, 0.3, 0.2 + 0.2 * shift]),
        "flag": rng.choice([0.0, 1.0], n, p=[0.7 - 0.2 * shift, 0.3 + 0.2 * shift]),
        "region": rng.choice(["north", "south", "east", "west"], n,
                             p=[0.4 - 0.2 * shift, 0.3, 0.2, 0.1 + 0.2 * shift]),
        "member": rng.choice(["yes", "no"], n, p=[0.6 - 0.2 * shift, 0.4 + 0.2 * shift]),
    })


def schema_of(frame: pd.DataFrame, kinds: dict[str, str] = KINDS, task: str = "regression") -> FeatureSchema:
    return FeatureSchema.infer(frame, kinds, task, None)


def preset_for(baseline: DriftBaseline, window: pd.DataFrame, config: DriftConfig | None = None,
               ) -> dict[str, dict[str, Any]]:
    from driftloop.monitoring.drift import frame_for_drift

    current, _ = frame_for_drift(window, baseline.schema)
    reference = baseline.frame[current.columns]
    # the preset's own noise: chi-square on a category new in the window, plots of infinite values
    with np.errstate(divide="ignore", invalid="ignore"):
        return preset_columns(run_preset(reference, current, {n: baseline.types[n] for n in current.columns},
                                         config))


def same(fast: dict[str, dict[str, Any]], preset: dict[str, dict[str, Any]]) -> None:
    """Every column: the same score, threshold, verdict and method."""
    from driftloop.adapters.evidently import stattest_display_name

    assert set(fast) == set(preset)
    for name, theirs in preset.items():
        ours = fast[name]
        assert (ours["score"], ours["threshold"], ours["drifted"]) == (theirs["score"], theirs["threshold"],
                                                                      theirs["drifted"]), name
        # the preset names the method it chose by its display name, a configured one by its name
        method = theirs["method"]
        method = stattest_display_name(method) or method
        assert ours["method"] == method, name


CASES = {
    # name: (reference rows, window rows, shift, methods Evidently must pick)
    "small stable": (300, 200, 0.0, {"K-S p_value", "chi-square p_value", "Z-test p_value"}),
    "small drifted": (300, 200, 1.0, {"K-S p_value", "chi-square p_value", "Z-test p_value"}),
    "reference of exactly 1000": (1000, 150, 0.5, {"K-S p_value", "chi-square p_value", "Z-test p_value"}),
    "reference of 1001": (1001, 150, 0.5, {"Wasserstein distance (normed)", "Jensen-Shannon distance"}),
    "large stable": (3000, 2000, 0.0, {"Wasserstein distance (normed)", "Jensen-Shannon distance"}),
    "large drifted": (3000, 2000, 1.0, {"Wasserstein distance (normed)", "Jensen-Shannon distance"}),
}


@pytest.mark.parametrize("case", CASES)
def test_every_column_matches_the_preset(case: str) -> None:
    n_ref, n_cur, shift, methods = CASES[case]
    reference, window = tabular(n_ref, 1), tabular(n_cur, 2, shift)
    baseline = DriftBaseline(reference, schema_of(reference))
    result = baseline.check(window)
    same(result.columns, preset_for(baseline, window))
    assert {c["method"] for c in result.columns.values()} == methods
    assert result.share == len(result.drifted) / 5
    if shift == 1.0:
        assert len(result.drifted) >= 4, result.columns
    if shift == 0.0:
        assert len(result.drifted) <= 1, result.columns


def test_a_value_new_in_the_window_changes_the_method_as_in_evidently() -> None:
    """Two values in the reference, three in the window: Evidently counts distinct values over
    both samples, so the Z-test becomes chi-square (and a category absent from the reference
    drifts with p = 0)."""
    reference = tabular(300, 3)
    window = tabular(200, 4)
    window.loc[:20, "flag"] = 2.0
    window.loc[:20, "member"] = "maybe"
    baseline = DriftBaseline(reference, schema_of(reference))
    result = baseline.check(window)
    same(result.columns, preset_for(baseline, window))
    assert result.columns["flag"]["method"] == result.columns["member"]["method"] == "chi-square p_value"
    assert result.columns["member"]["drifted"]


def test_missing_and_infinite_values_are_dropped_as_evidently_drops_them() -> None:
    reference, window = tabular(400, 5), tabular(300, 6, 0.3)
    reference.loc[:30, "amount"] = np.inf
    window.loc[:50, "amount"] = np.nan
    kinds = KINDS | {"amount": "numeric"}
    schema = FeatureSchema.infer(reference.replace(np.inf, 0.0), kinds, "regression", None)
    baseline = DriftBaseline(reference, schema)
    same(baseline.check(window).columns, preset_for(baseline, window))


def test_configured_methods_and_thresholds_match_the_preset_given_the_same() -> None:
    config = DriftConfig(numeric=DriftMethod(method="psi", threshold=0.05),
                         categorical=DriftMethod(threshold=0.2),
                         columns={"amount": DriftMethod(method="mannw"), "member": DriftMethod(method="hellinger",
                                                                                                  threshold=0.01)})
    reference, window = tabular(1500, 7), tabular(500, 8, 0.5)
    baseline = DriftBaseline(reference, schema_of(reference), config)
    result = baseline.check(window)
    same(result.columns, preset_for(baseline, window, config))
    assert result.columns["amount"]["method"] == "Mann-Whitney U-rank test"
    assert result.columns["rating"]["method"] == "PSI" and result.columns["rating"]["threshold"] == 0.05
    assert result.columns["region"]["threshold"] == 0.2  # Evidently's default method, the configured threshold
    assert result.columns["member"]["threshold"] == 0.01


def test_a_wrong_method_or_column_is_refused_with_the_choices() -> None:
    reference = tabular(100, 9)
    with pytest.raises(ConfigError, match=r"monitoring\.drift\.numeric\.method: .*Available stattests: .*'ks'"):
        DriftBaseline(reference, schema_of(reference), DriftConfig(numeric=DriftMethod(method="kolmogorov")))
    with pytest.raises(ConfigError, match=r"monitoring\.drift\.columns\.region\.method: .*isn't applicable"):
        DriftBaseline(reference, schema_of(reference), DriftConfig(columns={"region": DriftMethod(method="ks")}))
    with pytest.raises(ConfigError, match=r"unknown column 'income'; columns are \['amount'"):
        DriftBaseline(reference, schema_of(reference), DriftConfig(columns={"income": DriftMethod(method="ks")}))


def test_images_are_compared_through_their_summaries() -> None:
    rng = np.random.default_rng(10)
    ref = pd.DataFrame({"img": list(rng.uniform(0, 1, (300, 6, 6))), "size": rng.normal(0, 1, 300)})
    cur = pd.DataFrame({"img": list(np.clip(rng.uniform(0, 1, (200, 6, 6)) + 0.1, 0, 1)),
                        "size": rng.normal(0, 1, 200)})
    schema = schema_of(ref, {"img": "image", "size": "numeric"})
    baseline = DriftBaseline(ref, schema)
    result = baseline.check(cur)
    same(result.columns, preset_for(baseline, cur))
    assert "img.mean" in result.drifted and len(result.columns) == 5


class Constant:
    """A model that answers one class for rows whose amount is below a cut, another above."""

    def __init__(self, cut: float) -> None:
        self.cut = cut

    def predict_frame(self, frame: pd.DataFrame) -> tuple[np.ndarray, None]:
        return np.where(frame["amount"].to_numpy() < self.cut, 0, 1).astype(np.int64), None


def test_prediction_drift_compares_the_versions_served_predictions_with_its_reference_predictions() -> None:
    reference, window = tabular(400, 11), tabular(300, 12, 1.0)
    model = Constant(105.0)
    window["prediction"] = model.predict_frame(window)[0].tolist()  # as logged: JSON integers
    window["model_version"] = ["v2"] * 100 + ["v1"] * 200  # v2 answered the first 100 rows
    baseline = DriftBaseline(reference, schema_of(reference, task="classification"), version="v1", model=model)
    result = baseline.check(window)
    ours = result.prediction
    assert ours is not None and ours["method"] == "Z-test p_value" and ours["drifted"]
    assert PREDICTION not in result.columns and result.share == len(result.drifted) / 5
    from driftloop.monitoring.drift import frame_for_drift

    served = baseline._served_predictions(window)
    assert served is not None and int(served.notna().sum()) == 200
    theirs = preset_columns(baseline.report(frame_for_drift(window, baseline.schema)[0], served))
    same(result.columns | {PREDICTION: ours}, theirs)
    window["model_version"] = "v3"
    assert baseline.check(window).prediction is None  # no row answered by v1


def test_the_html_report_is_built_only_when_saved(tmp_path: Path) -> None:
    reference, window = tabular(300, 13), tabular(200, 14, 1.0)
    result = check_drift(reference, window, schema_of(reference))
    assert not result._cache
    path = result.save_html(tmp_path / "r" / "drift.html")
    assert "amount" in path.read_text() and result._cache


def test_the_monitor_records_prediction_drift_beside_the_features(champion_home: Path, tmp_path: Path) -> None:
    """A window served by the champion: its features' drift and, under ``prediction``, the drift of
    its served classes against the champion's predictions on its reference sample."""
    import shutil

    from driftloop.models.registry import Registry
    from driftloop.monitoring.monitor import Monitor
    from driftloop.monitoring.store import PredictionStore
    from tests.conftest import make_settings
    from tests.unit.test_monitor import serve
    from driftloop.training import scenarios

    home = tmp_path / "bentoml"
    shutil.copytree(champion_home / "bentoml", home)
    settings = make_settings(tmp_path, registry={"home": str(home)}, monitoring={"window_rows": 300})
    store = PredictionStore(settings.store.url).create()
    registry = Registry(settings.registry.home, "loans")
    frame = scenarios.generate(scenarios.loans_periods(window=300, stable=1, covariate=1, concept=0), seed=3)
    monitor = Monitor(settings, store, registry, retrainer=lambda *a, **k: None)
    checks = []
    for period in ("stable", "covariate"):
        serve(store, registry, frame[frame["period"] == period].reset_index(drop=True))
        checks += monitor.run_once()
    stable, covariate = (c.feature_scores for c in checks)
    assert set(stable) == set(registry.get("v1").schema.names) | {PREDICTION}
    assert stable[PREDICTION]["method"] == "Jensen-Shannon distance"  # a category, 2,000 reference rows
    assert not stable[PREDICTION]["drifted"]
    assert covariate[PREDICTION]["score"] != stable[PREDICTION]["score"]
    assert checks[1].drift_share == len(checks[1].drifted_features) / len(registry.get("v1").schema.names)
