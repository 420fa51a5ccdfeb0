"""``jedi serve``: an HTTP service for exported models (FastAPI + uvicorn; no torch).

Endpoints
  ``POST /v1/predict``   a video upload - multipart field ``video`` (``curl -F video=@clip.mp4``)
                         or the raw file as the request body - with optional ``model`` and
                         ``topk`` (query or form fields); answers the top-k labels as JSON.
  ``GET  /v1/models``    every served model's metadata (categories, preprocessing, input).
  ``GET  /healthz``      liveness; 503 while shutting down.
  ``GET  /metrics``      Prometheus text: requests, latency, batch sizes, errors, queue depth.

Requests flow: the upload is read (capped at ``max_upload_mb``; 413 beyond), decoded and
preprocessed in a thread pool (never on the event loop), then queued for the model's
micro-batcher, which runs up to ``max_batch_size`` videos as one ONNX Runtime call, waiting at
most ``max_delay_ms`` after the first for more to arrive (``max_batch_size`` 1 = no
batching). Every failure is a JSON ``{"error": {"code", "type", "message"}}`` (``{"error":
"message"}`` under ``/v2``) with a 4xx/5xx status, and the service keeps serving. Every unit of work
a client can create has a budget (:class:`ServeConfig`; docs/ARCHITECTURE.md "Budgets and
guarantees"). On SIGINT/SIGTERM it stops accepting connections, cancels jobs at once, gives the
requests in flight at most ``--shutdown-grace-s``, removes spooled uploads and exits.

One module: the :class:`Service` (what each endpoint does with the pools, the spool and the job
store), the app's routes and error handlers, and the process lifecycle (bind, serve, stop within
the grace) share one shutdown story, read together; the HTTP edge (:mod:`.guard`), uploads, jobs,
windows and the v2 protocol live in modules of their own.
"""
import asyncio
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from jedi_deploy.contracts.errors import BudgetError, ConfigError, InputError, VideoDecodeError
from jedi_deploy.media.decode import Limits

from . import openapi
from .config import ServeConfig, WindowSpec
from .guard import CALLER, ApiError, UploadGuard, dumps, error_body
from .jobs import Job, JobError, JobsFull, JobStore, PathNotAllowed, PathNotFound, UnknownJob
from .metrics import Metrics
from .pool import ModelPool
from .runtime import OnnxModel, Prepared
from .timeline import run_windows
from .uploads import Spool, Upload, read_upload

#: Seconds of the shutdown grace kept for answering: requests still decoding then get 503.
ANSWER_S = 1.0

#: The largest JSON body of POST /v1/jobs (a path and a few fields).
MAX_JOB_JSON = 64 * 1024

#: Job-store errors -> (HTTP status, error type, extra headers).
JOB_ERRORS = {JobsFull: (503, "jobs_full", {"Retry-After": "5"}), UnknownJob: (404, "unknown_job", None),
              PathNotAllowed: (403, "path_not_allowed", None), PathNotFound: (404, "not_found", None)}


def _int_field(value, name: str, low: int, high: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ApiError(422, "invalid_field", f"field {name!r} must be an integer, got {value!r}") from None
    if not low <= n <= high:
        raise ApiError(422, "invalid_field", f"field {name!r} must be in {low}..{high}, got {n}")
    return n


def _window(params: dict) -> WindowSpec | None:
    """The request's sliding-window fields (``window``, ``stride``, ``smooth``) by the one rule
    (:meth:`WindowSpec.parse`), or None for a whole-video request."""
    if "window" not in params:
        if "stride" in params or "smooth" in params:
            raise ApiError(422, "invalid_field", "'stride' and 'smooth' belong to sliding-window requests: "
                                                 "give 'window' (seconds) too")
        return None
    try:
        return WindowSpec.parse(params["window"], params.get("stride"), params.get("smooth"), option="")
    except ConfigError as e:
        raise ApiError(422, "invalid_field", str(e)) from None


@dataclass(frozen=True)
class Request:
    """What a predict or job request asks: the served model, the labels per answer, the windows."""

    model: str
    topk: int
    window: WindowSpec | None


class Service:
    """The request handlers behind one FastAPI app, over the served models (:class:`ModelPool`),
    the upload spool (:mod:`.uploads`), the decode pool and the job store (:mod:`.jobs`)."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg.check()
        self.metrics = Metrics()
        self.pool = ModelPool(cfg, self.metrics)
        self.spool = Spool()
        self.decode_pool: ThreadPoolExecutor | None = None
        self.window_pool: ThreadPoolExecutor | None = None  # windowed requests: long work, its own threads
        self.stopping = False
        self.stop_asked: float | None = None  # time.monotonic() of the SIGTERM/SIGINT
        self.jobs = JobStore(self.run_job, workers=cfg.job_workers, max_jobs=cfg.max_jobs, ttl_s=cfg.job_ttl_s,
                             root=Path(cfg.jobs_root) if cfg.jobs_root else None, initializer=lower_priority)
        self.max_result = int(cfg.max_result_mb * 2**20)

    @property
    def models(self) -> dict[str, OnnxModel]:
        return self.pool.models

    # lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        import av.video.reformatter  # noqa: F401 - imported now, not on the first upload (~0.1 s)

        self.spool.open()
        self.decode_pool = ThreadPoolExecutor(self.cfg.decode_workers, thread_name_prefix="decode")
        # a windowed request can take seconds: in a pool of its own at a lower OS priority, so whole-video
        # predictions never queue behind one and get the cores first (jobs do the same)
        self.window_pool = ThreadPoolExecutor(self.cfg.decode_workers, thread_name_prefix="window",
                                              initializer=lower_priority)
        self.pool.start()

    def begin_stop(self) -> None:
        """The signal (called from the handler, before uvicorn waits for the requests in flight):
        jobs stop at their next check and queued ones never start; requests in flight may finish
        until :data:`ANSWER_S` before the grace ends, then their decodes and window loops stop with 503."""
        if self.stop_asked is None:
            self.stop_asked = time.monotonic()
        self.stopping = True
        self.jobs.cancel_all()

    def check(self) -> None:
        """Raised through a decode or a window loop once the grace is (nearly) over."""
        if self.stop_asked is not None and time.monotonic() > self.stop_asked + self.cfg.shutdown_grace_s - ANSWER_S:
            raise ApiError(503, "shutting_down", "the service is shutting down; retry on another replica or later")

    def limits(self, check=None) -> Limits:
        """The decode budget of one request or job: the frame-size limit, and a check that stops
        it when the service stops (and, for a job, when it is cancelled)."""
        def both():
            self.check()
            if check is not None:
                check()
        return Limits(max_pixels=self.cfg.max_frame_pixels, check=both)

    async def stop(self) -> None:
        """Runs after uvicorn has stopped accepting and answered (or given up on) the requests in
        flight: the workers get what is left of ``--shutdown-grace-s``, then the spool is removed
        and the process ends, whatever a worker thread is still doing."""
        self.begin_stop()
        await self.pool.stop()
        workers = list(self.jobs.pool._threads)
        for pool in (self.decode_pool, self.window_pool):
            if pool is not None:
                workers += list(pool._threads)
                pool.shutdown(wait=False, cancel_futures=True)
        self.jobs.close(wait=False)
        deadline = self.stop_asked + self.cfg.shutdown_grace_s
        while any(t.is_alive() for t in workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.jobs.discard_uploads()
        self.spool.close()
        stuck = sum(t.is_alive() for t in workers)
        if stuck:
            print(f"jedi serve: {stuck} worker(s) still busy after the {self.cfg.shutdown_grace_s:g} s grace "
                  "(--shutdown-grace-s); exiting without them", file=sys.stderr, flush=True)
            os._exit(0)  # the interpreter would join those threads at exit, however long they take
        print("jedi serve: stopped cleanly", file=sys.stderr, flush=True)

    # requests ---------------------------------------------------------------------------
    def request(self, params: dict) -> Request:
        name = self.pool.pick(params.get("model"))
        n = len(self.models[name].categories)
        return Request(name, _int_field(params.get("topk", min(self.cfg.topk, n)), "topk", 1, n), _window(params))

    def _decode(self, model: OnnxModel, upload: Upload) -> Prepared:
        """Decode one spooled upload (removed here), in the decode pool."""
        t0 = time.perf_counter()
        try:
            x = model.prepare_video(upload.path, name=upload.name, limits=self.limits())
        except BudgetError as e:
            raise ApiError(422, "over_budget", str(e)) from None
        except VideoDecodeError as e:
            raise ApiError(422, "invalid_video", str(e)) from None
        finally:
            upload.discard()
        self.metrics.decode.observe(time.perf_counter() - t0)
        return x

    async def predict(self, request) -> dict:
        params = dict(request.query_params)
        upload, req = await read_upload(request, params, self.spool, self.request)
        model = self.models[req.model]
        loop = asyncio.get_running_loop()
        if req.window is not None:  # a timeline: the windows run in the decode pool, outside the batcher
            return await loop.run_in_executor(self.window_pool, self._timeline, model, req, upload)
        batcher = self.pool.batchers[req.model]
        t0 = time.perf_counter()
        batcher.incoming += 1
        try:
            x = await loop.run_in_executor(self.decode_pool, self._decode, model, upload)
        finally:
            batcher.incoming -= 1
        t1 = time.perf_counter()
        probs = await batcher.submit(x.feed)
        t2 = time.perf_counter()
        answer = {"model": req.model, "video": upload.name,
                  "predictions": [p.__dict__ for p in model.top(probs, req.topk)],
                  "timing_ms": {"decode": round(1e3 * (t1 - t0), 3), "queue_and_inference": round(1e3 * (t2 - t1), 3)}}
        if x.warning:  # truncated or corrupt: predicted from the frames before the first error
            answer["warning"] = x.warning
        return answer

    def _timeline(self, model: OnnxModel, req: Request, upload: Upload) -> dict:
        """Sliding-window inference over one upload (serve.timeline), in the decode pool."""
        t0 = time.perf_counter()
        try:
            tl = run_windows(model, upload.path, req.window, name=upload.name, limits=self.limits())
            answer = tl.answer(req.topk, max_bytes=self.max_result)
        except BudgetError as e:
            raise ApiError(422, "over_budget", str(e)) from None
        except (VideoDecodeError, InputError) as e:
            raise ApiError(422, "invalid_video", str(e)) from None
        finally:
            upload.discard()
        return {"model": req.model, **answer, "timing_ms": {"total": round(1e3 * (time.perf_counter() - t0), 3)}}

    async def submit_job(self, request) -> dict:
        """``POST /v1/jobs``: a path under the jobs root (JSON ``{"path": ...}``) or an upload (multipart
        field ``video`` or the raw body), queued; the answer (202) names the job."""
        params = dict(request.query_params)
        self.job_call(self.jobs.check_room)  # a full store refuses before the body is read
        owner = request.scope.get(CALLER)
        if request.headers.get("content-type", "").startswith("application/json"):
            raw = bytearray()
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > MAX_JOB_JSON:
                    raise ApiError(413, "upload_too_large", f"a JSON job is at most {MAX_JOB_JSON // 1024} KiB "
                                                            '({"path": ..., "window": ...})')
            body = await asyncio.to_thread(parse_json, raw)
            if not isinstance(body, dict) or not isinstance(body.get("path"), str):
                raise ApiError(400, "missing_field", 'a JSON job needs {"path": "<file under the jobs root>"}')
            params.update({k: str(v) for k, v in body.items() if k != "path"})
            req = self.request(params)
            source, video, owned = self.job_call(self.jobs.allowed_path, body["path"]), body["path"], False
        else:
            upload, req = await read_upload(request, params, self.spool, self.request)
            source, video, owned = upload.path, upload.name, True
        job = self.job_call(self.jobs.submit, model=req.model, video=video, source=source, owned=owned,
                            topk=req.topk, window=req.window, owner=owner)
        return job.to_dict()

    @staticmethod
    def job_call(fn, *args, **kwargs):
        """``fn(...)`` of the job store, its domain errors answered as HTTP errors (:data:`JOB_ERRORS`)."""
        try:
            return fn(*args, **kwargs)
        except JobError as e:
            status, kind, headers = JOB_ERRORS[type(e)]
            raise ApiError(status, kind, str(e), headers=headers) from None

    def run_job(self, job: Job, progress) -> dict:
        """What a job does (the job store's run callable): a whole-video prediction, or windows,
        from the file the store opened (a path job: checked inside the jobs root as opened)."""
        model = self.models[job.model]
        limits = self.limits(lambda: progress(job.progress))
        with self.jobs.opened(job) as source:
            if job.window is None:
                x = model.prepare_video(source, name=job.video, limits=limits)
                probs = model.run_many([x.feed])[0]
                progress(1.0)
                out = {"predictions": [p.__dict__ for p in model.top(probs, job.topk)]}
                return {**out, "warning": x.warning} if x.warning else out
            tl = run_windows(model, source, job.window, on_window=progress, name=job.video, limits=limits)
        return tl.answer(job.topk, max_bytes=self.max_result)


def lower_priority(niceness: int = 10) -> None:
    """Run the calling thread at a lower OS priority (Linux: a thread's nice value is its own), so
    long work (windows, jobs) yields the cores to short predictions; a no-op where not allowed."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass


def parse_json(body: bytes):
    """A JSON request body (off the event loop: a large body takes a while), or 400."""
    import json

    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, "malformed_request", f"the JSON body is not valid ({type(e).__name__}: "
                                                 f"{str(e)[:200]})") from None


#: The web page at ``/``: one static file, no build step (package data of jedi_deploy.serve).
PAGE = (Path(__file__).parent / "page.html").read_text()


def create_app(cfg: ServeConfig):
    """The FastAPI app (models are loaded here, so bad model files fail before serving)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import JSONResponse, Response

    class StrictJSON(JSONResponse):
        """Every JSON answer: NaN/Inf become null (:func:`guard.dumps`), never a bare NaN or a 500."""

        def render(self, content) -> bytes:
            return dumps(content)

    service = Service(cfg)

    @asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="jedi-deploy", summary="Video action recognition with JEDI students",
                  lifespan=lifespan, docs_url="/docs", redoc_url=None, default_response_class=StrictJSON)
    app.state.service = service
    m = service.metrics

    def error(request, status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
        m.errors.labels(kind).inc()
        return StrictJSON(error_body(status, kind, message, request.url.path), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error(request, e.status, e.kind, e.message, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        return error(request, e.status_code, "http_error", str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e):
        return error(request, 422, "invalid_field",
                     "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))

    @app.exception_handler(Exception)
    async def _bug(request, e):  # a bug: still JSON in the endpoint's shape, and the service keeps serving
        return error(request, 500, "internal", f"{type(e).__name__}: {str(e)[:300]}")

    @app.post("/v1/predict", openapi_extra=openapi.PREDICT)
    async def predict(request: Request):
        """Top-k labels of an uploaded video."""
        return await service.predict(request)

    @app.post("/v1/jobs", status_code=202, openapi_extra=openapi.JOBS)
    async def submit_job(request: Request):
        """Queue a long video (upload, or a path under --jobs-root); poll GET /v1/jobs/{id}."""
        job = await service.submit_job(request)
        return JSONResponse(job, status_code=202, headers={"Location": job["url"]})

    @app.get("/v1/jobs")
    async def list_jobs(request: Request):
        """The caller's jobs (newest first), without results: with --api-key, the jobs submitted with
        the caller's key; without keys there is no caller to list for (job ids are capabilities)."""
        if not cfg.api_keys:
            raise ApiError(403, "listing_off", "job listing needs API keys (jedi serve --api-key): jobs are listed "
                                               "per key; keep the id that POST /v1/jobs answered")
        owner = request.scope.get(CALLER)
        return {"jobs": [{k: v for k, v in j.to_dict().items() if k != "result"} for j in service.jobs.owned_by(owner)]}

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str):
        """Status, progress and (when done) the result of a job (serialised off the event loop)."""
        job = service.job_call(service.jobs.get, job_id)
        return Response(await asyncio.to_thread(dumps, job.to_dict()), media_type="application/json")

    @app.delete("/v1/jobs/{job_id}")
    async def cancel_job(job_id: str):
        """Cancel a job: a queued one never runs, a running one stops at its next window."""
        return service.job_call(service.jobs.cancel, job_id).to_dict()

    @app.get("/", include_in_schema=False)
    async def page():
        """The web page: upload a video, see the top-k and, with a window, the timeline (serve/page.html)."""
        from starlette.responses import HTMLResponse

        return HTMLResponse(PAGE)

    @app.get("/v1/models")
    async def models():
        """Metadata of every served model."""
        return {"models": [service.pool.info(k) for k in service.models]}

    @app.get("/healthz")
    async def healthz():
        if service.stopping:
            return JSONResponse({"status": "shutting_down"}, status_code=503)
        return {"status": "ok", "models": sorted(service.models)}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(m.render(), media_type=CONTENT_TYPE_LATEST)

    from .kserve import add_routes

    add_routes(app, service)  # the Open Inference Protocol (KServe v2) beside /v1

    app.add_middleware(UploadGuard, cfg=cfg, metrics=m)
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so the address can be printed before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit Nagle off: a response's header and body writes must not wait
    # for the client's delayed ACK (~40 ms per keep-alive request otherwise).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(cfg: ServeConfig, echo=print) -> None:
    """Load the models, bind, print the address and serve until SIGINT/SIGTERM."""
    import uvicorn

    app = create_app(cfg)
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_keys:
        echo(f"warning: listening on {cfg.host}, reachable from other machines, without authentication "
             "(--api-key) or TLS (see the README)")
    names = ", ".join(app.state.service.models)
    if cfg.runtime == "auto":
        from jedi_deploy.runners.probe import describe_pick

        for name, m in app.state.service.models.items():
            echo(f"{name}: {describe_pick(m.runtime_info['picked_by_probe'])}")
    echo(f"serving {names} on http://{host}:{port} (max batch {cfg.max_batch_size}, max delay {cfg.max_delay_ms} ms)")
    sys.stdout.flush()
    from .protocol import protocol_class

    http = protocol_class(app.state.service.metrics, cfg.header_timeout_s)
    service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # the signal: jobs and windows stop now, not after the wait
            service.begin_stop()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=cfg.shutdown_grace_s,
                                   access_log=False, http=http, timeout_keep_alive=cfg.keep_alive_s))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown; that is a normal stop
        pass


if __name__ == "__main__":  # python -m jedi_deploy.serve.server: the `jedi serve` command, without torch
    from jedi_deploy.serve.cli import serve as command

    command.main(prog_name="python -m jedi_deploy.serve.server")
