"""Asynchronous jobs for long videos: ``POST /v1/jobs`` answers 202 at once, the work runs in the
service's own worker threads (so it survives the client disconnecting), ``GET /v1/jobs/{id}`` reports
status, progress and the result, ``DELETE /v1/jobs/{id}`` cancels.

A job is a whole-video prediction or, with ``window``, a sliding-window timeline
(:mod:`jedi_deploy.serve.timeline`). Its video is an upload (spooled to a private temp file before the
202, removed when the job ends) or a ``path`` the server may read: only under ``--jobs-root``, after
resolving links, so nothing outside it can be named. At most ``--max-jobs`` jobs are queued or running
(more: :class:`JobsFull`, a 503 with Retry-After); finished jobs are kept ``--job-ttl-s`` seconds, then
forgotten. The store runs whatever callable it is given (the service's) and raises domain errors
(:class:`JobError`), which the HTTP layer maps to statuses. Torch-free.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from jedi_deploy.contracts.errors import InputError, JediError, VideoDecodeError

from .config import WindowSpec

STATES = ("queued", "running", "done", "failed", "cancelled")


class Cancelled(Exception):
    pass


class JobError(JediError):
    """What a client asked of the job store cannot be done; the HTTP layer maps each kind to a status."""


class JobsFull(JobError):
    """As many jobs are queued or running as the store keeps (``--max-jobs``)."""


class UnknownJob(JobError):
    """No such job (never made, or finished and forgotten)."""


class PathNotAllowed(JobError):
    """A path outside the jobs root, or any path when there is none."""


class PathNotFound(JobError):
    """A path under the jobs root that is not a file."""


@dataclass
class Job:
    id: str
    model: str
    video: str  # what the client called it (upload file name, or the path it gave)
    source: str  # the file read
    owned: bool  # a spooled upload, removed when the job ends
    topk: int
    window: WindowSpec | None
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


#: What runs a job: ``run(job, progress)`` returns its result; ``progress(fraction)`` raises
#: :class:`Cancelled` once the job is cancelled.
JobRunner = Callable[[Job, Callable[[float], None]], dict]


class JobStore:
    """The jobs of one service: a bounded set, worker threads running ``run``, expiry. Raises
    :class:`JobError` subclasses; it knows nothing of HTTP or of models."""

    def __init__(self, run: JobRunner, *, workers: int, max_jobs: int, ttl_s: float, root: Path | None):
        self.run = run
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self.max_jobs, self.ttl_s = max_jobs, ttl_s
        self.root = root.resolve() if root else None
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ what a client may name
    def allowed_path(self, raw: str) -> str:
        """``raw`` resolved inside ``--jobs-root``, or a :class:`JobError` naming why not."""
        if self.root is None:
            raise PathNotAllowed("this service reads no paths (start it with --jobs-root DIR to allow paths under "
                                 "DIR); upload the video instead")
        p = Path(raw)
        p = (p if p.is_absolute() else self.root / p).resolve()
        if p != self.root and self.root not in p.parents:
            raise PathNotAllowed(f"{raw!r} is outside the jobs root")
        if not p.is_file():
            raise PathNotFound(f"{raw!r}: no such file under the jobs root")
        return str(p)

    # ------------------------------------------------------------------------------- lifecycle
    def purge(self) -> None:
        now = time.time()
        with self.lock:
            for k in [k for k, j in self.jobs.items() if j.finished and now - j.finished > self.ttl_s]:
                del self.jobs[k]

    def submit(self, *, model: str, video: str, source: str, owned: bool, topk: int,
               window: WindowSpec | None) -> Job:
        self.purge()
        with self.lock:
            active = sum(j.status in ("queued", "running") for j in self.jobs.values())
            if active >= self.max_jobs:
                if owned:
                    os.unlink(source)
                raise JobsFull(f"{active} jobs are queued or running, the most this service keeps "
                               "(jedi serve --max-jobs); retry later")
            job = Job(uuid.uuid4().hex[:16], model, video, source, owned, topk, window)
            self.jobs[job.id] = job
        self.pool.submit(self._run, job)
        return job

    def get(self, job_id: str) -> Job:
        self.purge()
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id!r} (finished jobs are kept {self.ttl_s:g} s)")
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

    def _run(self, job: Job) -> None:
        with self.lock:
            if job.status != "queued":
                return  # cancelled while queued
            job.status, job.started = "running", time.time()
        try:
            result = self.run(job, lambda fraction: self._progress(job, fraction))
        except Cancelled:
            with self.lock:
                self._finish(job, "cancelled")
            return
        except (VideoDecodeError, InputError) as e:
            with self.lock:
                self._finish(job, "failed", error=str(e))
            return
        except Exception as e:  # noqa: BLE001 - a job's bug must not take the service down
            with self.lock:
                self._finish(job, "failed", error=f"{type(e).__name__}: {e}")
            return
        with self.lock:
            self._finish(job, "cancelled" if job.cancel.is_set() else "done", result=result)

    @staticmethod
    def _progress(job: Job, fraction: float) -> None:
        if job.cancel.is_set():
            raise Cancelled
        job.progress = min(0.99, fraction)

    def close(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for job in list(self.jobs.values()):
            if job.owned and os.path.exists(job.source):
                os.unlink(job.source)
