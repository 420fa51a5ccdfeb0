"""OpenVINO runner (extra ``[openvino]``; torch-free).

OpenVINO reads our ONNX files directly - fp32 and the Q/DQ INT8 students alike (it runs Q/DQ
graphs with int8 kernels) - and compiles them for the CPU. The model card is read from the ONNX
file itself (:func:`jedi_deploy.contracts.model_card.read_card`). OpenVINO has taken the process down on
some graphs (a segfault in ``compile_model``); ``--runtime auto`` therefore probes it in a child
process first (:mod:`jedi_deploy.runners.probe`).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.deps import require
from jedi_deploy.contracts.errors import InputError
from jedi_deploy.contracts.model_card import Feed, read_card

from .base import Runner


class OpenVinoRunner(Runner):
    """OpenVINO on the CPU; the model card comes from the ONNX file (OpenVINO does not expose it)."""

    label = "OpenVINO"
    runtime = "openvino"

    #: ``INFERENCE_PRECISION_HINT``: f32 (what the graph says) unless a bf16 runner is asked for by name
    precision = "f32"

    def __init__(self, path: str | Path, providers=None, threads: int | None = None, *, eager: bool = True):
        if providers:
            raise InputError(f"--providers chooses ONNX Runtime execution providers; runtime {self.runtime!r} has none")
        super().__init__(read_card(path), Path(path).name)
        self.path, self.threads = Path(path), threads
        if eager:
            self.activate()

    def _activate(self) -> None:
        ov, path, threads = require("openvino"), self.path, self.threads
        config = {"PERFORMANCE_HINT": "LATENCY",
                  # like ONNX Runtime's set_denormal_as_zero: masked attention makes subnormals
                  "CPU_DENORMALS_OPTIMIZATION": True,
                  # fp32 graphs run in fp32: OpenVINO's CPU default on avx512_bf16 / AMX machines is bf16,
                  # whose logits differ from ONNX Runtime's by ~1e-2 (a silent precision change); bf16 only
                  # when asked for by name (runtime openvino-bf16)
                  "INFERENCE_PRECISION_HINT": self.precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with its own messages
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{path}: OpenVINO cannot compile this model ({first})") from None
        self._idle: list = []  # infer requests not in use (a request is not thread-safe; one per caller)
        self._lock = threading.Lock()
        # A tensor may carry several names (OpenVINO merges the names of tensors it fuses), so every
        # name maps to its port; the card's names are among them.
        self._inputs = {n: i for i in self.compiled.inputs for n in i.get_names()}
        self._outputs = {n: o for o in self.compiled.outputs for n in o.get_names()}
        if self.card.output not in self._outputs:
            raise InputError(f"{path}: OpenVINO finds no output {self.card.output!r} (has {sorted(self._outputs)})")
        self._input_names = [self._card_name(i) for i in self.compiled.inputs]
        self.info = {"runtime": self.runtime, "openvino": ov.__version__, "device": "CPU",
                     "inference_num_threads": threads, "precision_asked": self.precision,
                     # what the compiled model runs in (a CPU without bf16 runs a bf16 request in f32)
                     "inference_precision": inference_precision(self.compiled)}

    def metadata(self) -> dict[str, str]:
        return self.card.to_props()

    def _card_name(self, port) -> str:
        """The port's name as the model card (and the ONNX graph) spells it."""
        wanted = {s.name for s in self.card.inputs}
        return next((n for n in sorted(port.get_names()) if n in wanted), port.get_any_name())

    def input_names(self) -> list[str]:
        return list(self._input_names)

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        with self._lock:
            request = self._idle.pop() if self._idle else self.compiled.create_infer_request()
        try:
            result = request.infer({self._inputs[k]: v for k, v in feed.items()})
            out = self.card.output  # the request reuses its buffers: copy out
            return {out: np.array(result[self._outputs[out]], copy=True)}
        finally:
            with self._lock:
                self._idle.append(request)

    def _deactivate(self) -> None:
        self.__del__()

    def __del__(self):
        # Requests must go before the compiled model they run on: freed the other way round (as
        # attribute clean-up may do), OpenVINO corrupts memory and the process crashes later.
        idle = getattr(self, "_idle", None)
        if idle is not None:
            idle.clear()
        self.__dict__.pop("compiled", None)


class OpenVinoBf16Runner(OpenVinoRunner):
    """OpenVINO computing in bfloat16 where the CPU has it (avx512_bf16 / AMX), asked for by name
    (``--runtime openvino-bf16``, ``jedi bench --runtimes openvino-bf16-cpu``): faster there, logits
    ~1e-2 from fp32. ``info["inference_precision"]`` says what the compiled model actually runs in."""

    runtime = "openvino-bf16"
    label = "OpenVINO bf16"
    precision = "bf16"


def inference_precision(compiled) -> str:
    """The precision a compiled model computes in, as OpenVINO names it (``f32``, ``bf16``, ``f16``)."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    if hasattr(value, "get_type_name"):  # an element Type (prints as "<Type: 'float32'>")
        return value.get_type_name()
    name = str(value).lower()
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)
