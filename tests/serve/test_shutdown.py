"""Stopping the service: SIGTERM cancels jobs at once, lets requests in flight finish within
--shutdown-grace-s (or answers them 503), removes spooled uploads and exits within the grace;
a service killed with SIGKILL leaves its spool behind, and the next one removes it."""
from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

requests = pytest.importorskip("requests")

from support.colour import colour_model, coloured_video  # noqa: E402
from support.poll import until  # noqa: E402
from support.service import start  # noqa: E402

GRACE_S = 3.0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("shutdown")
    return {"model": colour_model(d / "colour.onnx"),
            "long": coloured_video(d / "long.mp4", [("red", 300.0), ("green", 300.0)], fps=8, size=(96, 64))}


def spools(tmp) -> list:
    return sorted(p.name for p in tmp.glob("jedi-serve-*"))


def post(url, video, path, **params):
    return requests.post(f"{url}{path}", params=params, data=video.read_bytes(), headers={"Content-Type": "video/mp4"},
                         timeout=60)


def test_sigterm_cancels_jobs_and_exits_within_the_grace(files, tmp_path):
    proc, addr = start([files["model"]], "--shutdown-grace-s", str(GRACE_S), "--max-jobs", "4",
                       env={"TMPDIR": str(tmp_path)})
    url = f"http://{addr}"
    try:
        running = post(url, files["long"], "/v1/jobs", window="1", stride="0.125").json()["id"]
        queued = post(url, files["long"], "/v1/jobs", window="1", stride="0.125").json()["id"]
        until(lambda: requests.get(f"{url}/v1/jobs/{running}", timeout=10).json()["progress"] > 0, what="progress")
        answers = []
        t = threading.Thread(target=lambda: answers.append(post(url, files["long"], "/v1/predict", window="1",
                                                                stride="0.125")))
        t.start()
        time.sleep(0.5)  # the windowed request is decoding
        assert len(list((tmp_path / spools(tmp_path)[0]).iterdir())) >= 2  # the queued job's and the request's uploads
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(GRACE_S + 10)
        took = time.monotonic() - t0
        t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert took <= GRACE_S + 2, f"exit took {took:.1f} s ({err})"
    assert proc.returncode in (0, -signal.SIGTERM), err  # uvicorn re-raises the signal once it has stopped
    # the request in flight got an answer (its result, or 503 once the grace ran out), never a reset
    assert answers and (answers[0].status_code == 200 or answers[0].json()["error"]["type"] == "shutting_down")
    assert spools(tmp_path) == [], "spooled uploads left behind"
    assert queued  # never started: the process is gone, its upload removed with the spool


def test_a_killed_services_spool_is_removed_by_the_next_one(files, tmp_path):
    env = {"TMPDIR": str(tmp_path)}
    proc, addr = start([files["model"]], env=env)
    post(f"http://{addr}", files["long"], "/v1/jobs", window="1", stride="0.125")  # an upload in the spool
    left = spools(tmp_path)
    assert len(left) == 1
    proc.kill()
    proc.wait(10)
    assert spools(tmp_path) == left  # SIGKILL: nothing could clean up
    proc, addr = start([files["model"]], env=env)
    try:
        requests.get(f"http://{addr}/healthz", timeout=10)  # the spool is opened as the service starts serving
        now = spools(tmp_path)
        assert len(now) == 1 and now != left  # the dead service's folder is gone, the new one's is there
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert spools(tmp_path) == []
