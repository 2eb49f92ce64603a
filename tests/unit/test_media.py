"""The built-in media scenarios (``digits`` images, ``sensors`` time series) in training/media.py.

Shapes and value ranges, determinism, time order, the digits pools' separation, the Parquet and
JSON round trips, and the drift each period promises, measured with small scikit-learn models
trained on the ``train`` period of the seeded default timeline (the seed is fixed, so every
accuracy is a fixed number; the thresholds leave a margin over it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from driftloop.training.media import (
    AFTER_MAINTENANCE,
    BEFORE_MAINTENANCE,
    BRIGHTNESS_OFFSET,
    BRIGHTNESS_SCALE,
    DIGITS_FEATURES,
    DIGITS_TARGET,
    DIGITS_TIMESTAMP,
    IMAGE_SHAPE,
    MEDIA_SCENARIOS,
    SENSOR_FEATURES,
    SENSOR_TARGET,
    SENSOR_TIMESTAMP,
    SEQUENCE_SHAPE,
    MediaPeriod,
    corrupt,
    digit_pools,
    digits_frame,
    generate_digits,
    generate_sensors,
    sensors_frame,
)

DIGIT_PERIODS = ["train", "stable", "noise", "rotation", "brightness"]
SENSOR_PERIODS = ["train", "stable", "regime"]
SMALL = {
    "digits": {"train_rows": 60, "window": 20},
    "sensors": {"train_rows": 60, "window": 20},
}
FEATURE = {"digits": "pixels", "sensors": "signal"}
SHAPE = {"digits": IMAGE_SHAPE, "sensors": SEQUENCE_SHAPE}
TIMESTAMP = {"digits": DIGITS_TIMESTAMP, "sensors": SENSOR_TIMESTAMP}


@pytest.fixture(scope="module")
def digits() -> pd.DataFrame:
    return digits_frame(seed=42)


@pytest.fixture(scope="module")
def sensors() -> pd.DataFrame:
    return sensors_frame(seed=42)


def arrays(frame: pd.DataFrame, column: str, period: str | None = None) -> np.ndarray:
    part = frame if period is None else frame[frame["period"] == period]
    assert len(part) > 0, f"period {period!r} is empty"
    return np.array([np.asarray(v, dtype=float) for v in part[column]])


def labels(frame: pd.DataFrame, target: str, period: str) -> np.ndarray:
    return frame.loc[frame["period"] == period, target].to_numpy()


def is_nested_floats(value: object, shape: tuple[int, int]) -> bool:
    return (isinstance(value, list) and len(value) == shape[0]
            and all(isinstance(row, list) and len(row) == shape[1]
                    and all(type(x) is float for x in row) for row in value))


# ---------------------------------------------------------------------------------- digits

def test_digits_default_timeline(digits: pd.DataFrame) -> None:
    assert list(digits.columns) == [*DIGITS_FEATURES, DIGITS_TARGET, "period", DIGITS_TIMESTAMP]
    assert DIGITS_FEATURES == {"pixels": "image"} and IMAGE_SHAPE == (8, 8)
    assert list(dict.fromkeys(digits["period"])) == DIGIT_PERIODS
    assert digits["period"].value_counts().to_dict() == {
        "train": 1000, "stable": 400, "noise": 400, "rotation": 400, "brightness": 400}


def test_digits_values_are_nested_float_lists_in_the_unit_range(digits: pd.DataFrame) -> None:
    assert all(is_nested_floats(v, IMAGE_SHAPE) for v in digits["pixels"])
    pixels = arrays(digits, "pixels")
    assert pixels.shape == (len(digits), *IMAGE_SHAPE)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert pixels[digits["period"].to_numpy() == "train"].max() == 1.0  # scaled from 0..16
    assert digits[DIGITS_TARGET].dtype == np.int64
    assert set(digits[DIGITS_TARGET]) == set(range(10))
    assert set(labels(digits, DIGITS_TARGET, "train")) == set(range(10))


def test_digit_pools_split_the_images_once(digits: pd.DataFrame) -> None:
    pools = digit_pools(np.random.default_rng(42))
    assert len(pools["train"]) == 1078 and len(pools["live"]) == 719
    assert not set(pools["train"]) & set(pools["live"])
    assert len(set(pools["train"]) | set(pools["live"])) == 1797


def test_live_periods_never_reuse_a_training_image(digits: pd.DataFrame) -> None:
    as_tuples = lambda period: {tuple(a.ravel()) for a in arrays(digits, "pixels", period)}  # noqa: E731
    train, stable = as_tuples("train"), as_tuples("stable")
    assert len(stable) > 200  # sampled with replacement from 719 images: many distinct ones
    assert not train & stable


def test_each_drift_changes_the_images_the_documented_way(digits: pd.DataFrame) -> None:
    stable = arrays(digits, "pixels", "stable")
    noise = arrays(digits, "pixels", "noise")
    rotation = arrays(digits, "pixels", "rotation")
    bright = arrays(digits, "pixels", "brightness")
    # Clean digits are mostly black background; clipped noise lights most of it up a little.
    assert (stable == 0).mean() > 0.4 and (noise == 0).mean() < (stable == 0).mean() * 0.7
    assert noise.mean() > stable.mean() + 0.03
    # Washed out: nothing darker than the offset, nothing brighter than scale + offset.
    assert bright.min() == pytest.approx(BRIGHTNESS_OFFSET)
    assert bright.max() <= BRIGHTNESS_SCALE + BRIGHTNESS_OFFSET + 1e-9
    # Rotated: still in range, mass moved away from where the clean digits have it.
    clean_live = {tuple(np.round(a, 4).ravel()) for a in stable}
    assert not clean_live & {tuple(a.ravel()) for a in rotation}
    assert np.abs(rotation.mean(axis=0) - stable.mean(axis=0)).mean() > 0.03


def test_corrupt_rejects_an_unknown_drift() -> None:
    with pytest.raises(ValueError, match="unknown digits drift 'blur'"):
        corrupt(np.zeros((1, 8, 8)), "blur", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown pool 'test'"):
        generate_digits([MediaPeriod("x", 3, pool="test")])


@pytest.fixture(scope="module")
def digit_accuracy(digits: pd.DataFrame) -> dict[str, float]:
    """Accuracy per period of a small MLP trained on the flattened ``train`` images."""
    flat = lambda period: arrays(digits, "pixels", period).reshape(-1, 64)  # noqa: E731
    model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=0)
    model.fit(flat("train"), labels(digits, DIGITS_TARGET, "train"))
    return {p: float(model.score(flat(p), labels(digits, DIGITS_TARGET, p))) for p in DIGIT_PERIODS[1:]}


def test_stable_digits_are_recognised(digit_accuracy: dict[str, float]) -> None:
    assert digit_accuracy["stable"] >= 0.85, digit_accuracy


@pytest.mark.parametrize("drift", ["noise", "rotation", "brightness"])
def test_each_digits_drift_hurts_the_model(digit_accuracy: dict[str, float], drift: str) -> None:
    assert digit_accuracy[drift] <= digit_accuracy["stable"] - 0.1, digit_accuracy


# ---------------------------------------------------------------------------------- sensors

def test_sensors_default_timeline(sensors: pd.DataFrame) -> None:
    assert list(sensors.columns) == [*SENSOR_FEATURES, SENSOR_TARGET, "period", SENSOR_TIMESTAMP]
    assert SENSOR_FEATURES == {"signal": "sequence"} and SEQUENCE_SHAPE == (32, 3)
    assert list(dict.fromkeys(sensors["period"])) == SENSOR_PERIODS
    assert sensors["period"].value_counts().to_dict() == {"train": 1200, "stable": 400, "regime": 600}


def test_sensor_values_are_nested_float_lists(sensors: pd.DataFrame) -> None:
    assert all(is_nested_floats(v, SEQUENCE_SHAPE) for v in sensors["signal"])
    signal = arrays(sensors, "signal")
    assert signal.shape == (len(sensors), *SEQUENCE_SHAPE)
    assert np.isfinite(signal).all() and np.abs(signal).max() < 10
    assert sensors[SENSOR_TARGET].dtype == np.int64
    for period in SENSOR_PERIODS:  # both states in every period, neither rare
        assert 0.3 < labels(sensors, SENSOR_TARGET, period).mean() < 0.5, period


def spectrum(signal: np.ndarray) -> np.ndarray:
    """Per-channel FFT magnitudes (n, 16, 3) without the constant term."""
    centred = signal - signal.mean(axis=1, keepdims=True)
    return np.abs(np.fft.rfft(centred, axis=1))[:, 1:, :]


def features(signal: np.ndarray) -> np.ndarray:
    """Hand-made features of windows (n, 32, 3): per channel mean, std, slope and spectrum."""
    t = np.arange(signal.shape[1]) - (signal.shape[1] - 1) / 2
    slope = (signal * t[None, :, None]).sum(axis=1) / (t**2).sum()
    return np.hstack([signal.mean(axis=1), signal.std(axis=1), slope,
                      spectrum(signal).reshape(len(signal), -1)])


def classifier() -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def test_regime_moves_the_rhythm_and_the_fault_signature(sensors: pd.DataFrame) -> None:
    for period, regime in [("train", BEFORE_MAINTENANCE), ("regime", AFTER_MAINTENANCE)]:
        vibration = spectrum(arrays(sensors, "signal", period))[..., 0]  # bins 1..16 -> index 0..15
        faults = labels(sensors, SENSOR_TARGET, period) == 1
        assert vibration[~faults].mean(axis=0).argmax() + 1 == regime.base_cycles, period
        excess = vibration[faults].mean(axis=0) - vibration[~faults].mean(axis=0)
        assert excess.argmax() + 1 == regime.fault_cycles, period
    # After maintenance the normal rhythm sits where the old fault signature was.
    assert AFTER_MAINTENANCE.base_cycles == BEFORE_MAINTENANCE.fault_cycles


@pytest.fixture(scope="module")
def sensor_accuracy(sensors: pd.DataFrame) -> dict[str, float]:
    """Accuracy per period of a model trained on ``train``; ``retrained``: a model trained on
    the first two regime windows, scored on the last one; ``means``: per-channel means only."""
    x = {p: features(arrays(sensors, "signal", p)) for p in SENSOR_PERIODS}
    y = {p: labels(sensors, SENSOR_TARGET, p) for p in SENSOR_PERIODS}
    model = classifier().fit(x["train"], y["train"])
    scores = {p: float(model.score(x[p], y[p])) for p in ("stable", "regime")}
    fresh = classifier().fit(x["regime"][:400], y["regime"][:400])
    scores["retrained"] = float(fresh.score(x["regime"][400:], y["regime"][400:]))
    means = classifier().fit(x["train"][:, :3], y["train"])
    scores["means"] = float(means.score(x["stable"][:, :3], y["stable"]))
    return scores


def test_stable_sensor_states_are_recognised(sensor_accuracy: dict[str, float]) -> None:
    assert sensor_accuracy["stable"] >= 0.85, sensor_accuracy


def test_the_channel_means_alone_do_not_separate_the_states(sensor_accuracy: dict[str, float]) -> None:
    assert sensor_accuracy["means"] < 0.7, sensor_accuracy


def test_regime_change_hurts_the_first_model(sensor_accuracy: dict[str, float]) -> None:
    assert sensor_accuracy["regime"] <= sensor_accuracy["stable"] - 0.15, sensor_accuracy


def test_a_model_trained_on_the_new_regime_recovers(sensor_accuracy: dict[str, float]) -> None:
    assert sensor_accuracy["retrained"] >= 0.8, sensor_accuracy


def test_sensors_reject_an_unknown_drift() -> None:
    with pytest.raises(ValueError, match="unknown sensors drift 'rust'"):
        generate_sensors([MediaPeriod("x", 3, drift="rust")])


# ---------------------------------------------------------------------------------- both

def test_media_scenarios_are_registered() -> None:
    assert MEDIA_SCENARIOS == {"digits": digits_frame, "sensors": sensors_frame}


@pytest.mark.parametrize("name", list(MEDIA_SCENARIOS))
def test_same_seed_gives_an_identical_frame(name: str) -> None:
    make = MEDIA_SCENARIOS[name]
    pd.testing.assert_frame_equal(make(seed=7, **SMALL[name]), make(seed=7, **SMALL[name]))


@pytest.mark.parametrize("name", list(MEDIA_SCENARIOS))
def test_different_seed_gives_different_rows(name: str) -> None:
    make = MEDIA_SCENARIOS[name]
    a, b = make(seed=7, **SMALL[name]), make(seed=8, **SMALL[name])
    assert a.shape == b.shape and list(a["period"]) == list(b["period"])
    assert not np.array_equal(arrays(a, FEATURE[name]), arrays(b, FEATURE[name]))


def test_sizes_override_the_timelines() -> None:
    d = digits_frame(seed=1, train_rows=50, window=10, stable=1, noise=2, rotation=3, brightness=0)
    assert d["period"].value_counts().to_dict() == {"train": 50, "stable": 10, "noise": 20, "rotation": 30}
    s = sensors_frame(seed=1, train_rows=40, window=10, stable=3, regime=1)
    assert s["period"].value_counts().to_dict() == {"train": 40, "stable": 30, "regime": 10}


@pytest.mark.parametrize("name", list(MEDIA_SCENARIOS))
def test_timestamps_strictly_increase_in_utc(name: str) -> None:
    stamps = MEDIA_SCENARIOS[name](seed=3, **SMALL[name])[TIMESTAMP[name]]
    assert str(stamps.dt.tz) == "UTC"
    assert stamps.is_unique and stamps.is_monotonic_increasing
    assert (stamps.diff().iloc[1:] > pd.Timedelta(0)).all()


@pytest.mark.parametrize("name", list(MEDIA_SCENARIOS))
def test_frames_round_trip_through_parquet(name: str, tmp_path: Path) -> None:
    frame = MEDIA_SCENARIOS[name](seed=5, **SMALL[name])
    path = tmp_path / f"{name}.parquet"
    frame.to_parquet(path)
    back = pd.read_parquet(path)
    assert list(back.columns) == list(frame.columns)
    column = FEATURE[name]
    restored = np.array([np.stack([np.asarray(row, dtype=float) for row in v]) for v in back[column]])
    assert restored.shape == (len(frame), *SHAPE[name])
    np.testing.assert_array_equal(restored, arrays(frame, column))
    others = [c for c in frame.columns if c != column]
    pd.testing.assert_frame_equal(back[others], frame[others], check_dtype=False)


@pytest.mark.parametrize("name", list(MEDIA_SCENARIOS))
def test_frames_round_trip_through_json(name: str) -> None:
    frame = MEDIA_SCENARIOS[name](seed=5, **SMALL[name])
    column = FEATURE[name]
    records = json.loads(frame[[column]].to_json(orient="records"))
    assert [r[column] for r in records] == frame[column].tolist()
