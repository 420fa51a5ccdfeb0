"""Hostile and careless clients against the real service on loopback (bounded loops, short
timeouts): slow headers, slow bodies, idle keep-alive, malformed HTTP and multipart, raw bodies
without a length, more uploads than the service takes at once, and many concurrent large
uploads with the server's memory read from /proc. After each, the service still answers
/healthz and a good upload; every rejection is JSON and is counted in /metrics."""
import http.client
import json
import socket
import threading
import time

import pytest

from support.poll import until
from support.service import metrics, predict, start, stop

requests = pytest.importorskip("requests")

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def abuse_service(onnx_dir):
    proc, addr = start([onnx_dir / "ucf-mini.student.onnx"], "--header-timeout-s", str(TIMEOUT_S),
                       "--body-timeout-s", str(TIMEOUT_S), "--keep-alive-s", str(TIMEOUT_S), "--max-inflight", "3",
                       "--max-upload-mb", "32")
    host, port = addr.rsplit(":", 1)
    yield {"url": f"http://{addr}", "host": host, "port": int(port), "proc": proc}
    stop(proc)


def still_serving(service, video):
    assert requests.get(f"{service['url']}/healthz", timeout=30).status_code == 200
    r = predict(service["url"], video)
    assert r.status_code == 200 and r.json()["predictions"], r.text


def raw_exchange(service, data: bytes, wait: float = 0.0, limit_s: float = 10.0) -> bytes:
    """Send ``data``, optionally sit idle, then read until the server closes (at most limit_s)."""
    with socket.create_connection((service["host"], service["port"]), timeout=limit_s) as s:
        if data:
            s.sendall(data)
        time.sleep(wait)
        chunks, t0 = [], time.monotonic()
        while time.monotonic() - t0 < limit_s:
            try:
                b = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)


def json_error(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert b"application/json" in head.lower(), head
    return status, json.loads(body)["error"]


def test_slow_headers_and_silent_connections_time_out(abuse_service, test_video):
    t0 = time.monotonic()
    answer = raw_exchange(abuse_service, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: vid")
    assert time.monotonic() - t0 < 5 * TIMEOUT_S
    status, err = json_error(answer)
    assert status == 408 and err["type"] == "header_timeout"
    silent = raw_exchange(abuse_service, b"")  # connects, never sends a byte
    assert silent == b"" or json_error(silent)[0] == 408
    still_serving(abuse_service, test_video)


def test_a_stalled_body_times_out(abuse_service, test_video):
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\nContent-Length: 100000\r\n\r\n"
            + b"\x00" * 10)
    status, err = json_error(raw_exchange(abuse_service, head))
    assert status == 408 and err["type"] == "body_timeout"
    still_serving(abuse_service, test_video)


def test_idle_keep_alive_connections_are_closed(abuse_service):
    with socket.create_connection((abuse_service["host"], abuse_service["port"]), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first or not first.endswith(b"}"):  # the whole (JSON) response
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        time.sleep(2.5 * TIMEOUT_S)
        assert s.recv(65536) == b""  # closed by the server while idle


@pytest.mark.parametrize("request_bytes", [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
                                           b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"])
def test_malformed_http_gets_the_json_error(abuse_service, test_video, request_bytes):
    status, err = json_error(raw_exchange(abuse_service, request_bytes))
    assert status == 400 and err["type"] == "malformed_http" and err["code"] == 400
    still_serving(abuse_service, test_video)


def test_malformed_multipart_and_chunked_raw_bodies(abuse_service, test_video):
    url = abuse_service["url"]
    bad = requests.post(f"{url}/v1/predict", data=b"--zzz\r\nnot a part\r\n",
                        headers={"Content-Type": "multipart/form-data; boundary=abc"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["type"] in ("malformed_request", "missing_field")
    conn = http.client.HTTPConnection(abuse_service["host"], abuse_service["port"], timeout=60)
    data = test_video.read_bytes()
    conn.request("POST", "/v1/predict?topk=2", body=iter([data[:1000], data[1000:]]),
                 headers={"Content-Type": "video/mp4"}, encode_chunked=True)  # no Content-Length
    r = conn.getresponse()
    assert r.status == 200 and len(json.loads(r.read())["predictions"]) == 2
    conn.close()
    still_serving(abuse_service, test_video)


def test_trickling_uploads_are_dropped_to_make_room(abuse_service, test_video):
    """Three trickling uploads fill --max-inflight 3: a real upload waits for room, the slowest trickle
    is dropped (408) once it has trickled for EVICT_AFTER_S, and the real upload is answered (the old
    service answered 503 for as long as they trickled)."""
    stop_flag, answers = threading.Event(), []

    def trickle():  # an upload that keeps sending a byte now and then (never stalls, never ends)
        with socket.create_connection((abuse_service["host"], abuse_service["port"]), timeout=10) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
                      b"Content-Length: 100000\r\n\r\n")
            s.settimeout(0.3 * TIMEOUT_S)
            for _ in range(40):
                if stop_flag.is_set():
                    return
                try:
                    s.sendall(b"\x00")
                    got = s.recv(65536)
                    if got:
                        answers.append(got)
                        return
                except socket.timeout:
                    continue
                except OSError:
                    return

    threads = [threading.Thread(target=trickle) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        r = predict(abuse_service["url"], test_video)
        assert r.status_code == 200, r.text
        until(lambda: answers, timeout=5, what="the dropped trickle's answer")
        assert answers[0].startswith(b"HTTP/1.1 408")  # dropped (counted as evicted_slow_body below)
    finally:
        stop_flag.set()
        for t in threads:
            t.join(30)
    time.sleep(0.5)
    still_serving(abuse_service, test_video)


def test_more_uploads_than_the_cap_get_503_with_retry_after(abuse_service, test_video, tmp_path):
    """Three long windowed requests hold --max-inflight 3 (their bodies are in: nothing to drop): a
    fourth upload waits ADMIT_WAIT_S for room, then gets 503 + Retry-After."""
    from jedi_deploy.serve.guard import ADMIT_WAIT_S
    from support.colour import coloured_video

    long = coloured_video(tmp_path / "long.mp4", [("red", 120.0)], fps=25, size=(160, 120)).read_bytes()
    url = abuse_service["url"]
    done = []
    busy = [threading.Thread(target=lambda: done.append(requests.post(
        f"{url}/v1/predict?window=1&stride=0.04", data=long, headers={"Content-Type": "video/mp4"}, timeout=120)))
        for _ in range(3)]
    for t in busy:
        t.start()
    until(lambda: metrics(url).get(("jedi_requests_in_flight", ()), 0) >= 4, timeout=10, what="the busy requests")
    t0 = time.monotonic()
    r = predict(url, test_video)
    assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded", r.text
    assert r.headers["Retry-After"] == "1" and time.monotonic() - t0 >= ADMIT_WAIT_S
    for t in busy:
        t.join(120)
    assert [x.status_code for x in done] == [200, 200, 200]
    still_serving(abuse_service, test_video)


def test_every_rejection_is_counted(abuse_service):
    """Runs after the tests above in this module (pytest keeps file order)."""
    m = metrics(abuse_service["url"])
    counted = {k[1][0][1]: v for k, v in m.items() if k[0] == "jedi_errors_total"}
    for kind in ("header_timeout", "body_timeout", "malformed_http", "overloaded", "evicted_slow_body"):
        assert counted.get(kind, 0) >= 1, counted
    statuses = {dict(k[1]).get("status") for k, v in m.items() if k[0] == "jedi_requests_total" and v > 0}
    assert {"400", "408", "503"} <= statuses, statuses


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_many_concurrent_large_uploads_keep_memory_bounded(onnx_dir, test_video):
    """24 concurrent 8 MiB uploads (multipart and raw): the server's resident memory stays within
    a bound far below what buffering them would take (24 x 8 MiB x ~1.7 = 330 MiB), no 5xx."""
    proc, addr = start([onnx_dir / "ucf-mini.student.onnx"], "--max-upload-mb", "16")
    url = f"http://{addr}"
    try:
        still_serving({"url": url}, test_video)
        idle = rss_kib(proc.pid)
        payload = test_video.read_bytes() + b"\x00" * (8 * 2**20)  # a valid video with a long junk tail
        statuses, peak, done = [], [idle], threading.Event()

        def watch():
            while not done.is_set():
                peak.append(rss_kib(proc.pid))
                time.sleep(0.02)

        def upload(k):
            if k % 2:
                r = requests.post(f"{url}/v1/predict", data=payload, headers={"Content-Type": "video/mp4"}, timeout=120)
            else:
                r = predict(url, data=payload)
            statuses.append(r.status_code)

        w = threading.Thread(target=watch)
        w.start()
        threads = [threading.Thread(target=upload, args=(k,)) for k in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        done.set()
        w.join()
        assert len(statuses) == 24 and all(s < 500 for s in statuses), statuses
        grown_mib = (max(peak) - idle) / 1024
        assert grown_mib < 160, f"resident memory grew by {grown_mib:.0f} MiB"
        still_serving({"url": url}, test_video)
    finally:
        stop(proc)
