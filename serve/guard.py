"""The HTTP edge of ``jedi serve``: the typed API error, the JSON error shape, and the ASGI
guard that counts every request and refuses oversized uploads before an endpoint reads them."""
from __future__ import annotations

import asyncio
import json
import time

from .metrics import Metrics

#: Endpoints counted under their own label in /metrics (everything else is "other").
ENDPOINTS = ("/v1/predict", "/v1/models", "/healthz", "/metrics")


class ApiError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, kind: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, dict(headers or {})


class UploadGuard:
    """ASGI middleware around every request: counts it (status, latency, in flight), refuses
    bodies over ``limit`` bytes with 413 (up front from Content-Length, or while streaming a body
    longer than announced / chunked), refuses a prediction with 503 + ``Retry-After`` while
    ``max_inflight`` are already being uploaded, decoded or run (before reading its body), answers
    408 when a body stalls for ``body_timeout`` seconds, and turns a client that went away
    mid-upload or an unexpected exception into a counted error instead of a stuck or dead worker."""

    def __init__(self, app, limit: int, metrics: Metrics, max_inflight: int = 64, body_timeout: float = 30.0):
        self.app, self.limit, self.metrics = app, limit, metrics
        self.max_inflight, self.body_timeout = max_inflight, body_timeout
        self.predicting = 0  # /v1/predict requests between arrival and answer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.requests import ClientDisconnect

        m, path = self.metrics, scope["path"]
        endpoint = path if path in ENDPOINTS else ("/v1/jobs" if path.startswith("/v1/jobs") else (
            "/v2/infer" if path.startswith("/v2/models/") and path.endswith("/infer") else (
                "/v2" if path.startswith("/v2") else "other")))
        status, seen, t0, body_done = 0, 0, time.perf_counter(), False

        async def limited_receive():
            nonlocal seen, body_done
            if body_done:  # after the body, receive() only waits for a disconnect: no timeout
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:
                raise ApiError(408, "body_timeout", f"the request body stalled: no data for {self.body_timeout:g} s "
                                                    "(jedi serve --body-timeout-s)") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.limit:
                    raise ApiError(413, "upload_too_large", self._message(seen, at_least=True))
            return message

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def answer(code: int, kind: str, text: str, close: bool = False, headers=()):
            m.errors.labels(kind).inc()
            await json_response(send_status, code, error_body(code, kind, text), close, headers)

        predict = path == "/v1/predict" or endpoint == "/v2/infer"
        m.in_flight.inc()
        try:
            length = dict(scope.get("headers") or []).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                await answer(413, "upload_too_large", self._message(int(length)), close=True)
            elif predict and self.predicting >= self.max_inflight:
                await answer(503, "overloaded", f"{self.predicting} videos are being uploaded or classified, the most "
                             f"this service takes at once (jedi serve --max-inflight); retry shortly", close=True,
                             headers=[(b"retry-after", b"1")])
            else:
                self.predicting += predict
                try:
                    await self.app(scope, limited_receive, send_status)
                finally:
                    self.predicting -= predict
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


async def json_response(send, status: int, body: dict, close: bool = False, extra_headers=()) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
               *extra_headers]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def error_body(status: int, kind: str, message: str) -> dict:
    return {"error": {"code": status, "type": kind, "message": message}}
