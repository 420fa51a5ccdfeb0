"""The real service on a free loopback port, started in a process where torch cannot be
imported: every endpoint, concurrent requests against the models run directly, every kind of
bad upload (the service keeps serving after each), a client vanishing mid-upload, and a
graceful shutdown that still answers the request in flight."""
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")

from jedi_deploy.contracts.preprocess import Preprocess  # noqa: E402
from jedi_deploy.serve.runtime import OnnxModel  # noqa: E402
from support.poll import until, until_stable  # noqa: E402
from support.service import (  # noqa: E402
    CWD,
    assert_same_predictions,
    expected,
    metrics,
    predict,
    start,
    stop,
)

ROOT = Path(__file__).resolve().parents[2]
LIMIT_MB = 0.25


@pytest.fixture(scope="module")
def service(onnx_dir):
    models = [onnx_dir / "ucf-mini.student.onnx", onnx_dir / "ucf-mini.expert.onnx"]
    proc, addr = start(models, "--max-upload-mb", str(LIMIT_MB), "--max-batch-size", "4", "--max-delay-ms", "50",
                       "--decode-workers", "2")
    yield {"url": f"http://{addr}", "addr": addr, "proc": proc, "models": models,
           "names": ["ucf-mini.student", "ucf-mini.expert"]}
    rc, err = stop(proc)
    assert rc in (0, -signal.SIGTERM) and "stopped cleanly" in err, err


def test_binds_loopback_and_answers_health_and_models(service):
    assert service["addr"].startswith("127.0.0.1:")
    r = requests.get(f"{service['url']}/healthz", timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "ok", "models": sorted(service["names"])}
    info = requests.get(f"{service['url']}/v1/models", timeout=30).json()["models"]
    # a student and its expert share a name: each is served under its file stem
    assert [m["name"] for m in info] == service["names"] and [m["kind"] for m in info] == ["student", "expert"]
    ref = OnnxModel(service["models"][0])
    assert info[0]["categories"] == ref.categories and Preprocess.from_dict(info[0]["preprocess"]) == ref.preprocess
    assert info[0]["input"]["shape"][0] == "batch" and info[0]["max_batch_size"] == 4


def test_several_models_need_a_model_field(service, test_video):
    r = predict(service["url"], test_video)
    assert r.status_code == 400 and r.json()["error"]["type"] == "missing_field"
    assert "model" in r.json()["error"]["message"] and "ucf-mini.expert" in r.json()["error"]["message"]


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_predict_matches_the_model_run_directly(service, test_video, how):
    for name, path in zip(service["names"], service["models"]):
        if how == "multipart":
            r = predict(service["url"], test_video, model=name, topk="3")
        else:
            r = requests.post(f"{service['url']}/v1/predict", params={"model": name, "topk": 3},
                              data=Path(test_video).read_bytes(), headers={"Content-Type": "video/mp4"}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == name and len(body["predictions"]) == 3
        assert_same_predictions(body["predictions"], expected(path, test_video))


def test_concurrent_requests_are_batched_and_answered_correctly(service, datasets):
    videos = [s.path for s in datasets[1].samples("test")][:12] if len(datasets) > 1 else []
    videos = videos or [s.path for d in datasets for s in d.samples("test")][:12]
    name = service["names"][0]
    before = metrics(service["url"])
    results: dict = {}
    barrier = threading.Barrier(len(videos))

    def client(i, v):
        barrier.wait()
        results[i] = predict(service["url"], v, model=name, topk="3")

    threads = [threading.Thread(target=client, args=(i, v)) for i, v in enumerate(videos)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, v in enumerate(videos):
        assert results[i].status_code == 200, results[i].text
        assert_same_predictions(results[i].json()["predictions"], expected(service["models"][0], v))
    after = metrics(service["url"])
    key = ("jedi_batch_size_count", (("model", name),))
    calls = after[key] - before.get(key, 0)
    videos_run = after[("jedi_batch_size_sum", (("model", name),))] - before.get(("jedi_batch_size_sum", (("model", name),)), 0)
    assert videos_run == len(videos) and calls < len(videos)  # some calls carried several videos


def _bad_uploads(test_video: Path, tmp_path: Path) -> dict:
    good = Path(test_video).read_bytes()
    return {"corrupt": (os.urandom(4000), 422, "invalid_video"),
            "truncated": (good[: len(good) // 3], 422, "invalid_video"),
            "zero-length": (b"", 422, "invalid_video"),
            "non-video": (b"hello, this is a text file\n" * 20, 422, "invalid_video"),
            "oversize": (os.urandom(int(LIMIT_MB * 2**20) + 1000), 413, "upload_too_large")}


@pytest.mark.parametrize("case", ["corrupt", "truncated", "zero-length", "non-video", "oversize"])
def test_bad_uploads_get_a_4xx_json_error_and_the_service_keeps_serving(service, test_video, tmp_path, case):
    data, status, kind = _bad_uploads(test_video, tmp_path)[case]
    r = predict(service["url"], data=data, name=f"{case}.mp4", model="ucf-mini.student")
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["type"] == kind and err["message"]
    if status == 422:
        assert f"{case}.mp4" in err["message"] and "/tmp" not in err["message"]  # names the upload, not our temp file
    ok = predict(service["url"], test_video, model="ucf-mini.student", topk="2")
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2


def test_oversize_chunked_upload_is_refused_while_streaming(service, test_video):
    def chunks():
        for _ in range(8):
            yield os.urandom(64 * 1024)  # no Content-Length: the limit is enforced on the stream

    r = requests.post(f"{service['url']}/v1/predict?model=ucf-mini.student", data=chunks(),
                      headers={"Content-Type": "video/mp4"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["type"] == "upload_too_large"
    assert predict(service["url"], test_video, model="ucf-mini.student").status_code == 200


@pytest.mark.parametrize("fields, status, kind", [
    ({"topk": "abc"}, 422, "invalid_field"),
    ({"topk": "0"}, 422, "invalid_field"),
    ({"topk": "1000"}, 422, "invalid_field"),
    ({"model": "no-such-model"}, 404, "unknown_model"),
])
def test_malformed_fields(service, test_video, fields, status, kind):
    fields = {"model": "ucf-mini.student", **fields}
    r = predict(service["url"], test_video, **fields)
    assert r.status_code == status and r.json()["error"]["type"] == kind, r.text
    assert list(fields.values())[-1] in r.json()["error"]["message"]


def test_missing_and_wrongly_typed_fields(service, test_video):
    url = f"{service['url']}/v1/predict?model=ucf-mini.student"
    cases = [
        (requests.post(url, files={"clip": ("a.mp4", b"x")}, timeout=30), 400, "missing_field"),
        (requests.post(url, files={"video": (None, "just text")}, timeout=30), 422, "invalid_field"),
        (requests.post(url, data={"video": "x"}, timeout=30), 415, "unsupported_media_type"),
        (requests.post(url, data=b"--nope\r\ngarbage", timeout=30,
                       headers={"Content-Type": "multipart/form-data; boundary=zzz"}), 400, "malformed_request"),
        (requests.post(url, data=b"garbage", timeout=30,
                       headers={"Content-Type": "multipart/form-data"}), 400, "malformed_request"),
        (requests.get(url, timeout=30), 405, "http_error"),
    ]
    for r, status, kind in cases:
        assert r.status_code == status, (status, r.text)
        assert r.json()["error"]["type"] == kind and r.json()["error"]["message"]
    r = requests.get(f"{service['url']}/v2/nothing", timeout=30)  # under /v2: the protocol's own shape
    assert r.status_code == 404 and isinstance(r.json()["error"], str) and r.json()["error"]
    assert predict(service["url"], test_video, model="ucf-mini.student").status_code == 200


def accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def open_sockets_and_uploads(pid: int) -> int:
    targets = []
    for f in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{f}"))
        except FileNotFoundError:  # closed between the listing and the read
            pass
    return sum(t.startswith("socket:") or "jedi-serve" in t for t in targets)


def test_client_disconnect_mid_upload_does_not_wedge_a_worker(service, test_video):
    host, port = service["addr"].rsplit(":", 1)
    fds = until_stable(lambda: open_sockets_and_uploads(service["proc"].pid))
    for _ in range(6):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(b"POST /v1/predict?model=ucf-mini.student HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
                  b"Content-Length: 100000\r\n\r\n" + b"\0" * 5000)
        s.close()
    until(lambda: metrics(service["url"]).get(("jedi_errors_total", (("type", "client_disconnect"),)), 0) >= 6,
          timeout=10, interval=0.2, what="six client disconnects counted")
    for _ in range(3):  # plain connections that we close, so only the service's own sockets count
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/v1/predict?model=ucf-mini.student", body=Path(test_video).read_bytes(),
                     headers={"Content-Type": "video/mp4"})
        assert conn.getresponse().status == 200
        conn.close()
    open_fds = until_stable(lambda: open_sockets_and_uploads(service["proc"].pid))
    m = metrics(service["url"])
    assert m[("jedi_errors_total", (("type", "client_disconnect"),))] >= 6
    assert m[("jedi_requests_in_flight", ())] == 1  # just this /metrics request
    assert open_fds <= fds + 1  # no leaked sockets or temp files


def test_metrics_are_prometheus_text(service, test_video):
    predict(service["url"], test_video, model="ucf-mini.student")
    predict(service["url"], data=b"", model="ucf-mini.student")
    m = metrics(service["url"])
    assert m[("jedi_requests_total", (("endpoint", "/v1/predict"), ("status", "200")))] >= 1
    assert m[("jedi_requests_total", (("endpoint", "/v1/predict"), ("status", "422")))] >= 1
    assert m[("jedi_errors_total", (("type", "invalid_video"),))] >= 1
    assert m[("jedi_request_latency_seconds_count", (("endpoint", "/v1/predict"),))] >= 2
    assert any(k[0] == "jedi_decode_seconds_count" and v >= 1 for k, v in m.items())
    assert ("jedi_queue_depth", (("model", "ucf-mini.student"),)) in m


def test_graceful_shutdown_answers_the_request_in_flight(onnx_dir, test_video):
    proc, addr = start([onnx_dir / "hmdb-mini.student.onnx"])
    host, port = addr.rsplit(":", 1)
    body = Path(test_video).read_bytes()
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:100])
    until(lambda: metrics(f"http://{addr}").get(("jedi_requests_in_flight", ()), 0) >= 2,  # the upload + this one
          timeout=10, what="the upload to be in flight")
    proc.send_signal(signal.SIGTERM)  # the upload is still in flight
    until(lambda: not accepts(host, int(port)), timeout=10, what="the service to stop accepting")
    s.sendall(body[100:])
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
    s.close()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert b'"predictions"' in reply
    proc.wait(30)
    assert proc.returncode in (0, -signal.SIGTERM)
    assert "stopped cleanly" in proc.stderr.read()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2)


def test_start_up_errors_are_one_line(tmp_path, onnx_dir, gpu_stack):
    cases = [([str(tmp_path / "missing.onnx")], "ONNX model not found"),
             ([str(onnx_dir / "hmdb-mini.student.onnx"), "--max-batch-size", "0"], "max_batch_size")]
    if not gpu_stack["trt_ep"]:
        cases.append(([str(onnx_dir / "hmdb-mini.student.onnx"), "--providers", "tensorrt"], "not available"))
    for args, text in cases:
        out = subprocess.run([sys.executable, "-m", "jedi_deploy.serve.server", *args], cwd=CWD, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 1 and out.stderr.startswith("error:") and text in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_load_benchmark_runs_and_reports(onnx_dir, test_video):
    """benchmarks/serve_load.py end to end, briefly, on a custom workload: the offline bound, the service
    at two levels, the efficiency and overhead figures and its JSON line."""
    import json

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--model",
                          str(onnx_dir / "hmdb-mini.student.onnx"), "--videos", str(test_video), "--seconds", "2",
                          "--warmup-seconds", "0.5", "--concurrency", "1", "4", "--offline-seconds", "1"], cwd=CWD,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["errors"] == 0
    assert summary["custom_offline_videos_per_s"] > 0 and summary["custom_offline_core_ms_per_video"] > 0
    assert summary["custom_efficiency_c4"] > 0 and summary["custom_p99_ms_c4"] >= summary["custom_p50_ms_c4"] > 0
    assert summary["custom_server_core_ms_c4"] > 0 and "custom_overhead_core_ms_c4" in summary
    assert "| custom (hmdb-mini.student.onnx) | 4 |" in out.stdout


def test_a_teacher_ensemble_is_served_like_any_model(teacher_path, onnx_dir, test_video):
    """`jedi serve` on a <dataset>.teacher.onnx (several inputs, one per expert) answers the
    teacher's predictions (OnnxModel's, which tests/serve/test_teacher.py checks against PyTorch)."""
    proc, addr = start([teacher_path, onnx_dir / "ucf-mini.student.onnx"])
    try:
        url = f"http://{addr}"
        info = {m["name"]: m for m in requests.get(f"{url}/v1/models", timeout=30).json()["models"]}
        assert set(info) == {"ucf-mini.teacher", "ucf-mini.student"}
        assert info["ucf-mini.teacher"]["kind"] == "teacher" and len(info["ucf-mini.teacher"]["inputs"]) > 1
        r = predict(url, test_video, model="ucf-mini.teacher", topk=3)
        assert r.status_code == 200, r.text
        assert_same_predictions(r.json()["predictions"], expected(teacher_path, test_video))
        assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
    finally:
        rc, err = stop(proc)
    assert "stopped cleanly" in err, err
