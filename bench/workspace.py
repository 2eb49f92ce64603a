"""What recording a window in the Evidently workspace costs (monitoring/workspace.py).

    python -m bench.workspace [--rows 500,5000] [--repeat 5] [--seed 0]

For each window size, windows of the built-in ``loans`` scenario (half stationary, half from its
covariate-shift period) are checked against its training period (3,000 rows, the version's
reference) with a prepared :class:`~monitoring.drift.DriftBaseline`, then recorded. Printed, as
medians over ``--repeat`` windows: the check itself (for scale), building the Evidently snapshot
(``Report.run`` of the ``DataDriftPreset``: what ``result.snapshot`` does on first use; the HTML
report reuses it), writing it (``DriftWorkspace.record`` once the snapshot is built) and the
snapshot file's size. Then what opening the workspace costs: a ``DriftWorkspace`` finding the
project, against Evidently's own ``Workspace(path)``, which parses every stored snapshot.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from driftloop.models.schema import FeatureSchema
from driftloop.monitoring.drift import DriftBaseline
from driftloop.monitoring.workspace import DriftWorkspace
from driftloop.training import scenarios


def _ms(seconds: list[float]) -> str:
    return f"{1000 * statistics.median(seconds):8.1f} ms"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="500,5000", help="window sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="windows per size (median)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.rows.split(",")]
    scenario = scenarios.SCENARIOS["loans"]
    per = max(1, (max(sizes) * ((args.repeat + 1) // 2) + 499) // 500)  # live periods in 500-row windows
    frame = scenarios.scenario_frame("loans", seed=args.seed, stable=per, covariate=per, concept=1)
    train = frame[frame["period"] == "train"].reset_index(drop=True)
    baseline = DriftBaseline(train, FeatureSchema.infer(train, scenario.features, "classification", scenario.target))
    with tempfile.TemporaryDirectory(prefix="bench-workspace-") as tmp:
        run(Path(tmp) / "evidently", frame, baseline, sizes, args.repeat)


def run(root: Path, frame: pd.DataFrame, baseline: DriftBaseline, sizes: list[int], repeat: int) -> None:
    workspace = DriftWorkspace(root, "loans")
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    warm = baseline.check(frame[frame["period"] == "stable"].iloc[:500].reset_index(drop=True))
    workspace.record("warm-up", 0, warm, timestamp=start)  # imports, first runs: not counted
    window = 0
    print(f"reference: {len(baseline.frame)} rows, {len(baseline.features)} features")
    print(f"{'rows':>6} {'check':>11} {'snapshot':>11} {'write':>11} {'record':>11} {'file':>9}")
    for rows in sizes:
        check, build, write, size = [], [], [], []
        for i in range(repeat):
            period = frame[frame["period"] == ("stable" if i % 2 == 0 else "covariate")].reset_index(drop=True)
            part = period.iloc[(i // 2) * rows:(i // 2 + 1) * rows].reset_index(drop=True)
            t0 = time.perf_counter()
            result = baseline.check(part)
            t1 = time.perf_counter()
            _ = result.snapshot
            t2 = time.perf_counter()
            run_id = workspace.record("v1", window, result, timestamp=start + timedelta(minutes=window))
            t3 = time.perf_counter()
            check.append(t1 - t0)
            build.append(t2 - t1)
            write.append(t3 - t2)
            size.append(next(root.glob(f"*/snapshots/{run_id}.json")).stat().st_size)
            window += 1
        record = [b + w for b, w in zip(build, write)]
        kib = statistics.median(size) / 1024
        print(f"{rows:>6} {_ms(check)} {_ms(build)} {_ms(write)} {_ms(record)} {kib:6.0f} KiB")

    t0 = time.perf_counter()
    found = DriftWorkspace(root, "loans").project_id("v1")
    t1 = time.perf_counter()
    from evidently.ui.workspace import Workspace

    t2 = time.perf_counter()
    Workspace(str(root))
    t3 = time.perf_counter()
    assert found is not None
    print(f"opening the workspace ({window + 1} snapshots): DriftWorkspace finds a project in "
          f"{1000 * (t1 - t0):.1f} ms; Evidently's Workspace(path) takes {1000 * (t3 - t2):.0f} ms "
          f"({1000 * (t3 - t2) / (window + 1):.1f} ms a snapshot: it parses them all)")


if __name__ == "__main__":
    main()
