"""A user's data file with a mistake in it: one line naming the file, column and row, never a
pandas traceback (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from driftloop.models.errors import ConfigError, SchemaError
from driftloop.training.data import load_frame


def csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def test_a_missing_file_names_the_path_and_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"data.path: nope.csv does not exist \(relative to the working directory "
                       + str(tmp_path).replace("/", r"\/") + r"\); fix data.path"):
        load_frame(Path("nope.csv"), ["a"], None)


def test_blank_targets_name_the_column_the_count_and_the_first_line(tmp_path: Path) -> None:
    path = csv(tmp_path, "a,y\n1,0\n2,\n3,1\n4,\n")
    with pytest.raises(SchemaError, match=r"column 'y' \(the target\) is blank in 2 row\(s\), first at line 3, "
                                          r"line 5; drop those rows"):
        load_frame(path, ["a", "y"], None, "y")
    assert len(load_frame(path, ["a", "y"], None)) == 4  # without a target (unsupervised): no such rule


def test_a_timestamp_that_does_not_parse_names_the_value_and_its_line(tmp_path: Path) -> None:
    path = csv(tmp_path, "a,t\n1,2026-01-02\n2,2026-01-01\n3,yesterday\n")
    with pytest.raises(SchemaError, match=r"column 't' \(data.timestamp\) has 1 value\(s\) that are not timestamps, "
                                          r"first 'yesterday' at line 4; use ISO 8601"):
        load_frame(path, ["a"], "t")
    good = csv(tmp_path, "a,t\n1,2026-01-02\n2,2026-01-01T10:00:00Z\n")
    frame = load_frame(good, ["a"], "t")
    assert list(frame["a"]) == [2, 1] and str(frame["t"].dt.tz) == "UTC"  # ordered by time


def test_a_file_pandas_cannot_read_is_one_line(tmp_path: Path) -> None:
    empty = csv(tmp_path, "")
    with pytest.raises(SchemaError, match=r"data.csv: cannot be read as CSV: No columns to parse from file"):
        load_frame(empty, ["a"], None)
    broken = tmp_path / "data.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(SchemaError, match=r"data.parquet: cannot be read as PARQUET"):
        load_frame(broken, ["a"], None)


def test_a_parquet_row_is_named_by_its_position(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pd.DataFrame({"a": [1, 2], "y": [0.0, None]}).to_parquet(path)
    with pytest.raises(SchemaError, match=r"blank in 1 row\(s\), first at row 1;"):
        load_frame(path, ["a", "y"], None, "y")
