"""Runners: one contract wherever a graph runs (:mod:`.base`), its backends, the probe that picks
one (:mod:`.probe`) and the comparator. Torch-free except :mod:`.eager` and :mod:`.tensorrt`,
which only ``export`` and the bench's torch/TensorRT runtimes import."""
from __future__ import annotations

from pathlib import Path

from jedi_deploy.contracts.errors import InputError

from .base import Runner
from .table import RUNTIME_HELP, RUNTIMES, runner_class

__all__ = ["RUNTIMES", "RUNTIME_HELP", "Runner", "open_runner", "runner_class"]

def open_runner(path: str | Path, runtime: str = "ort", *, providers: str | list[str] | None = None,
                threads: int | None = None) -> tuple[Runner, dict | None]:
    """An activated runner on the ONNX file ``path`` (its card read from the file), and for
    ``runtime="auto"`` what the probe measured and skipped (else None)."""
    pick = None
    if runtime == "auto":
        from .probe import pick_runtime

        pick = pick_runtime(path, threads=threads, providers=providers)
        runtime = pick["runtime"]
    cls = runner_class(runtime)
    if providers and getattr(cls, "runtime", "") != "ort":
        raise InputError(f"--providers chooses ONNX Runtime execution providers; runtime {cls.runtime!r} has none")
    return cls(path, providers, threads), pick
