"""Export every torchvision and MMAction2-style architecture at its standard input size, with
both ONNX exporters, and time what comes out - in one run.

Per architecture (random weights; a random JEDI adjustment module and head make the student):
export time, file size and parity of the student and expert graphs for each exporter
(TorchScript, dynamo), then two interleaved timing blocks at batch 1 (no thread spinning):

1. ONNX Runtime CPU: student, expert and a second session of the expert (the A/A control),
   ``--ratio-runs`` rounds in balanced orders (serve.bench.round_order). ``student_expert_ratio``
   is the ratio of median latencies, as ``jedi bench`` reports it, with a 95% bootstrap
   interval over rounds; ``aa_ratio`` is the same for the two expert sessions - the noise floor.
   The exporter whose student runs faster is the architecture's pick.
2. The picked ORT student against the same student in torch eager, ``--runs`` rounds:
   ``ort_vs_torch`` = torch median / ORT median (> 1: ORT is faster).

Beside the timed ratio, ``profiled_student_expert_ratio`` reads ORT's profiler inside the
student's own runs: run time / (run time - time in the nodes the expert graph lacks, i.e. the
adjustment fold). Both parts come from the same runs, so it is far less sensitive to machine
noise than the timed ratio (serve.bench.extra_node_cost).

Last line: one JSON object with ``archs`` (per-arch figures), ``max_student_expert_ratio``,
``min_ort_vs_torch``, ``all_parity_ok``, the largest A/A deviation (``max_aa_deviation``), the
largest upper 95% bound of the ratio, the largest profiled ratio, and ``targets_met`` - judged,
as specified, on the timed ratio and ``ort_vs_torch``.
Usage: python benchmarks/export_zoo.py [--archs r3d_18,s3d] [--runs 7] [--ratio-runs 18] [--exporters torchscript,dynamo]
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

from jedi_deploy.contracts.errors import JediError
from jedi_deploy.export.fuse import StudentReference  # noqa: E402
from jedi_deploy.export.onnx import OnnxExportConfig  # noqa: E402
from jedi_deploy.export.students import export_student_and_expert  # noqa: E402
from jedi_deploy.models.archs import ARCHS, build_expert
from jedi_deploy.models.jedi import AdjustmentModule
from jedi_deploy.models.registry import Expert
from jedi_deploy.models.zoo.torchvision import TV_VIDEO
from jedi_deploy.runners.onnxruntime import SESSION_CONFIG, session_options  # noqa: E402
from jedi_deploy.serve.bench import extra_node_cost, time_block  # noqa: E402

#: Hugging Face entries (``hf:<family>``) at their standard sizes: transformers' default config of each
#: family is its base model (VideoMAE-B 16x224, TimeSformer-B 8x224, ViViT-B 32x224).
HF_FAMILIES = {"videomae": ("VideoMAEConfig", "VideoMAEForVideoClassification"),
               "timesformer": ("TimesformerConfig", "TimesformerForVideoClassification"),
               "vivit": ("VivitConfig", "VivitForVideoClassification")}
DEFAULT_ARCHS = sorted(TV_VIDEO) + ["tsn_r50", "tsm_r50"] + [f"hf:{f}" for f in HF_FAMILIES]


def hf_standard(family: str, classes: int) -> tuple[dict, object]:
    """(arch kwargs, preprocessing) of a standard-size Hugging Face model of ``family``."""
    from jedi_deploy.models.zoo.hf import (
        import_transformers,
        preprocess_for,
        stored_config,
    )

    tf = import_transformers()
    cfg_name, cls_name = HF_FAMILIES[family]
    config = getattr(tf, cfg_name)(num_labels=classes).to_dict()
    config["architectures"] = [cls_name]
    return {"config": stored_config(config), "head": "classifier"}, preprocess_for(config, None, family)


def make_student(arch: str, classes: int = 400):
    torch.manual_seed(0)
    if arch.startswith("hf:"):
        kwargs, pre = hf_standard(arch[3:], classes)
        model = build_expert("hf", classes, **kwargs).eval().requires_grad_(False)
    else:
        model = build_expert(arch, classes).eval().requires_grad_(False)
        pre = replace(ARCHS[arch].preprocess, num_clips=1, crops=1, twice_sample=False)
    ex = Expert(arch.replace(":", "_"), arch, {}, "bench", tuple(f"c{i}" for i in range(classes)), pre, model, None,
                "0" * 64)
    adjust = AdjustmentModule(ex.embed_dim, 256, 0.75).eval()
    torch.nn.init.normal_(adjust.fc2.weight, std=0.02)
    head = torch.nn.Linear(ex.embed_dim, classes)
    return ex, adjust, head


def time_interleaved(fns: dict, runs: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per call of argument-free callables, timed like ``jedi bench``
    (serve.bench.time_block: untimed first call, warm-up, interleaved rounds in balanced orders)."""
    return time_block(fns, warmup=max(0, warmup - 1), runs=runs)


def summary_ms(times: list[float]) -> dict:
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times)}


def ratio_of_medians(num: list[float], den: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, list]:
    """median(num) / median(den) (as ``jedi bench``), and its 95% bootstrap interval over rounds
    (the two lists come from the same interleaved rounds, resampled together)."""
    a, b = np.asarray(num), np.asarray(den)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    boot = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    return float(np.median(a) / np.median(b)), [round(float(q), 3) for q in np.percentile(boot, [2.5, 97.5])]


def ort_session(path: Path, threads: int):
    """The session ``jedi serve`` / ``jedi bench`` open (runners.onnxruntime.session_options), on CPU."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def bench_arch(arch: str, exporters: list[str], runs: int, ratio_runs: int, work: Path, threads: int) -> dict:
    ex, adjust, head = make_student(arch)
    x = torch.randn(1, *ex.preprocess.input_shape())
    xn = x.numpy()
    out = {"input": list(ex.preprocess.input_shape()), "exporters": {}}
    sessions = {}
    for name in exporters:
        d = work / f"{ex.name}-{name}"
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
        sessions[name] = {k: ort_session(d / f"{ex.name}.{k}.onnx", threads) for k in ("student", "expert")}
        sessions[name]["expert_copy"] = ort_session(d / f"{ex.name}.expert.onnx", threads)  # the A/A control
        out["exporters"][name] = row
    if not sessions:
        return out
    run = {f"{n}/{k}": (lambda s=s: s.run(None, {"video": xn})) for n, ss in sessions.items() for k, s in ss.items()}
    # block 1: the ORT graphs against each other (student, expert, a second expert session)
    times = time_interleaved(run, ratio_runs)
    t = {k: summary_ms(v) for k, v in times.items()}
    for n in sessions:
        row = out["exporters"][n]
        row["ort_student_ms"] = round(t[f"{n}/student"]["median_ms"], 2)
        row["ort_expert_ms"] = round(t[f"{n}/expert"]["median_ms"], 2)
        ratio, ci = ratio_of_medians(times[f"{n}/student"], times[f"{n}/expert"])
        row["student_expert_ratio"], row["student_expert_ci95"] = round(ratio, 3), ci
        row["aa_ratio"] = round(ratio_of_medians(times[f"{n}/expert_copy"], times[f"{n}/expert"])[0], 3)
        row["spread_ms"] = [round(t[f"{n}/student"]["min_ms"], 2), round(t[f"{n}/student"]["max_ms"], 2)]
    pick = min(sessions, key=lambda n: out["exporters"][n]["ort_student_ms"])
    out["picked_exporter"] = pick
    for key in ("student_expert_ratio", "student_expert_ci95", "aa_ratio"):
        out[key] = out["exporters"][pick][key]
    # the fold's own cost, from ORT's profiler inside the student's runs (both parts from the same runs)
    d = work / f"{ex.name}-{pick}"
    cost = extra_node_cost(d / f"{ex.name}.student.onnx", d / f"{ex.name}.expert.onnx", {"video": xn}, runs=3,
                           threads=threads)
    out["profiled_student_expert_ratio"] = round(cost["ratio"], 5)
    out["fold_ms"] = round(cost["extra_ms"], 3)
    out["fold_nodes"], out["expert_nodes_missing"] = cost["extra_nodes"], cost["missing_nodes"]
    # block 2: the picked ORT student against the same student in torch eager
    student_t = StudentReference(ex.encoder, adjust, head).eval()

    def eager():
        with torch.no_grad():
            student_t(x)

    vs = time_interleaved({"ort": run[f"{pick}/student"], "torch": eager}, runs)
    out["torch_student_ms"] = round(summary_ms(vs["torch"])["median_ms"], 2)
    out["ort_student_ms_vs_torch_block"] = round(summary_ms(vs["ort"])["median_ms"], 2)
    out["ort_vs_torch"] = round(ratio_of_medians(vs["torch"], vs["ort"])[0], 3)
    out["parity_ok"] = all(v[k]["parity_ok"] for v in out["exporters"].values() if "error" not in v
                           for k in ("student", "expert"))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default=",".join(DEFAULT_ARCHS))
    ap.add_argument("--exporters", default="torchscript,dynamo")
    ap.add_argument("--runs", type=int, default=7, help="rounds of ORT student vs torch eager student")
    ap.add_argument("--ratio-runs", type=int, default=18,
                    help="rounds of ORT student vs expert vs expert copy (a multiple of 6 balances the orders)")
    ap.add_argument("--threads", type=int, default=0, help="ORT and torch threads (default: all cores)")
    args = ap.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="jedi-export-zoo-"))
    archs = {}
    try:
        for arch in args.archs.split(","):
            archs[arch] = bench_arch(arch, args.exporters.split(","), args.runs, args.ratio_runs, work, threads)
            print(f"{arch}: {json.dumps(archs[arch])}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = [a for a in archs.values() if "picked_exporter" in a]
    res = {"archs": archs,
           "max_student_expert_ratio": max((a["student_expert_ratio"] for a in ok), default=None),
           "median_student_expert_ratio": float(np.median([a["student_expert_ratio"] for a in ok])) if ok else None,
           "min_ort_vs_torch": min((a["ort_vs_torch"] for a in ok), default=None),
           "max_aa_deviation": max((round(abs(a["aa_ratio"] - 1), 3) for a in ok), default=None),
           "max_student_expert_ci95_high": max((a["student_expert_ci95"][1] for a in ok), default=None),
           "max_profiled_student_expert_ratio": max((a["profiled_student_expert_ratio"] for a in ok), default=None),
           "all_parity_ok": bool(ok) and len(ok) == len(archs) and all(a["parity_ok"] for a in ok),
           "batch": 1, "runs": args.runs, "ratio_runs": args.ratio_runs, "threads": threads,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
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
