"""Export every torchvision and MMAction2-style architecture at its standard input size, with
both ONNX exporters, and time what comes out - in one run.

Per architecture (random weights; a random JEDI adjustment module and head make the student):
export time, file size and parity of the student and expert graphs for each exporter
(TorchScript, dynamo); ONNX Runtime CPU latency of student and expert (batch 1, interleaved,
no thread spinning); torch eager latency of the same student and expert. The exporter whose
student graph runs faster in ORT is the architecture's pick.

Last line: one JSON object with ``archs`` (per-arch figures), ``max_student_expert_ratio`` (over
archs, of the median ORT student/expert latency ratio with the picked exporter),
``min_ort_vs_torch`` (over archs: torch eager latency / ORT latency of the student; > 1 means
ORT is faster) and ``all_parity_ok``. Both ratios are medians of per-round ratios (the two
graphs timed in the same interleaved round): that cancels slow drift of a shared machine, but
it is sensitive to which graph runs before which within a round, so the per-graph medians are
reported too (their ratio is the other estimate). Alongside: an A/A control (a second session
of the expert graph: ``aa_ratio``, its largest deviation from 1 over archs is
``max_aa_deviation``, the noise floor of the ratio) and the same ratios in process CPU time
(``cpu_*``; it leaves out time stolen by other tenants of a VM, yet on this machine it was no
quieter - see RESULTS.md). ``targets_met`` is judged on wall-clock latency, as specified.
Usage: python benchmarks/export_zoo.py [--archs r3d_18,s3d] [--runs 7] [--exporters torchscript,dynamo]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.fuse import ExpertGraph, StudentReference  # noqa: E402
from export.onnx import OnnxExportConfig  # noqa: E402
from export.students import export_student_and_expert  # noqa: E402
from jedi_deploy.errors import JediError  # noqa: E402
from serve.bench import time_block  # noqa: E402
from serve.runtime import SESSION_CONFIG, session_options  # noqa: E402
from jedi_deploy.jedi_model import AdjustmentModule  # noqa: E402
from jedi_deploy.registry import ARCHS, Expert, build_expert  # noqa: E402
from jedi_deploy.zoo import TV_VIDEO  # noqa: E402

DEFAULT_ARCHS = sorted(TV_VIDEO) + ["tsn_r50", "tsm_r50"]


def make_student(arch: str, classes: int = 400):
    torch.manual_seed(0)
    model = build_expert(arch, classes).eval().requires_grad_(False)
    pre = replace(ARCHS[arch].preprocess, num_clips=1, crops=1)
    ex = Expert(arch, arch, {}, "bench", tuple(f"c{i}" for i in range(classes)), pre, model, None, "0" * 64)
    adjust = AdjustmentModule(ex.embed_dim, 256, 0.75).eval()
    torch.nn.init.normal_(adjust.fc2.weight, std=0.02)
    head = torch.nn.Linear(ex.embed_dim, classes)
    return ex, adjust, head


def time_interleaved(fns: dict, runs: int, warmup: int = 2, cpu_times: dict | None = None) -> dict[str, list[float]]:
    """Seconds per round of argument-free callables, timed like ``jedi bench``
    (serve.bench.time_block: untimed first call, warm-up, interleaved rounds, rotating order)."""
    runners = {k: (lambda _x, f=f: f()) for k, f in fns.items()}
    return time_block(runners, None, warmup=max(0, warmup - 1), runs=runs, cpu_times=cpu_times)


def summary_ms(times: list[float]) -> dict:
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times)}


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num/den timed in the same round (slow drift of a shared machine
    hits both sides of a pair alike)."""
    return statistics.median(a / b for a, b in zip(num, den))


def ort_session(path: Path, threads: int):
    """The session ``jedi serve`` / ``jedi bench`` open (serve.runtime.session_options), on CPU."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def bench_arch(arch: str, exporters: list[str], runs: int, work: Path, threads: int) -> dict:
    ex, adjust, head = make_student(arch)
    x = torch.randn(1, *ex.preprocess.input_shape())
    out = {"input": list(ex.preprocess.input_shape()), "exporters": {}}
    sessions = {}
    for name in exporters:
        d = work / f"{arch}-{name}"
        d.mkdir()
        t0 = time.perf_counter()
        try:
            reports = export_student_and_expert(ex, adjust, head, d, OnnxExportConfig(exporter=name, batch_sizes=(1,)))
        except JediError as e:
            out["exporters"][name] = {"error": str(e)[:300]}
            continue
        row = {"export_s": round(time.perf_counter() - t0, 1)}
        for r in reports:
            row[r["kind"]] = {"file_mb": round(Path(r["path"]).stat().st_size / 2 ** 20, 1),
                              "max_abs_diff": r["max_abs_diff"], "max_rel_diff": r["max_rel_diff"],
                              "parity_ok": r["passed"]}
        sessions[name] = {k: ort_session(d / f"{arch}.{k}.onnx", threads) for k in ("student", "expert")}
        sessions[name]["expert_copy"] = ort_session(d / f"{arch}.expert.onnx", threads)  # the A/A control
        out["exporters"][name] = row
    if not sessions:
        return out
    xn = x.numpy()
    fns = {f"{n}/{k}": (lambda s=s: s.run(None, {"video": xn})) for n, ss in sessions.items() for k, s in ss.items()}
    student_t = StudentReference(ex.encoder, adjust, head).eval()
    expert_t = ExpertGraph(ex.encoder, ex.head).eval()

    def eager(m):
        with torch.no_grad():
            m(x)

    fns["torch/student"] = lambda: eager(student_t)
    fns["torch/expert"] = lambda: eager(expert_t)
    cpu: dict = {}
    times = time_interleaved(fns, runs, cpu_times=cpu)
    t = {k: summary_ms(v) for k, v in times.items()}
    for n in sessions:
        row = out["exporters"][n]
        row["ort_student_ms"] = round(t[f"{n}/student"]["median_ms"], 2)
        row["ort_expert_ms"] = round(t[f"{n}/expert"]["median_ms"], 2)
        row["student_expert_ratio"] = round(paired_ratio(times[f"{n}/student"], times[f"{n}/expert"]), 3)
        row["aa_ratio"] = round(paired_ratio(times[f"{n}/expert_copy"], times[f"{n}/expert"]), 3)
        row["cpu_student_expert_ratio"] = round(paired_ratio(cpu[f"{n}/student"], cpu[f"{n}/expert"]), 3)
        row["cpu_aa_ratio"] = round(paired_ratio(cpu[f"{n}/expert_copy"], cpu[f"{n}/expert"]), 3)
        row["spread_ms"] = [round(t[f"{n}/student"]["min_ms"], 2), round(t[f"{n}/student"]["max_ms"], 2)]
    pick = min(sessions, key=lambda n: out["exporters"][n]["ort_student_ms"])
    out["picked_exporter"] = pick
    out["torch_student_ms"] = round(t["torch/student"]["median_ms"], 2)
    out["torch_expert_ms"] = round(t["torch/expert"]["median_ms"], 2)
    out["ort_vs_torch"] = round(paired_ratio(times["torch/student"], times[f"{pick}/student"]), 3)
    for key in ("student_expert_ratio", "aa_ratio", "cpu_student_expert_ratio", "cpu_aa_ratio"):
        out[key] = out["exporters"][pick][key]
    out["parity_ok"] = all(v[k]["parity_ok"] for v in out["exporters"].values() if "error" not in v
                           for k in ("student", "expert"))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default=",".join(DEFAULT_ARCHS))
    ap.add_argument("--exporters", default="torchscript,dynamo")
    ap.add_argument("--runs", type=int, default=7, help="timed runs per graph (interleaved)")
    ap.add_argument("--threads", type=int, default=0, help="ORT and torch threads (default: all cores)")
    args = ap.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="jedi-export-zoo-"))
    archs = {}
    try:
        for arch in args.archs.split(","):
            archs[arch] = bench_arch(arch, args.exporters.split(","), args.runs, work, threads)
            print(f"{arch}: {json.dumps(archs[arch])}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = [a for a in archs.values() if "picked_exporter" in a]
    res = {"archs": archs,
           "max_student_expert_ratio": max((a["student_expert_ratio"] for a in ok), default=None),
           "median_student_expert_ratio": float(np.median([a["student_expert_ratio"] for a in ok])) if ok else None,
           "min_ort_vs_torch": min((a["ort_vs_torch"] for a in ok), default=None),
           "max_aa_deviation": max((abs(a["aa_ratio"] - 1) for a in ok), default=None),
           "max_cpu_student_expert_ratio": max((a["cpu_student_expert_ratio"] for a in ok), default=None),
           "all_parity_ok": bool(ok) and len(ok) == len(archs) and all(a["parity_ok"] for a in ok),
           "batch": 1, "runs": args.runs, "threads": threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "ort_session_config": SESSION_CONFIG,
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    import onnxruntime

    res["onnxruntime"] = onnxruntime.__version__
    res["targets_met"] = (res["max_student_expert_ratio"] is not None and res["max_student_expert_ratio"] <= 1.02
                          and res["min_ort_vs_torch"] is not None and res["min_ort_vs_torch"] >= 1.0)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
