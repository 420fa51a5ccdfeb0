"""The HTTP edge of ``jedi serve``: the typed API error, the JSON error shapes, and the ASGI
guard that counts every request, checks its API key, refuses oversized or over-budget uploads
before an endpoint reads them and times out bodies that stall, crawl or take too long."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import time

from .config import RATE_GRACE_S, ServeConfig
from .metrics import Metrics

#: Endpoints counted under their own label in /metrics (everything else is "other").
ENDPOINTS = ("/v1/predict", "/v1/models", "/healthz", "/metrics")
#: What answers without an API key: liveness/readiness probes and the page itself (which asks for
#: the key and sends it with every request it makes).
OPEN_PATHS = ("/healthz", "/v2/health/live", "/v2/health/ready", "/")
#: A full service makes room for a new upload by dropping the slowest body still arriving, if it
#: has been arriving this long and averages under EVICT_RATE_KIB (a trickling client cannot keep
#: real uploads out by holding every --max-inflight slot).
EVICT_AFTER_S = 0.25
EVICT_RATE_KIB = 64.0
#: How long a new upload waits for a slot before it is refused with 503 (a burst is queued, not refused).
ADMIT_WAIT_S = 1.0

#: Where the caller's identity (a digest of its API key, or None) is put in the ASGI scope.
CALLER = "jedi.caller"


def caller_id(key: bytes) -> str:
    """What identifies a caller (job ownership): a digest of its key, never the key itself."""
    return hashlib.sha256(key).hexdigest()[:16]


class ApiError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, dict(headers or {})


class UploadGuard:
    """ASGI middleware around every request: counts it (status, latency, in flight); with API keys,
    answers 401 to a request without a valid bearer token (every key compared in constant time)
    except on :data:`OPEN_PATHS`; refuses bodies over the upload limit with 413 (up front from
    Content-Length, or while streaming a body longer than announced / chunked); refuses an upload
    (``/v1/predict``, ``POST /v1/jobs``, ``/v2`` infer) with 503 + ``Retry-After`` while
    ``max_inflight`` are already being uploaded, decoded or run (before reading its body); answers
    408 when a body stalls (``body_timeout_s`` of silence), crawls (under ``min_body_rate_kib``
    once it has taken :data:`RATE_GRACE_S`) or outlasts ``body_deadline_s``; and turns a client that
    went away mid-upload or an unexpected exception into a counted error instead of a stuck or dead
    worker. Every answer it makes is in the endpoint's own error shape (:func:`error_body`)."""

    def __init__(self, app, cfg: ServeConfig, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.arriving: set[_Body] = set()  # uploads whose body is still arriving
        self.limit = int(cfg.max_upload_mb * 2**20)
        self.max_inflight, self.body_timeout = cfg.max_inflight, cfg.body_timeout_s
        self.deadline, self.min_rate = cfg.body_deadline_s, cfg.min_body_rate_kib * 1024
        self.keys = [k.encode() for k in cfg.api_keys]
        self.predicting = 0  # uploads between arrival and answer

    def caller(self, scope, headers: dict) -> tuple[bool, str | None]:
        """(allowed, caller id): every key is compared, so the time taken says nothing of a near miss."""
        if not self.keys:
            return True, None
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        token = token.strip()
        match = None
        for key in self.keys:
            if hmac.compare_digest(token, key):
                match = key
        if scheme.lower() != b"bearer" or match is None:
            return scope["path"] in OPEN_PATHS, None
        return True, caller_id(match)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import ClientDisconnect

        m, path = self.metrics, scope["path"]
        endpoint = path if path in ENDPOINTS else ("/v1/jobs" if path.startswith("/v1/jobs") else (
            "/v2/infer" if path.startswith("/v2/models/") and path.endswith("/infer") else (
                "/v2" if path.startswith("/v2") else "other")))
        status, t0, body_done = 0, time.perf_counter(), False
        body = _Body()

        async def limited_receive():
            nonlocal body_done
            if body_done:  # after the body, receive() only waits for a disconnect: no timeout
                return await receive()
            if body.started is None:
                body.started = time.monotonic()
                self.arriving.add(body)
            left = self.deadline - (time.monotonic() - body.started)
            try:
                message = await body.receive(receive, max(0.0, min(self.body_timeout, left)))
            except _Evicted:
                raise ApiError(408, "body_timeout", f"the request body arrived at {body.rate() / 1024:.1f} KiB/s and "
                                                    "was dropped to make room for other uploads (jedi serve "
                                                    "--max-inflight)") from None
            except asyncio.TimeoutError:
                if left <= self.body_timeout:
                    raise ApiError(408, "body_timeout", f"the request body took longer than {self.deadline:g} s "
                                                        "(jedi serve --body-deadline-s)") from None
                raise ApiError(408, "body_timeout", f"the request body stalled: no data for {self.body_timeout:g} s "
                                                    "(jedi serve --body-timeout-s)") from None
            if message["type"] == "http.request":
                body.seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if body_done:
                    self.arriving.discard(body)
                if body.seen > self.limit:
                    raise ApiError(413, "upload_too_large", self._message(body.seen, at_least=True))
                took = time.monotonic() - body.started
                if not body_done and took > RATE_GRACE_S and body.seen < self.min_rate * took:
                    raise ApiError(408, "body_timeout", f"the request body arrives at {body.rate() / 1024:.1f} KiB/s, "
                                   f"under the {self.min_rate / 1024:g} KiB/s this service needs "
                                   "(jedi serve --min-body-rate-kib)")
            return message

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def answer(code: int, kind: str, text: str, close: bool = False, headers=()):
            m.errors.labels(kind).inc()
            await json_response(send_status, code, error_body(code, kind, text, path), close, headers)

        upload = path == "/v1/predict" or endpoint == "/v2/infer" or (path == "/v1/jobs" and scope["method"] == "POST")
        m.in_flight.inc()
        try:
            headers = dict(scope.get("headers") or [])
            allowed, scope[CALLER] = self.caller(scope, headers)
            length = headers.get(b"content-length", b"")
            if not allowed:
                await answer(401, "unauthorized", "this service needs an API key: send `Authorization: Bearer KEY`",
                             headers=[(b"www-authenticate", b'Bearer realm="jedi-deploy"')])
            elif length.isdigit() and int(length) > self.limit:
                await answer(413, "upload_too_large", self._message(int(length)), close=True)
            elif upload and not await self._admit():
                await answer(503, "overloaded", f"{self.predicting} uploads are being received or classified, the most "
                             f"this service takes at once (jedi serve --max-inflight); retry shortly", close=True,
                             headers=[(b"retry-after", b"1")])
            else:
                self.predicting += upload
                try:
                    await self.app(scope, limited_receive, send_status)
                finally:
                    self.predicting -= upload
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
            self.arriving.discard(body)
            m.in_flight.dec()
            m.requests.labels(endpoint, str(status or 500)).inc()
            m.latency.labels(endpoint).observe(time.perf_counter() - t0)

    async def _admit(self) -> bool:
        """Room for one more upload: a free slot, or one made by dropping the slowest trickling body;
        failing both, waited for up to :data:`ADMIT_WAIT_S` (a burst is absorbed, not refused)."""
        deadline = time.monotonic() + ADMIT_WAIT_S
        while self.predicting >= self.max_inflight and not self._evict_slowest():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _evict_slowest(self) -> bool:
        """Drop the slowest body still arriving (if one is slow enough, :data:`EVICT_RATE_KIB`) to make
        room for a new upload; whether one was dropped."""
        now = time.monotonic()
        slow = [b for b in self.arriving if not b.evict.is_set() and now - b.started >= EVICT_AFTER_S
                and b.rate(now) < EVICT_RATE_KIB * 1024]
        if not slow:
            return False
        victim = min(slow, key=lambda b: b.rate(now))
        victim.evict.set()
        self.arriving.discard(victim)
        self.metrics.errors.labels("evicted_slow_body").inc()
        return True

    def _message(self, size: int, at_least: bool = False) -> str:
        return (f"upload is {'over ' if at_least else ''}{size / 2**20:.1f} MiB; this service accepts at most "
                f"{self.limit / 2**20:.1f} MiB (jedi serve --max-upload-mb)")


class _Evicted(Exception):
    pass


class _Body:
    """An upload's body as it arrives: when it started, the bytes seen, and the signal that drops it."""

    def __init__(self):
        self.started: float | None = None
        self.seen = 0
        self.evict = asyncio.Event()

    def rate(self, now: float | None = None) -> float:
        took = (now or time.monotonic()) - (self.started or 0)
        return self.seen / took if self.started is not None and took > 0 else float("inf")

    async def receive(self, receive, timeout: float):
        """The next message, or :class:`_Evicted` once dropped, or a timeout."""
        if self.evict.is_set():
            raise _Evicted
        got = asyncio.ensure_future(receive())
        dropped = asyncio.ensure_future(self.evict.wait())
        done, _ = await asyncio.wait({got, dropped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        dropped.cancel()
        if got in done:
            return got.result()
        got.cancel()
        if self.evict.is_set():
            raise _Evicted
        raise asyncio.TimeoutError


async def json_response(send, status: int, body: dict, close: bool = False, extra_headers=()) -> None:
    data = dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
               *extra_headers]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def error_body(status: int, kind: str, message: str, path: str = "") -> dict:
    """An error in the protocol's own shape: ``{"error": "message"}`` under ``/v2`` (the Open
    Inference Protocol), ``{"error": {"code", "type", "message"}}`` everywhere else."""
    if path.startswith("/v2"):
        return {"error": message}
    return {"error": {"code": status, "type": kind, "message": message}}


def finite(obj):
    """``obj`` with every NaN or infinity replaced by None (JSON ``null``): JSON has no NaN, and a
    client parser that meets a bare ``NaN`` fails."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj) -> bytes:
    """Strict JSON bytes of an answer (NaN/Inf as null, see :func:`finite`)."""
    try:
        return json.dumps(obj, allow_nan=False).encode()
    except ValueError:
        return json.dumps(finite(obj), allow_nan=False).encode()
