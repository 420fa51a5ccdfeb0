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
batching). Every failure is a JSON ``{"error": {"code", "type", "message"}}`` with a 4xx/5xx
status, and the service keeps serving. On SIGINT/SIGTERM it stops accepting connections,
finishes the requests in flight, then exits.
"""
import asyncio
import os
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from jedi_deploy.contracts.errors import InputError, VideoDecodeError

from .batcher import MicroBatcher
from .config import ServeConfig
from .guard import ApiError, UploadGuard, error_body
from .jobs import JobStore
from .metrics import Metrics
from .runtime import OnnxModel, Prepared

UPLOAD_FIELD = "video"


def _int_field(value, name: str, low: int, high: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ApiError(422, "invalid_field", f"field {name!r} must be an integer, got {value!r}") from None
    if not low <= n <= high:
        raise ApiError(422, "invalid_field", f"field {name!r} must be in {low}..{high}, got {n}")
    return n


def _window_fields(params: dict) -> tuple[float, float, int] | None:
    """``window``/``stride`` (seconds) and ``smooth`` (windows) of a sliding-window request, or None."""
    if "window" not in params:
        if "stride" in params or "smooth" in params:
            raise ApiError(422, "invalid_field", "'stride' and 'smooth' belong to sliding-window requests: "
                                                 "give 'window' (seconds) too")
        return None
    try:
        window = float(params["window"])
        stride = float(params.get("stride", window / 2))
    except ValueError:
        raise ApiError(422, "invalid_field", f"'window' and 'stride' must be seconds, got {params.get('window')!r} "
                                             f"and {params.get('stride')!r}") from None
    if not (0 < stride <= window <= 3600):
        raise ApiError(422, "invalid_field", f"need 0 < stride <= window <= 3600 seconds, got window {window}, "
                                             f"stride {stride}")
    return window, stride, _int_field(params.get("smooth", 1), "smooth", 1, 99)


class Service:
    """The models, their batchers and the decode pool behind one FastAPI app."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg.check()
        self.metrics = Metrics()
        loaded = [OnnxModel(path, providers=cfg.providers, threads=cfg.threads, runtime=cfg.runtime)
                  for path in cfg.models]
        self.models: dict[str, OnnxModel] = {}
        for m in loaded:  # served under its name; a student and its expert under their file stems
            shared = sum(x.name == m.name for x in loaded) > 1
            name = m.path.name.removesuffix(".onnx") if shared else m.name
            if name in self.models:
                raise InputError(f"two models would both be served as {name!r} ({self.models[name].path} and "
                                 f"{m.path}); serve them from separate processes")
            self.models[name] = m
        self.batchers: dict[str, MicroBatcher] = {}
        self.decode_pool: ThreadPoolExecutor | None = None
        self.tmp: tempfile.TemporaryDirectory | None = None
        self.stopping = False
        self.jobs = JobStore(workers=cfg.job_workers, max_jobs=cfg.max_jobs, ttl_s=cfg.job_ttl_s,
                             root=Path(cfg.jobs_root) if cfg.jobs_root else None)

    # lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        import av.video.reformatter  # noqa: F401 - imported now, not on the first upload (~0.1 s)

        self.tmp = tempfile.TemporaryDirectory(prefix="jedi-serve-")
        self.decode_pool = ThreadPoolExecutor(self.cfg.decode_workers, thread_name_prefix="decode")
        for m in self.models.values():
            m.run(m.sample_input(1))  # ORT's first run allocates and plans; not on a user's request
        for name, m in self.models.items():
            self.batchers[name] = MicroBatcher(m, name, self.cfg.max_batch_size, self.cfg.max_delay_ms / 1e3,
                                               self.metrics)
            self.batchers[name].start()

    async def stop(self) -> None:
        """Runs after uvicorn has stopped accepting and the requests in flight are answered."""
        self.stopping = True
        for b in self.batchers.values():
            await b.stop()
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=True)
        self.jobs.close()  # running jobs stop at their next window; their uploads are removed
        if self.tmp is not None:
            self.tmp.cleanup()
        print("jedi serve: stopped cleanly (requests in flight were answered)", file=sys.stderr, flush=True)

    # requests ---------------------------------------------------------------------------
    def model_info(self, name: str, m: OnnxModel) -> dict:
        inputs = [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype, "layout": i.layout, "expert": i.expert,
                   "preprocess": i.preprocess.to_dict(), "views_in_graph": i.views} for i in m.card.inputs]
        return {"name": name, "kind": m.kind, "file": m.path.name, "dataset": m.card.dataset, "arch": m.card.arch,
                "num_classes": len(m.categories), "categories": m.categories,
                "preprocess": inputs[0]["preprocess"], "views_in_graph": inputs[0]["views_in_graph"],
                "input": inputs[0], "inputs": inputs, "output": m.output_name,
                "precision": m.card.precision, "runtime": m.runtime, "runtime_info": m.runtime_info,
                "providers": m.runtime_info.get("providers", []),
                "max_batch_size": self.cfg.max_batch_size, "max_delay_ms": self.cfg.max_delay_ms}

    def pick_model(self, name: str | None) -> str:
        if name is None or name == "":
            if len(self.models) == 1:
                return next(iter(self.models))
            raise ApiError(400, "missing_field", f"field 'model' is required when several models are served: "
                                                 f"{sorted(self.models)}")
        if name not in self.models:
            raise ApiError(404, "unknown_model", f"no model named {name!r}; served: {sorted(self.models)}")
        return name

    def _temp_path(self, filename: str) -> str:
        fd, tmp = tempfile.mkstemp(dir=self.tmp.name, suffix=Path(filename).suffix[:16])
        os.close(fd)
        return tmp

    async def _spool_body(self, request, filename: str) -> str:
        """Stream a raw request body into a private temp file: memory holds one chunk at a time,
        whatever the upload's size (the guard caps the size and times out a stalled body)."""
        tmp = self._temp_path(filename)
        try:
            with open(tmp, "wb") as f:
                async for chunk in request.stream():
                    f.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def _as_file(self, source, filename: str) -> str:
        """A spooled temp file's path as is, or a multipart file object copied into a new temp file
        (removed again if the copy fails); the caller removes the file when done."""
        if isinstance(source, str):
            return source
        tmp = self._temp_path(filename)
        try:
            with open(tmp, "wb") as f:
                source.seek(0)
                while chunk := source.read(1 << 20):
                    f.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def _decode_upload(self, model: OnnxModel, source, filename: str) -> Prepared:
        """Decode one upload - a spooled temp file's path (removed here) or a multipart file object
        (copied to one) - in the decode pool."""
        t0 = time.perf_counter()
        tmp = self._as_file(source, filename)
        try:
            try:
                x = model.prepare_video(tmp)
            except VideoDecodeError as e:
                raise ApiError(422, "invalid_video", str(e).replace(tmp, filename)) from None
            if x.warning:
                x = Prepared(x.feed, x.warning.replace(tmp, filename).replace(Path(tmp).name, filename))
        finally:
            os.unlink(tmp)
        self.metrics.decode.observe(time.perf_counter() - t0)
        return x

    async def _read_form(self, request, params: dict):
        """A multipart body: (the form, which the caller closes; its video upload). Its text fields
        (model, topk, window, stride, smooth) join ``params`` unless the query already set them."""
        from starlette.datastructures import UploadFile
        from starlette.requests import ClientDisconnect

        try:  # python-multipart spools file parts to disk past 1 MiB
            form = await request.form(max_files=1, max_fields=8)
        except (ApiError, ClientDisconnect):
            raise  # over the size limit, stalled, or the client went away: answered by the guard
        except Exception as e:  # whatever the multipart parser makes of a malformed body
            raise ApiError(400, "malformed_request", f"cannot parse the multipart body ({e})") from None
        try:
            for k in ("model", "topk", "window", "stride", "smooth"):
                if k in form and not isinstance(form[k], UploadFile):
                    params.setdefault(k, form[k])
            upload = form.get(UPLOAD_FIELD)
            if upload is None:
                raise ApiError(400, "missing_field", f"multipart field {UPLOAD_FIELD!r} (the video file) is "
                                                     f"missing; got fields {sorted(form.keys())}")
            if not isinstance(upload, UploadFile):
                raise ApiError(422, "invalid_field", f"field {UPLOAD_FIELD!r} must be a file upload, not a text value")
        except ApiError:
            await form.close()
            raise
        return form, upload

    async def predict(self, request) -> dict:
        params = dict(request.query_params)
        ctype = request.headers.get("content-type", "")
        form = None
        try:
            if ctype.startswith("multipart/form-data"):
                form, upload = await self._read_form(request, params)
                source, filename = upload.file, upload.filename or "upload"
                name, topk = self._request_model(params)
            elif ctype.startswith(("application/x-www-form-urlencoded", "application/json", "text/")):
                raise ApiError(415, "unsupported_media_type",
                               f"send the video as multipart/form-data (field {UPLOAD_FIELD!r}) or as the raw "
                               f"request body (e.g. video/mp4), not {ctype.split(';')[0]}")
            else:
                filename = params.get("filename", "upload")
                name, topk = self._request_model(params)  # before reading a body that would be refused
                source = await self._spool_body(request, filename)
            model = self.models[name]
            loop = asyncio.get_running_loop()
            windowed = _window_fields(params)
            if windowed is not None:  # a timeline: the windows run in the decode pool, outside the batcher
                return await loop.run_in_executor(self.decode_pool, self._timeline_upload, model, name, source,
                                                  filename, windowed, topk)
            batcher = self.batchers[name]
            t0 = time.perf_counter()
            batcher.incoming += 1
            try:
                x = await loop.run_in_executor(self.decode_pool, self._decode_upload, model, source, filename)
            finally:
                batcher.incoming -= 1
            t1 = time.perf_counter()
            probs = await batcher.submit(x.feed)
            t2 = time.perf_counter()
        finally:
            if form is not None:
                await form.close()
        answer = {"model": name, "video": filename, "predictions": [p.__dict__ for p in model.top(probs, topk)],
                  "timing_ms": {"decode": round(1e3 * (t1 - t0), 3), "queue_and_inference": round(1e3 * (t2 - t1), 3)}}
        if x.warning:  # truncated or corrupt: predicted from the frames before the first error
            answer["warning"] = x.warning
        return answer

    async def submit_job(self, request) -> dict:
        """``POST /v1/jobs``: a path under the jobs root (JSON ``{"path": ...}``) or an upload (multipart
        field ``video`` or the raw body), queued; the answer (202) names the job."""
        import json

        params = dict(request.query_params)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            try:
                body = json.loads(await request.body())
            except ValueError as e:
                raise ApiError(400, "malformed_request", f"the JSON body is not valid ({e})") from None
            if not isinstance(body, dict) or not isinstance(body.get("path"), str):
                raise ApiError(400, "missing_field", 'a JSON job needs {"path": "<file under the jobs root>"}')
            params.update({k: str(v) for k, v in body.items() if k != "path"})
            name, topk = self._request_model(params)
            windowed = _window_fields(params)
            source, video, owned = self.jobs.allowed_path(body["path"]), body["path"], False
        elif ctype.startswith("multipart/form-data"):
            form, upload = await self._read_form(request, params)
            try:
                name, topk = self._request_model(params)
                windowed = _window_fields(params)
                video = upload.filename or "upload"
                source, owned = self._as_file(upload.file, video), True
            finally:
                await form.close()
        else:
            video = params.get("filename", "upload")
            name, topk = self._request_model(params)
            windowed = _window_fields(params)
            source, owned = await self._spool_body(request, video), True
        return self.jobs.submit(self, model=name, video=video, source=source, owned=owned, topk=topk,
                                windowed=windowed).to_dict()

    def _timeline_upload(self, model: OnnxModel, name: str, source, filename: str, windowed, topk: int) -> dict:
        """Sliding-window inference over one upload (serve.timeline), in the decode pool."""
        from .timeline import run_windows

        window, stride, smooth = windowed
        t0 = time.perf_counter()
        tmp = self._as_file(source, filename)
        try:
            try:
                tl = run_windows(model, tmp, window=window, stride=stride, smooth_windows=smooth)
            except (VideoDecodeError, InputError) as e:
                raise ApiError(422, "invalid_video", str(e).replace(tmp, filename)) from None
        finally:
            os.unlink(tmp)
        return {"model": name, **tl.answer(topk, filename, tmp),
                "timing_ms": {"total": round(1e3 * (time.perf_counter() - t0), 3)}}

    def _request_model(self, params: dict) -> tuple[str, int]:
        name = self.pick_model(params.get("model"))
        n = len(self.models[name].categories)
        return name, _int_field(params.get("topk", min(self.cfg.topk, n)), "topk", 1, n)


#: The web page at ``/``: one static file, no build step (package data of jedi_deploy.serve).
PAGE = (Path(__file__).parent / "page.html").read_text()


def create_app(cfg: ServeConfig):
    """The FastAPI app (models are loaded here, so bad model files fail before serving)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import JSONResponse, Response

    service = Service(cfg)

    @asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="jedi-deploy", summary="Video action recognition with JEDI students",
                  lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = service
    m = service.metrics

    def error(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
        m.errors.labels(kind).inc()
        return JSONResponse(error_body(status, kind, message), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error(e.status, e.kind, e.message, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        return error(e.status_code, "http_error", str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e):
        return error(422, "invalid_field", "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))

    @app.post("/v1/predict")
    async def predict(request: Request):
        """Top-k labels of an uploaded video."""
        return await service.predict(request)

    @app.post("/v1/jobs", status_code=202)
    async def submit_job(request: Request):
        """Queue a long video (upload, or a path under --jobs-root); poll GET /v1/jobs/{id}."""
        job = await service.submit_job(request)
        return JSONResponse(job, status_code=202, headers={"Location": job["url"]})

    @app.get("/v1/jobs")
    async def list_jobs():
        """Every job kept (newest first), without results."""
        service.jobs.purge()
        jobs = sorted(service.jobs.jobs.values(), key=lambda j: -j.created)
        return {"jobs": [{k: v for k, v in j.to_dict().items() if k != "result"} for j in jobs]}

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str):
        """Status, progress and (when done) the result of a job."""
        return service.jobs.get(job_id).to_dict()

    @app.delete("/v1/jobs/{job_id}")
    async def cancel_job(job_id: str):
        """Cancel a job: a queued one never runs, a running one stops at its next window."""
        return service.jobs.cancel(job_id).to_dict()

    @app.get("/", include_in_schema=False)
    async def page():
        """The web page: upload a video, see the top-k and, with a window, the timeline (serve/page.html)."""
        from starlette.responses import HTMLResponse

        return HTMLResponse(PAGE)

    @app.get("/v1/models")
    async def models():
        """Metadata of every served model."""
        return {"models": [service.model_info(k, x) for k, x in service.models.items()]}

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

    app.add_middleware(UploadGuard, limit=int(cfg.max_upload_mb * 2**20), metrics=m, max_inflight=cfg.max_inflight,
                       body_timeout=cfg.body_timeout_s)
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
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        echo(f"warning: listening on {cfg.host}, reachable from other machines; there is no authentication")
    names = ", ".join(app.state.service.models)
    if cfg.runtime == "auto":
        from jedi_deploy.runners.probe import describe_pick

        for name, m in app.state.service.models.items():
            echo(f"{name}: {describe_pick(m.runtime_info['picked_by_probe'])}")
    echo(f"serving {names} on http://{host}:{port} (max batch {cfg.max_batch_size}, max delay {cfg.max_delay_ms} ms)")
    sys.stdout.flush()
    from .protocol import protocol_class

    http = protocol_class(app.state.service.metrics, cfg.header_timeout_s)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=cfg.graceful_timeout_s,
                                           access_log=False, http=http, timeout_keep_alive=cfg.keep_alive_s))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown; that is a normal stop
        pass


if __name__ == "__main__":  # python -m jedi_deploy.serve.server: the `jedi serve` command, without torch
    from jedi_deploy.serve.cli import serve as command

    command.main(prog_name="python -m jedi_deploy.serve.server")
