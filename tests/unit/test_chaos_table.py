"""The fault matrix's accounting and table (bench/chaos.py), without a server: what is counted as
lost, how a missing figure and a recovery that never came are shown, and the hostile bodies."""

from __future__ import annotations

import json

from bench.chaos import COLUMNS, Outcome, format_table, hostile_bodies, metric_value

METRICS = """\
# HELP driftloop_prediction_log_rows_total Prediction-log rows, by outcome (written, dropped).
# TYPE driftloop_prediction_log_rows_total counter
driftloop_prediction_log_rows_total{outcome="written"} 1200.0
driftloop_prediction_log_rows_total{outcome="dropped"} 7.0
"""


def test_a_counter_is_read_by_its_labels_and_is_zero_before_its_first_increment() -> None:
    assert metric_value(METRICS, "driftloop_prediction_log_rows_total", {"outcome": "dropped"}) == 7.0
    assert metric_value(METRICS, "driftloop_prediction_log_rows_total") == 1207.0  # every series
    assert metric_value("", "driftloop_prediction_log_rows_total", {"outcome": "dropped"}) == 0.0


def test_unaccounted_rows_are_answered_neither_stored_nor_counted_as_dropped() -> None:
    assert Outcome("f", answered=100, stored=90, dropped=4).unaccounted == 6
    assert Outcome("f", answered=100, stored=90, dropped=30).unaccounted == 0  # drops of unanswered requests
    assert Outcome("f", answered=100, stored=90, dropped=None).unaccounted is None  # /metrics unreadable


def test_the_table_shows_recovery_never_not_measured_and_skipped_faults() -> None:
    outcomes = [
        Outcome("recovered", sent=10, answered=9, stored=9, dropped=0, first_ok_s=0.01, recover_s=0.25,
                recover_limit_s=15, notes=["statuses 200 x9"]),
        Outcome("never", sent=10, answered=10, stored=2, dropped=0, recover_limit_s=15),
        Outcome("stopped", sent=10, answered=5, stored=5, dropped=None),
        Outcome("postgres", skipped="PostgreSQL is not installed"),
    ]
    lines = format_table(outcomes).splitlines()
    assert lines[0].split("  ")[0] == COLUMNS[0] and all(c in lines[0] for c in COLUMNS)
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert rows["recovered"][1:] == ["10", "9", "9", "0", "0", "0.01", "0.25"]
    assert rows["never"][1:] == ["10", "10", "2", "0", "8", ">15", ">15"]
    assert rows["stopped"][1:] == ["10", "5", "5", "?", "?", "-", "-"]
    assert lines[5].split(None, 1) == ["postgres", "skipped: PostgreSQL is not installed"]
    assert lines[-1] == "recovered: statuses 200 x9"


def test_hostile_bodies_are_what_they_say() -> None:
    row = {"income": 1.0, "region": "east"}
    bodies = hostile_bodies(row, "income", "region")
    assert bodies["nested 100,000 deep"].count(b"[") == 100_000
    assert b'"income": 1' + b"0" * 400 + b"," in bodies["401-digit integer"]
    assert b'"region": "\\ud800"' in bodies["lone surrogate"]
    assert len(json.loads(bodies["7 MB string"])["rows"][0]["region"]) == 7_000_000
