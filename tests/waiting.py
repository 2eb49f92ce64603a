"""The tests' one way to wait for something another thread or process does: poll a condition
until it holds, or fail naming what never happened. Never a bare sleep standing in for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str = "the condition", timeout: float = 15.0, interval: float = 0.02,
               alive: Callable[[], Any] | None = None) -> T:
    """Call ``condition`` every ``interval`` seconds until it returns something truthy, and return
    that; raise ``TimeoutError`` naming ``what`` after ``timeout`` seconds. ``alive``, if given, is
    called on every round first: it raises (or fails an assert) when whatever is being waited for
    has died, so a dead process fails at once instead of at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        if result := condition():
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:g}s")
        time.sleep(interval)
