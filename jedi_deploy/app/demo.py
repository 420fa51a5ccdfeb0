"""``jedi demo``: the whole JEDI pipeline on the built-in synthetic benchmark, in one run folder.

synthetic videos -> pretrained experts -> embedding cache -> JEDI training -> evaluation ->
ONNX export (students + initial experts, validated) -> inference with ``serve`` -> latency
bench -> ``report.md`` + ``accuracy_curves.png``.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

from jedi_deploy.contracts.errors import InputError
from jedi_deploy.contracts.header import write_json


@dataclass(frozen=True)
class DemoSettings:
    quick: bool = False
    seed: int = 0
    pretrain_epochs: int = 30
    jedi_epochs: int = 150
    burn_in: int = 15
    lr: float = 1e-3
    batch_size: int = 32
    bench_runs: int = 200

    @classmethod
    def preset(cls, quick: bool, seed: int = 0) -> "DemoSettings":
        if quick:
            return cls(quick=True, seed=seed, pretrain_epochs=12, jedi_epochs=30, burn_in=5, bench_runs=40)
        return cls(seed=seed)


RUN_LAYOUT = {
    "data": "synthetic datasets (mp4 + MMAction2 lists)",
    "experts": "initial expert checkpoints (safetensors)",
    "cache": "embedding cache (<dataset>/<split>.safetensors)",
    "train": "JEDI bundle jedi.safetensors + metrics.jsonl",
    "onnx": "exported students and experts + validation reports; INT8 students + their gate reports",
    "eval.json": "Table-2 metrics", "bench.json": "latency figures",
    "report.md": "the report", "accuracy_curves.png": "Figure-3-style plot",
}



#: Share of every training list the demo's experts never see: JEDI's validation videos.
HOLDOUT = 0.15

def _clear_previous_run(out: Path) -> None:
    """Remove the demo's own outputs (the RUN_LAYOUT entries) and nothing else."""
    import shutil

    for name in RUN_LAYOUT:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _say(msg: str, echo) -> None:
    if echo:
        echo(msg)


def run_demo(out: str | Path, settings: DemoSettings, *, force: bool = False, progress: bool = True,
             echo=print) -> Path:
    """Run every stage into ``out``; returns the path of ``report.md``."""
    import torch

    from jedi_deploy.contracts.config import JEDIConfig
    from jedi_deploy.contracts.gate import format_gate
    from jedi_deploy.export.quantize import Int8Options, quantize_exported
    from jedi_deploy.export.students import export_bundle
    from jedi_deploy.media.datasets import discover_datasets
    from jedi_deploy.media.synthetic import benchmark_specs, generate_benchmark
    from jedi_deploy.models.registry import load_expert
    from jedi_deploy.serve.bench import bench_dir, format_bench
    from jedi_deploy.serve.infer import run_infer
    from jedi_deploy.train.cache import build_cache
    from jedi_deploy.train.cached import load_cache
    from jedi_deploy.train.evaluate import evaluate, format_gains, format_table
    from jedi_deploy.train.jedi import train_to_dir
    from jedi_deploy.train.pretrain import pretrain_expert

    from .report import plot_curves, write_report

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise InputError(f"{out} already exists and is not empty; choose another --out or pass --force")
        _clear_previous_run(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    specs = benchmark_specs(settings.quick)
    stages = 8

    def stage(i: int, name: str):
        _say(f"[{i}/{stages}] {name}", echo)
        return time.perf_counter()

    t = stage(1, "synthesising the benchmark videos")
    generate_benchmark(out / "data", seed=settings.seed, quick=settings.quick, progress=progress)
    datasets = discover_datasets(out / "data")
    timings["synthesise data"] = time.perf_counter() - t

    t = stage(2, "pretraining one expert per dataset")
    ckpts = []
    by_name = {d.name: d for d in datasets}
    for spec in specs:
        # 15% of every training list held out of pretraining: JEDI validates on videos the experts never saw
        ckpts.append(pretrain_expert(by_name[spec.name], spec.arch, out / "experts" / f"{spec.name}.safetensors",
                                     epochs=settings.pretrain_epochs, seed=settings.seed, progress=progress,
                                     holdout=HOLDOUT))
    timings["pretrain experts"] = time.perf_counter() - t

    t = stage(3, "caching frozen-encoder embeddings")
    experts = [load_expert(p) for p in ckpts]
    build_cache(experts, datasets, out / "cache", progress=progress)
    cache = load_cache(out / "cache")
    timings["cache embeddings"] = time.perf_counter() - t

    t = stage(4, "training JEDI (students + teachers, jointly)")
    cfg = JEDIConfig(epochs=settings.jedi_epochs, burn_in=settings.burn_in, lr=settings.lr,
                     batch_size=settings.batch_size, seed=settings.seed)
    result, bundle = train_to_dir(cache, out / "train", cfg, progress=progress)
    timings["train JEDI"] = time.perf_counter() - t

    t = stage(5, "evaluating experts, students and teachers")
    table = evaluate(result.model, result.experts, result.datasets, cache)
    write_json(out / "eval.json", table)
    timings["evaluate"] = time.perf_counter() - t

    t = stage(6, "exporting students and initial experts to ONNX (validated), INT8 students (gated)")
    parity = export_bundle(bundle, out / "onnx", progress=progress)
    timings["export ONNX"] = time.perf_counter() - t
    t = time.perf_counter()
    gates = quantize_exported(bundle, out / "onnx", [e.name for e in result.experts], Int8Options(seed=settings.seed),
                              progress=progress)
    timings["quantize INT8 (gated)"] = time.perf_counter() - t

    t = stage(7, "classifying a test video with serve (ONNX Runtime, no torch)")
    first = datasets[0]
    video = first.samples("test")[0]
    preds, _ = run_infer(out / "onnx" / f"{first.name}.student.onnx", [video.path], topk=3)
    infer_text = (f"$ python -m jedi_deploy.serve.infer onnx/{first.name}.student.onnx {video.path.relative_to(out)}\n"
                  + preds.rstrip("\n").replace(str(out) + "/", "")
                  + f"\n(true label: {first.categories[video.label]})")
    timings["infer"] = time.perf_counter() - t

    t = stage(8, "benchmarking latency: students vs initial experts")
    bench = bench_dir(out / "onnx", runs=settings.bench_runs, warmup=20, threads=1)
    write_json(out / "bench.json", bench)
    timings["bench"] = time.perf_counter() - t

    expert_acc1 = {d: table[d]["expert"]["acc1"] for d in table}
    plot = plot_curves(result.history, expert_acc1, cfg.burn_in, out / "accuracy_curves.png")
    shared = _shared_classes(specs)
    data_rows = [{"name": s.name, "arch": s.arch, "classes": len(s.classes),
                  "train": len(s.classes) * s.train_per_class, "test": len(s.classes) * s.test_per_class,
                  "background": s.background, "noise": s.noise, "shared": shared[s.name]} for s in specs]
    machine = {"platform": platform.platform(), "python": platform.python_version(),
               "torch": torch.__version__, "onnxruntime": bench["machine"]["runtimes"]["ort-cpu"]["onnxruntime"],
               "torch threads": torch.get_num_threads()}
    report = write_report(out / "report.md", command=f"jedi demo{' --quick' if settings.quick else ''} "
                          f"--seed {settings.seed}", machine=machine, timings=timings, data_rows=data_rows,
                          table_md=format_table(table) + "\n\n" + format_gains(table), table=table, parity=parity,
                          history=result.history,
                          bench_md=format_bench(bench, gates=False), bench=bench, infer_text=infer_text,
                          config=cfg.to_dict(), plot_name=plot.name,
                          int8_md="\n\n".join(format_gate(g) for g in gates))
    return report


def _shared_classes(specs) -> dict[str, list[str]]:
    out = {}
    for s in specs:
        others = {c for o in specs if o is not s for c in o.classes}
        out[s.name] = [c for c in s.classes if c in others]
    return out
