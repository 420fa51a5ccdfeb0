"""How steady is this machine? Times one fixed piece of work (a single-threaded 1024x1024
float32 matrix product, numpy) back to back for ``--seconds``, then reports, for runs of 1, 4,
16, 64 and 256 consecutive units: the unit time, the coefficient of variation, and the standard
deviation of log(t[i+1] / t[i]) over adjacent pairs - how far apart two timings of the *same*
work typically are. If that spread does not shrink with longer units, longer model calls do
not average the noise away, and only more calls do.

``calls_for_ratio_halfwidth`` estimates how many calls per model a ratio of two medians needs
for a 95% interval of +/- ``--halfwidth`` (1% by default), with the per-call spread sigma taken
as the adjacent-pair spread / sqrt(2), median over run lengths (the median of n normal samples
has standard error 1.2533 sigma / sqrt(n); a ratio has two independent medians).

Usage: python benchmarks/machine_noise.py [--seconds 60] [--halfwidth 0.01]
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def unit_times(seconds: float, n: int = 1024) -> np.ndarray:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    out = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ a
        out.append(time.perf_counter() - t0)
    return np.asarray(out)


def spread(times: np.ndarray, block: int) -> dict | None:
    n = len(times) // block
    if n < 4:
        return None
    s = times[: n * block].reshape(n, block).sum(axis=1)
    pairs = np.log(s[1::2][: n // 2] / s[0::2][: n // 2])
    return {"block": block, "unit_ms": round(1e3 * float(np.median(s)), 1), "n": int(n),
            "cv": round(float(s.std() / s.mean()), 3), "adjacent_log_sd": round(float(pairs.std()), 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--halfwidth", type=float, default=0.01, help="wanted 95%% half-width of a latency ratio")
    args = ap.parse_args(argv)
    t = unit_times(args.seconds)
    rows = [r for b in (1, 4, 16, 64, 256) if (r := spread(t, b))]
    for r in rows:
        print(f"{r['block']:>4} units of {r['unit_ms']:>8.1f} ms (n={r['n']}): cv {r['cv']:.3f}, "
              f"adjacent-pair log sd {r['adjacent_log_sd']:.3f}")
    sigma = float(np.median([r["adjacent_log_sd"] for r in rows])) / np.sqrt(2)  # one call's share of a pair
    need = int(np.ceil(2 * (1.96 * 1.2533 * sigma / args.halfwidth) ** 2))
    res = {"blocks": rows, "per_call_sigma": round(sigma, 3), "halfwidth": args.halfwidth,
           "calls_for_ratio_halfwidth": need, "cpu": platform.processor() or platform.machine(),
           "cpu_count": os.cpu_count(), "numpy": np.__version__}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
