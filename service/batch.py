"""Offline batch scoring: a CSV or Parquet file through the champion's graph (``driftloop predict``).

Not a second prediction path: a :class:`~driftloop.service.serving.Serving` holding the version
the champion pointer names (or the one asked for) answers the file in chunks of
``serving.max_rows``, through the same validation and input policies as ``POST /predict``
(:meth:`Serving.predict`) and, with ``log``, the same prediction-log writer, so the rows are
monitored like live traffic (request ids in the output, for feedback later). Columns other than
the model's features (an id, the target) pass through to the output untouched.

A row that does not fit the schema stops the run before anything is written, named by its line
(CSV, the header being line 1) or row (Parquet), as a 422 names ``rows[i]``: nothing is half
scored. With ``log``, the chunks answered before it are logged already (they were predictions).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftloop.models.errors import ConfigError, DriftloopError, SchemaError

if TYPE_CHECKING:
    import pandas as pd

    from driftloop.settings import Settings

ROW_REF = re.compile(r"rows\[(\d+)\](\.)?")


@dataclass(frozen=True)
class BatchResult:
    rows: int
    model_version: str
    out: Path
    logged: int  # rows written to the prediction log (0 without ``log``)
    seconds: float


def score_file(settings: Settings, source: Path, out: Path, *, log: bool = False,
               version: str | None = None) -> BatchResult:
    """Score every row of ``source`` with the champion (or ``version``); write ``out`` (.csv or
    .parquet): the input's columns, then ``prediction``, the scores (``probability_<class>``,
    ``distance_<i>``, ``anomaly_score``), ``model_version`` and, with ``log``, ``request_id``."""
    import pandas as pd

    from driftloop.models.registry import Registry
    from driftloop.monitoring.store import PredictionStore
    from driftloop.service.metrics import serving_metrics
    from driftloop.service.serving import Serving, scores_field
    from driftloop.training.data import load_frame

    started = time.monotonic()
    suffix = Path(out).suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ConfigError(f"--out: {str(out)!r} must end in .csv or .parquet")
    registry = Registry(settings.registry.home, settings.registry.project)
    if version is None:
        champion = registry.champion()
        if champion is None:
            raise DriftloopError(f"project {settings.registry.project!r} has no champion to score with; "
                                 "train one (driftloop train) or name a version with --version")
        version = champion.version
    model = registry.load(version)
    features = [f.name for f in model.schema.features]
    frame = load_frame(Path(source), features, None, setting="the file to score")
    _numbers(frame, model.schema, Path(source))
    store = PredictionStore(settings.store.url)
    if log:
        store.create()
    serving = Serving(registry, store, serving_metrics(),
                      settings.serving.model_copy(update={"prediction_log": log, "metrics": False}))
    serving.model = model
    answers: list[dict[str, Any]] = []
    chunk = settings.serving.max_rows
    try:
        for start in range(0, len(frame), chunk):
            rows = [{k: _json_value(v) for k, v in row.items()}
                    for row in frame.iloc[start:start + chunk][features].to_dict("records")]
            try:
                answers.append(serving.predict(rows))
            except SchemaError as exc:
                raise SchemaError(_located(str(exc), source, start), field=exc.field) from None
    finally:
        serving.shutdown()  # the log written (and the store closed) before the output says so
    scored = frame.copy()
    scored["prediction"] = [p for a in answers for p in a["predictions"]]
    field = scores_field(model.schema.task)
    if field is not None and answers:
        values = [s for a in answers for s in a[field]]
        for name, column in _score_columns(model.schema, field, values).items():
            scored[name] = column
    scored["model_version"] = version
    if log:
        scored["request_id"] = [r for a in answers for r in a["request_ids"]]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    scored.to_csv(out, index=False) if suffix == ".csv" else scored.to_parquet(out, index=False)
    return BatchResult(len(scored), version, Path(out), len(scored) if log else 0, time.monotonic() - started)


def _numbers(frame: pd.DataFrame, schema: Any, source: Path) -> None:
    """A numeric feature that a CSV reader left as text (one cell in it is not a number) is read
    as numbers again, or refused naming that cell: not every row of the column at once."""
    import pandas as pd

    for feature in schema.features:
        column = frame[feature.name]
        if feature.kind != "numeric" or pd.api.types.is_numeric_dtype(column):
            continue
        numbers = pd.to_numeric(column, errors="coerce")
        bad = numbers.isna() & column.notna() & (column.astype(str).str.strip() != "")
        if bad.any():
            first = bad.idxmax()
            where = f"line {first + 2}" if source.suffix.lower() == ".csv" else f"row {first}"
            raise SchemaError(f"{source}: {where}: {feature.name} must be a number, got {column[first]!r}",
                              field=feature.name)
        frame[feature.name] = numbers


def _json_value(value: Any) -> Any:
    """A cell as ``/predict`` would receive it: a missing value (NaN, NaT, None) is JSON's null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _located(message: str, source: Path, offset: int) -> str:
    """``rows[i]`` of a chunk, as the file's line (CSV) or row (Parquet) a person can find."""
    csv = Path(source).suffix.lower() == ".csv"

    def where(match: re.Match[str]) -> str:
        index = offset + int(match.group(1))
        return (f"line {index + 2}" if csv else f"row {index}") + (": " if match.group(2) else "")

    return f"{source}: {ROW_REF.sub(where, message)}"


def _score_columns(schema: Any, field: str, values: list[Any]) -> dict[str, list[Any]]:
    if field == "probabilities":
        return {f"probability_{label}": [v[i] for v in values] for i, label in enumerate(schema.labels)}
    if field == "distances":
        width = len(values[0]) if values else 0
        return {f"distance_{i}": [v[i] for v in values] for i in range(width)}
    return {"anomaly_score": values}
