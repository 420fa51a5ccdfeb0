"""Waiting on a condition instead of a fixed sleep: a test then waits exactly as long as the
machine needs, and a condition that never comes fails with what was seen last."""
from __future__ import annotations

import time


def until(condition, timeout: float = 30.0, interval: float = 0.02, what: str = "the condition"):
    """Call ``condition()`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g} s (last: {last!r})")
        time.sleep(interval)


def until_stable(read, timeout: float = 30.0, interval: float = 0.1, repeats: int = 3):
    """``read()`` once it returns the same value ``repeats`` times in a row (a count that settled)."""
    deadline, seen = time.monotonic() + timeout, []
    while True:
        seen = (seen + [read()])[-repeats:]
        if len(seen) == repeats and all(v == seen[0] for v in seen):
            return seen[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"value did not settle within {timeout:g} s (last reads: {seen})")
        time.sleep(interval)
