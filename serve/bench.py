"""Latency of each exported student against its initial expert, on the same runtime.

Both models get the same input; after a warm-up, runs are interleaved (the order rotates
every run) so drift hits all alike; median and p90 latency per model and the student/expert
ratio of medians are reported, next to an A/A control (the expert against a second session
of itself) that shows the noise floor. ONNX Runtime threads do not spin between runs.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from jedi_deploy.errors import InputError

from .runtime import OnnxModel


def discover_pairs(model_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """``(name, student, expert)`` for every ``<name>.student.onnx`` with an ``<name>.expert.onnx``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"model folder not found: {model_dir}")
    pairs = []
    for s in sorted(model_dir.glob("*.student.onnx")):
        name = s.name[: -len(".student.onnx")]
        e = model_dir / f"{name}.expert.onnx"
        if not e.is_file():
            raise InputError(f"{s} has no initial expert beside it ({e.name}); export with experts")
        pairs.append((name, s, e))
    if not pairs:
        raise InputError(f"{model_dir}: no *.student.onnx files; run `jedi export` first")
    return pairs


def _stats(times: list[float]) -> dict:
    ms = np.asarray(times) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "min_ms": float(ms.min()), "max_ms": float(ms.max())}


def bench_pair(student: str | Path, expert: str | Path, *, batch_size: int = 1, warmup: int = 10,
               runs: int = 100, threads: int = 1, seed: int = 0) -> dict:
    """Time student and expert, plus a second session of the expert (the A/A control: its
    ratio to the expert is the noise floor of the student/expert ratio)."""
    models = {"student": OnnxModel(student, threads=threads), "expert": OnnxModel(expert, threads=threads),
              "expert_copy": OnnxModel(expert, threads=threads)}
    s_meta, e_meta = models["student"].meta, models["expert"].meta
    if models["student"].preprocess != models["expert"].preprocess:
        raise InputError(f"{student} and {expert} take different inputs "
                         f"({s_meta['preprocess']} vs {e_meta['preprocess']}); not a student/expert pair")
    if s_meta.get("expert_sha256") != e_meta.get("expert_sha256"):
        raise InputError(f"{student} was not built from the expert checkpoint of {expert}; "
                         "not a student/expert pair")
    if models["student"].input_signature() != models["expert"].input_signature():
        raise InputError(f"{student} and {expert} were exported with different input options "
                         "(uint8 input / views); export both the same way")
    x = models["student"].sample_input(batch_size, seed)
    for _ in range(warmup):
        for m in models.values():
            m.run(x)
    times = {k: [] for k in models}
    order = list(models.items())
    for r in range(runs):
        k = r % len(order)
        for key, m in order[k:] + order[:k]:  # rotate who goes first
            t0 = time.perf_counter()
            m.run(x)
            times[key].append(time.perf_counter() - t0)
    st = {k: _stats(v) for k, v in times.items()}
    return {"name": models["student"].name, "batch_size": batch_size, "runs": runs, "warmup": warmup,
            "threads": threads, "providers": models["student"].session.get_providers()[:1],
            "student": st["student"], "expert": st["expert"], "expert_copy": st["expert_copy"],
            "ratio": st["student"]["median_ms"] / st["expert"]["median_ms"],
            "aa_ratio": st["expert_copy"]["median_ms"] / st["expert"]["median_ms"]}


def bench_dir(model_dir: str | Path, **kw) -> dict:
    from jedi_deploy.deps import require

    onnxruntime = require("onnxruntime")
    results = [bench_pair(s, e, **kw) for _, s, e in discover_pairs(model_dir)]
    return {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                        "providers": sorted({p for r in results for p in r["providers"]})},
            "results": results}


def format_bench(report: dict) -> str:
    lines = ["| Student | batch | expert median ms | expert p90 ms | student median ms | student p90 ms "
             "| student/expert | A/A (expert/expert) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['name']} | {r['batch_size']} | {r['expert']['median_ms']:.3f} | "
                     f"{r['expert']['p90_ms']:.3f} | {r['student']['median_ms']:.3f} | "
                     f"{r['student']['p90_ms']:.3f} | {r['ratio']:.3f} | {r['aa_ratio']:.3f} |")
    return "\n".join(lines)
