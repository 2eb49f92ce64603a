"""Loading training data (a user's CSV/Parquet or a built-in scenario) and time-aware splits."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from driftloop.models.errors import ConfigError, SchemaError


def load_frame(path: Path, columns: list[str], timestamp: str | None) -> pd.DataFrame:
    """Read CSV or Parquet, check the named columns exist, order by ``timestamp`` when given."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame = pd.read_csv(path)
    elif suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    else:
        raise ConfigError(f"data.path: {str(path)!r} must be a .csv or .parquet file")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {missing}; the file has {list(frame.columns)}")
    if timestamp:
        if timestamp not in frame.columns:
            raise SchemaError(f"data.timestamp: column {timestamp!r} is not in {path}")
        frame[timestamp] = pd.to_datetime(frame[timestamp], utc=True)
        frame = frame.sort_values(timestamp, kind="stable").reset_index(drop=True)
    return frame


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
