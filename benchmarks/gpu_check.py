"""One GPU check, one JSON line: the GPU paths of caching, training and the runtimes, measured.

    python benchmarks/gpu_check.py [--device auto|cuda:N|cpu] [--videos 32] [--epochs 500]

On a single-GPU machine (target: <= 8 minutes in all):

1. Caching: generated videos (tests/support/footage.py) of two datasets, two zoo experts (r3d_18 and
   mc3_18, random weights, 16 x 112^2 clips), cached on the CPU in fp32 (the reference) and on
   the device in bf16 autocast (``--precision``; fp32 in a CPU-only run); max abs difference of
   embeddings and logits (relative to the reference's scale), top-1 agreement of the logits, videos/s of each, and the GPU's busy
   fraction while caching (torch.cuda.utilization, where NVML answers).
2. Training: ``--epochs`` epochs of the paper's scale (4 experts of 2048/2048/2048/1024 dims, 200/
   51/101/400 classes, ``--samples`` cached samples, batch 256) on random embeddings, on the
   device: wall time (target <= 3 min on an H100/H200 for 500 epochs of 250k samples).
3. ONNX Runtime's CUDA EP vs its CPU EP on the exported r3d_18 expert: parity and latency, when
   onnxruntime-gpu is importable (else "absent").
4. TensorRT: engine build + parity against ONNX Runtime, when tensorrt is importable (else "absent").

Without a GPU (``--device cpu``, or no CUDA visible) it runs the same code paths at a small size
(fewer videos, 2 epochs of 4k samples) and says ``"gpu_measured": false``: the figures are a
smoke test, not GPU numbers.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from jedi_deploy.models.devices import describe, resolve_device


def make_data(root: Path, videos: int) -> list:
    """Two datasets of generated clips (moving pattern, 128x96), 2 classes each, test split only."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support/footage.py
    from jedi_deploy.media.datasets import discover_datasets
    from support.footage import write_video

    for d in ("alpha", "beta"):
        folder = root / d
        (folder / "videos").mkdir(parents=True)
        (folder / "classes.txt").write_text("left\nright\n")
        lines = []
        for i in range(videos // 2):
            write_video(folder / "videos" / f"{i:03d}.mp4", 24 + i % 8, size=(128, 96))
            lines.append(f"videos/{i:03d}.mp4 {i % 2}")
        (folder / "test.txt").write_text("\n".join(lines) + "\n")
    return discover_datasets(root)


def make_experts(root: Path, datasets) -> list[Path]:
    from dataclasses import replace

    from jedi_deploy.models.archs import build_expert, get_arch
    from jedi_deploy.models.registry import save_expert

    paths = []
    for arch, d in zip(("r3d_18", "mc3_18"), datasets):
        torch.manual_seed(0)
        model = build_expert(arch, 2)
        pre = replace(get_arch(arch).preprocess, short_side=112)
        paths.append(save_expert(model, root / f"{arch}.safetensors", name=arch, arch=arch, arch_kwargs={},
                                 dataset=d.name, categories=d.categories, preprocess=pre))
    return paths


def cache_check(tmp: Path, device, videos: int, precision: str) -> dict:
    from jedi_deploy.models.registry import load_expert
    from jedi_deploy.train.cache import build_cache
    from jedi_deploy.train.cached import load_cache

    datasets = make_data(tmp / "data", videos)
    experts = make_experts(tmp, datasets)
    out = {}
    runs = [("cpu", torch.device("cpu"), "fp32"), ("device", device, precision)]
    util = []
    for key, dev, precision in runs:
        t0 = time.perf_counter()
        build_cache([load_expert(p) for p in experts], datasets, tmp / f"cache_{key}", progress=False, device=str(dev),
                    precision=precision, workers=None)
        wall = time.perf_counter() - t0
        if dev.type == "cuda":
            try:
                util.append(torch.cuda.utilization(dev))
            except Exception:  # noqa: BLE001 - NVML missing: reported as unknown
                pass
        out[key] = {"device": describe(dev), "precision": precision, "videos_per_s": videos / wall, "wall_s": wall}
    ref, got = load_cache(tmp / "cache_cpu"), load_cache(tmp / "cache_device")
    diffs = {}
    for d in ref.splits:
        a, b = ref.split(d, "test"), got.split(d, "test")
        for n in ref.expert_names:
            scale = float(a.emb[n].abs().max()) or 1.0
            diffs[f"{d}/{n}"] = {"emb_max_abs_rel": float((a.emb[n] - b.emb[n]).abs().max()) / scale,
                                 "logit_max_abs": float((a.logits[n] - b.logits[n]).abs().max()),
                                 "top1_agreement": float((a.logits[n].argmax(1) == b.logits[n].argmax(1)).float()
                                                         .mean())}
    out["parity_vs_cpu_fp32"] = diffs
    out["gpu_busy_fraction_at_end"] = util[0] / 100 if util else "unknown (no NVML)"
    return out


def train_check(device, epochs: int, samples: int) -> dict:
    from jedi_deploy.contracts.config import JEDIConfig
    from jedi_deploy.contracts.expert import ExpertCard
    from jedi_deploy.contracts.preprocess import Preprocess
    from jedi_deploy.train.cached import Cache, Split
    from jedi_deploy.train.jedi import train_jedi

    dims, classes = [2048, 2048, 2048, 1024], [200, 51, 101, 400]
    names = [f"e{j}" for j in range(4)]
    gen = torch.Generator().manual_seed(0)
    experts = [ExpertCard(n, "x", f"d{j}", tuple(str(c) for c in range(classes[j])), Preprocess(), dims[j], classes[j],
                          sha256=str(j)) for j, n in enumerate(names)]
    splits, heads = {}, {}
    per = samples // 4
    for j, n in enumerate(names):
        def split(k, kind):
            emb = {m: torch.randn(k, d, generator=gen) for m, d in zip(names, dims)}
            logits = {m: torch.randn(k, c, generator=gen) for m, c in zip(names, classes)}
            return Split(f"d{j}", kind, emb, logits, torch.randint(0, classes[j], (k,), generator=gen))
        splits[f"d{j}"] = {"train": split(per, "train"), "test": split(max(64, per // 20), "test")}
        heads[n] = {"weight": torch.randn(classes[j], dims[j], generator=gen) * 0.01, "bias": torch.zeros(classes[j])}
    cache = Cache(experts, {f"d{j}": list(experts[j].categories) for j in range(4)}, splits, heads)
    cfg = JEDIConfig(epochs=epochs, batch_size=256, val_fraction=0.0, eval_every=max(1, epochs))
    t0 = time.perf_counter()
    train_jedi(cache, cfg, progress=False, device=str(device))
    wall = time.perf_counter() - t0
    return {"device": describe(device), "epochs": epochs, "samples": samples, "wall_s": wall,
            "s_per_epoch": wall / epochs, "projected_500_epochs_250k_s": wall / epochs * 500 * 250_000 / samples}


def ort_check(tmp: Path) -> dict | str:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "absent (onnxruntime-gpu not installed)"
    from jedi_deploy.export.fuse import ExpertGraph
    from jedi_deploy.export.onnx import OnnxExportConfig, export_onnx
    from jedi_deploy.export.students import model_card
    from jedi_deploy.models.registry import load_expert

    ex = load_expert(tmp / "r3d_18.safetensors")
    path = tmp / "r3d.onnx"
    export_onnx(ExpertGraph(ex.encoder, ex.head), path, ex.preprocess.input_shape(), model_card("expert", ex,
                OnnxExportConfig()), cfg=OnnxExportConfig(batch_sizes=(1,)))
    x = np.random.default_rng(0).standard_normal((8, *ex.preprocess.input_shape())).astype(np.float32)
    out = {}
    for key, prov in (("cpu", "CPUExecutionProvider"), ("cuda", "CUDAExecutionProvider")):
        s = ort.InferenceSession(str(path), providers=[prov])
        y = s.run(None, {"video": x})[0]
        t0 = time.perf_counter()
        for _ in range(10):
            s.run(None, {"video": x})
        out[key] = {"ms_batch8": (time.perf_counter() - t0) * 100, "y": y}
    diff = float(np.abs(out["cpu"]["y"] - out["cuda"]["y"]).max())
    return {"max_abs_diff": diff, "cpu_ms_batch8": out["cpu"]["ms_batch8"], "cuda_ms_batch8": out["cuda"]["ms_batch8"]}


def trt_check(tmp: Path) -> dict | str:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "absent (tensorrt not installed)"
    from jedi_deploy.export.onnx import TOLERANCES
    from jedi_deploy.export.trt import build_engine, check_engine_parity

    onnx_path = tmp / "r3d.onnx"
    if not onnx_path.exists():
        return "skipped (needs the ONNX export of the ORT check)"
    t0 = time.perf_counter()
    build_engine(onnx_path, tmp / "r3d.plan", batch=(1, 4, 8))
    report = check_engine_parity(tmp / "r3d.plan", onnx_path, output_name="logits", batch=(1, 4, 8),
                                 tol=TOLERANCES["fp32"])
    return {"build_s": time.perf_counter() - t0, "passed": report["passed"],
            "max_abs_diff": max(r.get("max_abs_diff", 0) for r in report["cases"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--videos", type=int, default=None, help="generated videos (default 32 on a GPU, 8 on a CPU)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 500 on a GPU, 2 on a CPU)")
    ap.add_argument("--samples", type=int, default=None, help="cached samples (default 250000 on a GPU, 4000 on a CPU)")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                    help="the device cache's autocast (default bf16 on a GPU; fp32 on a CPU, where bf16 Conv3d without "
                         "native bf16 is ~250x slower: benchmarks/RESULTS.md)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    videos = args.videos or (32 if gpu else 8)
    epochs = args.epochs or (500 if gpu else 2)
    samples = args.samples or (250_000 if gpu else 4000)
    precision = args.precision or ("bf16" if gpu else "fp32")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jedi-gpu-check-") as tmp:
        tmp = Path(tmp)
        report = {"machine": f"{platform.platform()}, {platform.processor() or platform.machine()}",
                  "torch": torch.__version__, "device": describe(device), "gpu_measured": gpu}
        if not gpu:
            report["note"] = "no GPU measured: CPU-only smoke run of the same code paths at a small size"
        report["cache"] = cache_check(tmp, device, videos, precision)
        report["train"] = train_check(device, epochs, samples)
        report["ort_cuda"] = ort_check(tmp)
        report["tensorrt"] = trt_check(tmp)
    report["total_s"] = time.perf_counter() - t0
    print(json.dumps(report, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
