"""Sliding-window inference on long videos: peak memory and throughput of `jedi infer --window`
(torch-free), a 1-minute and a 10-minute generated 320x240 30 fps video, in ONE run.

    python benchmarks/long_video.py [MODEL.onnx] [--window 4] [--stride 2]

Without MODEL a quick demo is run first and its ucf-mini student is used. Each video is classified
by a fresh `python -m jedi_deploy.serve.infer ... --window` process; its peak RSS (ru_maxrss of the
child) and wall time are reported, with windows/s and the real-time factor (video seconds per wall
second). Last line: one JSON object; ``peak_growth_mb`` = peak(10 min) - peak(1 min).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_video(path: Path, seconds: float, fps: int = 30, size=(320, 240)) -> Path:
    """A moving random texture, changing every 20 s (so windows differ)."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = size[0], size[1], "yuv420p"
        st.options = {"preset": "ultrafast"}
        base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        for f in range(int(seconds * fps)):
            if f % (20 * fps) == 0:
                base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            for pk in st.encode(av.VideoFrame.from_ndarray(np.roll(base, 3 * f, axis=1), format="rgb24")):
                c.mux(pk)
        for pk in st.encode():
            c.mux(pk)
    return path


def run(model: Path, video: Path, window: float, stride: float, out: Path) -> dict:
    code = ("import resource, subprocess, sys, time\n"
            "t0 = time.perf_counter()\n"
            "r = subprocess.run([sys.executable, '-m', 'jedi_deploy.serve.infer', *sys.argv[1:]])\n"
            "print(r.returncode, time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    r = subprocess.run([sys.executable, "-c", code, str(model), str(video), "--window", str(window), "--stride",
                        str(stride), "--out", str(out)], capture_output=True, text=True, cwd=tempfile.gettempdir())
    rc, wall, rss = r.stdout.split()
    if int(rc):
        raise SystemExit(f"jedi infer failed on {video}: {r.stderr[-2000:]}")
    windows = len(out.read_text().splitlines())
    seg = json.loads(out.with_suffix(".segments.json").read_text())
    return {"video_s": seg["duration_s"], "windows": windows, "wall_s": round(float(wall), 2),
            "peak_rss_mb": round(int(rss) / 1024, 1), "windows_per_s": round(windows / float(wall), 2),
            "realtime_factor": round(seg["duration_s"] / float(wall), 2), "segments": len(seg["segments"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("--window", type=float, default=4.0)
    ap.add_argument("--stride", type=float, default=2.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="jedi-long-"))
    model = args.model
    if model is None:
        subprocess.run([sys.executable, "-m", "jedi_deploy.app.cli", "demo", "--quick", "--out", str(tmp / "demo")],
                       check=True, cwd=tmp, stdout=subprocess.DEVNULL)
        model = tmp / "demo" / "onnx" / "ucf-mini.student.onnx"
    t0 = time.perf_counter()
    videos = {"1min": make_video(tmp / "1min.mp4", 60), "10min": make_video(tmp / "10min.mp4", 600)}
    print(f"videos written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    res = {k: run(model, v, args.window, args.stride, tmp / f"{k}.jsonl") for k, v in videos.items()}
    print("| video | windows | wall s | windows/s | real-time factor | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, r in res.items():
        print(f"| {k} ({r['video_s']:.0f} s) | {r['windows']} | {r['wall_s']} | {r['windows_per_s']} "
              f"| {r['realtime_factor']} | {r['peak_rss_mb']} |")
    summary = {"model": model.name, "window_s": args.window, "stride_s": args.stride, **res,
               "peak_growth_mb": round(res["10min"]["peak_rss_mb"] - res["1min"]["peak_rss_mb"], 1),
               "cpu_count": os.cpu_count(), "machine": platform.platform()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
