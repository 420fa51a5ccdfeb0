"""TensorRT engines as runners (TensorRT 10 Python API). UNVERIFIED: no GPU with TensorRT has run
this code yet (see README); it is written against the documented API and kept behind a lazy
import. CUDA buffers come from torch (a CUDA build), so ``serve`` never imports this module."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jedi_deploy.contracts.deps import require
from jedi_deploy.contracts.errors import ExportValidationError, InputError, MissingDependencyError
from jedi_deploy.contracts.model_card import Feed, ModelCard

from .base import Runner


def require_tensorrt():
    """``tensorrt`` and a CUDA GPU, or one clear error saying which is missing."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency of export and bench
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


class TrtRunner(Runner):  # pragma: no cover - needs TensorRT and a GPU
    """A deserialized plan with its execution context, run on host arrays; ``card`` is the card of
    the ONNX graph the plan was built from (the plan has no metadata of its own)."""

    label = "TensorRT"

    def __init__(self, plan_path: str | Path, card: ModelCard | None = None):
        super().__init__(card, Path(plan_path).name)
        self.path = Path(plan_path)
        if not self.path.is_file():
            raise InputError(f"TensorRT engine not found: {self.path} (build it with `jedi export --trt`)")

    def _activate(self) -> None:
        import torch

        trt = require_tensorrt()
        self.torch, self.trt = torch, trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise InputError(f"{self.path}: TensorRT cannot deserialize this engine (built by another TensorRT "
                             "version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.info = {"tensorrt": trt.__version__, "device": torch.cuda.get_device_name()}

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        torch, trt = self.torch, self.trt
        buffers = {}
        for name, arr in feed.items():
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

    def _deactivate(self) -> None:
        self.context = self.engine = self.runtime = None
