"""Load benchmark of `jedi serve`: throughput and latency at concurrency 1, 8 and 32, with and
without micro-batching, against real services on 127.0.0.1 - in ONE run.

    python benchmarks/serve_load.py [MODEL.onnx] [--video V.mp4] [--seconds 60] [--concurrency 1 8 32]

Without MODEL a quick demo is run into a temp folder first and its ucf-mini student is served.
Two services run side by side: batch-1 serving (``--max-batch-size 1``) and micro-batching
(``--batch-size`` / ``--max-delay-ms``). Both are warmed up; then at each concurrency level a
closed loop - N client threads with keep-alive connections, each sending the video and
waiting for the answer - runs against them in turns (``--rounds``, order alternating) for
``--seconds`` per setting in all; every non-200 answer or connection error is counted.
Prints a markdown table; the last line is one JSON object with ``batching_speedup_c8``
(throughput with micro-batching / batch-1 serving at concurrency 8), ``p99_ms_c8`` (with
micro-batching) and ``errors`` (over all runs).
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


def closed_loop(host: str, port: int, body: bytes, concurrency: int, seconds: float) -> dict:
    """``concurrency`` clients, each with one keep-alive connection, sending back to back."""
    stop_at = time.perf_counter() + seconds
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def client(i: int):
        conn = connect(host, port)
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                ok = request(conn, body) == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = connect(host, port)
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
    return {"concurrency": concurrency, "requests": int(ms.size), "errors": int(sum(errors)),
            "wall_s": wall, "throughput_rps": round(ms.size / wall, 2), "lat_ms": ms.tolist()}


def server_counters(host: str, port: int) -> dict:
    """Model calls, videos run, and the time spent decoding / in model calls, from /metrics."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    keys = {"jedi_batch_size_count": "calls", "jedi_batch_size_sum": "videos",
            "jedi_decode_seconds_sum": "decode_s", "jedi_inference_seconds_sum": "infer_s"}
    vals = dict.fromkeys(keys.values(), 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in keys:
            vals[keys[name]] += float(line.rsplit(" ", 1)[1])
    return vals


def demo_model() -> tuple[Path, Path]:
    tmp = Path(tempfile.mkdtemp(prefix="jedi-load-"))
    subprocess.run([sys.executable, "-m", "jedi_deploy.app.cli", "demo", "--quick", "--out", str(tmp / "demo")],
                   check=True, cwd=tmp, stdout=subprocess.DEVNULL)
    video = sorted((tmp / "demo" / "data" / "ucf-mini").rglob("*.mp4"))[0]
    return tmp / "demo" / "onnx" / "ucf-mini.student.onnx", video


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path, help="ONNX model written by `jedi export` (default: a demo student)")
    ap.add_argument("--video", type=Path, help="the video every request uploads (default: a demo test video)")
    ap.add_argument("--seconds", type=float, default=60.0, help="duration of each concurrency level")
    ap.add_argument("--warmup-seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=4, help="turns per setting and level (the time is split)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--batch-size", type=int, default=8, help="max batch size of the micro-batching setting")
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads of the service")
    ap.add_argument("--server-arg", action="append", default=[], help="extra `python -m jedi_deploy.serve.server` argument")
    args = ap.parse_args()
    model, video = args.model, args.video
    if model is None:
        model, demo_video = demo_model()
        video = video or demo_video
    if video is None:
        raise SystemExit("--video is required with an explicit MODEL")
    body = video.read_bytes()
    settings = {"batch1": (1, 0.0), "microbatch": (args.batch_size, args.max_delay_ms)}
    servers, total_errors = {}, 0
    rows = {(k, c): {"requests": 0, "errors": 0, "wall_s": 0.0, "lat": [], "calls": 0.0, "videos": 0.0,
                     "decode_s": 0.0, "infer_s": 0.0} for k in settings for c in args.concurrency}
    try:
        for setting, (mb, delay) in settings.items():
            servers[setting] = start_server(model, mb, delay, args.threads, args.server_arg)
            closed_loop(*servers[setting][1:], body, max(args.concurrency), args.warmup_seconds)  # untimed
        for c in args.concurrency:
            for r in range(args.rounds):  # both settings take turns (ABBA...), so drift hits both alike
                for setting in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
                    _, host, port = servers[setting]
                    before = server_counters(host, port)
                    res = closed_loop(host, port, body, c, args.seconds / args.rounds)
                    row = rows[(setting, c)]
                    after = server_counters(host, port)
                    for k in before:
                        row[k] += after[k] - before[k]
                    for k in ("requests", "errors", "wall_s"):
                        row[k] += res[k]
                    row["lat"] += res.pop("lat_ms")
                    print(f"{setting:>10} c={c:<3} round {r}: {res}", file=sys.stderr, flush=True)
    finally:
        for setting, (proc, _, _) in servers.items():
            rc = stop_server(proc)  # uvicorn re-raises SIGTERM after its graceful shutdown
            if rc not in (0, -signal.SIGTERM):
                print(f"warning: {setting} server exited with {rc}: {proc.stderr.read()[-2000:]}", file=sys.stderr)
                total_errors += 1
    for row in rows.values():
        ms = np.asarray(row.pop("lat"))
        row["throughput_rps"] = round(row["requests"] / row["wall_s"], 2) if row["wall_s"] else 0.0
        row["p50_ms"] = round(float(np.percentile(ms, 50)), 2) if ms.size else None
        row["p99_ms"] = round(float(np.percentile(ms, 99)), 2) if ms.size else None
        row["mean_batch"] = round(row["videos"] / row["calls"], 2) if row["calls"] else None
        row["decode_ms_per_video"] = round(1e3 * row["decode_s"] / row["videos"], 3) if row["videos"] else None
        row["inference_ms_per_video"] = round(1e3 * row["infer_s"] / row["videos"], 3) if row["videos"] else None
        total_errors += row["errors"]
    print(f"\nmodel {model.name}, video {video.name} ({len(body) / 1024:.1f} KiB), {args.seconds:g} s per level, "
          f"micro-batching: max batch {args.batch_size}, max delay {args.max_delay_ms} ms\n")
    print("| serving | concurrency | requests | throughput req/s | p50 ms | p99 ms | mean batch "
          "| decode ms/video | model ms/video | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (setting, c), r in rows.items():
        print(f"| {setting} | {c} | {r['requests']} | {r['throughput_rps']:.1f} | {r['p50_ms']} | {r['p99_ms']} "
              f"| {r['mean_batch']} | {r['decode_ms_per_video']} | {r['inference_ms_per_video']} | {r['errors']} |")
    summary = {"model": model.name, "seconds": args.seconds, "cpu_count": os.cpu_count(),
               "machine": platform.platform(), "errors": total_errors}
    for c in args.concurrency:
        b1, mb = rows[("batch1", c)], rows[("microbatch", c)]
        summary[f"batching_speedup_c{c}"] = round(mb["throughput_rps"] / b1["throughput_rps"], 3) \
            if b1["throughput_rps"] else None
        summary[f"p99_ms_c{c}"] = mb["p99_ms"]
        summary[f"p99_ms_batch1_c{c}"] = b1["p99_ms"]
        summary[f"mean_batch_c{c}"] = mb["mean_batch"]
    c8 = rows.get(("microbatch", 8)) or rows[("microbatch", args.concurrency[-1])]
    summary["decode_ms_per_video"] = c8["decode_ms_per_video"]
    summary["inference_ms_per_video_batch1"] = rows[("batch1", args.concurrency[0])]["inference_ms_per_video"]
    summary["inference_ms_per_video_microbatch"] = c8["inference_ms_per_video"]
    summary["target_met"] = bool(summary.get("batching_speedup_c8") and summary["batching_speedup_c8"] >= 1.5
                                 and total_errors == 0)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
