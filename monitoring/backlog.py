"""A monitor far behind the log starts from its newest windows (``monitoring.max_backlog_windows``).

A monitor that was down while the service logged 10 minutes at 5,000 rows/s finds 3,000,000
unchecked rows: 6,000 windows of 500. Checked oldest first at the 7,000-30,000 rows/s a monitor
checks (bench/monitor.py), a change in the newest of them would be answered 2-7 minutes after the
restart, by decisions about windows that stopped mattering minutes ago (a retrain trains on the
newest labelled windows anyway). So when more than ``max_backlog_windows`` full windows wait, the
monitor skips to the newest ``max_backlog_windows`` of them and checks those, oldest first as
always, so the policy's streaks and cooldowns read the present:

- the skip is recorded once in the audit trail (``backlog_skipped``: the ids and rows left
  unchecked, and why), counted (``driftloop_backlog_skipped_rows_total``) and logged;
- the skipped rows stay in the prediction log, with their labels (retrains and ``driftloop
  requests`` still read them); store retention treats them like checked rows: by age;
- the window numbers go on from the last check: a window is the next check's rows, wherever
  they start (its ``first_id`` says where).

``max_backlog_windows: 0`` never skips (every row is checked, however long it takes). The default,
120 windows (60,000 rows at 500 a window), is checked in under 10 s here, a retrain included
(bench/monitor.py's catch-up).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from driftloop.vocabulary import EventKind

if TYPE_CHECKING:
    from driftloop.monitoring.metrics import MonitorMetrics
    from driftloop.monitoring.store import PredictionStore

log = logging.getLogger("driftloop.monitor")
MAX_ID = 2**63 - 1


class Backlog:
    """Where the next window starts: after the last check, or after the last skip if that is later."""

    def __init__(self, store: PredictionStore, window_rows: int, max_windows: int,
                 metrics: MonitorMetrics | None = None) -> None:
        self.store = store
        self.window_rows = window_rows
        self.max_windows = max_windows
        self.metrics = metrics
        # A skip recorded by an earlier monitor (before this one took over) still holds until a
        # check past it is recorded.
        last = store.events(EventKind.BACKLOG_SKIPPED, limit=1)
        self.skipped_to = int(last[0]["detail"]["to_id"]) if last else 0

    def start_after(self, after_id: int, window: int) -> int:
        """The id the next window starts after: ``after_id`` (the last check's ``last_id``), moved
        forward past any skip; skips now when more than ``max_windows`` full windows wait after
        it (``window``: the next window's number, for the record)."""
        after_id = max(after_id, self.skipped_to)
        if self.max_windows <= 0:
            return after_id
        rows = self.window_rows
        past = self.store.id_before_newest((self.max_windows + 1) * rows)
        if past is None or past <= after_id:  # not more than max_windows full windows wait (and a part of one)
            return after_id
        waiting, _ = self.store.count_rows(after_id + 1, MAX_ID, labelled=False)
        skipped = (waiting // rows - self.max_windows) * rows  # whole windows: the newest ones keep their bounds
        keep = waiting - skipped
        to_id = self.store.id_before_newest(keep)
        if to_id is None or to_id <= after_id:  # rows were deleted meanwhile (retention): next time
            return after_id
        detail = {"from_id": after_id + 1, "to_id": to_id, "rows": skipped, "next_window": window,
                  "checked_rows": keep, "max_backlog_windows": self.max_windows,
                  "reason": f"{skipped:,} rows waited beyond the newest {self.max_windows} windows "
                            f"({keep:,} rows): checking those first (monitoring.max_backlog_windows)"}
        self.store.record_event(EventKind.BACKLOG_SKIPPED, detail, window=window)
        if self.metrics is not None:
            self.metrics.backlog_skipped.inc(skipped)
        log.warning("backlog: %s rows (ids %d-%d) left unchecked; checking the newest %d windows from id %d on "
                    "(monitoring.max_backlog_windows)", f"{skipped:,}", after_id + 1, to_id, self.max_windows,
                    to_id + 1)
        self.skipped_to = to_id
        return to_id
