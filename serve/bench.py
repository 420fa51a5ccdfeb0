"""Latency of each exported student against its initial expert, on every runtime at hand.

For each ``<name>.student.onnx`` / ``<name>.expert.onnx`` pair, each runtime (ONNX Runtime
CPU / CUDA / TensorRT EP; torch eager and TensorRT engines when the caller supplies them) and
each batch size, the student, the expert and a second, independent copy of the expert are
timed on the same input in one block: one untimed call each, a warm-up, then ``runs`` rounds
in which all three run once, in balanced orders (:func:`round_order`) so drift and position in
a round hit all alike. Per model: median / p90 / p99 / min / max latency and throughput; per
pair: the student/expert ratio of medians and the **A/A ratio** (expert copy / expert) - the
noise floor of the ratio - and, on ONNX Runtime CPU, the **profiled ratio**: the student's run
time over its run time less the fold's nodes, from ORT's profiler (:func:`extra_node_cost`);
both parts come from the same runs, so a slow-down of the whole machine scales them alike.
ONNX Runtime threads do not spin between runs (``session.intra_op.allow_spinning=0``) and the
thread settings are reported: on small machines leftover spinning threads of one model steal
the cores from the next and fake differences between identical models.

A ``<dataset>.teacher.onnx`` beside the students is timed against that dataset's student
(:func:`bench_teachers`): each on its own inputs, interleaved, so the teacher's cost of running
every expert is measured rather than claimed.

This module is torch-free; torch eager and TensorRT-engine runtimes come from ``export.eager`` /
``export.trt``; every runtime is a :class:`jedi_deploy.runners.base.Runtime` whose ``open(path)`` gives a
:class:`~jedi_deploy.runners.base.Runner`, timed through its one ``infer(feed)``.

One module because every benchmark here shares the timing block
(``time_block``/``round_order``/``stats``) and the report that formats them.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.errors import InputError
from jedi_deploy.contracts.gate import (
    GateReport,
    format_gate,
    gate_path,
    int8_path,
    read_gate_report,
)
from jedi_deploy.contracts.model_card import read_card
from jedi_deploy.runners.base import Runtime
from jedi_deploy.runners.onnxruntime import PROVIDER_ALIASES, SESSION_CONFIG, OrtRunner
from jedi_deploy.runners.timing import cpu_name, first_rows, round_order, stats, time_block  # noqa: F401 - re-exported

from .runtime import OnnxModel

ROLES = ("student", "expert", "expert_copy")
ORT_RUNTIMES = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                "ort-tensorrt": "TensorrtExecutionProvider"}


def ort_runtimes(threads: int | None = 1, wanted: list[str] | None = None) -> list[Runtime]:
    """ONNX Runtime with each available execution provider (alone, CPU as fallback)."""
    from jedi_deploy.contracts.deps import require

    ort = require("onnxruntime")
    available = ort.get_available_providers()
    out = []
    for name, provider in ORT_RUNTIMES.items():
        if (wanted is None and provider in available) or (wanted is not None and name in wanted):
            if provider not in available:
                raise InputError(f"runtime {name!r} needs ONNX Runtime's {provider}, which this install lacks "
                                 f"(available: {', '.join(available)})")
            short = next(k for k, v in PROVIDER_ALIASES.items() if v == provider)
            out.append(Runtime(name, lambda p, s=short: OrtRunner(p, providers=s, threads=threads),
                               {"onnxruntime": ort.__version__, "provider": provider, "intra_op_threads": threads,
                                **SESSION_CONFIG}))
    return out


#: ``jedi bench`` names of the OpenVINO runtimes -> the runner's runtime name (f32, or bf16 when asked).
OPENVINO_RUNTIMES = {"openvino-cpu": "openvino", "openvino-bf16-cpu": "openvino-bf16"}


def openvino_runtimes(threads: int | None = 1, wanted: list[str] | None = None) -> list[Runtime]:
    """OpenVINO on the CPU (``openvino-cpu``: fp32 graphs in f32; ``openvino-bf16-cpu`` only when
    named). Each model is first compiled and run once in a child process
    (:func:`jedi_deploy.runners.probe.pick_runtime`): a graph OpenVINO crashes on is reported as
    skipped instead of taking the benchmark down. Each row says the precision the compiled model ran in."""
    from jedi_deploy.contracts.deps import require
    from jedi_deploy.runners.probe import pick_runtime
    from jedi_deploy.runners.table import runner_class

    ov = require("openvino")
    out = []
    for name, runtime in OPENVINO_RUNTIMES.items():
        if (wanted is None and name != "openvino-cpu") or (wanted is not None and name not in wanted):
            continue
        probed: set[Path] = set()

        def load(path, runtime=runtime, probed=probed):
            if Path(path) not in probed:  # once per file (the expert and its A/A copy are one file)
                pick_runtime(path, threads=threads, candidates={runtime: runtime}, runs=1, warn=lambda _m: None)
                probed.add(Path(path))
            return runner_class(runtime)(path, threads=threads)

        out.append(Runtime(name, load, {"openvino": ov.__version__, "device": "CPU", "inference_num_threads": threads,
                                        "CPU_DENORMALS_OPTIMIZATION": True,
                                        "precision_asked": runner_class(runtime).precision}))
    return out


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


def discover_teachers(model_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """``(dataset, teacher, student)`` for every ``<dataset>.teacher.onnx`` in ``model_dir`` that has
    the student of the same dataset beside it (the model a teacher's n x cost is compared with)."""
    model_dir = Path(model_dir)
    teachers = sorted(model_dir.glob("*.teacher.onnx"))
    if not teachers:
        return []
    by_dataset = {read_card(s).dataset: s for s in sorted(model_dir.glob("*.student.onnx"))}
    out = []
    for t in teachers:
        card = read_card(t)
        if card.kind != "teacher":
            raise InputError(f"{t} is a {card.kind}, not a teacher ensemble")
        if card.dataset not in by_dataset:
            raise InputError(f"{t} has no student of dataset {card.dataset!r} beside it; export its student too")
        out.append((card.dataset, t, by_dataset[card.dataset]))
    return out


def bench_teachers(triples: list[tuple[str, Path, Path]], runtimes: list[Runtime], *, batch_sizes=(1,),
                   runs: int = 100, warmup: int = 10, seed: int = 0) -> list[dict]:
    """Teacher ensemble vs the student of its dataset, each on its own inputs, timed in
    interleaved rounds (balanced orders) on every ONNX Runtime runtime: the teacher's cost of
    running all n experts, measured."""
    rows = []
    for dataset, teacher, student in triples:
        feeds = {k: read_card(p).dummy_feed(max(batch_sizes), seed) for k, p in (("teacher", teacher),
                                                                                  ("student", student))}
        for rt in [r for r in runtimes if r.name.startswith("ort-")]:
            opened = {"teacher": rt.open(teacher), "student": rt.open(student)}
            for b in batch_sizes:
                calls = {k: (lambda r=r, f=first_rows(feeds[k], b): r.infer(f)) for k, r in opened.items()}
                st = {k: stats(v, b) for k, v in time_block(calls, warmup=warmup, runs=runs).items()}
                rows.append({"dataset": dataset, "runtime": rt.name, "batch_size": b, "runs": runs, **st,
                             "teacher_student_ratio": st["teacher"]["median_ms"] / st["student"]["median_ms"]})
    return rows


def check_pair(student: Path, expert: Path) -> OnnxModel:
    """Refuse a student/expert pair that does not belong together; returns the student."""
    s, e = OnnxModel(student), OnnxModel(expert)
    if s.kind != "student" or e.kind != "expert":
        raise InputError(f"{student} is a {s.kind} and {expert} a {e.kind}; expected a student and its expert")
    if s.preprocess != e.preprocess:
        raise InputError(f"{student} and {expert} take different inputs "
                         f"({s.preprocess.to_dict()} vs {e.preprocess.to_dict()}); not a student/expert pair")
    if s.card.expert_sha256 != e.card.expert_sha256:
        raise InputError(f"{student} was not built from the expert checkpoint of {expert}; not a student/expert pair")
    if s.input_signature() != e.input_signature():
        raise InputError(f"{student} and {expert} were exported with different input options "
                         "(uint8 input / views); export both the same way")
    return s


def profiled_runs(path: str | Path, feed: dict, *, runs: int = 3, threads: int | None = 1) -> list[dict]:
    """ONNX Runtime CPU profiler over ``runs`` calls (after one untimed call): per call, the
    whole run and each node's kernel time, in ms (``{"run_ms": .., "nodes": {name: ms}}``)."""
    with OrtRunner(path, providers="cpu", threads=threads, profile=True) as runner:
        for _ in range(runs + 1):
            runner.infer(feed)
        events = runner.profile_events()
    calls = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    out = [{"run_ms": (b - a) / 1e3, "nodes": {}} for a, b in calls]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            i = next(i for i, (a, b) in enumerate(calls) if a <= e["ts"] <= b)
            name = e["name"].removesuffix("_kernel_time")
            out[i]["nodes"][name] = out[i]["nodes"].get(name, 0.0) + e["dur"] / 1e3
    return out[1:]


def extra_node_cost(model: str | Path, baseline: str | Path, x: dict, *, runs: int = 3,
                    threads: int | None = 1) -> dict:
    """What ``model`` spends, in its own profiled runs, in the nodes ``baseline`` does not have
    (for a student against its expert: the adjustment fold). ``ratio`` = run / (run - extra),
    median over runs: the model's latency over the latency of the part it shares with the
    baseline. Unlike timing the two graphs against each other, both parts come from the same
    runs, so a slow-down of the whole machine scales them alike; it does assume that the shared
    nodes cost the same in both graphs, so
    ``missing_nodes`` (baseline nodes the model lacks, after ORT's own optimisations) is
    reported and should be empty."""
    mine, theirs = profiled_runs(model, x, runs=runs, threads=threads), profiled_runs(baseline, x, runs=1, threads=threads)
    names, base_names = set().union(*(r["nodes"] for r in mine)), set(theirs[0]["nodes"])
    extra = sorted(names - base_names)
    ratios, extra_ms = [], []
    for r in mine:
        e = sum(r["nodes"].get(n, 0.0) for n in extra)
        extra_ms.append(e)
        ratios.append(r["run_ms"] / (r["run_ms"] - e))
    return {"extra_nodes": extra, "missing_nodes": sorted(base_names - names), "runs": runs,
            "extra_ms": float(np.median(extra_ms)), "run_ms": float(np.median([r["run_ms"] for r in mine])),
            "ratio": float(np.median(ratios))}


def run_precision(runner) -> str:
    """What a runner computes in: the runtime's own word where it can change it (OpenVINO's
    ``inference_precision``), else the graph's (the model card's ``precision``: fp32, fp16, int8)."""
    info = getattr(runner, "info", {}) or {}
    return str(info.get("inference_precision") or getattr(getattr(runner, "card", None), "precision", None) or "fp32")


def bench_models(pairs: list[tuple[str, Path, Path]], runtimes: list[Runtime], *, batch_sizes=(1,), runs: int = 100,
                 warmup: int = 10, seed: int = 0, progress: bool = False,
                 teachers: list[tuple[str, Path, Path]] | None = None) -> dict:
    """Every pair x runtime x batch size (see the module docstring); with ``teachers``
    (:func:`discover_teachers`) also each teacher ensemble against its student
    (:func:`bench_teachers`, ONNX Runtime only)."""
    from tqdm import tqdm

    if not runtimes:
        raise InputError("no runtime to benchmark")
    if runs < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        raise InputError(f"need runs >= 1, warmup >= 0 and batch sizes >= 1 (got {runs}, {warmup}, {batch_sizes})")
    results, skipped = [], []
    bar = tqdm(total=len(pairs) * len(runtimes) * len(batch_sizes), desc="benchmarking", disable=not progress)
    for name, student, expert in pairs:
        x_all = check_pair(student, expert).sample_input(max(batch_sizes), seed)
        quantized = int8_path(student)
        for rt in runtimes:
            try:
                runners = {"student": rt.open(student), "expert": rt.open(expert), "expert_copy": rt.open(expert)}
                if quantized.is_file() and rt.runs_onnx and (rt.name != "tensorrt"
                                                             or quantized.with_suffix(".plan").is_file()):
                    runners["student_int8"] = rt.open(quantized)
            except InputError as e:  # e.g. a runtime that cannot compile (or crashed on) this graph
                skipped.append({"name": name, "runtime": rt.name, "reason": str(e)})
                bar.update(len(batch_sizes))
                continue
            for b in batch_sizes:
                calls = {k: (lambda r=r, f=first_rows(x_all, b): r.infer(f)) for k, r in runners.items()}
                st = {k: stats(v, b) for k, v in time_block(calls, warmup=warmup, runs=runs).items()}
                row = {"name": name, "runtime": rt.name, "batch_size": b, "runs": runs, "warmup": warmup,
                       "precision": run_precision(runners["student"]),
                       **st, "ratio": st["student"]["median_ms"] / st["expert"]["median_ms"],
                       "aa_ratio": st["expert_copy"]["median_ms"] / st["expert"]["median_ms"]}
                if "student_int8" in st:  # the INT8 student's speed-up over the fp32 expert it replaces
                    row["int8_speedup"] = st["expert"]["median_ms"] / st["student_int8"]["median_ms"]
                if rt.name == "ort-cpu":  # the fold's own cost, which timing alone cannot resolve on a noisy machine
                    cost = extra_node_cost(student, expert, first_rows(x_all, b), runs=3,
                                           threads=rt.info.get("intra_op_threads"))
                    row.update(profiled_ratio=cost["ratio"], fold_ms=cost["extra_ms"])
                results.append(row)
                bar.update()
            del runners
    bar.close()
    report = {"machine": machine_info(runtimes), "results": results, "speedups": speedups(results)}
    if skipped:
        report["skipped"] = skipped
    gates = [read_gate_report(gate_path(int8_path(s))) for _, s, _ in pairs if gate_path(int8_path(s)).is_file()]
    if gates:
        report["int8_gates"] = [g.to_dict() for g in gates]
    if teachers:
        report["teachers"] = bench_teachers(teachers, runtimes, batch_sizes=batch_sizes, runs=runs, warmup=warmup,
                                            seed=seed)
    return report


def speedups(results: list[dict]) -> list[dict]:
    """ONNX Runtime vs torch eager on the same device: torch median / ORT median per model."""
    out = []
    index = {(r["name"], r["runtime"], r["batch_size"]): r for r in results}
    for (name, runtime, b), r in index.items():
        if not runtime.startswith("ort-"):
            continue
        torch_rt = "torch-cuda" if runtime in ("ort-cuda", "ort-tensorrt") else "torch-cpu"
        t = index.get((name, torch_rt, b))
        if t:
            out.append({"name": name, "runtime": runtime, "vs": torch_rt, "batch_size": b,
                        **{f"{k}_speedup": t[k]["median_ms"] / r[k]["median_ms"] for k in ("student", "expert")}})
    return out


def machine_info(runtimes: list[Runtime]) -> dict:
    return {"platform": platform.platform(), "processor": cpu_name(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
            "runtimes": {rt.name: rt.info for rt in runtimes}}


def bench_pair(student: str | Path, expert: str | Path, *, batch_size: int = 1, warmup: int = 10, runs: int = 100,
               threads: int = 1, seed: int = 0) -> dict:
    """ONNX Runtime CPU timing of one pair (a row of :func:`bench_models`)."""
    s = Path(student)
    report = bench_models([(s.name.removesuffix(".student.onnx"), s, Path(expert))], ort_runtimes(threads, ["ort-cpu"]),
                          batch_sizes=(batch_size,), runs=runs, warmup=warmup, seed=seed)
    return report["results"][0]


def bench_dir(model_dir: str | Path, *, batch_size: int = 1, warmup: int = 10, runs: int = 100, threads: int = 1,
              seed: int = 0) -> dict:
    """ONNX Runtime CPU timing of every pair in ``model_dir`` at one batch size."""
    return bench_models(discover_pairs(model_dir), ort_runtimes(threads, ["ort-cpu"]), batch_sizes=(batch_size,),
                        runs=runs, warmup=warmup, seed=seed)


def format_bench(report: dict, gates: bool = True) -> str:
    """Markdown: one row per model x runtime x batch size, the INT8 students' speed-ups and (with
    ``gates``) their accuracy-gate tables, the teachers, then the ORT vs torch speedups."""
    lines = ["| model | runtime | precision | batch | expert median ms | p90 | p99 | student median ms | p90 | p99 "
             "| student/s | student/expert | A/A (expert/expert) | spread (max-min)/median | profiled student/expert |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    int8_rows = [r for r in report["results"] if "int8_speedup" in r]
    for r in report["results"]:
        e, s = r["expert"], r["student"]
        lines.append(f"| {r['name']} | {r['runtime']} | {r.get('precision', '-')} | {r['batch_size']} "
                     f"| {e['median_ms']:.3f} | {e['p90_ms']:.3f} "
                     f"| {e['p99_ms']:.3f} | {s['median_ms']:.3f} | {s['p90_ms']:.3f} | {s['p99_ms']:.3f} "
                     f"| {s['throughput_per_s']:.1f} | {r['ratio']:.3f} | {r['aa_ratio']:.3f} "
                     f"| {max(s['spread'], e['spread'], r['expert_copy']['spread']):.2f} "
                     f"| {format(r['profiled_ratio'], '.4f') if 'profiled_ratio' in r else '-'} |")
    if int8_rows:
        lines += ["", "| model | runtime | batch | expert (fp32) median ms | fp32 student median ms "
                  "| INT8 student median ms | p99 | expert / INT8 student | fp32 / INT8 student | INT8 |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in int8_rows:
            vs_fp32 = r["student"]["median_ms"] / r["student_int8"]["median_ms"]
            lines.append(f"| {r['name']} | {r['runtime']} | {r['batch_size']} | {r['expert']['median_ms']:.3f} "
                         f"| {r['student']['median_ms']:.3f} | {r['student_int8']['median_ms']:.3f} "
                         f"| {r['student_int8']['p99_ms']:.3f} | {r['int8_speedup']:.2f}x | {vs_fp32:.2f}x "
                         f"| {'faster' if vs_fp32 >= 1 else 'slower'} |")
    lines += [f"\n{r['name']} on {r['runtime']}: skipped ({r['reason']})" for r in report.get("skipped", [])]
    for g in report.get("int8_gates", []) if gates else []:
        lines += ["", format_gate(GateReport.from_dict(g))]
    if report.get("teachers"):
        lines += ["", "| teacher ensemble (dataset) | runtime | batch | teacher median ms | p99 | student median ms "
                  "| p99 | teacher/student |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['dataset']} | {r['runtime']} | {r['batch_size']} | {r['teacher']['median_ms']:.3f} "
                  f"| {r['teacher']['p99_ms']:.3f} | {r['student']['median_ms']:.3f} | {r['student']['p99_ms']:.3f} "
                  f"| {r['teacher_student_ratio']:.2f}x |" for r in report["teachers"]]
    if report.get("speedups"):
        lines += ["", "| model | ONNX Runtime | vs | batch | student speedup | expert speedup |",
                  "|---|---|---|---:|---:|---:|"]
        lines += [f"| {r['name']} | {r['runtime']} | {r['vs']} | {r['batch_size']} | {r['student_speedup']:.2f}x "
                  f"| {r['expert_speedup']:.2f}x |" for r in report["speedups"]]
    return "\n".join(lines)


def plot_bench(report: dict, path: str | Path) -> Path:
    """Median latency (bars) with p90 (whiskers) of student / expert / expert copy, per model x runtime,
    one panel per batch size."""
    from jedi_deploy.common.plots import pyplot, save_figure

    plt = pyplot()
    sizes = sorted({r["batch_size"] for r in report["results"]})
    per_panel = max(1, len(report["results"]) // len(sizes))
    fig, axes = plt.subplots(1, len(sizes), figsize=(len(sizes) * max(5.0, 1.6 * per_panel + 2), 4.2), squeeze=False)
    for ax, b in zip(axes[0], sizes):
        rows = [r for r in report["results"] if r["batch_size"] == b]
        x = np.arange(len(rows))
        for i, (role, color) in enumerate(zip(ROLES, ("tab:blue", "tab:orange", "tab:gray"))):
            med = [r[role]["median_ms"] for r in rows]
            p90 = [r[role]["p90_ms"] - r[role]["median_ms"] for r in rows]
            ax.bar(x + (i - 1) * 0.27, med, 0.27, yerr=[np.zeros(len(rows)), p90], label=role.replace("_", " "),
                   color=color, capsize=2)
        ax.set_xticks(x, [f"{r['name']}\n{r['runtime']}\n{r['ratio']:.3f} (A/A {r['aa_ratio']:.3f})" for r in rows],
                      fontsize=7)
        ax.set_ylabel("latency ms (median, whisker p90)")
        ax.set_title(f"batch {b}")
        ax.legend(fontsize=7)
    fig.suptitle("student vs initial expert (label: student/expert ratio, A/A control)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def write_bench(report: dict, out_dir: str | Path) -> list[Path]:
    """``bench.json``, ``bench.md`` and ``bench.png`` in ``out_dir`` (each written atomically)."""
    from jedi_deploy.contracts.header import (
        atomic_path,
        require_writable_dir,
        write_json,
    )

    out = require_writable_dir(out_dir)
    write_json(out / "bench.json", report)
    m = report["machine"]
    header = (f"# jedi bench\n\nmachine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs; "
              f"OMP_WAIT_POLICY={m['OMP_WAIT_POLICY']}\n\nruntimes: "
              + "; ".join(f"{k} {v}" for k, v in m["runtimes"].items()) + "\n\n")
    with atomic_path(out / "bench.md", ".md") as tmp:
        tmp.write_text(header + format_bench(report) + "\n")
    return [out / "bench.json", out / "bench.md", plot_bench(report, out / "bench.png")]
