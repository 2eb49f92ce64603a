"""``make bench-monitor``'s smoke test: ``bench/monitor.py --quick`` on SQLite with the Evidently
workspace off, every section run, every figure present. No speed is asserted: the figures are
the machine's, the benchmark's point is to print them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.monitor import main


@pytest.mark.slow
def test_quick_run_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench-monitor.json"
    assert main(["--quick", "--workspace", "off", "--json", str(out), "--workdir", str(tmp_path / "work")]) == 0
    figures = json.loads(out.read_text())
    assert "throughput:" in capsys.readouterr().out

    (run,) = figures["throughput"]  # one backend, one window size, one workspace setting
    assert (run["backend"], run["window"], run["workspace"]) == ("sqlite", 500, False)
    assert run["rows"] == 500 * run["windows"] == 1500
    assert min(run[k] for k in ("rows_per_s", "ms_median", "ms_p95", "ms_first", "ms_check_median")) > 0

    catchup = figures["catchup"]  # the change is in the newest 2 of 3 windows: window 1 on
    assert catchup["change_window"] == 1 and catchup["retrain_window"] is not None
    assert min(catchup[k] for k in ("monitor_ready_s", "change_checked_s", "retrain_decided_s", "drained_s",
                                    "rows_per_s")) > 0

    memory = figures["memory"]
    assert memory["rows_logged"] > 0 and memory["samples"]
    assert min(memory[k] for k in ("rss_ready_mb", "rss_peak_mb", "rss_end_mb")) > 0

    for name in ("catchup", "memory"):
        disk = figures["disk"][name]
        assert disk["run"]["store"] > 0 and disk["run"]["registry"] > 0
        assert disk["week_at_100_rows_s"]["store_unbounded"] > 0
        assert "retention" in disk or disk["store_retention"] == "no store retention yet"
