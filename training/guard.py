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
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from driftloop.models.errors import ConfigError, IntegrityError, SchemaError
from driftloop.models.registry import sha256_file
from driftloop.models.schema import SUPERVISED, as_array
from driftloop.training import data as data_mod

if TYPE_CHECKING:
    from driftloop.settings import Settings

log = logging.getLogger("driftloop.training")
GUARD_FILE, GUARD_META = "guard.parquet", "guard.json"
MAX_SHARE = 0.2  # a carved guard set takes at most this share of the initial data


def project_dir(settings: Settings) -> Path:
    """The registry's directory of the project (``Registry._dir``): where the guard set lives."""
    return Path(settings.registry.home) / "driftloop" / settings.registry.project


def guard_columns(settings: Settings) -> list[str]:
    """What a guard row must have: the features, and the target for supervised tasks."""
    target = [settings.data.target] if settings.task in SUPERVISED and settings.data.target else []
    return [*settings.features, *target]


def enabled(settings: Settings) -> bool:
    guard = settings.retraining.guard
    return guard.path is not None or guard.rows > 0


def guard_frame(settings: Settings, source: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """The fixed guard set (None when there is none), fixing it at first use.

    ``source``: the initial data, when the caller has it at hand (else it is loaded when needed).
    """
    if not enabled(settings):
        return None
    directory = project_dir(settings)
    data_path, meta_path = directory / GUARD_FILE, directory / GUARD_META
    if not data_path.exists() and not meta_path.exists():
        return _fix(settings, source, data_path, meta_path)
    return _load(settings, data_path, meta_path)


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


def carve(settings: Settings, source: pd.DataFrame) -> pd.DataFrame:
    """``guard.rows`` rows of ``source`` (at most :data:`MAX_SHARE` of it), drawn with the seed,
    in their original order."""
    want = settings.retraining.guard.rows
    n = min(want, int(len(source) * MAX_SHARE))
    if n < want:
        log.warning("retraining.guard.rows: %d of %d initial rows would leave too little to train on; "
                    "the guard set takes %d", want, len(source), n)
    if n < 1:
        raise ConfigError(f"retraining.guard.rows: {len(source)} initial rows are too few to set a guard set "
                          "aside; set it to 0 or give retraining.guard.path")
    picked = np.sort(np.random.default_rng(settings.seed).choice(len(source), size=n, replace=False))
    return source.iloc[picked].reset_index(drop=True)


def _origin(settings: Settings) -> dict[str, Any]:
    """How the configuration says the guard set is made: compared with the recorded one."""
    guard = settings.retraining.guard
    if guard.path is not None:
        return {"source": "file", "path": str(Path(guard.path).resolve())}
    return {"source": "carved", "configured_rows": guard.rows, "seed": settings.seed}


def _fix(settings: Settings, source: pd.DataFrame | None, data_path: Path, meta_path: Path) -> pd.DataFrame:
    columns = guard_columns(settings)
    origin = _origin(settings)
    path = settings.retraining.guard.path
    if path is not None:
        frame = data_mod.load_frame(Path(path), columns, None)[columns]
        origin["file_sha256"] = sha256_file(Path(path))
    else:
        if source is None:
            from driftloop.training.train import source_frame  # train imports this module

            source = source_frame(settings)
        missing = [c for c in columns if c not in source.columns]
        if missing:
            raise SchemaError(f"retraining.guard: the initial data has no column(s) {missing} to carve a guard set "
                              "from; give retraining.guard.path or set retraining.guard.rows to 0")
        frame = carve(settings, source)[columns]
    if frame.empty:
        raise ConfigError("retraining.guard: the guard set has no rows")
    data_path.parent.mkdir(parents=True, exist_ok=True)
    _replace(data_path, lambda tmp: frame.reset_index(drop=True).to_parquet(tmp, index=False))
    meta = origin | {"rows": len(frame), "columns": columns, "sha256": sha256_file(data_path)}
    _replace(meta_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=1) + "\n"))
    log.info("fixed the guard set: %d rows (%s) in %s", len(frame), origin["source"], data_path)
    return _load(settings, data_path, meta_path)


def _load(settings: Settings, data_path: Path, meta_path: Path) -> pd.DataFrame:
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
    origin = _origin(settings)
    recorded = {key: meta.get(key) for key in origin}
    if recorded != origin:
        raise IntegrityError(f"retraining.guard is now {origin}, but the guard set was fixed as {recorded}; {remedy}")
    if origin["source"] == "file":
        current = sha256_file(Path(origin["path"])) if Path(origin["path"]).exists() else None
        if current is not None and current != meta.get("file_sha256"):
            raise IntegrityError(f"{origin['path']}: the guard file changed since it was fixed (sha256 "
                                 f"{str(meta.get('file_sha256'))[:12]}... recorded); {remedy}")
    frame = pd.read_parquet(data_path)
    missing = [c for c in guard_columns(settings) if c not in frame.columns]
    if missing:
        raise IntegrityError(f"{data_path}: missing column(s) {missing} the schema needs; {remedy}")
    return frame


def _replace(path: Path, write: Any) -> None:
    """Write through a temporary file beside ``path``, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)
