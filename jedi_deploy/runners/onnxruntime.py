"""ONNX Runtime runner: every ONNX file jedi-deploy writes, on the CPU or any execution provider
(the default runtime of infer, serve and bench, and the candidate of every export validation)."""
from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.deps import require
from jedi_deploy.contracts.errors import InputError
from jedi_deploy.contracts.model_card import Feed, ModelCard

from .base import Runner

#: Execution providers in order of preference (the first available one runs the model;
#: ONNX Runtime falls back along the list for ops a provider cannot run).
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_ALIASES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
                    "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}

#: Session config entries of every session jedi-deploy opens (serve, infer, bench, the export
#: checks): steady latency on shared cores, and no subnormal-float slow path.
SESSION_CONFIG = {
    "session.intra_op.allow_spinning": "0",  # idle workers sleep instead of stealing the cores
    "session.inter_op.allow_spinning": "0",
    # Flush subnormals to zero in the session's worker threads. Masked attention (Video Swin's
    # shifted windows fill masked logits with -100) makes softmax produce subnormals, which
    # x86 handles very slowly (figure: benchmarks/RESULTS.md); outputs are unchanged at fp32
    # tolerance (values below 1.2e-38 become 0).
    "session.set_denormal_as_zero": "1",
}


def select_providers(requested: str | list[str] | None = None) -> list[str]:
    """Providers for a session: by default every available one of TensorRT EP > CUDA EP > CPU;
    ``requested`` ("cpu", "cuda", "tensorrt", a full provider name, or a list / comma-separated
    string of them) overrides, and must be available. CPU is always appended as the fallback."""
    ort = require("onnxruntime")
    available = ort.get_available_providers()
    if not requested:
        return [p for p in PREFERRED_PROVIDERS if p in available]
    names = requested.split(",") if isinstance(requested, str) else list(requested)
    chosen = []
    for name in (n.strip() for n in names if n.strip()):
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            short = [k for k, v in PROVIDER_ALIASES.items() if v in available and k != "trt"]
            raise InputError(f"ONNX Runtime provider {name!r} is not available here; available: "
                             f"{', '.join(short)} ({', '.join(available)})")
        chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def session_options(threads: int | None = None):
    """Options for steady latency (:data:`SESSION_CONFIG`) and an explicit intra-op thread count."""
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    for key, value in SESSION_CONFIG.items():
        so.add_session_config_entry(key, value)
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = threads
    return so


def not_onnx(path: Path) -> str | None:
    """What a file that is not an ONNX graph is, when it is one of ours (a bundle, an expert, a
    cache shard: a safetensors file), so the error says what to run instead."""
    try:
        with open(path, "rb") as f:
            head = f.read(8 + 4096)
        size = struct.unpack("<Q", head[:8])[0]
        if not 2 <= size <= 100 << 20 or head[8:9] != b"{":
            return None
        with open(path, "rb") as f:
            f.seek(8)
            meta = json.loads(f.read(size)).get("__metadata__", {})
        kind = json.loads(meta.get("jedi", "{}")).get("kind", "safetensors")
    except (OSError, ValueError, struct.error):
        return None
    hint = {"bundle": "run `jedi export --bundle FILE --out DIR` and use the .onnx files it writes",
            "expert": "run `jedi pretrain`/`jedi cache` with it, or export a bundle trained on it",
            "cache": "it is an embedding cache shard, read by `jedi train`/`jedi eval`"}.get(
        kind, "give an .onnx file written by `jedi export`")
    return f"this is a jedi {kind} file (safetensors), not an ONNX model: {hint}"


class OrtRunner(Runner):
    """An ONNX Runtime session on ``path``. The model card is read from the graph's metadata
    (``card=False``: a graph without one, e.g. an intermediate file of the quantizer). With
    ``profile`` the session records ORT's profiler (:meth:`profile_events`). Activated on
    construction when ``eager`` (the default): a graph ORT cannot load fails at once."""

    label = "ONNX Runtime"
    runtime = "ort"

    def __init__(self, path: str | Path, providers: str | list[str] | None = None, threads: int | None = None, *,
                 card: bool = True, profile: bool = False, eager: bool = True):
        super().__init__(None, Path(path).name)
        self.path, self.providers, self.threads, self.profile = Path(path), providers, threads, profile
        self._want_card, self.session, self._profile_dir = card, None, None
        if eager:
            self.activate()

    def _activate(self) -> None:
        ort = require("onnxruntime")
        so = session_options(self.threads)
        if self.profile:
            self._profile_dir = tempfile.TemporaryDirectory(prefix="jedi-profile-")
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(self._profile_dir.name) / "ort")
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=select_providers(self.providers))
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise InputError(f"{self.path}: {not_onnx(self.path) or f'ONNX Runtime cannot load this model ({e})'}") from None
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.info = {"runtime": "ort", "onnxruntime": ort.__version__, "providers": self.session.get_providers(),
                     "intra_op_threads": self.threads}
        if self._want_card and self.card is None:
            self.card = ModelCard.from_props(self.metadata(), str(self.path))
            graph_inputs = self.input_names()
            if sorted(graph_inputs) != sorted(s.name for s in self.card.inputs):
                raise InputError(f"{self.path}: the graph's inputs {graph_inputs} are not the ones its model card "
                                 f"describes {[s.name for s in self.card.inputs]}")

    def metadata(self) -> dict[str, str]:
        return self.session.get_modelmeta().custom_metadata_map

    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(None, feed)))

    def profile_events(self) -> list[dict]:
        """The profiler's events so far (ends profiling; needs ``profile=True``)."""
        return json.loads(Path(self.session.end_profiling()).read_text())

    def _deactivate(self) -> None:
        self.session = None
        if self._profile_dir is not None:
            self._profile_dir.cleanup()
            self._profile_dir = None
