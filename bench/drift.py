"""Drift benchmark: driftloop's prepared drift check against Evidently's ``DataDriftPreset``.

    python -m bench.drift [--rows 100000] [--reference-rows 100000] [--features 20] [--seed 0] [--json FILE]

Both compare the same window (``--rows`` x ``--features``: numeric columns, a few of them shifted,
low-cardinality numeric columns and categorical ones, one of them shifted) with the same
reference, in the same process, after one small warm-up run of each (imports):

* ``preset``: ``Report([DataDriftPreset()], include_tests=True).run`` (Evidently's defaults), the
  way ``monitoring/drift.py`` used to check every window;
* ``check``: :meth:`monitoring.drift.DriftBaseline.check` on the window, the baseline having been
  prepared once (``prepare``, timed apart: once per model version).

It prints both timings, the ratio check / preset (and (prepare + check) / preset) and whether
every column's method, threshold, score and verdict match the preset's. Exit code 1 when a column
differs or the check takes more than a third of the preset's time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.models.schema import FeatureSchema
from driftloop.monitoring.drift import DriftBaseline, frame_for_drift, preset_columns, run_preset

TARGET_RATIO = 1 / 3


def make_data(rows: int, reference_rows: int, features: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                                    FeatureSchema]:
    """A reference and a window: 60% continuous numeric (every third shifted in the window),
    10% numeric with 4 values, 30% categorical (the first one's mix changes)."""
    rng = np.random.default_rng(seed)
    n_low = max(1, features // 10)
    n_cat = max(1, (3 * features) // 10)
    n_num = features - n_low - n_cat
    kinds: dict[str, str] = {}

    def frame(n: int, live: bool) -> pd.DataFrame:
        cols: dict[str, Any] = {}
        for i in range(n_num):
            shift = 0.15 * (i % 3 == 0) if live else 0.0
            cols[f"num{i}"] = rng.normal(10.0 * i + shift, 1.0 + 0.1 * i, n)
            kinds[f"num{i}"] = "numeric"
        for i in range(n_low):
            cols[f"count{i}"] = rng.integers(0, 4, n).astype(float)
            kinds[f"count{i}"] = "numeric"
        for i in range(n_cat):
            p = np.array([0.4, 0.3, 0.2, 0.1, 0.0])
            if live and i == 0:
                p = np.array([0.25, 0.25, 0.25, 0.2, 0.05])
            cols[f"cat{i}"] = rng.choice(np.array(["a", "b", "c", "d", "e"]), n, p=p)
            kinds[f"cat{i}"] = "categorical"
        return pd.DataFrame(cols)

    reference, window = frame(reference_rows, False), frame(rows, True)
    return reference, window, FeatureSchema.infer(reference, kinds, "regression", None)


def compare(fast: dict[str, dict[str, Any]], preset: dict[str, dict[str, Any]]) -> list[str]:
    """Columns whose threshold, score or verdict differ (the preset's method is its display name
    when Evidently chose it)."""
    bad = []
    for name in sorted(set(fast) | set(preset)):
        a, b = fast.get(name), preset.get(name)
        if a is None or b is None or (a["score"], a["drifted"], a["threshold"]) != (b["score"], b["drifted"],
                                                                                   b["threshold"]) \
                or b["method"] not in (a["method"], None):
            bad.append(f"{name}: check {a} preset {b}")
    return bad


def run(rows: int, reference_rows: int, features: int, seed: int) -> dict[str, Any]:
    reference, window, schema = make_data(rows, reference_rows, features, seed)
    small_ref, small_win, _ = make_data(200, 200, features, seed + 1)
    # warm-up: imports and first-call costs on both paths
    DriftBaseline(small_ref, schema).check(small_win)
    warm = DriftBaseline(small_ref, schema)
    with np.errstate(divide="ignore"):
        run_preset(warm.frame, warm.frame, warm.types)

    started = time.perf_counter()
    baseline = DriftBaseline(reference, schema)
    prepare_s = time.perf_counter() - started
    started = time.perf_counter()
    result = baseline.check(window)
    check_s = time.perf_counter() - started

    current, _ = frame_for_drift(window, schema)  # the preset's inputs, built outside its timing
    started = time.perf_counter()
    with np.errstate(divide="ignore"):  # its chi-square on a category one sample lacks (the check is quiet too)
        snapshot = run_preset(baseline.frame, current, baseline.types)
    preset_s = time.perf_counter() - started
    preset = preset_columns(snapshot)
    mismatches = compare(result.columns, preset)
    return {
        "rows": rows, "reference_rows": reference_rows, "features": features,
        "preset_s": round(preset_s, 3), "prepare_s": round(prepare_s, 3), "check_s": round(check_s, 3),
        "ratio": round(check_s / preset_s, 4), "ratio_with_prepare": round((prepare_s + check_s) / preset_s, 4),
        "columns": len(preset), "matching": len(preset) - len(mismatches), "mismatches": mismatches,
        "drifted": result.drifted, "methods": sorted({c["method"] for c in result.columns.values()}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="window rows")
    parser.add_argument("--reference-rows", type=int, default=100_000, help="reference rows")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    out = run(args.rows, args.reference_rows, args.features, args.seed)
    print(f"window {out['rows']} rows x {out['features']} features, reference {out['reference_rows']} rows; "
          f"methods: {', '.join(out['methods'])}")
    print(f"  DataDriftPreset (Evidently defaults)   {out['preset_s']:8.3f} s")
    print(f"  DriftBaseline.check                    {out['check_s']:8.3f} s   ratio {out['ratio']:.4f}")
    print(f"  DriftBaseline prepare (once a version) {out['prepare_s']:8.3f} s   ratio with it "
          f"{out['ratio_with_prepare']:.4f}")
    print(f"  columns matching the preset (method, threshold, score, verdict): {out['matching']}/{out['columns']}"
          f"  -> {'all match' if not out['mismatches'] else 'MISMATCH'}")
    for line in out["mismatches"]:
        print(f"    {line}")
    print(f"  drifted: {', '.join(out['drifted']) or '-'}")
    ok = not out["mismatches"] and out["ratio"] <= TARGET_RATIO
    print(f"  target: check <= 1/3 of the preset -> {'met' if ok else 'NOT MET'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
