"""Async jobs for long videos: lifecycle, progress, cancel, client disconnects, the jobs root, a full
queue and expiry - against a real `jedi serve` process (torch-free)."""
from __future__ import annotations

import socket
import time

import pytest

requests = pytest.importorskip("requests")

from support.colour import colour_model, coloured_video  # noqa: E402
from support.poll import until  # noqa: E402
from support.service import start, stop  # noqa: E402


def wait(url, job_id, states=("done", "failed", "cancelled"), timeout=120):
    t0 = time.time()
    seen = []
    while time.time() - t0 < timeout:
        j = requests.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        seen.append(j["progress"])
        if j["status"] in states:
            return j, seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {j['status']} after {timeout} s")


def submit(url, video, **params):
    return requests.post(f"{url}/v1/jobs", params=params, data=video.read_bytes(),
                         headers={"Content-Type": "video/mp4"}, timeout=60)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("jobs")
    root = d / "root"
    root.mkdir()
    return {"model": colour_model(d / "colour.onnx"),
            "short": coloured_video(root / "short.mp4", [("red", 6.0), ("blue", 6.0)]),
            "long": coloured_video(d / "long.mp4", [("red", 300.0), ("green", 300.0)], fps=8, size=(320, 240)),
            "root": root, "outside": coloured_video(d / "outside.mp4", [("green", 2.0)])}


def test_job_lifecycle_paths_and_cancel(files):
    proc, addr = start([files["model"]], "--jobs-root", str(files["root"]))
    url = f"http://{addr}"
    try:
        r = submit(url, files["short"], window=4, stride=2)
        assert r.status_code == 202 and r.headers["Location"] == r.json()["url"]
        job, progress = wait(url, r.json()["id"])
        assert job["status"] == "done" and job["progress"] == 1.0
        assert [s["label"] for s in job["result"]["segments"]] == ["red", "blue"]
        assert all(0 <= p <= 1 for p in progress) and progress == sorted(progress)
        # the same as a multipart upload
        r = requests.post(f"{url}/v1/jobs", files={"video": ("s.mp4", files["short"].read_bytes())},
                          data={"window": "4", "stride": "2"}, timeout=60)
        job, _ = wait(url, r.json()["id"])
        assert job["status"] == "done" and job["video"] == "s.mp4" and len(job["result"]["segments"]) == 2
        # a whole-video job, from a path under the jobs root
        r = requests.post(f"{url}/v1/jobs", json={"path": "short.mp4", "topk": 2}, timeout=10)
        job, _ = wait(url, r.json()["id"])
        assert job["status"] == "done" and len(job["result"]["predictions"]) == 2 and job["video"] == "short.mp4"
        link = files["root"] / "escape.mp4"
        if not link.exists():
            link.symlink_to(files["outside"])  # a link inside the root that leads out of it
        for path, code in ((str(files["outside"]), 403), ("../outside.mp4", 403), ("escape.mp4", 403),
                           ("nope.mp4", 404)):
            r = requests.post(f"{url}/v1/jobs", json={"path": path}, timeout=10)
            assert r.status_code == code and r.json()["error"]["type"] in ("path_not_allowed", "not_found"), r.text
        # cancel a running job: it stops at its next window
        r = submit(url, files["long"], window=2, stride=1)
        jid = r.json()["id"]
        wait(url, jid, states=("running",))
        until(lambda: requests.get(f"{url}/v1/jobs/{jid}", timeout=10).json()["progress"] > 0, what="progress")
        assert requests.delete(f"{url}/v1/jobs/{jid}", timeout=10).status_code == 200
        job, _ = wait(url, jid, timeout=30)
        assert job["status"] == "cancelled" and "result" not in job and 0 < job["progress"] < 1
        assert requests.get(f"{url}/v1/jobs/unknown", timeout=10).status_code == 404
        bad = requests.post(f"{url}/v1/jobs", data=b"not a video", headers={"Content-Type": "video/mp4"}, timeout=10)
        job, _ = wait(url, bad.json()["id"])
        assert job["status"] == "failed" and "upload" in job["error"]
        listing = requests.get(f"{url}/v1/jobs", timeout=10)  # no keys, no caller: ids are capabilities
        assert listing.status_code == 403 and listing.json()["error"]["type"] == "listing_off"
    finally:
        stop(proc)


def test_jobs_survive_disconnects_queue_limit_and_expiry(files, monkeypatch):
    key = "k" * 16
    proc, addr = start([files["model"]], "--max-jobs", "1", "--job-ttl-s", "2", "--api-key", key)
    url = f"http://{addr}"
    real = requests.Session()
    real.headers["Authorization"] = f"Bearer {key}"
    monkeypatch.setattr(requests, "get", real.get)  # every call below carries the key
    monkeypatch.setattr(requests, "post", real.post)
    monkeypatch.setattr(requests, "delete", real.delete)
    try:
        body = files["short"].read_bytes()
        host, port = addr.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:  # upload, then hang up without reading the answer
            s.sendall(b"POST /v1/jobs?window=4 HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
                      + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            jobs = until(lambda: requests.get(f"{url}/v1/jobs", timeout=10).json()["jobs"], timeout=10,
                         what="the job to be queued")
        jid = jobs[0]["id"]
        job, _ = wait(url, jid)
        assert job["status"] == "done" and [s["label"] for s in job["result"]["segments"]] == ["red", "blue"]
        # one job at most: a second while the first runs is refused
        first = submit(url, files["long"], window=2)
        full = submit(url, files["short"])
        assert full.status_code == 503 and full.headers.get("Retry-After") and full.json()["error"]["type"] == "jobs_full"
        requests.delete(f"{url}/v1/jobs/{first.json()['id']}", timeout=10)
        wait(url, first.json()["id"], timeout=30)
        # results are kept --job-ttl-s, then forgotten
        assert requests.get(f"{url}/v1/jobs/{jid}", timeout=10).status_code == 200
        until(lambda: requests.get(f"{url}/v1/jobs/{jid}", timeout=10).status_code == 404, timeout=10,
              interval=0.2, what="the finished job to expire")
        r = requests.post(f"{url}/v1/jobs", json={"path": "x.mp4"}, timeout=10)
        assert r.status_code == 403  # no --jobs-root: paths are refused
    finally:
        stop(proc)
