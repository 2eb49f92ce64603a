"""Loading training data (a user's CSV/Parquet or a built-in scenario) and time-aware splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.models.errors import ConfigError, SchemaError


def load_frame(path: Path, columns: list[str], timestamp: str | None, target: str | None = None, *,
               setting: str = "data.path") -> pd.DataFrame:
    """Read CSV or Parquet, check the named columns exist, order by ``timestamp`` when given.

    Every mistake in the file is one :class:`SchemaError` line naming the file, the column and
    the first offending row (as a CSV line number, the header being line 1) and what to do: a
    missing file, one pandas cannot read, a timestamp that does not parse, blank ``target``
    values (a model cannot learn from a row without its answer).
    ``setting`` names where the path came from, for the message (``data.path``: the config).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ConfigError(f"{setting}: {str(path)!r} must be a .csv or .parquet file")
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        fix = "; fix data.path in the config file or DRIFTLOOP_DATA__PATH" if setting == "data.path" else ""
        raise ConfigError(f"{setting}: {path} does not exist{where}{fix}")
    try:
        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # ParserError, EmptyDataError, ArrowInvalid
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SchemaError(f"{path}: cannot be read as {suffix.lstrip('.').upper()}: {first}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {missing}; the file has {list(frame.columns)}")
    if target is not None and target in frame.columns and (blank := frame[target].isna()).any():
        rows = [_line(path, i) for i in frame.index[blank][:5]]
        raise SchemaError(f"{path}: column {target!r} (the target) is blank in {int(blank.sum())} row(s), first at "
                          f"{', '.join(rows)}; drop those rows or fill in their labels")
    if timestamp:
        if timestamp not in frame.columns:
            raise SchemaError(f"data.timestamp: column {timestamp!r} is not in {path}; the file has "
                              f"{list(frame.columns)}")
        frame[timestamp] = _timestamps(path, frame[timestamp], timestamp)
        frame = frame.sort_values(timestamp, kind="stable").reset_index(drop=True)
    return frame


def _timestamps(path: Path, values: pd.Series, column: str) -> pd.Series:
    try:
        return pd.to_datetime(values, utc=True)
    except (ValueError, TypeError, OverflowError):
        pass
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    bad = parsed.isna() & values.notna()
    if not bad.any():  # pandas refused the column as a whole (mixed offsets, ...): coerced, it parses
        return parsed
    first = bad.idxmax()
    raise SchemaError(f"{path}: column {column!r} (data.timestamp) has {int(bad.sum())} value(s) that are not "
                      f"timestamps, first {values[first]!r} at {_line(path, first)}; use ISO 8601 "
                      "(2026-01-31 or 2026-01-31T12:00:00Z), or unset data.timestamp")


def _line(path: Path, index: object) -> str:
    """Where a row is, for a person: a CSV's line number (the header is line 1), else the row."""
    position = int(index) if isinstance(index, (int, np.integer)) else index
    return f"line {position + 2}" if path.suffix.lower() == ".csv" and isinstance(position, int) else f"row {position}"


def split(frame: pd.DataFrame, validation_fraction: float, timestamp: str | None,
          seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on the past, validate on the future when rows are time-ordered; else shuffle."""
    n_valid = max(1, int(round(len(frame) * validation_fraction)))
    if len(frame) - n_valid < 2:
        raise SchemaError(f"too few rows to split: {len(frame)} rows, validation fraction {validation_fraction}")
    if timestamp:
        return frame.iloc[:-n_valid], frame.iloc[-n_valid:]
    shuffled = frame.sample(frac=1.0, random_state=seed)
    return shuffled.iloc[:-n_valid], shuffled.iloc[-n_valid:]
