"""The HTTP/1.1 connection layer of ``jedi serve``: uvicorn's h11 protocol with what a service
exposed to real clients needs and uvicorn does not do by itself.

* A **header timeout**: a connection must deliver a complete request head within
  ``header_timeout`` seconds of connecting, or of its first byte after an idle keep-alive gap
  (slow-header clients, "slowloris", otherwise hold a connection forever). It is answered with
  ``408`` and closed.
* Requests the HTTP parser rejects (a malformed request line or header) get the service's JSON
  error shape instead of uvicorn's plain-text ``400``.
* Both are counted in ``/metrics`` (``jedi_requests{endpoint="other"}`` and ``jedi_errors``),
  like every rejection the app itself makes.

The idle keep-alive timeout is uvicorn's own (``timeout_keep_alive``); the body timeout is the
app's (``guard.UploadGuard``), which sees the body arrive chunk by chunk.
"""
from __future__ import annotations

import json

from .metrics import Metrics


def _raw_json_response(status: int, reason: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(data)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + data


def protocol_class(metrics: Metrics, header_timeout: float):
    """An ``asyncio.Protocol`` class for ``uvicorn.Config(http=...)``, bound to ``metrics``."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from .guard import error_body

    class JediH11Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE and self.timeout_keep_alive_task is None:
                self._arm_header_timer()  # a request head has begun (or not yet): it must complete in time
            else:
                self._cancel_header_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            self._cancel_header_timer()  # the keep-alive timer takes over while the connection is idle
            super().on_response_complete()

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._on_header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            metrics.errors.labels("header_timeout").inc()
            metrics.requests.labels("other", "408").inc()
            text = f"no complete request head within {header_timeout:g} s (jedi serve --header-timeout-s)"
            self.transport.write(_raw_json_response(408, "Request Timeout", error_body(408, "header_timeout", text)))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            metrics.errors.labels("malformed_http").inc()
            metrics.requests.labels("other", "400").inc()
            self._cancel_header_timer()
            self.transport.write(_raw_json_response(400, "Bad Request", error_body(
                400, "malformed_http", f"the HTTP request could not be parsed ({msg.rstrip('.')})")))
            self.transport.close()

    return JediH11Protocol
