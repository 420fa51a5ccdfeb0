"""Devices are a parameter, never an assumption: every stage that runs torch takes a device
string (``--device``) and resolves it here, with one clear error where it cannot be had."""
from __future__ import annotations

import re

from jedi_deploy.contracts.errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DEVICE_HELP = "Where torch runs: auto (a CUDA GPU when one is visible, else the CPU), cpu, cuda or cuda:N."


def resolve_device(spec: str | None = "auto"):
    """``torch.device`` for ``spec``; a :class:`ConfigError` (one line) for a malformed spec, for
    ``cuda`` on a machine without a visible CUDA GPU, or for a GPU index that does not exist."""
    import torch

    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not m:
        raise ConfigError(f"device must be {DEVICE_CHOICES}, got {spec!r}")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(f"device {spec!r}: no CUDA GPU is visible here (torch {torch.__version__}, {build}); "
                          "use --device cpu")
    index, count = int(m.group(1) or 0), torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"device {spec!r}: this machine has {count} CUDA GPU(s) (cuda:0 .. cuda:{count - 1})")
    return torch.device("cuda", index)


def describe(device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H200)``, for progress messages and reports."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
