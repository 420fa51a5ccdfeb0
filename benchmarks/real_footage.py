"""Real-footage figures, in ONE run: decoding long videos per container, and the service's memory
under many concurrent large uploads.

    python benchmarks/real_footage.py [MODEL.onnx] [--frames 3000] [--uploads 50] [--upload-mb 20]

1. Decoding: the same 640x360 stream (``--frames`` frames, 25 fps) as MP4, MKV and WebM (MKV and
   WebM store no frame count). Per container, in a fresh process: peak resident memory and wall
   time of one ``decode_clips`` call (8 segments, short side 256, the TSN/TSM protocol) and of a
   16-frame clip sampling; the ratio of each container's peak memory to MP4's.
2. Uploads: ``jedi serve MODEL`` (default: a quick demo's ucf-mini student) takes ``--uploads``
   concurrent uploads of a ``--upload-mb`` MB video (real H.264-free MPEG-4 noise, so it decodes),
   half multipart and half raw bodies; the server's resident memory is read from /proc every 20 ms.
   Reports idle and peak RSS, the growth, status codes and wall time.

The last line is one JSON object: ``mkv_vs_mp4_peak``, ``webm_vs_mp4_peak`` (targets <= 1.5),
``upload_rss_growth_mb`` (target <= 300) and ``upload_5xx`` (target 0).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from serve_load import demo_model, start_server, stop_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/support/footage.py
from support.footage import write_video

DECODE = """
import resource, sys, time
from jedi_deploy.contracts.preprocess import Preprocess
from jedi_deploy.media.decode import decode_clips
spec = {"segments": Preprocess(num_frames=8, sampling="segments", crop=224, short_side=256),
        "clip16": Preprocess(num_frames=16, sampling="clip", frame_interval=2, crop=224, short_side=256)}[sys.argv[2]]
t0 = time.perf_counter()
d = decode_clips(sys.argv[1], [spec])
dt = time.perf_counter() - t0
print(d.num_frames, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def natural_frames(n: int, w: int = 640, h: int = 360, seed: int = 0):
    """A moving textured scene (so the codec has real work): a drifting noise texture + a moving block."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 255, (h + 64, w + 64, 3), dtype=np.uint8)
    for i in range(n):
        f = tex[(i % 64):(i % 64) + h, (2 * i % 64):(2 * i % 64) + w].copy()
        x = (7 * i) % (w - 80)
        f[100:180, x:x + 80] = 255
        yield f


def write(path: Path, frames, kind: str, w: int, h: int, bit_rate: int | None = None) -> Path:
    fast = {"mp4": {"preset": "ultrafast", "threads": "2"}, "mkv": {"preset": "ultrafast", "threads": "2"},
            "webm": {"deadline": "realtime", "cpu-used": "8", "threads": "2"}, "avi": {"threads": "2"}}[kind]
    return write_video(path, frames=frames, size=(w, h), kind=kind, codec_options=fast, bit_rate=bit_rate)


def decode_figures(tmp: Path, frames: int) -> dict:
    rows = {}
    for kind in ("mp4", "mkv", "webm"):
        path = write(tmp / f"long.{kind}", natural_frames(frames), kind, 640, 360)
        for mode in ("segments", "clip16"):
            out = subprocess.run([sys.executable, "-c", DECODE, str(path), mode], capture_output=True, text=True,
                                 check=True, cwd=tmp).stdout.split()
            rows[f"{kind}/{mode}"] = {"frames": int(out[0]), "seconds": float(out[1]), "peak_mb": int(out[2]) / 1024,
                                      "file_mb": path.stat().st_size / 2**20}
    return rows


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def upload_figures(model: Path, tmp: Path, uploads: int, upload_mb: float) -> dict:
    import requests

    path = tmp / "upload.avi"
    target = upload_mb * 2**20
    # MPEG-4 at its quality ceiling (~78 KB per noisy 640x360 frame): enough frames to reach the size
    frames = max(25, int(target / 78e3))
    write(path, natural_frames(frames, seed=1), "avi", 640, 360, bit_rate=40_000_000)
    data = path.read_bytes()
    proc, host, port = start_server(model, 8, 5.0, None, ["--max-upload-mb", str(max(64, 2 * upload_mb))])
    url = f"http://{host}:{port}"
    try:
        assert requests.post(f"{url}/v1/predict", files={"video": ("v.avi", data)}, timeout=300).status_code == 200
        time.sleep(1.0)
        idle = rss_mb(proc.pid)
        peak, statuses, done = [idle], [], threading.Event()

        def watch():
            while not done.is_set():
                peak.append(rss_mb(proc.pid))
                time.sleep(0.02)

        def one(k):
            try:
                if k % 2:
                    r = requests.post(f"{url}/v1/predict", data=data, headers={"Content-Type": "video/x-msvideo"},
                                      timeout=600)
                else:
                    r = requests.post(f"{url}/v1/predict", files={"video": ("v.avi", data)}, timeout=600)
                statuses.append(r.status_code)
            except Exception as e:  # noqa: BLE001 - counted as an error
                statuses.append(type(e).__name__)

        w = threading.Thread(target=watch)
        w.start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=one, args=(k,)) for k in range(uploads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        done.set()
        w.join()
        alive = requests.get(f"{url}/healthz", timeout=30).status_code
    finally:
        stop_server(proc)
    codes = {str(s): statuses.count(s) for s in set(statuses)}
    return {"uploads": uploads, "upload_mb": len(data) / 2**20, "frames": frames, "idle_rss_mb": idle,
            "peak_rss_mb": max(peak), "rss_growth_mb": max(peak) - idle, "status_codes": codes, "wall_s": wall,
            "healthz_after": alive}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--uploads", type=int, default=50)
    ap.add_argument("--upload-mb", type=float, default=20.0)
    args = ap.parse_args()
    model = args.model or demo_model()[0]
    tmp = Path(tempfile.mkdtemp(prefix="jedi-footage-"))
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}", flush=True)
    dec = decode_figures(tmp, args.frames)
    print("| video | sampling | frames | seconds | peak MB | file MB |\n|---|---|---:|---:|---:|---:|")
    for k, r in dec.items():
        kind, mode = k.split("/")
        print(f"| {kind} | {mode} | {r['frames']} | {r['seconds']:.2f} | {r['peak_mb']:.0f} | {r['file_mb']:.1f} |")
    up = upload_figures(model, tmp, args.uploads, args.upload_mb)
    print(f"\nuploads: {json.dumps(up)}")
    five = sum(v for k, v in up["status_codes"].items() if not k.isdigit() or k.startswith("5"))
    ratio = {k: max(dec[f"{k}/{m}"]["peak_mb"] / dec[f"mp4/{m}"]["peak_mb"] for m in ("segments", "clip16"))
             for k in ("mkv", "webm")}
    print(json.dumps({"mkv_vs_mp4_peak": round(ratio["mkv"], 3), "webm_vs_mp4_peak": round(ratio["webm"], 3),
                      "upload_rss_growth_mb": round(up["rss_growth_mb"], 1), "upload_5xx": five,
                      "targets_met": ratio["mkv"] <= 1.5 and ratio["webm"] <= 1.5 and up["rss_growth_mb"] <= 300
                      and five == 0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
