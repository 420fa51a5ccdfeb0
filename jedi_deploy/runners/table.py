"""The runtimes a served model can run on, by name (read by :func:`jedi_deploy.runners.open_runner`
and by the probe)."""
from __future__ import annotations

import importlib

from jedi_deploy.contracts.errors import InputError

#: Runtimes a served model can run on: name -> "module:class" (imported lazily, so a runtime that is
#: not installed costs nothing). ``auto`` picks one per model by a timed probe in child processes
#: (:func:`jedi_deploy.runners.probe.pick_runtime`).
RUNTIMES = {"ort": "jedi_deploy.runners.onnxruntime:OrtRunner", "openvino": "jedi_deploy.runners.openvino:OpenVinoRunner",
            "openvino-bf16": "jedi_deploy.runners.openvino:OpenVinoBf16Runner"}
RUNTIME_PACKAGES = {"ort": "onnxruntime", "openvino": "openvino", "openvino-bf16": "openvino"}
#: Runtimes that change the arithmetic (bf16): only ever run when named, never picked by ``auto``.
EXPLICIT_ONLY = ("openvino-bf16",)
RUNTIME_HELP = ("Runtime: ort (ONNX Runtime), openvino (needs the [openvino] extra; fp32 graphs run in f32), "
                "openvino-bf16 (the same in bfloat16 where the CPU has it: faster, logits differ ~1e-2), or auto "
                "(a short timed probe of every installed fp32 one, each in a child process - one that crashes on "
                "the model is skipped - and the fastest runs it).")


def runner_class(runtime: str):
    """The runner class of a runtime name from :data:`RUNTIMES`, or of a ``module:class`` spec."""
    spec = RUNTIMES.get(runtime, runtime)
    module, sep, cls = spec.partition(":")
    if not sep:
        raise InputError(f"unknown runtime {runtime!r}; choose from {', '.join([*RUNTIMES, 'auto'])}")
    return getattr(importlib.import_module(module), cls)
