"""TensorRT engines from the exported ONNX graphs (TensorRT 10 Python API). UNVERIFIED: no
GPU with TensorRT has run this code yet (see README); it is written against the documented
API and kept behind a lazy import.

``build_engine`` parses the ONNX, adds one optimisation profile (min/opt/max batch), builds
FP32 or FP16 (``BuilderFlag.FP16``) with a persistent timing cache, and writes the plan
atomically. ``check_engine_parity`` runs the engine (:class:`~jedi_deploy.runners.tensorrt.TrtRunner`)
against ONNX Runtime on random feeds at the profile's batch sizes - one
:func:`~jedi_deploy.runners.base.compare` - and raises its ToleranceError (an
:class:`ExportValidationError`) with the figures when they differ beyond the tolerance.
"""
from __future__ import annotations

from pathlib import Path

from jedi_deploy.contracts.errors import (
    ExportValidationError,
    InputError,
)
from jedi_deploy.contracts.header import atomic_path
from jedi_deploy.runners.tensorrt import TrtRunner, require_tensorrt


def parse_profile(text: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--trt-batch must be MIN,OPT,MAX (e.g. 1,8,32), got {text!r}") from None
    if not 1 <= lo <= opt <= hi:
        raise InputError(f"--trt-batch needs 1 <= MIN <= OPT <= MAX, got {text!r}")
    return lo, opt, hi


def build_engine(onnx_path: str | Path, plan_path: str | Path, *, fp16: bool = False, int8: bool = False,
                 batch: tuple[int, int, int] = (1, 8, 32), timing_cache: str | Path | None = None,
                 workspace_gib: float = 4.0) -> dict:  # pragma: no cover - needs TensorRT + GPU
    trt = require_tensorrt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportValidationError(f"{onnx_path.name}: TensorRT cannot parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2 ** 30))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:  # explicit quantization: the graph's Q/DQ nodes fix every int8 scale; no calibrator
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (batch[0], *rest), (batch[1], *rest), (batch[2], *rest))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportValidationError(f"{onnx_path.name}: TensorRT could not build an engine (see its log above)")
    with atomic_path(plan_path, ".plan") as tmp:
        tmp.write_bytes(bytes(plan))
    if cache_path:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"plan": str(plan_path), "precision": "int8" if int8 else ("fp16" if fp16 else "fp32"), "batch_profile": list(batch),
            "tensorrt": trt.__version__}


def trt_runtime():  # pragma: no cover - needs TensorRT and a GPU
    """``jedi bench``'s ``tensorrt`` runtime: the ``<model>.plan`` beside each ONNX file, fed as the
    ONNX file's model card says."""
    from jedi_deploy.contracts.model_card import read_card
    from jedi_deploy.runners.base import Runtime

    trt = require_tensorrt()
    return Runtime("tensorrt", lambda onnx_path: TrtRunner(Path(onnx_path).with_suffix(".plan"), read_card(onnx_path)),
                   {"tensorrt": trt.__version__})


def check_engine_parity(plan_path: str | Path, onnx_path: str | Path, *, output_name: str,
                        batch: tuple[int, int, int], tol: dict, seed: int = 0) -> dict:  # pragma: no cover
    """TensorRT vs ONNX Runtime (CPU) on random feeds at the profile's min/opt/max batch (every
    graph input: a teacher ensemble has one per expert); one engine for every batch size."""
    from jedi_deploy.contracts.model_card import read_card
    from jedi_deploy.runners.base import compare, random_feeds
    from jedi_deploy.runners.onnxruntime import OrtRunner

    card = read_card(onnx_path)
    return compare(OrtRunner(onnx_path, providers="cpu"), TrtRunner(plan_path, card),
                   random_feeds(card, sorted(set(batch)), seed), tol, output=output_name, what=Path(plan_path).name)
