"""The ``infer`` and ``serve`` commands: one definition, used by ``jedi infer`` / ``jedi serve``
and by the torch-free ``python -m jedi_deploy.serve.infer`` / ``python -m jedi_deploy.serve.server``,
so both spellings take the same options, defaults, help and exit codes. They only parse and
call :func:`jedi_deploy.serve.infer.run_infer` and :func:`jedi_deploy.serve.server.serve`."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from jedi_deploy.common.cli import CONTEXT, JediCommand, progress
from jedi_deploy.runners.onnxruntime import PROVIDER_ALIASES
from jedi_deploy.runners.table import RUNTIME_HELP, RUNTIMES


def _serve_defaults():
    """``ServeConfig()``: the one place the service's defaults live (imported lazily: FastAPI-free)."""
    from .config import ServeConfig

    return ServeConfig()


#: Paths are checked by the library, whose errors name what was expected there ("ONNX model not
#: found: ...", "input not found: ...").
PATH = click.Path(path_type=Path)
RUNTIME_CHOICE = click.Choice([*RUNTIMES, "auto"])
PROVIDERS_HELP = (f"ONNX Runtime providers: {', '.join(k for k in PROVIDER_ALIASES if k != 'trt')} or a comma list "
                  "(default: the best available, TensorRT > CUDA > CPU).")


@click.command("infer", cls=JediCommand, context_settings=CONTEXT)
@click.argument("model", type=PATH)
@click.argument("inputs", type=PATH, nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write one record per video to this .jsonl or .csv "
              "file (written when all are done; default: print to stdout).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "text"]),
              help="Output format (default: from --out's suffix, else text).")
@click.option("--json", "as_json", is_flag=True, help="Shorthand for --format jsonl.")
@click.option("--topk", default=5, show_default=True, type=click.IntRange(min=1), help="Labels per video (>= 1).")
@click.option("--batch-size", default=8, show_default=True, help="Videos per model call.")
@click.option("--workers", default=2, show_default=True, help="Decoding threads.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable video (default: record an error, go on, "
              "exit 1 at the end).")
@click.option("--providers", help=PROVIDERS_HELP)
@click.option("--threads", type=int, help="Runtime threads (default: one per core).")
@click.option("--runtime", type=RUNTIME_CHOICE, default="ort", show_default=True, help=RUNTIME_HELP)
@click.option("--window", type=float, help="Sliding-window mode for one long VIDEO: classify every window of this "
              "many seconds (the model's own sampling inside each); --out gets one row per window (start, end, "
              "top-k) and <stem>.segments.json the merged segments.")
@click.option("--stride", type=float, help="Seconds between window starts (default: half the window).")
@click.option("--smooth", default=1, show_default=True, help="Average each window's probabilities with its "
              "neighbours' (a centred moving average over this many windows) before segmenting.")
@click.option("--plot", type=click.Path(path_type=Path), help="Sliding-window mode: write the timeline chart (PNG).")
def infer(model, inputs, out, fmt, as_json, topk, batch_size, workers, strict, providers, threads, runtime, window,
          stride, smooth, plot):
    """Classify videos with an exported MODEL (ONNX Runtime, no torch).

    MODEL is a student, an expert or a teacher ensemble written by `jedi export`. INPUTS are
    video files, folders (searched recursively) or manifests: an MMAction2 .txt list (`path
    [label]` per line) or a .csv with a `path` (and optional `label`) column. With labels,
    acc@1/acc@5 are reported. Same as `python -m jedi_deploy.serve.infer`.

    With --window SEC, one long video is classified window by window in one streaming pass
    (memory bounded by a window), giving a timeline and labelled segments.
    """
    from .infer import format_summary, run_infer

    if window is not None or stride is not None or plot is not None:
        return _timeline(model, inputs, out, fmt, as_json, topk, providers, threads, runtime, window, stride, smooth,
                         plot)

    text, summary = run_infer(model, list(inputs), out=out, fmt="jsonl" if as_json else fmt, topk=topk,
                              batch_size=batch_size, workers=workers, strict=strict, providers=providers,
                              threads=threads, runtime=runtime, progress=progress())
    if "picked_by_probe" in summary["runtime"]:
        from jedi_deploy.runners.probe import describe_pick

        click.echo(f"{Path(model).name}: {describe_pick(summary['runtime']['picked_by_probe'])}", err=True)
    if text:
        click.echo(text, nl=False)
    click.echo(format_summary(summary) + (f" -> {out}" if out else ""), err=True)
    if summary["failed"]:  # like cp/rsync: everything readable is done, the status says not all was
        click.echo(f"error: {summary['failed']} video(s) could not be read; first: {summary['first_error']}", err=True)
        sys.exit(1)


def _timeline(model, inputs, out, fmt, as_json, topk, providers, threads, runtime, window, stride, smooth, plot):
    from jedi_deploy.contracts.errors import ConfigError

    from .config import WindowSpec
    from .timeline import format_segments, run_timeline

    if window is None:
        raise ConfigError("--stride and --plot belong to sliding-window mode: give --window SEC too")
    if len(inputs) != 1:
        raise ConfigError(f"--window takes one video, got {len(inputs)} inputs")
    spec = WindowSpec.parse(window, stride, smooth)
    text, tl = run_timeline(model, inputs[0], spec,
                            topk=topk, out=out, fmt="jsonl" if as_json else fmt, plot=plot, providers=providers,
                            threads=threads, runtime=runtime, progress=progress())
    if text:
        click.echo(text, nl=False)
    click.echo(format_segments(tl), nl=False, err=True)
    where = f" -> {out}, {Path(out).with_suffix('.segments.json')}" if out else ""
    n = len(tl.starts)
    click.echo(f"{n} window{'s' if n != 1 else ''} of {tl.window:g} s every {tl.stride:g} s over {tl.duration:.1f} s, "
               f"{len(tl.segments)} segment(s){where}" + (f", plot {plot}" if plot else ""), err=True)
    if tl.warning:
        click.echo(f"warning: {tl.warning}", err=True)


_D = _serve_defaults()


@click.command("serve", cls=JediCommand, context_settings=CONTEXT)
@click.argument("models", type=PATH, nargs=-1, required=True)
@click.option("--host", default=_D.host, show_default=True,
              help="Interface to listen on; 0.0.0.0 exposes the service to every network the machine is on: "
              "set --api-key and put TLS in front (README).")
@click.option("--port", default=_D.port, show_default=True, help="TCP port (0: any free port, printed at start).")
@click.option("--max-batch-size", default=_D.max_batch_size, show_default=True,
              help="Videos per model call (1: no batching).")
@click.option("--max-delay-ms", default=_D.max_delay_ms, show_default=True,
              help="Longest wait for a batch to fill, only while more uploads are being decoded.")
@click.option("--max-upload-mb", default=_D.max_upload_mb, show_default=True, help="Larger uploads get 413.")
@click.option("--decode-workers", default=_D.decode_workers, show_default=True, help="Threads decoding uploads.")
@click.option("--providers", help=PROVIDERS_HELP)
@click.option("--threads", type=int, help="Runtime threads per model (default: one per core).")
@click.option("--runtime", type=RUNTIME_CHOICE, default=_D.runtime, show_default=True,
              help=RUNTIME_HELP + " The probe runs before the service starts listening.")
@click.option("--topk", default=_D.topk, show_default=True, help="Labels per answer unless the request says.")
@click.option("--max-inflight", default=_D.max_inflight, show_default=True,
              help="Predictions being uploaded, decoded or run at once; more get 503 with Retry-After.")
@click.option("--header-timeout-s", default=_D.header_timeout_s, show_default=True,
              help="A request head must arrive within this (else 408 and the connection is closed).")
@click.option("--body-timeout-s", default=_D.body_timeout_s, show_default=True,
              help="Longest pause while an upload is arriving (else 408).")
@click.option("--body-deadline-s", default=_D.body_deadline_s, show_default=True,
              help="A whole upload must arrive within this (else 408).")
@click.option("--min-body-rate-kib", default=_D.min_body_rate_kib, show_default=True,
              help="KiB/s an upload must average once it has taken 5 s (else 408): trickling clients cannot hold "
              "the --max-inflight slots.")
@click.option("--keep-alive-s", default=_D.keep_alive_s, show_default=True,
              help="Idle keep-alive connections are closed after this.")
@click.option("--max-frame-pixels", default=_D.max_frame_pixels, show_default=True,
              help="Videos whose frames have more pixels (width x height) are refused (422 over_budget) before "
              "they are decoded; the default is 4K UHD. Frames are resized as they are decoded, so memory per "
              "request follows the model's input size.")
@click.option("--max-result-mb", default=_D.max_result_mb, show_default=True,
              help="The largest answer (JSON) a windowed request or a job may produce (else 422 / a failed job).")
@click.option("--shutdown-grace-s", default=_D.shutdown_grace_s, show_default=True,
              help="SIGTERM/SIGINT: jobs and windowed requests are cancelled at once; the rest get this long, "
              "then spooled uploads are removed and the process exits.")
@click.option("--api-key", "api_keys", multiple=True, envvar="JEDI_API_KEY",
              help="Require `Authorization: Bearer KEY` on everything but /healthz, /v2/health/* and the page "
              "(repeat for several keys; JEDI_API_KEY takes a space-separated list). Jobs are listed per key.")
@click.option("--jobs-root", type=click.Path(path_type=Path, file_okay=False),
              help="POST /v1/jobs may name video files under this folder (default: uploads only).")
@click.option("--max-jobs", default=_D.max_jobs, show_default=True,
              help="Jobs queued or running at once; more get 503 with Retry-After.")
@click.option("--job-ttl-s", default=_D.job_ttl_s, show_default=True, help="Finished jobs are kept this long.")
@click.option("--job-workers", default=_D.job_workers, show_default=True, help="Threads running jobs.")
def serve(models, host, port, max_batch_size, max_delay_ms, max_upload_mb, decode_workers, providers, threads, runtime,
          topk, max_inflight, header_timeout_s, body_timeout_s, body_deadline_s, min_body_rate_kib, keep_alive_s,
          max_frame_pixels, max_result_mb, shutdown_grace_s, api_keys, jobs_root, max_jobs, job_ttl_s, job_workers):
    """Serve exported MODELS over HTTP (FastAPI + uvicorn, no torch).

    \b
    POST /v1/predict   video upload: multipart field `video` (curl -F video=@clip.mp4 URL/v1/predict)
                       or the raw file as the body; optional `model` and `topk` (query or form);
                       `window`/`stride` (seconds), `smooth`: a sliding-window timeline instead
    POST /v1/jobs      the same as an asynchronous job (or JSON {"path": ...} under --jobs-root);
                       GET /v1/jobs/ID: status, progress, result; DELETE /v1/jobs/ID: cancel
    /v2/...            the Open Inference Protocol (KServe v2): health, model metadata/ready, infer
    GET /              a web page: upload a video, see the top-k and the timeline
    GET  /v1/models    metadata of the served models
    GET  /healthz      liveness
    GET  /metrics      Prometheus text (requests, latency, batch sizes, errors, queue depth)

    Every unit of work a client can create has a budget: uploads stream to a temporary file
    (--max-upload-mb, --body-timeout-s, --body-deadline-s, --min-body-rate-kib); at most
    --max-inflight uploads at once, jobs included (503 + Retry-After beyond, before the body is
    read); frames over --max-frame-pixels are refused and the rest resized as decoded; windows
    per request, window length and answer size are capped (--max-result-mb). Every error is JSON
    {"error": {"code", "type", "message"}} ({"error": "..."} under /v2) and is counted in /metrics.

    Students, experts and teacher ensembles alike. Dynamic micro-batching across concurrent
    requests; SIGINT/SIGTERM cancel jobs, wait at most --shutdown-grace-s, remove spooled
    uploads and stop. Same as `python -m jedi_deploy.serve.server`.
    """
    from .config import ServeConfig
    from .server import serve as run_server

    run_server(ServeConfig(models=list(models), host=host, port=port, max_batch_size=max_batch_size,
                           max_delay_ms=max_delay_ms, max_upload_mb=max_upload_mb, decode_workers=decode_workers,
                           providers=providers, threads=threads, runtime=runtime, topk=topk, max_inflight=max_inflight,
                           header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
                           keep_alive_s=keep_alive_s, jobs_root=jobs_root, max_jobs=max_jobs, job_ttl_s=job_ttl_s,
                           job_workers=job_workers, body_deadline_s=body_deadline_s,
                           min_body_rate_kib=min_body_rate_kib, max_frame_pixels=max_frame_pixels,
                           max_result_mb=max_result_mb, shutdown_grace_s=shutdown_grace_s,
                           api_keys=tuple(k for key in api_keys for k in key.split())), echo=click.echo)
