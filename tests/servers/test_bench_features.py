"""bench/serving_features.py runs for real, briefly: the overload experiment's accounting adds up
(every scheduled request is answered 200, refused 503, failed or left unanswered, nothing else)
and the batch-size reading comes from the service's real /metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import serving_features as bf

pytestmark = pytest.mark.slow


def test_overload_experiment_accounts_for_every_request(tmp_path: Path) -> None:
    lines: list[str] = []
    out = bf.exp_overload(tmp_path, seconds=1.5, progress=lines.append, connections=256)
    assert out["saturation_rps"] > 0 and out["offered_rps"] == pytest.approx(2 * out["saturation_rps"])
    parts = out["ok"] + out["shed_503"] + out["other_status"] + out["socket_errors"] + out["unanswered"]
    assert parts == out["scheduled"] > 0 and out["ok"] > 0
    assert out["other_status"] == 0  # only 200 or 503: no 5xx, no 4xx under overload
    assert 0.0 <= out["shed_share"] <= 1.0 and len(lines) == 2


def test_batch_sizes_read_the_histogram(monkeypatch: pytest.MonkeyPatch) -> None:
    text = ("# HELP driftloop_batch_rows Rows per run of the model's graph.\n"
            "driftloop_batch_rows_bucket{le=\"1.0\"} 3.0\n"
            "driftloop_batch_rows_count 4.0\ndriftloop_batch_rows_sum 10.0\n")

    class Answer:
        def __init__(self) -> None:
            self.text = text

    monkeypatch.setattr(bf.httpx, "get", lambda url, timeout: Answer())
    assert bf.batch_sizes("http://x") == {"graph_runs": 4.0, "mean_rows": 2.5}
