"""``--runtime auto``: time every installed runtime on a model, each in a child process, and pick
the fastest. A runtime that crashes on the graph (OpenVINO has segfaulted inside
``compile_model`` on a Video Swin graph), hangs, or refuses it is skipped with a warning; the
caller - ``jedi infer``, ``jedi serve``, the benchmark - never runs it in its own process.

The child is ``python -m jedi_deploy.runners.probe_child MODEL --runtime NAME_OR_SPEC``: it opens the
model with :func:`~jedi_deploy.runners.open_runner`, runs one untimed call, then ``runs``
timed calls on a random batch-1 input, and prints one JSON line ``{"runtime", "median_ms"}``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jedi_deploy.contracts.errors import InputError

PROBE_RUNS = 5
PROBE_TIMEOUT_S = 300.0


def installed_runtimes() -> dict[str, str]:
    """The entries of :data:`~jedi_deploy.runners.RUNTIMES` whose package is importable."""
    import importlib.util

    from .table import EXPLICIT_ONLY, RUNTIME_PACKAGES, RUNTIMES

    return {k: v for k, v in RUNTIMES.items()
            if k not in EXPLICIT_ONLY and importlib.util.find_spec(RUNTIME_PACKAGES.get(k, k)) is not None}


def _why(proc: subprocess.CompletedProcess) -> str:
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return f"the process crashed ({name})"
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    return (lines[-1].removeprefix("error: ") if lines else f"exit status {proc.returncode}")


def pick_runtime(model: str | Path, *, threads: int | None = None, providers: str | None = None,
                 candidates: dict[str, str] | None = None, runs: int = PROBE_RUNS,
                 timeout_s: float = PROBE_TIMEOUT_S, warn=None) -> dict:
    """Probe ``candidates`` (name -> runtime name or ``module:class``; default: every installed
    runtime) on ``model``, each in its own child process. Returns ``{"name", "runtime" (what to
    pass to open_runner), "probes": {name: median_ms}, "skipped": {name: why}}``; raises :class:`InputError` when none ran.
    ``warn`` (default: stderr) gets one line per skipped runtime."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    candidates = installed_runtimes() if candidates is None else candidates
    probes, skipped = {}, {}
    for name, spec in candidates.items():
        cmd = [sys.executable, "-m", "jedi_deploy.runners.probe_child", str(model), "--runtime", spec, "--runs", str(runs)]
        if threads:
            cmd += ["--threads", str(threads)]
        if providers and name == "ort":
            cmd += ["--providers", providers]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=os.environ.copy())
        except subprocess.TimeoutExpired:
            skipped[name] = f"no answer within {timeout_s:g} s"
        else:
            try:
                probes[name] = float(json.loads(proc.stdout.strip().splitlines()[-1])["median_ms"]) \
                    if proc.returncode == 0 else None
            except (IndexError, ValueError, KeyError, TypeError):
                probes[name] = None
            if probes[name] is None:
                del probes[name]
                skipped[name] = _why(proc)
        if name in skipped:
            warn(f"warning: runtime {name} skipped for {Path(model).name}: {skipped[name]} "
                 f"(probed in a child process, {time.perf_counter() - t0:.1f} s)")
    if not probes:
        raise InputError(f"{model}: no runtime could run this model: "
                         + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    best = min(probes, key=probes.get)
    return {"name": best, "runtime": candidates[best], "probes": probes, "skipped": skipped}


def describe_pick(pick: dict) -> str:
    """One line: what the probe chose and why."""
    timed = ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(pick["probes"].items(), key=lambda kv: kv[1]))
    skipped = "; skipped " + ", ".join(f"{k} ({v})" for k, v in pick["skipped"].items()) if pick["skipped"] else ""
    return f"runtime {pick['name']} (probe, batch 1 median: {timed}{skipped})"
