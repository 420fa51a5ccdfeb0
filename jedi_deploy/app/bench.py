"""Which runtimes ``jedi bench`` times: the composition of ONNX Runtime (``serve.bench``, torch-free)
with the torch eager and TensorRT-engine runtimes (``export``), which only this layer may join."""
from __future__ import annotations

from pathlib import Path

from jedi_deploy.contracts.errors import InputError
from jedi_deploy.runners.base import Runtime

BENCH_RUNTIMES = ("ort-cpu", "ort-cuda", "ort-tensorrt", "openvino-cpu", "openvino-bf16-cpu", "torch-cpu", "torch-cuda",
                  "tensorrt")


def resolve_runtimes(wanted: list[str] | None = None, *, threads: int = 1, bundle: str | Path | None = None,
                     expert_paths: dict[str, str] | None = None) -> list[Runtime]:
    """``wanted`` names from :data:`BENCH_RUNTIMES`; None = every ONNX Runtime provider available,
    OpenVINO when installed, plus torch-cpu (and torch-cuda with a GPU) when ``bundle`` is given."""
    import importlib.util

    from ..serve.bench import openvino_runtimes, ort_runtimes

    unknown = sorted(set(wanted or []) - set(BENCH_RUNTIMES))
    if unknown:
        raise InputError(f"unknown runtime(s) {unknown}; choose from {', '.join(BENCH_RUNTIMES)}")
    ort_wanted = None if wanted is None else [r for r in wanted if r.startswith("ort-")]
    rts = ort_runtimes(threads, ort_wanted) if ort_wanted is None or ort_wanted else []
    ov_wanted = None if wanted is None else [r for r in wanted if r.startswith("openvino-")]
    if (wanted is None and importlib.util.find_spec("openvino")) or ov_wanted:
        rts += openvino_runtimes(threads, ov_wanted)
    torch_wanted = None if wanted is None else [r.split("-", 1)[1] for r in wanted if r.startswith("torch-")]
    if torch_wanted and not bundle:
        raise InputError("torch runtimes need --bundle (the bundle the models were exported from)")
    if bundle and (torch_wanted is None or torch_wanted):
        from ..export.eager import torch_runtimes

        rts += torch_runtimes(bundle, torch_wanted, threads, expert_paths)
    if wanted and "tensorrt" in wanted:
        from ..export.trt import trt_runtime

        rts.append(trt_runtime())
    return rts
