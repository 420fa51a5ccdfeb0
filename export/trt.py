"""TensorRT engines from the exported ONNX graphs (TensorRT 10 Python API). UNVERIFIED: no
GPU with TensorRT has run this code yet (see README); it is written against the documented
API and kept behind a lazy import.

``build_engine`` parses the ONNX, adds one optimisation profile (min/opt/max batch), builds
FP32 or FP16 (``BuilderFlag.FP16``) with a persistent timing cache, and writes the plan
atomically. ``check_engine_parity`` runs the engine (CUDA buffers from torch) against ONNX
Runtime on random inputs at the profile's batch sizes and raises
:class:`ExportValidationError` with the figures when they differ beyond the tolerance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jedi_deploy.deps import require
from jedi_deploy.errors import ExportValidationError, InputError, MissingDependencyError
from jedi_deploy.meta import atomic_path


def require_tensorrt():
    """``tensorrt`` and a CUDA GPU, or one clear error saying which is missing."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        has_gpu = False
    try:
        trt = require("tensorrt")
    except MissingDependencyError:
        raise MissingDependencyError(
            "TensorRT engines (jedi export --trt, jedi bench --runtimes tensorrt) need TensorRT and an NVIDIA GPU: "
            "tensorrt is not installed (pip install tensorrt, "
            "from NVIDIA's package index)" + ("" if has_gpu else "; no CUDA GPU is visible either")) from None
    if not has_gpu:
        raise MissingDependencyError("TensorRT engines need an NVIDIA GPU: TensorRT is installed but no CUDA device is visible")
    return trt


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


class TrtEngine:  # pragma: no cover - needs TensorRT and a GPU
    """A deserialized plan with its execution context, run on host arrays (CUDA buffers via torch)."""

    def __init__(self, plan_path: str | Path):
        import torch

        trt = require_tensorrt()
        self.torch, self.trt, self.path = torch, trt, Path(plan_path)
        if not self.path.is_file():
            raise InputError(f"TensorRT engine not found: {self.path} (build it with `jedi export --trt`)")
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise InputError(f"{self.path}: TensorRT cannot deserialize this engine (built by another TensorRT "
                             "version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, trt = self.torch, self.trt
        buffers = {}
        for name, arr in inputs.items():
            buffers[name] = torch.from_numpy(np.ascontiguousarray(arr)).cuda()
            self.context.set_input_shape(name, tuple(arr.shape))
        outputs = {}
        for name in self.outputs:
            dtype = torch.float16 if self.engine.get_tensor_dtype(name) == trt.DataType.HALF else torch.float32
            outputs[name] = buffers[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype,
                                                        device="cuda")
        for name, t in buffers.items():
            self.context.set_tensor_address(name, t.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportValidationError(f"{self.path}: TensorRT execution failed")
        self.stream.synchronize()
        return {k: v.float().cpu().numpy() for k, v in outputs.items()}


def run_engine(plan_path: str | Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover
    """Run a plan once on host arrays; returns the outputs as host arrays."""
    return TrtEngine(plan_path).run(inputs)


def trt_runtime():  # pragma: no cover - needs TensorRT and a GPU
    """``jedi bench``'s ``tensorrt`` runtime: the ``<model>.plan`` beside each ONNX file."""
    import onnx

    from jedi_deploy.runtimes import Runtime

    trt = require_tensorrt()

    def load(onnx_path: Path):
        input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
        engine = TrtEngine(Path(onnx_path).with_suffix(".plan"))
        return lambda x: engine.run(x if isinstance(x, dict) else {input_name: x})

    return Runtime("tensorrt", load, {"tensorrt": trt.__version__})


def check_engine_parity(plan_path: str | Path, onnx_path: str | Path, *, output_name: str,
                        batch: tuple[int, int, int], tol: dict, seed: int = 0) -> dict:  # pragma: no cover
    """TensorRT vs ONNX Runtime (CPU) on random inputs at the profile's min/opt/max batch (every
    graph input: a teacher ensemble has one per expert)."""
    from .onnx import compare_outputs

    ort = require("onnxruntime")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    failures, rows = [], []
    for b in sorted(set(batch)):
        feed = {}
        for i in sess.get_inputs():
            shape = (b, *[int(d) for d in i.shape[1:]])
            feed[i.name] = (rng.integers(0, 256, shape, dtype=np.uint8) if i.type == "tensor(uint8)"
                            else rng.standard_normal(shape).astype(np.float32))
        want = sess.run([output_name], feed)[0].astype(np.float64)
        got = run_engine(plan_path, feed)[output_name]
        rows.append(compare_outputs(got, want, tol, f"TensorRT vs ORT batch {b}", failures))
    report = {"cases": rows, "passed": not failures, "failures": failures, "tolerance": tol}
    if failures:
        raise ExportValidationError(f"{Path(plan_path).name}: TensorRT disagrees with ONNX Runtime: "
                                    + "; ".join(failures), report)
    return report
