"""The service's budgets (ServeConfig), each at its edge, against a real `jedi serve` on loopback:
frame pixels, answer size, bodies that crawl or take too long, job uploads counted in flight and
refused before their body, /healthz answering while abusive bodies are parsed, and every refusal
in the endpoint's own error shape. Bounded loops and short timeouts throughout."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

requests = pytest.importorskip("requests")

from support.colour import colour_model, coloured_video  # noqa: E402
from support.poll import until  # noqa: E402
from support.service import start, stop  # noqa: E402

MAX_PIXELS = 100 * 80  # the small video (96x64) fits, the large one (128x96) does not


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("budgets")
    root = d / "root"
    root.mkdir()
    return {"model": colour_model(d / "colour.onnx"), "root": root,
            "small": coloured_video(root / "small.mp4", [("red", 2.0), ("blue", 2.0)], size=(96, 64)),
            "large": coloured_video(root / "large.mp4", [("green", 2.0)], size=(128, 96)),
            "long": coloured_video(root / "long.mp4", [("red", 120.0), ("green", 120.0)], fps=8, size=(96, 64)),
            "many": coloured_video(root / "many.mp4", [("red", 30.0)], fps=4, size=(96, 64))}


@pytest.fixture(scope="module")
def service(files):
    proc, addr = start([files["model"]], "--max-frame-pixels", str(MAX_PIXELS), "--max-result-mb", "0.01",
                       "--max-inflight", "2", "--max-jobs", "1", "--body-timeout-s", "1", "--body-deadline-s", "7",
                       "--min-body-rate-kib", "4", "--jobs-root", str(files["root"]))
    host, port = addr.rsplit(":", 1)
    yield {"url": f"http://{addr}", "host": host, "port": int(port)}
    stop(proc)


def post_video(url, video, path="/v1/predict", **params):
    return requests.post(f"{url}{path}", params=params, data=video.read_bytes(),
                         headers={"Content-Type": "video/mp4"}, timeout=60)


def job_result(url, job_id, timeout=60):
    return until(lambda: (lambda j: j if j["status"] not in ("queued", "running") else None)(
        requests.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()), timeout=timeout, what="the job to end")


def head_only(service, path, length, extra=b"") -> bytes:
    """Send a request head announcing ``length`` body bytes, send none, read the answer."""
    with socket.create_connection((service["host"], service["port"]), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\nContent-Length: {length}\r\n".encode()
                  + extra + b"\r\n")
        return read_answer(s)


def read_answer(s: socket.socket, answer: bytes = b"") -> bytes:
    """A whole HTTP answer (its head and body can arrive in separate packets)."""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
            answer.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
        chunk = s.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def test_frames_over_the_pixel_budget_are_refused_naming_their_size(service, files):
    url = service["url"]
    assert post_video(url, files["small"]).status_code == 200  # 96x64 = 6144 px: inside
    for params in ({}, {"window": "1"}):
        r = post_video(url, files["large"], **params)
        assert r.status_code == 422 and r.json()["error"]["type"] == "over_budget", r.text
        assert "128x96" in r.json()["error"]["message"] and "--max-frame-pixels" in r.json()["error"]["message"]
    job = job_result(url, post_video(url, files["large"], path="/v1/jobs").json()["id"])
    assert job["status"] == "failed" and "128x96" in job["error"]


def test_an_answer_over_the_result_budget_is_refused(service, files):
    url = service["url"]
    r = post_video(url, files["small"], window="1", stride="1")  # 4 windows: a small answer
    assert r.status_code == 200 and len(r.json()["windows"]) == 4
    r = post_video(url, files["many"], window="0.5", stride="0.25", topk="3")  # 120 windows x 3 labels > 10 KB
    assert r.status_code == 422 and r.json()["error"]["type"] == "over_budget"
    assert "--max-result-mb" in r.json()["error"]["message"]
    job = job_result(url, post_video(url, files["many"], path="/v1/jobs", window="0.5", stride="0.25", topk="3")
                     .json()["id"])
    assert job["status"] == "failed" and "--max-result-mb" in job["error"]


def test_job_uploads_count_in_flight_and_a_full_store_refuses_before_the_body(service, files):
    stop_sending = threading.Event()

    def upload():  # a prediction whose body keeps arriving briskly (nothing to drop) but has not ended
        with socket.create_connection((service["host"], service["port"]), timeout=10) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
                      b"Content-Length: 60000000\r\n\r\n")
            while not stop_sending.is_set():
                s.sendall(b"\0" * 65536)
                time.sleep(0.05)

    held = [threading.Thread(target=upload) for _ in range(2)]  # both --max-inflight slots
    for t in held:
        t.start()
    time.sleep(0.5)
    answer = head_only(service, "/v1/jobs", 10_000_000)  # answered without a byte of its body
    stop_sending.set()
    assert answer.startswith(b"HTTP/1.1 503") and b"overloaded" in answer and b"retry-after" in answer.lower()
    for t in held:
        t.join(10)
    until(lambda: post_video(service["url"], files["small"]).status_code == 200, timeout=10, what="free slots")
    url = service["url"]
    first = post_video(url, files["long"], path="/v1/jobs", window="2", stride="0.125")  # --max-jobs 1: now full
    assert first.status_code == 202
    answer = head_only(service, "/v1/jobs", 10_000_000)
    assert answer.startswith(b"HTTP/1.1 503") and b"jobs_full" in answer
    requests.delete(f"{url}/v1/jobs/{first.json()['id']}", timeout=10)
    assert job_result(url, first.json()["id"])["status"] == "cancelled"


def trickle(service, chunk: bytes, every: float, limit_s: float) -> tuple[bytes, float]:
    """Send ``chunk`` every ``every`` seconds until the service answers (or ``limit_s``)."""
    with socket.create_connection((service["host"], service["port"]), timeout=limit_s) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\nContent-Length: 10000000\r\n\r\n")
        s.settimeout(every)
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit_s:
            try:
                s.sendall(chunk)
                got = s.recv(65536)
                if got:
                    took = time.monotonic() - t0
                    s.settimeout(limit_s)
                    return read_answer(s, got), took
            except socket.timeout:
                continue
            except OSError:
                break
        return b"", time.monotonic() - t0


def test_a_crawling_body_and_a_body_past_its_deadline_get_408(service):
    # 1 byte every 0.5 s never stalls for the 1 s silence timeout, but averages 2 B/s: refused
    # once the body has taken the 5 s grace (the old guard let it hold a slot for ever)
    answer, took = trickle(service, b"\0", 0.5, 20)
    assert answer.startswith(b"HTTP/1.1 408") and b"KiB/s" in answer and took < 7, (answer[:200], took)
    # 8 KiB every 0.5 s (16 KiB/s, over the 4 KiB/s minimum) still has to end within the 7 s deadline
    answer, took = trickle(service, b"\0" * 8192, 0.5, 20)
    assert answer.startswith(b"HTTP/1.1 408") and b"longer than 7 s" in answer and 6.5 < took < 10, (answer[:200], took)


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def test_bad_inputs_are_4xx_in_the_protocols_own_shape(service, files):
    url = service["url"]
    name = requests.get(f"{url}/v1/models", timeout=10).json()["models"][0]["name"]
    infer = f"{url}/v2/models/{name}/infer"
    good = {"name": "video", "shape": [1, 4, 3, 16, 16], "datatype": "FP32", "data": [0.5] * (4 * 3 * 16 * 16)}
    cases = [
        (requests.post(infer, data=deep(10_000), timeout=30), 400, "JSON"),
        (requests.post(infer, json={"inputs": [{**good, "shape": [2**51, 4, 3, 16, 16]}]}, timeout=30), 413, "batch"),
        (requests.post(infer, json={"inputs": [{**good, "parameters": "binary"}]}, timeout=30), 400, "parameters"),
        (requests.post(infer, json={"inputs": [good], "parameters": [1]}, timeout=30), 400, "parameters"),
        (requests.post(infer, json={"inputs": [good], "outputs": ["logits"]}, timeout=30), 400, "outputs"),
        (requests.post(infer, json={"inputs": [{**good, "shape": [1, 4.5, 3, 16, 16]}]}, timeout=30), 400, "shape"),
        (requests.post(infer, data=json.dumps({"inputs": [{**good, "data": [float("nan")] * (4 * 3 * 16 * 16)}]}),
                       timeout=30), 400, "NaN"),
        (requests.post(infer, data=b"x" * (5 * 2**20), timeout=30), 413, "binary tensor data"),
    ]
    for r, status, needle in cases:
        assert r.status_code == status and isinstance(r.json()["error"], str) and needle in r.json()["error"], r.text
    r = requests.post(infer, json={"inputs": [good]}, timeout=30)
    assert r.status_code == 200 and len(r.json()["outputs"][0]["data"]) == 3
    answer = head_only(service, f"/v2/models/{name}/infer", 10**12)  # the guard's own refusals: /v2 shape too
    assert answer.startswith(b"HTTP/1.1 413") and json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"].startswith("upload")
    loop = files["root"] / "loop.mp4"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    for body, status in (({"path": "a\0b.mp4"}, 404), ({"path": "x" * 5000}, 404), ({"path": "loop.mp4"}, 404),
                         ({"path": ["small.mp4"]}, 400)):
        r = requests.post(f"{url}/v1/jobs", json=body, timeout=10)
        assert r.status_code == status and r.json()["error"]["type"] and r.json()["error"]["message"], (body, r.text)
    r = requests.post(f"{url}/v1/jobs", data=deep(10_000), headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = requests.post(f"{url}/v1/predict", params={"filename": "a\0b" + "y" * 5000 + ".mp\0"}, data=b"x",
                      headers={"Content-Type": "video/mp4"}, timeout=10)
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_video"
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200


def test_healthz_answers_while_abusive_bodies_are_parsed(service):
    """Clients posting 32 MiB JSON bodies (refused: over the 1 MiB JSON part) and 1 MiB ones (the
    most /v2 parses, off the event loop) in a loop: /healthz keeps answering. The old service
    parsed every body on the event loop (a 50 MiB body froze it for 1.6 s)."""
    url = service["url"]
    name = requests.get(f"{url}/v1/models", timeout=10).json()["models"][0]["name"]

    def body(mib: int) -> bytes:
        return json.dumps({"inputs": [{"name": "video", "shape": [1, 2], "datatype": "FP32",
                                       "data": [0] * (mib * 2**19 - 100)}]}).encode()[: mib * 2**20]

    bodies = [body(32), body(1)]
    stop_at, errors, answers = time.monotonic() + 6, [], []

    def abuse(data):
        while time.monotonic() < stop_at:
            r = requests.post(f"{url}/v2/models/{name}/infer", data=data, timeout=30)
            answers.append(r.status_code)
            if r.status_code >= 500 and r.status_code != 503:  # 503: --max-inflight, as it should
                errors.append(r.text)

    threads = [threading.Thread(target=abuse, args=(bodies[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    worst = 0.0
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert not errors and {400, 413} <= set(answers), set(answers)
    assert worst < 1.0, f"/healthz took {worst:.2f} s under load"


def test_decode_warnings_reach_predictions_jobs_and_windows(service, files, tmp_path):
    """A file the decoder flags corrupt part-way: every output path says so the same way (whole-video
    jobs used to drop the warning that /v1/predict gave)."""
    from support.footage import damage_packet, write_video

    good = write_video(tmp_path / "v.mp4", 60, size=(96, 64), fps=10, gop=30)
    bad = damage_packet(good, 30, files["root"] / "damaged.mp4")
    url = service["url"]
    answers = [post_video(url, bad).json(), post_video(url, bad, window="1").json()]
    for params in ({}, {"window": "1"}):
        answers.append(job_result(url, post_video(url, bad, path="/v1/jobs", **params).json()["id"])["result"])
    answers.append(job_result(url, requests.post(f"{url}/v1/jobs", json={"path": "damaged.mp4"}, timeout=10)
                              .json()["id"])["result"])
    for a in answers:
        assert "flagged corrupt" in a["warning"], a


def vm_hwm_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_binary_v2_body_costs_about_its_size(files):
    """A 48 MiB binary tensor body: the server's peak memory grows by about the body, not 2.4x it
    (the old reader kept the chunks, their join and a copy of the tensor part)."""
    import numpy as np

    proc, addr = start([files["model"]])
    try:
        url = f"http://{addr}"
        x = np.random.default_rng(0).random((4096, 4, 3, 16, 16), dtype=np.float32)  # 48 MiB
        def header(t):
            return json.dumps({"inputs": [{"name": "video", "shape": list(t.shape), "datatype": "FP32",
                                           "parameters": {"binary_data_size": t.nbytes}}],
                               "parameters": {"binary_data_output": True}}).encode()

        head, small = header(x), header(x[:1])
        r = requests.post(f"{url}/v2/models/colour/infer", data=small + x[:1].tobytes(),  # warm: the runtime plans
                          headers={"Inference-Header-Content-Length": str(len(small))}, timeout=60)
        assert r.status_code == 200, r.text
        before = vm_hwm_mb(proc.pid)
        r = requests.post(f"{url}/v2/models/colour/infer", data=head + x.tobytes(),
                          headers={"Inference-Header-Content-Length": str(len(head))}, timeout=120)
        assert r.status_code == 200, r.text
        grew = vm_hwm_mb(proc.pid) - before
        assert grew < 1.6 * x.nbytes / 2**20, f"peak grew {grew:.0f} MiB for a {x.nbytes / 2**20:.0f} MiB body"
    finally:
        stop(proc)
