"""`jedi serve` under a mixed abusive load beside normal uploads, in ONE run (loopback only).

    python benchmarks/abuse_load.py [--seconds 60] [--model MODEL.onnx] [--grace 10]

A real service (default flags, ``--shutdown-grace-s GRACE``) on 127.0.0.1. First the normal client
alone (one closed loop of uploads of a 320x240, 4 s clip) for ``--seconds / 4``: its p99. Then, for
``--seconds``, the same client beside the abusers:

* 64 trickling uploads (a byte every 0.5 s, reconnecting when refused);
* tiny strides: windowed uploads with ``window=1e-9&stride=1e-9`` and ``stride`` of one frame;
* 8K frames: a 7680x4320 H.264 clip of 8 frames (refused by ``--max-frame-pixels``);
* huge JSON: 32 MiB and 1 MiB bodies to ``/v2/.../infer``;
* job floods: windowed jobs posted as fast as they are answered (503 once ``--max-jobs`` are queued),
  each polled once then cancelled;

and a /healthz poller (every 50 ms), the server's RSS read from /proc every 50 ms. Then SIGTERM with
the abusers still running: the time to exit.

Records, against the targets of issue 25: normal-upload success rate (100%), normal p99 under load
/ unloaded p99 (<= 2), /healthz p99 (<= 100 ms), peak RSS above idle (<= 500 MB), 5xx answers (0)
and SIGTERM-to-exit (<= the grace). Prints a markdown table; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from jedi_deploy.runners.timing import cpu_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.colour import colour_model, coloured_video  # noqa: E402


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.codes: dict[str, dict[int, int]] = {}
        self.closed = False  # after SIGTERM: refused connections are the point, not counted
        self.samples: dict[str, bytes] = {}

    def add(self, who: str, code: int, body: bytes = b"") -> None:
        if self.closed:
            return
        with self.lock:
            if code >= 500 and code != 599:
                self.samples.setdefault(f"{who} {code}", body[:300])
            d = self.codes.setdefault(who, {})
            d[code] = d.get(code, 0) + 1

    def server_errors(self) -> int:
        """5xx answers other than 503 (overloaded: the budget working); 599 here = the connection was
        closed before an answer was read (a 413 or 408 sent while the client was still sending)."""
        return sum(n for d in self.codes.values() for c, n in d.items() if 500 <= c < 599 and c != 503)


def request(host, port, method, path, body=b"", headers=None, timeout=60) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def make_8k(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 7680, 4320, "yuv420p"
        s.options = {"preset": "ultrafast"}
        img = np.full((4320, 7680, 3), 90, np.uint8)
        for i in range(8):
            for pk in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--model", type=Path, help="an exported model (default: a tiny hand-built colour model)")
    ap.add_argument("--grace", type=float, default=10.0)
    ap.add_argument("--abusers", default="trickle,tiny_stride,frame_stride,8k,json32,json1,jobs",
                    help="which abusers run (comma list): to see what each costs the normal client")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="abuse-"))
    model = args.model or colour_model(work / "colour.onnx", short_side=128)
    normal = coloured_video(work / "normal.mp4", [("red", 2.0), ("blue", 2.0)], fps=25, size=(320, 240))
    longer = coloured_video(work / "long.mp4", [("green", 60.0)], fps=25, size=(320, 240))
    big = make_8k(work / "8k.mp4")
    name = None

    proc = subprocess.Popen([sys.executable, "-m", "jedi_deploy.serve.server", str(model), "--port", "0",
                             "--shutdown-grace-s", str(args.grace)], cwd=tempfile.gettempdir(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://" not in line:
        raise SystemExit(f"server did not start: {line}{proc.stderr.read()}")
    host, port = line.split("http://", 1)[1].split()[0].rsplit(":", 1)
    port = int(port)
    name = json.loads(request(host, port, "GET", "/v1/models")[1])["models"][0]["name"]
    video = normal.read_bytes()

    def normal_loop(stop_at: float, lat: list, tally: Tally):
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                code, _ = request(host, port, "POST", "/v1/predict", video, {"Content-Type": "video/mp4"})
            except OSError:
                code, _ = 599, b""
            lat.append(time.monotonic() - t0)
            tally.add("normal", code, _)

    for _ in range(3):  # warm up
        request(host, port, "POST", "/v1/predict", video, {"Content-Type": "video/mp4"})
    time.sleep(1.0)
    idle_rss = rss_mb(proc.pid)
    quiet = Tally()
    unloaded: list[float] = []
    normal_loop(time.monotonic() + args.seconds / 4, unloaded, quiet)

    stop = threading.Event()
    tally, loaded, health, rss = Tally(), [], [], []
    stop_at = time.monotonic() + args.seconds

    def trickler():
        while not stop.is_set():
            try:
                with socket.create_connection((host, port), timeout=5) as s:
                    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
                              b"Content-Length: 10000000\r\n\r\n")
                    s.settimeout(0.5)
                    while not stop.is_set():
                        s.sendall(b"\0")
                        try:
                            got = s.recv(65536)
                        except socket.timeout:
                            continue
                        if got:
                            tally.add("trickle", int(got.split()[1]))
                        break
            except OSError:
                time.sleep(0.1)

    def poster(who, path, body, headers):
        def run():
            while not stop.is_set():
                try:
                    code, data = request(host, port, "POST", path, body, headers)
                except OSError:
                    code, data = 599, b""
                tally.add(who, code, data)
                if who == "jobs" and code == 202:
                    jid = json.loads(data)["id"]
                    try:
                        request(host, port, "GET", f"/v1/jobs/{jid}")
                        request(host, port, "DELETE", f"/v1/jobs/{jid}")
                    except OSError:
                        pass
        run.__name__ = who
        return run

    def poll_health():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                code, _ = request(host, port, "GET", "/healthz", timeout=30)
            except OSError:
                code = 599
            health.append(time.monotonic() - t0)
            tally.add("healthz", code)
            time.sleep(0.05)

    def watch_rss():
        while not stop.is_set():
            rss.append(rss_mb(proc.pid))
            time.sleep(0.05)

    def json_body(mib):
        return json.dumps({"inputs": [{"name": "video", "shape": [1, 2], "datatype": "FP32",
                                       "data": [0] * (mib * 2**19)}]}).encode()[: mib * 2**20]

    vid = {"Content-Type": "video/mp4"}
    chosen = set(args.abusers.split(","))
    abusers = [trickler] * (64 if "trickle" in chosen else 0) + [
        poster("tiny_stride", "/v1/predict?window=1e-9&stride=1e-9", video, vid),
        poster("frame_stride", "/v1/predict?window=2&stride=0.04", longer.read_bytes(), vid),
        poster("8k", "/v1/predict", big.read_bytes(), vid),
        poster("json32", f"/v2/models/{name}/infer", json_body(32), {"Content-Type": "application/json"}),
        poster("json1", f"/v2/models/{name}/infer", json_body(1), {"Content-Type": "application/json"}),
        poster("jobs", "/v1/jobs?window=1&stride=0.04", longer.read_bytes(), vid)]
    abusers = [a for a in abusers if a is trickler or a.__name__ in chosen]
    threads = [threading.Thread(target=f, daemon=True) for f in [*abusers, poll_health, watch_rss]]
    for t in threads:
        t.start()
    normal_loop(stop_at, loaded, tally)
    t0 = time.monotonic()
    tally.closed = True
    proc.send_signal(signal.SIGTERM)  # the abusers still running
    try:
        proc.wait(args.grace + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
    exit_s = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(5)

    normal_codes = tally.codes.get("normal", {})
    ok = normal_codes.get(200, 0) / max(1, sum(normal_codes.values()))
    p99_quiet, p99_loaded = np.percentile(unloaded, 99), np.percentile(loaded, 99)
    res = {"cpu": cpu_name(), "cores": os.cpu_count(), "seconds": args.seconds,
           "normal_ok_rate": round(ok, 4), "normal_requests": sum(normal_codes.values()),
           "normal_p99_unloaded_ms": round(1e3 * p99_quiet, 1), "normal_p99_loaded_ms": round(1e3 * p99_loaded, 1),
           "p99_ratio": round(p99_loaded / p99_quiet, 2),
           "healthz_p99_ms": round(1e3 * float(np.percentile(health, 99)), 1) if health else None,
           "peak_rss_above_idle_mb": round(max(rss, default=idle_rss) - idle_rss, 1),
           "server_errors_5xx": tally.server_errors(), "normal_503": normal_codes.get(503, 0),
           "sigterm_to_exit_s": round(exit_s, 2), "grace_s": args.grace,
           "answers": {k: dict(sorted(v.items())) for k, v in tally.codes.items()}}
    targets = [("normal uploads answered 200", f"{100 * ok:.1f}%", "100%", ok == 1.0),
               ("normal p99 loaded / unloaded", f"{res['p99_ratio']} ({res['normal_p99_loaded_ms']} / "
                f"{res['normal_p99_unloaded_ms']} ms)", "<= 2", res["p99_ratio"] <= 2),
               ("/healthz p99", f"{res['healthz_p99_ms']} ms", "<= 100 ms", (res["healthz_p99_ms"] or 1e9) <= 100),
               ("peak RSS above idle", f"{res['peak_rss_above_idle_mb']} MB", "<= 500 MB",
                res["peak_rss_above_idle_mb"] <= 500),
               ("5xx answers (503 excluded)", str(res["server_errors_5xx"]), "0", res["server_errors_5xx"] == 0),
               ("SIGTERM to exit", f"{exit_s:.2f} s", f"<= {args.grace:g} s", exit_s <= args.grace)]
    print(f"CPU: {res['cpu']} ({res['cores']} cores), {args.seconds:g} s of abuse by {args.abusers}\n")
    print("| measure | value | target | met |\n|---|---|---|---|")
    for m, v, t, met in targets:
        print(f"| {m} | {v} | {t} | {'yes' if met else 'NO'} |")
    print("\nanswers by client:", json.dumps(res["answers"]))
    for k, v in tally.samples.items():
        print(f"  {k}: {v[:200]!r}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
