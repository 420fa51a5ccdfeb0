"""Optional dependencies, imported lazily with an "install X" error (torch-free)."""
from __future__ import annotations

import importlib

from jedi_deploy.contracts.errors import MissingDependencyError

INSTALL_HINTS = {
    "onnxruntime": "pip install 'jedi-deploy[cpu]' (onnxruntime) or 'jedi-deploy[gpu]' (onnxruntime-gpu)",
    "tensorrt": "pip install 'jedi-deploy[gpu]' on a machine with an NVIDIA GPU",
    "openvino": "pip install 'jedi-deploy[openvino]'",
}


def require(module: str):
    """Import ``module`` or raise :class:`MissingDependencyError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        hint = INSTALL_HINTS.get(module, f"pip install {module}")
        raise MissingDependencyError(f"{module} is not installed: {hint}") from None
