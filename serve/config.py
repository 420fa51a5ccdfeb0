"""``ServeConfig``: everything ``jedi serve`` can be told, with its defaults (the CLI reads them here);
``WindowSpec``: the one rule for sliding-window requests (``jedi infer --window``, ``?window=``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from jedi_deploy.contracts.errors import ConfigError, InputError


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
    runtime: str = "ort"  # ort, openvino, or auto (a probe per model, in child processes)
    topk: int = 5
    max_inflight: int = 64  # /v1/predict requests being uploaded, decoded or run; more get 503
    header_timeout_s: float = 10.0  # a request head must arrive within this
    body_timeout_s: float = 30.0  # longest pause while a request body is arriving
    body_deadline_s: float = 300.0  # a whole request body must arrive within this
    min_body_rate_kib: float = 16.0  # KiB/s a body must average once it has taken RATE_GRACE_S
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    shutdown_grace_s: float = 10.0  # SIGTERM: longest wait for requests and jobs in flight, then exit
    max_frame_pixels: int = 3840 * 2160  # decoded frames larger than this (width x height) are refused
    max_result_mb: float = 8.0  # the largest answer a request or job may produce (JSON)
    api_keys: tuple[str, ...] = ()  # bearer tokens required on everything but health checks (none: open)
    jobs_root: Path | None = None  # POST /v1/jobs may name files under this folder (None: uploads only)
    max_jobs: int = 16  # jobs queued or running; more get 503
    job_ttl_s: float = 3600.0  # finished jobs (and their results) are kept this long
    job_workers: int = 1  # threads running jobs

    def check(self) -> "ServeConfig":
        if not self.models:
            raise InputError("no model given: pass one or more .onnx files written by `jedi export`")
        for name, value, low in (("max_batch_size", self.max_batch_size, 1), ("decode_workers", self.decode_workers, 1),
                                 ("topk", self.topk, 1), ("max_inflight", self.max_inflight, 1),
                                 ("max_jobs", self.max_jobs, 1), ("job_workers", self.job_workers, 1)):
            if int(value) < low:
                raise InputError(f"{name} must be >= {low}, got {value}")
        if self.max_delay_ms < 0 or self.max_upload_mb <= 0:
            raise InputError("max_delay_ms must be >= 0 and max_upload_mb > 0")
        if self.max_frame_pixels < 64 * 64 or self.max_result_mb <= 0:
            raise InputError(f"max_frame_pixels must be >= 4096 and max_result_mb > 0, got {self.max_frame_pixels} "
                             f"and {self.max_result_mb}")
        if any(len(k) < MIN_KEY_CHARS or not k.isprintable() or " " in k for k in self.api_keys):
            raise InputError(f"an API key must be at least {MIN_KEY_CHARS} printable characters without spaces "
                             "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s", "body_deadline_s", "shutdown_grace_s"):
            if getattr(self, name) <= 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.min_body_rate_kib < 0:
            raise InputError(f"min_body_rate_kib must be >= 0, got {self.min_body_rate_kib}")
        if self.job_ttl_s <= 0:
            raise InputError(f"job_ttl_s must be > 0, got {self.job_ttl_s}")
        if self.jobs_root is not None and not Path(self.jobs_root).is_dir():
            raise InputError(f"--jobs-root {self.jobs_root}: not a folder")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must be in 0..65535, got {self.port}")
        return self


#: The shortest API key ``--api-key`` / ``JEDI_API_KEY`` accepts.
MIN_KEY_CHARS = 16
#: Seconds a request body may take before :attr:`ServeConfig.min_body_rate_kib` applies.
RATE_GRACE_S = 5.0


#: A window's default stride, as a share of the window (half-overlapping windows).
DEFAULT_STRIDE = 0.5
#: The longest window, in seconds (``jedi infer --window`` and ``/v1/predict?window=`` alike).
MAX_WINDOW_S = 3600.0
#: The widest moving average over windows (``--smooth`` / ``smooth=``).
MAX_SMOOTH = 99
#: The most windows one request or job may step through (a 10-hour video at a 2 s stride is 18,000);
#: empty windows (a gap in the timestamps) count too, so no file can make the loop run away.
MAX_WINDOWS = 20_000
#: The most bytes of decoded frames one windowed request or job holds at once (the frames the windows
#: overlapping one instant sample, resized; see serve.timeline.held_bytes), in MiB.
MAX_HELD_MB = 256


@dataclass(frozen=True)
class WindowSpec:
    """Sliding-window inference: windows of ``window`` seconds every ``stride`` seconds, class
    probabilities smoothed over ``smooth`` windows. One rule for the CLI and HTTP
    (:meth:`parse`), which names the option (``--window`` or ``window``) it refuses."""

    window: float
    stride: float
    smooth: int = 1

    @classmethod
    def parse(cls, window, stride=None, smooth=None, *, option: str = "--") -> "WindowSpec":
        """From CLI values or HTTP fields (strings); ``stride`` defaults to :data:`DEFAULT_STRIDE`
        of the window, ``smooth`` to 1. ``option`` prefixes the names in errors ("--" or "")."""
        w, s, m = f"{option}window", f"{option}stride", f"{option}smooth"
        try:
            win = float(window)
            step = float(stride) if stride not in (None, "") else win * DEFAULT_STRIDE
        except (TypeError, ValueError):
            raise ConfigError(f"{w} and {s} must be seconds, got {window!r} and {stride!r}") from None
        try:
            width = int(str(smooth).strip()) if smooth not in (None, "") else 1
        except ValueError:
            raise ConfigError(f"{m} must be a whole number of windows, got {smooth!r}") from None
        if not (win > 0 and step > 0) or not (math.isfinite(win) and math.isfinite(step)):
            raise ConfigError(f"{w} and {s} must be > 0 seconds, got {window} and {step:g}")
        if step > win:
            raise ConfigError(f"{s} {step:g} s is longer than {w} {win:g} s: frames between windows would "
                              "never be looked at")
        if win > MAX_WINDOW_S:
            raise ConfigError(f"{w} {win:g} s is longer than the longest window, {MAX_WINDOW_S:g} s")
        if not 1 <= width <= MAX_SMOOTH:
            raise ConfigError(f"{m} must be 1..{MAX_SMOOTH} windows, got {width}")
        return cls(win, step, width)
