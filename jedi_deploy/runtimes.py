"""The contract between the benchmark (``serve.bench``) and the runtimes it times, some of which
live in ``export`` (torch eager, TensorRT engines): torch-free, so both sides can import it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Runtime:
    """A way to run an exported model: ``load(onnx_path)`` returns ``run(x: np.ndarray)``, which
    blocks until the result is on the host. ``info`` is reported (versions, device, threads)."""

    name: str
    load: Callable[[Path], Callable[[np.ndarray], object]]
    info: dict = field(default_factory=dict)
    runs_onnx: bool = True  # loads any ONNX file (an INT8 student too), not a PyTorch twin of it
