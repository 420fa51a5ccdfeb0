"""Authentication (--api-key / JEDI_API_KEY) against a real service, job ids as capabilities with a
per-key listing, and the jobs root checked on the file actually opened (JobStore, no HTTP)."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

requests = pytest.importorskip("requests")

from jedi_deploy.serve.jobs import JobStore, PathNotAllowed  # noqa: E402
from support.colour import colour_model, coloured_video  # noqa: E402
from support.poll import until  # noqa: E402
from support.service import start, stop  # noqa: E402

KEYS = ("alice-0123456789abcdef", "bob-0123456789abcdef")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    d = tmp_path_factory.mktemp("auth")
    model = colour_model(d / "colour.onnx")
    # the keys from the environment (a space-separated list); tests/serve/test_jobs.py passes --api-key
    proc, addr = start([model], env={"JEDI_API_KEY": " ".join(KEYS)})
    yield {"url": f"http://{addr}", "video": coloured_video(d / "v.mp4", [("red", 2.0)])}
    stop(proc)


def as_(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


def test_every_endpoint_but_health_and_the_page_needs_a_key(service):
    url = service["url"]
    for path in ("/healthz", "/v2/health/live", "/v2/health/ready", "/"):
        assert requests.get(url + path, timeout=10).status_code == 200, path
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/v2"), ("GET", "/v1/jobs"),
                         ("POST", "/v1/predict"), ("POST", "/v1/jobs"), ("GET", "/v2/models/colour"),
                         ("POST", "/v2/models/colour/infer"), ("GET", "/v1/jobs/123"), ("GET", "/docs")):
        for headers in ({}, as_("wrong-key-0123456789"), {"Authorization": KEYS[0]}, {"Authorization": f"Basic {KEYS[0]}"},
                        as_(KEYS[0][:-1]), as_(KEYS[0] + "x")):
            r = requests.request(method, url + path, headers=headers, timeout=10)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer"), (method, path, headers)
            shape = r.json()["error"]
            assert (isinstance(shape, str) if path.startswith("/v2") else shape["type"] == "unauthorized")
    for key in KEYS:
        assert requests.get(f"{url}/v1/models", headers=as_(key), timeout=10).status_code == 200
        r = requests.post(f"{url}/v1/predict", data=service["video"].read_bytes(),
                          headers={**as_(key), "Content-Type": "video/mp4"}, timeout=30)
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "red"


def test_jobs_are_listed_per_key_and_ids_are_capabilities(service):
    url = service["url"]
    mine = []
    for key in KEYS:
        r = requests.post(f"{url}/v1/jobs", data=service["video"].read_bytes(),
                          headers={**as_(key), "Content-Type": "video/mp4"}, timeout=30)
        assert r.status_code == 202 and len(r.json()["id"]) == 32  # 128 random bits
        mine.append(r.json()["id"])
    for key, job_id, other in ((KEYS[0], mine[0], mine[1]), (KEYS[1], mine[1], mine[0])):
        listed = [j["id"] for j in requests.get(f"{url}/v1/jobs", headers=as_(key), timeout=10).json()["jobs"]]
        assert job_id in listed and other not in listed
    # whoever holds an id (and a key) may read it: the id is the capability
    until(lambda: requests.get(f"{url}/v1/jobs/{mine[0]}", headers=as_(KEYS[1]), timeout=10).json()["status"] == "done",
          what="the job to finish")


def test_a_short_key_is_refused_at_start(tmp_path):
    from support.cli import assert_clean_error, jedi

    assert_clean_error(jedi("serve", colour_model(tmp_path / "m.onnx"), "--api-key", "short"), "at least 16")


def test_the_jobs_root_is_checked_on_the_file_opened(tmp_path):
    """A path job is checked when queued; a link swapped in while it waits must not lead outside."""
    root, outside = tmp_path / "root", tmp_path / "secret.mp4"
    root.mkdir()
    outside.write_bytes(b"secret")
    (root / "clip.mp4").write_bytes(b"inside")
    release, read = threading.Event(), {}

    def run(job, progress):
        if job.video == "blocker":
            release.wait(10)
            return {}
        with store.opened(job) as path:
            read[job.video] = Path(path).read_bytes()
        return {}

    store = JobStore(run, workers=1, max_jobs=4, ttl_s=60, root=root)
    try:
        blocker = store.submit(model="m", video="blocker", source=str(root / "clip.mp4"), owned=False, topk=1,
                               window=None)
        job = store.submit(model="m", video="clip.mp4", source=store.allowed_path("clip.mp4"), owned=False, topk=1,
                           window=None)
        os.unlink(root / "clip.mp4")  # swapped for a link to a file outside the root while queued
        os.symlink(outside, root / "clip.mp4")
        release.set()
        until(lambda: job.status in ("done", "failed"), timeout=10, what="the job to run")
        assert job.status == "failed" and "outside the jobs root" in job.error, job.error
        assert "clip.mp4" not in read and blocker.status == "done"
        # an honest file inside the root is read through the descriptor opened and checked
        (root / "ok.mp4").write_bytes(b"fine")
        ok = store.submit(model="m", video="ok.mp4", source=store.allowed_path("ok.mp4"), owned=False, topk=1,
                          window=None)
        until(lambda: ok.status == "done", timeout=10, what="the job to run")
        assert read["ok.mp4"] == b"fine"
        with pytest.raises(PathNotAllowed):
            store.allowed_path(str(outside))
    finally:
        store.close()
