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
import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jedi_deploy.errors import InputError, JediError, VideoDecodeError

from .runtime import OnnxModel

UPLOAD_FIELD = "video"


@dataclass
class ServeConfig:
    """Everything ``jedi serve`` can be told (defaults are the CLI's)."""

    models: list[Path] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    max_delay_ms: float = 5.0
    max_upload_mb: float = 64.0
    decode_workers: int = 2
    threads: int | None = None  # ONNX Runtime intra-op threads (None: one per core)
    providers: str | None = None
    topk: int = 5
    graceful_timeout_s: float = 30.0

    def check(self) -> "ServeConfig":
        if not self.models:
            raise InputError("no model given: pass one or more .onnx files written by `jedi export`")
        for name, value, low in (("max_batch_size", self.max_batch_size, 1), ("decode_workers", self.decode_workers, 1),
                                 ("topk", self.topk, 1)):
            if int(value) < low:
                raise InputError(f"{name} must be >= {low}, got {value}")
        if self.max_delay_ms < 0 or self.max_upload_mb <= 0:
            raise InputError("max_delay_ms must be >= 0 and max_upload_mb > 0")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must be in 0..65535, got {self.port}")
        return self


class ApiError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: they double the output and nobody graphs them

        self.registry = r = CollectorRegistry()
        self.requests = Counter("jedi_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("jedi_request_latency_seconds", "End-to-end request latency", ["endpoint"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=r)
        self.errors = Counter("jedi_errors", "Failed requests by error type", ["type"], registry=r)
        self.batch = Histogram("jedi_batch_size", "Videos per model call", ["model"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.infer = Histogram("jedi_inference_seconds", "Time of one batched model call", ["model"],
                               buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5), registry=r)
        self.decode = Histogram("jedi_decode_seconds", "Upload decode + preprocessing time",
                                buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5), registry=r)
        self.queue = Gauge("jedi_queue_depth", "Decoded videos waiting for the model", ["model"], registry=r)
        self.in_flight = Gauge("jedi_requests_in_flight", "Requests being handled", registry=r)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


@dataclass
class _Job:
    x: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    """Collects prepared videos for one model and runs them in batches on a single inference
    thread: a batch closes when it holds ``max_batch_size`` videos, ``max_delay`` seconds after
    its first video arrived, or as soon as the queue is empty and no other request for this
    model is still decoding (nothing more is coming), whichever comes first."""

    def __init__(self, model: OnnxModel, name: str, max_batch_size: int, max_delay: float, metrics: Metrics):
        self.model, self.name, self.max_batch, self.max_delay = model, name, max_batch_size, max_delay
        self.metrics = metrics
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"infer-{name}")
        self.task: asyncio.Task | None = None
        self.incoming = 0  # requests for this model still being read/decoded

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self.task is not None:
            await self.queue.put(None)
            await self.task
        self.pool.shutdown(wait=True)

    async def submit(self, x: np.ndarray) -> np.ndarray:
        if self.task is None or self.task.done():
            raise ApiError(503, "shutting_down", "the service is shutting down")
        job = _Job(x, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        self.metrics.queue.labels(self.name).set(self.queue.qsize())
        return await job.future

    async def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        loop = asyncio.get_running_loop()
        batch, deadline = [first], loop.time() + self.max_delay
        while len(batch) < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0 or not self.incoming:
                    break  # waiting only pays while more videos are on their way
                try:
                    job = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            if first is None:
                return
            batch, stop = await self._collect(first)
            self.metrics.queue.labels(self.name).set(self.queue.qsize())
            batch = [j for j in batch if not j.future.done()]  # the client went away meanwhile
            if batch:
                t0 = time.perf_counter()
                try:
                    probs = await loop.run_in_executor(self.pool, self.model.run_many, [j.x for j in batch])
                except Exception as e:  # noqa: BLE001 - answered to every waiting request
                    err = ApiError(500, "inference_failed", f"model {self.name!r} failed: {e}")
                    for j in batch:
                        if not j.future.done():
                            j.future.set_exception(err)
                else:
                    self.metrics.infer.labels(self.name).observe(time.perf_counter() - t0)
                    self.metrics.batch.labels(self.name).observe(len(batch))
                    for j, p in zip(batch, probs):
                        if not j.future.done():
                            j.future.set_result(p)
            if stop:
                return


class _Guard:
    """ASGI middleware around every request: counts it (status, latency, in flight), refuses
    bodies over ``limit`` bytes with 413 (up front from Content-Length, or while streaming a body
    longer than announced / chunked), and turns a client that went away mid-upload or an
    unexpected exception into a counted error instead of a stuck or dead worker."""

    def __init__(self, app, limit: int, metrics: Metrics):
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import ClientDisconnect

        m, path = self.metrics, scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status, seen, t0 = 0, 0, time.perf_counter()

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, "upload_too_large", self._message(seen, at_least=True))
            return message

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def answer(code: int, kind: str, text: str, close: bool = False):
            m.errors.labels(kind).inc()
            await _json_response(send_status, code, _error_body(code, kind, text), close)

        m.in_flight.inc()
        try:
            length = dict(scope.get("headers") or []).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                await answer(413, "upload_too_large", self._message(int(length)), close=True)
            else:
                await self.app(scope, limited_receive, send_status)
        except ClientDisconnect:
            status = 499  # nginx's "client closed request": nobody is left to answer
            m.errors.labels("client_disconnect").inc()
        except ApiError as e:  # raised by limited_receive outside of an endpoint's handlers
            if not status:
                await answer(e.status, e.kind, e.message, close=True)
        except Exception as e:  # noqa: BLE001 - a bug must not take the service down
            if not status:
                await answer(500, "internal", f"{type(e).__name__}: {e}")
        finally:
            m.in_flight.dec()
            m.requests.labels(endpoint, str(status or 500)).inc()
            m.latency.labels(endpoint).observe(time.perf_counter() - t0)

    def _message(self, size: int, at_least: bool = False) -> str:
        return (f"upload is {'over ' if at_least else ''}{size / 2**20:.1f} MiB; this service accepts at most "
                f"{self.limit / 2**20:.1f} MiB (jedi serve --max-upload-mb)")


async def _json_response(send, status: int, body: dict, close: bool = False) -> None:
    import json

    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _error_body(status: int, kind: str, message: str) -> dict:
    return {"error": {"code": status, "type": kind, "message": message}}


def _int_field(value, name: str, low: int, high: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ApiError(422, "invalid_field", f"field {name!r} must be an integer, got {value!r}") from None
    if not low <= n <= high:
        raise ApiError(422, "invalid_field", f"field {name!r} must be in {low}..{high}, got {n}")
    return n


class Service:
    """The models, their batchers and the decode pool behind one FastAPI app."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg.check()
        self.metrics = Metrics()
        loaded = [OnnxModel(path, providers=cfg.providers, threads=cfg.threads) for path in cfg.models]
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

    # lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        import av.video.reformatter  # noqa: F401 - imported now, not on the first upload (~0.1 s)

        from jedi_deploy import video

        video.DECODE_THREADS = 1  # concurrency comes from decoding several uploads at once
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
        if self.tmp is not None:
            self.tmp.cleanup()
        print("jedi serve: stopped cleanly (requests in flight were answered)", file=sys.stderr, flush=True)

    # requests ---------------------------------------------------------------------------
    def model_info(self, name: str, m: OnnxModel) -> dict:
        shape, dtype = m.input_signature()
        return {"name": name, "kind": m.meta.get("kind"), "file": m.path.name,
                "num_classes": len(m.categories), "categories": m.categories,
                "preprocess": m.preprocess.to_dict(), "views_in_graph": m.graph_views,
                "input": {"name": m.input_name, "shape": ["batch", *shape], "dtype": dtype},
                "output": m.output_name, "providers": m.session.get_providers(),
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

    def _prepare(self, model: OnnxModel, source, filename: str) -> np.ndarray:
        """Decode one upload (bytes or a file object) via a private temp file; runs in the pool."""
        t0 = time.perf_counter()
        fd, tmp = tempfile.mkstemp(dir=self.tmp.name, suffix=Path(filename).suffix[:16])
        try:
            with os.fdopen(fd, "wb") as f:
                if isinstance(source, (bytes, bytearray)):
                    f.write(source)
                else:
                    source.seek(0)
                    while chunk := source.read(1 << 20):
                        f.write(chunk)
            try:
                x = model.prepare(tmp)
            except VideoDecodeError as e:
                raise ApiError(422, "invalid_video", str(e).replace(tmp, filename)) from None
        finally:
            os.unlink(tmp)
        self.metrics.decode.observe(time.perf_counter() - t0)
        return x

    async def predict(self, request) -> dict:
        from starlette.datastructures import UploadFile
        from starlette.requests import ClientDisconnect

        params = dict(request.query_params)
        ctype = request.headers.get("content-type", "")
        form = None
        try:
            if ctype.startswith("multipart/form-data"):
                try:
                    form = await request.form(max_files=1, max_fields=8)
                except (ApiError, ClientDisconnect):
                    raise  # over the size limit / the client went away: answered by the guard
                except Exception as e:  # whatever the multipart parser makes of a malformed body
                    raise ApiError(400, "malformed_request", f"cannot parse the multipart body ({e})") from None
                for k in ("model", "topk"):
                    if k in form and not isinstance(form[k], UploadFile):
                        params.setdefault(k, form[k])
                upload = form.get(UPLOAD_FIELD)
                if upload is None:
                    raise ApiError(400, "missing_field", f"multipart field {UPLOAD_FIELD!r} (the video file) is "
                                                         f"missing; got fields {sorted(form.keys())}")
                if not isinstance(upload, UploadFile):
                    raise ApiError(422, "invalid_field", f"field {UPLOAD_FIELD!r} must be a file upload, "
                                                         "not a text value")
                source, filename = upload.file, upload.filename or "upload"
            elif ctype.startswith(("application/x-www-form-urlencoded", "application/json", "text/")):
                raise ApiError(415, "unsupported_media_type",
                               f"send the video as multipart/form-data (field {UPLOAD_FIELD!r}) or as the raw "
                               f"request body (e.g. video/mp4), not {ctype.split(';')[0]}")
            else:
                source, filename = await request.body(), params.get("filename", "upload")
            name = self.pick_model(params.get("model"))
            model = self.models[name]
            topk = _int_field(params.get("topk", min(self.cfg.topk, len(model.categories))), "topk", 1,
                              len(model.categories))
            loop = asyncio.get_running_loop()
            batcher = self.batchers[name]
            t0 = time.perf_counter()
            batcher.incoming += 1
            try:
                x = await loop.run_in_executor(self.decode_pool, self._prepare, model, source, filename)
            finally:
                batcher.incoming -= 1
            t1 = time.perf_counter()
            probs = await batcher.submit(x)
            t2 = time.perf_counter()
        finally:
            if form is not None:
                await form.close()
        return {"model": name, "video": filename,
                "predictions": [p.__dict__ for p in model.top(probs, topk)],
                "timing_ms": {"decode": round(1e3 * (t1 - t0), 3), "queue_and_inference": round(1e3 * (t2 - t1), 3)}}


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

    def error(status: int, kind: str, message: str) -> JSONResponse:
        m.errors.labels(kind).inc()
        return JSONResponse(_error_body(status, kind, message), status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error(e.status, e.kind, e.message)

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

    app.add_middleware(_Guard, limit=int(cfg.max_upload_mb * 2**20), metrics=m)
    return app


ENDPOINTS = ("/v1/predict", "/v1/models", "/healthz", "/metrics")


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
    echo(f"serving {names} on http://{host}:{port} (max batch {cfg.max_batch_size}, max delay {cfg.max_delay_ms} ms)")
    sys.stdout.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=cfg.graceful_timeout_s,
                                           access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown; that is a normal stop
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serve.server", description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path, help="ONNX files written by `jedi export`")
    d = ServeConfig()
    for name in ("host", "port", "max_batch_size", "max_delay_ms", "max_upload_mb", "decode_workers", "threads",
                 "providers", "topk"):
        default = getattr(d, name)
        ap.add_argument(f"--{name.replace('_', '-')}", default=default,
                        type=type(default) if default is not None else (int if name == "threads" else str))
    args = ap.parse_args(argv)
    try:
        serve(ServeConfig(**vars(args)))
    except JediError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
