"""Asynchronous jobs for long videos: ``POST /v1/jobs`` answers 202 at once, the work runs in the
service's own worker threads (so it survives the client disconnecting), ``GET /v1/jobs/{id}`` reports
status, progress and the result, ``DELETE /v1/jobs/{id}`` cancels.

A job is a whole-video prediction or, with ``window``, a sliding-window timeline
(:mod:`jedi_deploy.serve.timeline`). Its video is an upload (spooled to a private temp file before the
202, removed when the job ends) or a ``path`` the server may read: only under ``--jobs-root``, after
resolving links, so nothing outside it can be named - checked when queued and again on the file
actually opened when the job runs (:meth:`JobStore.opened`), so a link swapped in meanwhile reads
nothing outside the root. A job id is a capability (128 random bits): whoever holds it may read or
cancel the job; the listing shows a caller only the jobs of its own API key. At most ``--max-jobs`` jobs are queued or running
(more: :class:`JobsFull`, a 503 with Retry-After); finished jobs are kept ``--job-ttl-s`` seconds, then
forgotten. The store runs whatever callable it is given (the service's) and raises domain errors
(:class:`JobError`), which the HTTP layer maps to statuses. Torch-free.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
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
    owner: str | None = None  # the digest of the API key that submitted it (None: no keys)

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

    def __init__(self, run: JobRunner, *, workers: int, max_jobs: int, ttl_s: float, root: Path | None,
                 initializer: Callable[[], None] | None = None):
        self.run = run
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job", initializer=initializer)
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
        shown = raw if len(raw) <= 200 else raw[:200] + "..."
        try:
            p = Path(raw)
            p = (p if p.is_absolute() else self.root / p).resolve()
            inside = p == self.root or self.root in p.parents
            is_file = inside and p.is_file()
        except (ValueError, OSError, RuntimeError) as e:  # NUL bytes, names too long, link loops
            raise PathNotFound(f"{shown!r}: not a readable path ({type(e).__name__}: {str(e)[:100]})") from None
        if not inside:
            raise PathNotAllowed(f"{shown!r} is outside the jobs root")
        if not is_file:
            raise PathNotFound(f"{shown!r}: no such file under the jobs root")
        return str(p)

    @contextlib.contextmanager
    def opened(self, job: Job) -> Iterator[str]:
        """The path to decode ``job``'s video from: an upload's own spooled file, or - for a path job -
        the file opened now and checked as opened (its real path, read from the open descriptor, must
        still be inside the root), read through that descriptor so no later swap of a link matters."""
        if job.owned or self.root is None:
            yield job.source
            return
        try:
            fd = os.open(job.source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise PathNotFound(f"{job.video!r}: cannot be opened ({e.strerror})") from None
        try:
            via = f"/proc/self/fd/{fd}"
            has_proc = os.path.exists(via)
            # the opened file's real path; without /proc (not Linux), the path as it resolves now
            real = Path(os.readlink(via)) if has_proc else Path(job.source).resolve()
            if real != self.root and self.root not in real.parents:
                raise PathNotAllowed(f"{job.video!r} now leads outside the jobs root (to a file swapped in after it "
                                     "was queued); not read")
            yield via if has_proc else job.source
        finally:
            os.close(fd)

    # ------------------------------------------------------------------------------- lifecycle
    def purge(self) -> None:
        now = time.time()
        with self.lock:
            for k in [k for k, j in self.jobs.items() if j.finished and now - j.finished > self.ttl_s]:
                del self.jobs[k]

    def check_room(self) -> None:
        """:class:`JobsFull` when ``max_jobs`` are queued or running (asked before an upload is read)."""
        self.purge()
        with self.lock:
            self._room()

    def _room(self) -> None:
        active = sum(j.status in ("queued", "running") for j in self.jobs.values())
        if active >= self.max_jobs:
            raise JobsFull(f"{active} jobs are queued or running, the most this service keeps "
                           "(jedi serve --max-jobs); retry later")

    def owned_by(self, owner: str | None) -> list[Job]:
        """The jobs submitted with ``owner``'s key, newest first."""
        self.purge()
        with self.lock:
            return sorted((j for j in self.jobs.values() if j.owner == owner), key=lambda j: -j.created)

    def submit(self, *, model: str, video: str, source: str, owned: bool, topk: int,
               window: WindowSpec | None, owner: str | None = None) -> Job:
        self.purge()
        with self.lock:
            try:
                self._room()
            except JobsFull:
                if owned:
                    os.unlink(source)
                raise
            job = Job(uuid.uuid4().hex, model, video, source, owned, topk, window, owner=owner)
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

    def cancel_all(self) -> None:
        """Every job stops at its next check; queued ones never start."""
        with self.lock:
            for job in list(self.jobs.values()):
                job.cancel.set()
                if job.status == "queued":
                    self._finish(job, "cancelled")

    def close(self, wait: bool = True) -> None:
        self.cancel_all()
        self.pool.shutdown(wait=wait, cancel_futures=True)
        self.discard_uploads()

    def discard_uploads(self) -> None:
        for job in list(self.jobs.values()):
            if job.owned and os.path.exists(job.source):
                os.unlink(job.source)
