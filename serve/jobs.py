"""Asynchronous jobs for long videos: ``POST /v1/jobs`` answers 202 at once, the work runs in the
service's own worker threads (so it survives the client disconnecting), ``GET /v1/jobs/{id}`` reports
status, progress and the result, ``DELETE /v1/jobs/{id}`` cancels.

A job is a whole-video prediction or, with ``window``, a sliding-window timeline
(:mod:`jedi_deploy.serve.timeline`). Its video is an upload (spooled to a private temp file before the
202, removed when the job ends) or a ``path`` the server may read: only under ``--jobs-root``, after
resolving links, so nothing outside it can be named. At most ``--max-jobs`` jobs are queued or running
(more: 503 with Retry-After); finished jobs are kept ``--job-ttl-s`` seconds, then forgotten. Torch-free.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from jedi_deploy.contracts.errors import InputError, VideoDecodeError

from .guard import ApiError

STATES = ("queued", "running", "done", "failed", "cancelled")


class Cancelled(Exception):
    pass


@dataclass
class Job:
    id: str
    model: str
    video: str  # what the client called it (upload file name, or the path it gave)
    source: str  # the file read
    owned: bool  # a spooled upload, removed when the job ends
    topk: int
    windowed: tuple | None
    created: float = field(default_factory=time.time)
    status: str = "queued"
    progress: float = 0.0
    started: float | None = None
    finished: float | None = None
    result: dict | None = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def to_dict(self) -> dict:
        d = {"id": self.id, "status": self.status, "model": self.model, "video": self.video,
             "progress": round(self.progress, 4), "created": self.created, "started": self.started,
             "finished": self.finished, "url": f"/v1/jobs/{self.id}"}
        if self.result is not None:
            d["result"] = self.result
        if self.error is not None:
            d["error"] = self.error
        return d


class JobStore:
    """The jobs of one service: a bounded set, worker threads, expiry."""

    def __init__(self, *, workers: int, max_jobs: int, ttl_s: float, root: Path | None):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self.max_jobs, self.ttl_s = max_jobs, ttl_s
        self.root = root.resolve() if root else None
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ what a client may name
    def allowed_path(self, raw: str) -> str:
        """``raw`` resolved inside ``--jobs-root``, or a 403/404 naming why not."""
        if self.root is None:
            raise ApiError(403, "path_not_allowed", "this service reads no paths (start it with --jobs-root DIR to "
                                                    "allow paths under DIR); upload the video instead")
        p = Path(raw)
        p = (p if p.is_absolute() else self.root / p).resolve()
        if p != self.root and self.root not in p.parents:
            raise ApiError(403, "path_not_allowed", f"{raw!r} is outside the jobs root")
        if not p.is_file():
            raise ApiError(404, "not_found", f"{raw!r}: no such file under the jobs root")
        return str(p)

    # ------------------------------------------------------------------------------- lifecycle
    def purge(self) -> None:
        now = time.time()
        with self.lock:
            for k in [k for k, j in self.jobs.items() if j.finished and now - j.finished > self.ttl_s]:
                del self.jobs[k]

    def submit(self, service, *, model: str, video: str, source: str, owned: bool, topk: int, windowed) -> Job:
        self.purge()
        with self.lock:
            active = sum(j.status in ("queued", "running") for j in self.jobs.values())
            if active >= self.max_jobs:
                if owned:
                    os.unlink(source)
                raise ApiError(503, "jobs_full", f"{active} jobs are queued or running, the most this service keeps "
                                                 "(jedi serve --max-jobs); retry later", headers={"Retry-After": "5"})
            job = Job(uuid.uuid4().hex[:16], model, video, source, owned, topk, windowed)
            self.jobs[job.id] = job
        self.pool.submit(self._run, service, job)
        return job

    def get(self, job_id: str) -> Job:
        self.purge()
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "unknown_job", f"no job {job_id!r} (finished jobs are kept {self.ttl_s:g} s)")
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        job.cancel.set()
        with self.lock:
            if job.status == "queued":
                self._finish(job, "cancelled")
        return job

    def _finish(self, job: Job, status: str, result=None, error=None) -> None:
        job.status, job.result, job.error, job.finished = status, result, error, time.time()
        if status == "done":
            job.progress = 1.0
        if job.owned:
            try:
                os.unlink(job.source)
            except FileNotFoundError:
                pass

    def _run(self, service, job: Job) -> None:
        with self.lock:
            if job.status != "queued":
                return  # cancelled while queued
            job.status, job.started = "running", time.time()
        try:
            result = self._work(service, job)
        except Cancelled:
            with self.lock:
                self._finish(job, "cancelled")
            return
        except (VideoDecodeError, InputError) as e:
            with self.lock:
                self._finish(job, "failed", error=str(e).replace(job.source, job.video))
            return
        except Exception as e:  # noqa: BLE001 - a job's bug must not take the service down
            with self.lock:
                self._finish(job, "failed", error=f"{type(e).__name__}: {e}")
            return
        with self.lock:
            self._finish(job, "cancelled" if job.cancel.is_set() else "done", result=result)

    def _work(self, service, job: Job) -> dict:
        from .timeline import Timeline, run_windows

        model = service.models[job.model]
        if job.windowed is None:
            probs = model.video_probs(job.source)
            if job.cancel.is_set():
                raise Cancelled
            return {"predictions": [p.__dict__ for p in model.top(probs, job.topk)]}
        window, stride, smooth = job.windowed

        def progress(fraction: float) -> None:
            if job.cancel.is_set():
                raise Cancelled
            job.progress = min(0.99, fraction)

        tl: Timeline = run_windows(model, job.source, window=window, stride=stride, smooth_windows=smooth,
                                   on_window=progress)
        return tl.answer(job.topk, job.video, job.source)

    def close(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for job in list(self.jobs.values()):
            if job.owned and os.path.exists(job.source):
                os.unlink(job.source)
