"""The probe's child process (:mod:`jedi_deploy.runners.probe`): ``python -m
jedi_deploy.runners.probe_child MODEL --runtime NAME_OR_SPEC [--runs N] [--threads N] [--providers P]``
opens the model with :func:`~jedi_deploy.runners.open_runner`, runs one untimed call on a random
batch-1 feed, then ``runs`` timed calls, and prints one JSON line ``{"runtime", "median_ms"}``."""
from __future__ import annotations

import json
import sys
import time

from jedi_deploy.contracts.errors import InputError

from .probe import PROBE_RUNS


def _main(argv: list[str] | None = None) -> int:
    import argparse

    import numpy as np

    from . import open_runner

    ap = argparse.ArgumentParser(prog="python -m jedi_deploy.runners.probe_child",
                                 description="Time one runtime on one model (the --runtime auto probe).")
    ap.add_argument("model")
    ap.add_argument("--runtime", required=True)
    ap.add_argument("--runs", type=int, default=PROBE_RUNS)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--providers")
    a = ap.parse_args(argv)
    try:
        runner, _ = open_runner(a.model, a.runtime, providers=a.providers, threads=a.threads)
        x = runner.card.dummy_feed(1)
        runner.infer(x)
        times = []
        for _ in range(max(1, a.runs)):
            t0 = time.perf_counter()
            runner.infer(x)
            times.append(time.perf_counter() - t0)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"runtime": a.runtime, "median_ms": float(np.median(times) * 1e3)}))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
