"""The fixed guard set (training/guard.py) and its gate (training/retrain.py).

The guard rows are carved out of the initial data once, written beside the registry with their
checksum, never trained on (``initial_frame`` drops them) and refused once they change. The gate
rejects a candidate that beats the champion on the newest rows but is worse on the guard set.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop.models.errors import ConfigError, IntegrityError, SchemaError
from driftloop.models.registry import Registry, project_dir
from driftloop.settings import GuardConfig
from driftloop.training import guard as guard_mod
from driftloop.training import scenarios as sc
from driftloop.training.retrain import retrain
from driftloop.training.train import guard_frame, initial_frame, source_frame, train_version

from driftloop.vocabulary import Outcome

from tests.conftest import make_settings

GUARD_ROWS = 300


def settings_at(root: Path, **retraining: Any) -> Any:
    return make_settings(root, retraining={"guard": {"rows": GUARD_ROWS}, "tournament": {"enabled": False}} | retraining)


@pytest.fixture(scope="module")
def guarded_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 trained on the initial data less a 300-row guard set, and promoted (trained once)."""
    root = tmp_path_factory.mktemp("guarded")
    settings = settings_at(root)
    registry = Registry(settings.registry.home, settings.registry.project)
    result = train_version(settings, initial_frame(settings), registry, trigger="initial")
    registry.promote(result.version.version, actor="test", reason="fixture")
    return root


@pytest.fixture
def root(guarded_home: Path, tmp_path: Path) -> Path:
    shutil.copytree(guarded_home / "bentoml", tmp_path / "bentoml")
    return tmp_path


def test_initial_frame_excludes_the_guard_rows_which_are_fixed_on_disk(tmp_path: Path) -> None:
    settings = settings_at(tmp_path)
    source = source_frame(settings)
    initial = initial_frame(settings)
    guard = guard_frame(settings)
    assert guard is not None and len(guard) == GUARD_ROWS and len(initial) == len(source) - GUARD_ROWS
    columns = guard_mod.guard_columns(settings)
    assert list(guard.columns) == columns == [*sc.FEATURES, sc.TARGET]
    assert not np.isin(guard_mod.row_hashes(initial[columns]), guard_mod.row_hashes(guard)).any()
    assert np.isin(guard_mod.row_hashes(guard), guard_mod.row_hashes(source[columns])).all()  # carved out of it

    directory = project_dir(settings.registry.home, settings.registry.project)
    meta = json.loads((directory / guard_mod.GUARD_META).read_text())
    assert meta["source"] == "carved" and meta["rows"] == meta["configured_rows"] == GUARD_ROWS
    assert meta["seed"] == settings.seed
    assert len(meta["sha256"]) == 64
    pd.testing.assert_frame_equal(guard_frame(settings), guard)  # the same rows at every use
    pd.testing.assert_frame_equal(initial_frame(settings), initial)


def test_no_guard_set_when_rows_is_zero(tmp_path: Path) -> None:
    settings = settings_at(tmp_path, guard={"rows": 0})
    assert guard_frame(settings) is None
    assert len(initial_frame(settings)) == len(source_frame(settings))
    assert not project_dir(settings.registry.home, settings.registry.project).exists()


def test_a_tampered_guard_file_is_refused(tmp_path: Path) -> None:
    settings = settings_at(tmp_path)
    guard = guard_frame(settings)
    path = project_dir(settings.registry.home, settings.registry.project) / guard_mod.GUARD_FILE
    tampered = guard.assign(**{sc.TARGET: 1 - guard[sc.TARGET]})  # every label flipped
    tampered.to_parquet(path, index=False)
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        guard_frame(settings)
    with pytest.raises(IntegrityError):  # nor does the first model train without its guard
        initial_frame(settings)

    (path.parent / guard_mod.GUARD_META).unlink()
    with pytest.raises(IntegrityError, match="no recorded checksum"):
        guard_frame(settings)


def test_a_changed_guard_configuration_is_refused(tmp_path: Path) -> None:
    guard_frame(settings_at(tmp_path))
    with pytest.raises(IntegrityError, match="fixed as"):
        guard_frame(settings_at(tmp_path, guard={"rows": 200}))


def test_an_operator_file_is_fixed_and_verified(tmp_path: Path, loans: pd.DataFrame) -> None:
    mine = loans[loans["period"] == "stable"].head(200)
    path = tmp_path / "guard.csv"
    mine.to_csv(path, index=False)
    settings = settings_at(tmp_path, guard={"path": str(path)})
    guard = guard_frame(settings)
    assert len(guard) == 200 and list(guard.columns) == [*sc.FEATURES, sc.TARGET]
    assert len(initial_frame(settings)) == len(source_frame(settings))  # none of these rows is initial data

    mine.head(150).to_csv(path, index=False)  # the operator's file changed since it was fixed
    with pytest.raises(IntegrityError, match="changed since it was fixed"):
        guard_frame(settings)

    other = tmp_path / "other"
    mine.drop(columns=["income"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SchemaError, match="income"):  # the gate needs the schema's columns
        guard_frame(settings_at(other, guard={"path": str(tmp_path / "bad.csv")}))


def flipped_window(rows: int, seed: int) -> pd.DataFrame:
    """Live rows of the training world whose labels are flipped in the north and south regions:
    a candidate learns the flip, wins on the newest (flipped) rows, and loses on the guard set."""
    frame = sc.generate([sc.Period("live", rows)], seed=seed)
    flip = frame["region"].isin(["north", "south"])
    frame.loc[flip, sc.TARGET] = 1 - frame.loc[flip, sc.TARGET]
    return frame


def test_the_guard_rejects_a_candidate_that_beats_the_holdout(root: Path) -> None:
    settings = settings_at(root)
    registry = Registry(settings.registry.home, settings.registry.project)
    outcome = retrain(settings, registry, flipped_window(800, seed=5), trigger="drift", reason="test")
    assert outcome.status == Outcome.REJECTED, outcome.reason
    assert outcome.candidate_score > outcome.champion_score + settings.retraining.margin  # won the holdout
    guard = outcome.guard
    assert guard is not None and guard["rows"] == GUARD_ROWS and not guard["passed"]
    assert guard["drop"] == pytest.approx(guard["champion"] - guard["candidate"])
    assert guard["drop"] > settings.retraining.guard.max_drop
    assert "worse on the guard set" in outcome.reason and "not better by the margin" not in outcome.reason
    assert f"{guard['candidate']:.4f}" in outcome.reason and f"{guard['champion']:.4f}" in outcome.reason
    assert registry.champion().version == "v1"
    gate = registry.get(outcome.candidate).metadata["gate"]
    assert gate["margin_passed"] and not gate["passed"] and gate["guard"] == guard
    json.dumps(outcome.to_dict())


def test_without_the_guard_the_same_candidate_is_promoted(root: Path) -> None:
    settings = settings_at(root, guard={"rows": 0})
    registry = Registry(settings.registry.home, settings.registry.project)
    outcome = retrain(settings, registry, flipped_window(800, seed=5), trigger="drift", reason="test")
    assert outcome.status == "promoted" and outcome.guard is None, outcome.reason


def test_carve_takes_at_most_a_fifth_of_the_source_in_order() -> None:
    source = pd.DataFrame({"x": range(100)})
    picked = guard_mod.carve(source, 30, seed=1)
    assert len(picked) == 20 and picked["x"].is_monotonic_increasing
    pd.testing.assert_frame_equal(guard_mod.carve(source, 30, seed=1), picked)  # the seed fixes it
    with pytest.raises(ConfigError, match="too few"):
        guard_mod.carve(source.head(4), 3, seed=1)
    assert guard_mod.enabled(GuardConfig(rows=1)) and guard_mod.enabled(GuardConfig(path=Path("g.csv")))
    assert not guard_mod.enabled(GuardConfig())


def test_fixing_the_guard_set_leaves_no_temporary_file(tmp_path: Path) -> None:
    settings = settings_at(tmp_path)
    guard_frame(settings)
    directory = project_dir(settings.registry.home, settings.registry.project)
    assert sorted(p.name for p in directory.iterdir()) == [guard_mod.GUARD_META, guard_mod.GUARD_FILE]
    assert oct((directory / guard_mod.GUARD_FILE).stat().st_mode & 0o777) == "0o644"
