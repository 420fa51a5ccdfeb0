"""Serving efficiency of `jedi serve` against the offline bound, in ONE run.

    python benchmarks/serve_load.py [--seconds 60] [--concurrency 1 8 32] [--workloads zoo,tiny]

Two workloads, each: the offline bound first - `jedi infer` (torch-free) over the same videos with
the same model on the same cores, in steady state (a run of many passes minus a run of one: process
start-up and model loading cancel): videos/s and CPU core-ms per video - then a
real service on 127.0.0.1 (micro-batching as configured) under a closed loop at each concurrency
(N client threads with keep-alive connections cycling through the videos, ``--seconds`` per level;
every non-200 answer or connection error is counted), with the server process's CPU time per
request (/proc).

* ``zoo``: an ``r3d_18`` student at its standard input (16 x 112, resize 128x171) on 320x240 clips:
  the model dominates, so throughput at concurrency 8 / the offline bound (``efficiency_c8``) shows
  whether decode threads and runtime threads fight over the cores.
* ``tiny``: the demo's ucf-mini student on its test videos: the service's own cost dominates;
  ``overhead_core_ms`` = server core-ms per request at concurrency 8 - offline core-ms per video
  (HTTP, parsing, queueing, spooling).

Prints a markdown table; the last line is one JSON object with ``efficiency_c8``,
``overhead_core_ms``, p50/p99 per workload and level, and ``errors``. (The earlier target,
micro-batching >= 1.5x batch-1 on CPU, is retired: ONNX Runtime on CPU gains at most ~1.2x per
video from batching - RESULTS.md.)
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def start_server(model: Path, max_batch: int, max_delay_ms: float, threads: int | None, extra: list[str]):
    cmd = [sys.executable, "-m", "jedi_deploy.serve.server", str(model), "--port", "0", "--max-batch-size", str(max_batch),
           "--max-delay-ms", str(max_delay_ms), *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen(cmd, cwd=tempfile.gettempdir(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # never the repository root (its bare serve/ folder)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line}{proc.stderr.read()}")
    host, port = line.split("http://", 1)[1].split()[0].rsplit(":", 1)
    return proc, host, int(port)


def stop_server(proc) -> int:
    proc.terminate()
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


def connect(host: str, port: int) -> http.client.HTTPConnection:
    """A keep-alive connection with Nagle off (as curl does): http.client sends headers and a
    large body in two writes, which Nagle + delayed ACK would stall by ~40 ms."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def request(conn: http.client.HTTPConnection, body: bytes) -> int:
    conn.request("POST", "/v1/predict?filename=clip.mp4", body=body, headers={"Content-Type": "video/mp4"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def demo_model() -> tuple[Path, list[Path]]:
    """The demo's tiny ucf-mini student and its test videos (a quick demo in a temp folder)."""
    tmp = Path(tempfile.mkdtemp(prefix="jedi-load-"))
    subprocess.run([sys.executable, "-m", "jedi_deploy.app.cli", "demo", "--quick", "--out", str(tmp / "demo")],
                   check=True, cwd=tmp, stdout=subprocess.DEVNULL)
    videos = sorted((tmp / "demo" / "data" / "ucf-mini").rglob("*.mp4"))[:16]
    return tmp / "demo" / "onnx" / "ucf-mini.student.onnx", videos


def zoo_model(arch: str = "r3d_18", clips: int = 8, seconds: float = 8.0) -> tuple[Path, list[Path]]:
    """A zoo-size student (random weights, ``arch`` at its standard input, exported as `jedi export`
    does) and ``clips`` generated 320x240 clips of ``seconds`` at 30 fps."""
    import av
    import torch

    from jedi_deploy.export.onnx import OnnxExportConfig
    from jedi_deploy.export.students import export_student_and_expert
    from jedi_deploy.models.archs import ARCHS, build_expert
    from jedi_deploy.models.jedi import AdjustmentModule
    from jedi_deploy.models.registry import Expert

    tmp = Path(tempfile.mkdtemp(prefix="jedi-load-zoo-"))
    torch.manual_seed(0)
    model = build_expert(arch, 400).eval().requires_grad_(False)
    ex = Expert(arch, arch, {}, "bench", tuple(f"c{i}" for i in range(400)), ARCHS[arch].preprocess, model, None,
                "0" * 64)
    adjust = AdjustmentModule(ex.embed_dim, 256, 0.75).eval()
    torch.nn.init.normal_(adjust.fc2.weight, std=0.02)
    export_student_and_expert(ex, adjust, torch.nn.Linear(ex.embed_dim, 400), tmp, OnnxExportConfig(), with_expert=False)
    rng = np.random.default_rng(0)
    videos = []
    for i in range(clips):
        path = tmp / f"clip{i}.mp4"
        with av.open(str(path), "w") as c:
            st = c.add_stream("libx264", rate=30)
            st.width, st.height, st.pix_fmt = 320, 240, "yuv420p"
            base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            for f in range(int(seconds * 30)):
                img = np.roll(base, 4 * f, axis=1)
                for pk in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pk)
            for pk in st.encode():
                c.mux(pk)
        videos.append(path)
    return tmp / f"{arch}.student.onnx", videos


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _infer_run(model: Path, inputs: list[str], threads: int | None) -> tuple[float, float]:
    """(wall s, CPU core-s) of one `jedi infer` process (torch-free) over ``inputs``."""
    import resource

    cmd = [sys.executable, "-m", "jedi_deploy.serve.infer", str(model), *inputs, "--format", "jsonl"]
    if threads:
        cmd += ["--threads", str(threads)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=tempfile.gettempdir(), capture_output=True, text=True,
                       env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise SystemExit(f"jedi infer failed: {r.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def offline_bound(model: Path, videos: list[Path], min_seconds: float, threads: int | None) -> dict:
    """`jedi infer` over the same videos, same cores, same model, in steady state: one pass, then
    2, 4, 8 ... passes until the longer run takes ``min_seconds`` more than the single pass; the
    difference of the two runs removes process start-up and model loading. Videos/s and CPU core-ms
    per video."""
    one = [str(v) for v in videos]
    w1, c1 = _infer_run(model, one, threads)
    k = 2
    while True:
        wk, ck = _infer_run(model, one * k, threads)
        if wk - w1 >= min_seconds or k >= 256:
            break
        k *= 2
    n = (k - 1) * len(one)
    return {"videos": n, "passes": k, "wall_s": round(wk - w1, 2), "startup_s": round(max(0.0, w1 - (wk - w1) / (k - 1)), 2),
            "videos_per_s": round(n / (wk - w1), 3), "core_ms_per_video": round(1e3 * (ck - c1) / n, 2)}


def closed_loop(host: str, port: int, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    """``concurrency`` clients, each with one keep-alive connection, sending back to back, cycling
    through the videos (client i starts at video i)."""
    stop_at = time.perf_counter() + seconds
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def client(i: int):
        conn, k = connect(host, port), i
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                ok = request(conn, bodies[k % len(bodies)]) == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = connect(host, port)
            k += 1
            if ok:
                lat[i].append(time.perf_counter() - t0)
            else:
                errors[i] += 1
        conn.close()

    t0 = time.perf_counter()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    ms = np.asarray([x for per in lat for x in per]) * 1e3
    return {"concurrency": concurrency, "requests": int(ms.size), "errors": int(sum(errors)), "wall_s": wall,
            "throughput_rps": round(ms.size / wall, 3),
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if ms.size else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if ms.size else None}


def workload(name: str, model: Path, videos: list[Path], args) -> dict:
    """The offline bound, then the service at each concurrency (CPU time of the server per request)."""
    bodies = [v.read_bytes() for v in videos]
    offline = offline_bound(model, videos, args.offline_seconds, args.threads)
    print(f"{name}: offline {offline}", file=sys.stderr, flush=True)
    proc, host, port = start_server(model, args.batch_size, args.max_delay_ms, args.threads, args.server_arg)
    out = {"model": model.name, "videos": len(videos), "video_kib": round(sum(map(len, bodies)) / len(bodies) / 1024, 1),
           "offline": offline, "levels": {}}
    errors = 0
    try:
        closed_loop(host, port, bodies, max(args.concurrency), args.warmup_seconds)  # untimed
        for c in args.concurrency:
            cpu0 = cpu_seconds(proc.pid)
            res = closed_loop(host, port, bodies, c, args.seconds)
            cpu = cpu_seconds(proc.pid) - cpu0
            res["server_core_ms_per_request"] = round(1e3 * cpu / res["requests"], 2) if res["requests"] else None
            res["efficiency"] = round(res["throughput_rps"] / offline["videos_per_s"], 3)
            errors += res["errors"]
            out["levels"][c] = res
            print(f"{name} c={c}: {res}", file=sys.stderr, flush=True)
    finally:
        rc = stop_server(proc)
        if rc not in (0, -signal.SIGTERM):
            print(f"warning: {name} server exited with {rc}: {proc.stderr.read()[-2000:]}", file=sys.stderr)
            errors += 1
    out["errors"] = errors
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="duration of each concurrency level")
    ap.add_argument("--warmup-seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--offline-seconds", type=float, default=20.0,
                    help="the offline bound's steady-state run lasts at least this long")
    ap.add_argument("--batch-size", type=int, default=8, help="the service's --max-batch-size")
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (service and offline)")
    ap.add_argument("--workloads", default="zoo,tiny", help="zoo (r3d_18 student, 320x240 clips) and/or tiny (demo)")
    ap.add_argument("--model", type=Path, help="instead: one 'custom' workload of this ONNX model ...")
    ap.add_argument("--videos", type=Path, nargs="+", help="... on these videos")
    ap.add_argument("--server-arg", action="append", default=[], help="extra `python -m jedi_deploy.serve.server` argument")
    args = ap.parse_args()
    results = {}
    if args.model:
        if not args.videos:
            raise SystemExit("--model needs --videos")
        results["custom"] = workload("custom", args.model, args.videos, args)
    for name in ([] if args.model else args.workloads.split(",")):
        model, videos = zoo_model() if name == "zoo" else demo_model()
        results[name] = workload(name, model, videos, args)
    print()
    print("| workload | concurrency | requests | throughput req/s | offline videos/s | efficiency | p50 ms | p99 ms "
          "| server core-ms/request | offline core-ms/video | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, w in results.items():
        for c, r in w["levels"].items():
            print(f"| {name} ({w['model']}) | {c} | {r['requests']} | {r['throughput_rps']:.2f} "
                  f"| {w['offline']['videos_per_s']:.2f} | {r['efficiency']:.3f} | {r['p50_ms']} | {r['p99_ms']} "
                  f"| {r['server_core_ms_per_request']} | {w['offline']['core_ms_per_video']} | {r['errors']} |")
    summary = {"seconds": args.seconds, "cpu_count": os.cpu_count(), "machine": platform.platform(),
               "errors": sum(w["errors"] for w in results.values())}
    for name, w in results.items():
        for c, r in w["levels"].items():
            summary[f"{name}_p50_ms_c{c}"], summary[f"{name}_p99_ms_c{c}"] = r["p50_ms"], r["p99_ms"]
            summary[f"{name}_rps_c{c}"], summary[f"{name}_efficiency_c{c}"] = r["throughput_rps"], r["efficiency"]
            summary[f"{name}_server_core_ms_c{c}"] = r["server_core_ms_per_request"]
            if r["server_core_ms_per_request"] is not None:
                summary[f"{name}_overhead_core_ms_c{c}"] = round(r["server_core_ms_per_request"]
                                                                 - w["offline"]["core_ms_per_video"], 2)
        summary[f"{name}_offline_videos_per_s"] = w["offline"]["videos_per_s"]
        summary[f"{name}_offline_core_ms_per_video"] = w["offline"]["core_ms_per_video"]
    if "zoo_efficiency_c8" in summary:
        summary["efficiency_c8"] = summary["zoo_efficiency_c8"]
    if "tiny_overhead_core_ms_c8" in summary:
        summary["overhead_core_ms"] = summary["tiny_overhead_core_ms_c8"]
    summary["targets_met"] = bool(summary.get("efficiency_c8", 0) >= 0.9 and summary.get("overhead_core_ms", 99) <= 3
                                  and summary["errors"] == 0)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
