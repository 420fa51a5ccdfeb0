"""Timing one or more graphs fairly, in one process: interleaved rounds in balanced orders, so drift
and a model's position in a round hit every model alike. Used by ``jedi bench``, the INT8 gate's
speed verdict and the benchmarks. Torch-free."""
from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def stats(times: list[float], batch: int) -> dict:
    ms = np.asarray(times) * 1e3
    med = float(np.median(ms))
    return {"median_ms": med, "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "min_ms": float(ms.min()), "max_ms": float(ms.max()), "spread": float((ms.max() - ms.min()) / med),
            "throughput_per_s": batch / med * 1e3}


def round_order(keys: list, r: int) -> list:
    """Order of round ``r``: the keys rotated by ``r``, reversed on every other cycle of
    ``len(keys)`` rounds. Over each 2·len(keys) rounds every key holds every position twice and
    runs before every other key as often as after it (with three keys: all six orders), so a
    cost that depends on position in a round (cache state, the previous model) cancels."""
    n = len(keys)
    base = list(keys) if (r // n) % 2 == 0 else list(reversed(keys))
    k = r % n
    return base[k:] + base[:k]


def first_rows(feed: dict, b: int) -> dict:
    """The first ``b`` rows of every input of a feed."""
    return {n: x[:b] for n, x in feed.items()}


def time_block(calls: dict[str, Callable[[], object]], *, warmup: int, runs: int) -> dict[str, list[float]]:
    """One untimed call each, ``warmup`` more, then ``runs`` interleaved rounds (order from
    :func:`round_order`). Returns wall seconds per call."""
    for call in calls.values():
        call()
    for _ in range(warmup):
        for call in calls.values():
            call()
    times = {k: [] for k in calls}
    for r in range(runs):
        for key in round_order(list(calls), r):
            t0 = time.perf_counter()
            calls[key]()
            times[key].append(time.perf_counter() - t0)
    return times


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; else what ``platform`` knows): figures name it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
