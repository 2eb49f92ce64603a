"""The fixed guard set: labelled rows that no version ever trains on.

The retraining gate compares a candidate with the champion on the newest labelled rows. Those
rows move with the world, so a run of gates can drift a model away from what it used to get
right without any single gate noticing. The guard set is the fixed yardstick beside it: a
candidate whose primary metric on it is worse than the champion's by more than
``retraining.guard.max_drop`` is rejected (``training/retrain.py``), whatever the holdout says.

Where it comes from (``retraining.guard``):

* ``path`` set: the operator's CSV or Parquet file (the features and, for supervised tasks, the
  target), read with :func:`training.data.load_frame`;
* otherwise, when ``rows > 0``: ``rows`` rows drawn without replacement (``settings.seed``) from
  the initial data (:func:`training.train.source_frame`), at most a fifth of it, kept in time
  order; ``rows == 0``: no guard set.

"Fixed" means: at first use the set is written to ``<registry home>/driftloop/<project>/guard.parquet``
(the project's directory, beside ``champion.json``), with its sha256 and where it came from in
``guard.json``. Every later use reads that copy and checks its checksum (and, for an operator's
file, that the file has not changed since); a mismatch, or a guard configuration that no longer
matches the recorded one, raises :class:`~models.errors.IntegrityError`: delete both files to fix
a new guard set on purpose. Parquet and JSON only; nothing is ever unpickled.

:func:`training.train.initial_frame` drops the guard rows from the initial data (every row equal,
on the guard's columns, to a guard row), so the first model never sees them either.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from driftloop.models.errors import ConfigError, IntegrityError, SchemaError
from driftloop.models.files import replace_atomically, write_text_atomically
from driftloop.models.registry import project_dir, sha256_file
from driftloop.models.schema import SUPERVISED, as_array
from driftloop.training import data as data_mod

if TYPE_CHECKING:
    from driftloop.settings import GuardConfig, Settings

log = logging.getLogger("driftloop.training")
GUARD_FILE, GUARD_META = "guard.parquet", "guard.json"
MAX_SHARE = 0.2  # a carved guard set takes at most this share of the initial data


def guard_columns(settings: Settings) -> list[str]:
    """What a guard row must have: the features, and the target for supervised tasks."""
    target = [settings.data.target] if settings.task in SUPERVISED and settings.data.target else []
    return [*settings.features, *target]


def enabled(config: GuardConfig) -> bool:
    """Whether ``retraining.guard`` configures a guard set (a file, or rows to carve)."""
    return config.path is not None or config.rows > 0


def guard_frame(settings: Settings, source: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """The fixed guard set (None when there is none), fixing it at first use.

    ``source``: the initial data, when the caller has it at hand (else it is loaded when needed).
    """
    config = settings.retraining.guard
    if not enabled(config):
        return None
    directory = project_dir(settings.registry.home, settings.registry.project)
    data_path, meta_path = directory / GUARD_FILE, directory / GUARD_META
    columns, origin = guard_columns(settings), _origin(config, settings.seed)
    if not data_path.exists() and not meta_path.exists():
        frame, recorded = _draw(settings, columns, origin, source)
        _fix(frame, columns, recorded, data_path, meta_path)
    return _load(data_path, meta_path, origin, columns)


def without_guard(frame: pd.DataFrame, guard: pd.DataFrame | None, columns: list[str]) -> pd.DataFrame:
    """``frame`` minus every row equal to a guard row on ``columns``, index reset."""
    if guard is None or guard.empty:
        return frame
    keep = ~np.isin(row_hashes(frame[columns]), row_hashes(guard[columns]))
    return frame[keep].reset_index(drop=True)


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """One 64-bit hash per row of ``frame``'s values (array features by their float64 bytes)."""
    frame = frame.reset_index(drop=True).copy()
    for name in frame.columns:
        if frame[name].dtype == object and len(frame) and isinstance(frame[name].iloc[0], (list, np.ndarray)):
            frame[name] = frame[name].map(lambda v: as_array(v, np.float64).tobytes())
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


def carve(source: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """``rows`` rows of ``source`` (at most :data:`MAX_SHARE` of it), drawn with ``seed``, in their
    original order (``rows``: ``retraining.guard.rows``)."""
    n = min(rows, int(len(source) * MAX_SHARE))
    if n < rows:
        log.warning("retraining.guard.rows: %d of %d initial rows would leave too little to train on; "
                    "the guard set takes %d", rows, len(source), n)
    if n < 1:
        raise ConfigError(f"retraining.guard.rows: {len(source)} initial rows are too few to set a guard set "
                          "aside; set it to 0 or give retraining.guard.path")
    picked = np.sort(np.random.default_rng(seed).choice(len(source), size=n, replace=False))
    return source.iloc[picked].reset_index(drop=True)


def _origin(config: GuardConfig, seed: int) -> dict[str, Any]:
    """How the configuration says the guard set is made: compared with the recorded one."""
    if config.path is not None:
        return {"source": "file", "path": str(Path(config.path).resolve())}
    return {"source": "carved", "configured_rows": config.rows, "seed": seed}


def _draw(settings: Settings, columns: list[str], origin: dict[str, Any],
          source: pd.DataFrame | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A new guard set, and the origin to record: the operator's file (with its checksum), or rows
    carved from the initial data (``source``, loaded here when not given)."""
    config = settings.retraining.guard
    if config.path is not None:
        path = Path(config.path)
        return data_mod.load_frame(path, columns, None)[columns], origin | {"file_sha256": sha256_file(path)}
    if source is None:
        from driftloop.training.train import source_frame  # train imports this module

        source = source_frame(settings)
    missing = [c for c in columns if c not in source.columns]
    if missing:
        raise SchemaError(f"retraining.guard: the initial data has no column(s) {missing} to carve a guard set "
                          "from; give retraining.guard.path or set retraining.guard.rows to 0")
    return carve(source, config.rows, settings.seed)[columns], origin


def _fix(frame: pd.DataFrame, columns: list[str], origin: dict[str, Any], data_path: Path, meta_path: Path) -> None:
    """Write the guard set and what fixes it (origin, rows, columns, sha256), each atomically."""
    if frame.empty:
        raise ConfigError("retraining.guard: the guard set has no rows")
    replace_atomically(data_path, lambda tmp: frame.reset_index(drop=True).to_parquet(tmp, index=False))
    meta = origin | {"rows": len(frame), "columns": columns, "sha256": sha256_file(data_path)}
    write_text_atomically(meta_path, json.dumps(meta, indent=1) + "\n")
    log.info("fixed the guard set: %d rows (%s) in %s", len(frame), origin["source"], data_path)


def _load(data_path: Path, meta_path: Path, origin: dict[str, Any], columns: list[str]) -> pd.DataFrame:
    """The fixed copy, refused unless its checksum, its recorded ``origin`` (and an operator's
    file) still match and it has ``columns``."""
    remedy = f"delete {data_path} and {meta_path.name} beside it to fix a new guard set on purpose"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise IntegrityError(f"{data_path}: no recorded checksum ({meta_path.name} is missing); refusing it; "
                             f"{remedy}") from None
    if not data_path.exists():
        raise IntegrityError(f"{data_path} is missing but {meta_path.name} records one; {remedy}")
    actual = sha256_file(data_path)
    if actual != meta.get("sha256"):
        raise IntegrityError(f"{data_path}: checksum mismatch (recorded {str(meta.get('sha256'))[:12]}..., "
                             f"found {actual[:12]}...): the guard set changed; refusing it")
    recorded = {key: meta.get(key) for key in origin}
    if recorded != origin:
        raise IntegrityError(f"retraining.guard is now {origin}, but the guard set was fixed as {recorded}; {remedy}")
    if origin["source"] == "file":
        current = sha256_file(Path(origin["path"])) if Path(origin["path"]).exists() else None
        if current is not None and current != meta.get("file_sha256"):
            raise IntegrityError(f"{origin['path']}: the guard file changed since it was fixed (sha256 "
                                 f"{str(meta.get('file_sha256'))[:12]}... recorded); {remedy}")
    frame = pd.read_parquet(data_path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise IntegrityError(f"{data_path}: missing column(s) {missing} the schema needs; {remedy}")
    return frame
