"""An ONNX Runtime session that knows its model: preprocessing and categories come from the
``jedi`` metadata written by ``jedi export``."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jedi_deploy.deps import require
from jedi_deploy.errors import InputError
from jedi_deploy.meta import METADATA_KEY, require_file
from jedi_deploy.video import Preprocess, crop_views, decode_frames, normalize_views

#: Execution providers in order of preference (the first available one runs the model;
#: ONNX Runtime falls back along the list for ops a provider cannot run).
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_ALIASES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
                    "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


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


#: Session config entries of every session jedi-deploy opens (serve, infer, bench, the export
#: benchmarks): steady latency on shared cores, and no subnormal-float slow path.
SESSION_CONFIG = {
    "session.intra_op.allow_spinning": "0",  # idle workers sleep instead of stealing the cores
    "session.inter_op.allow_spinning": "0",
    # Flush subnormals to zero in the session's worker threads. Masked attention (Video Swin's
    # shifted windows fill masked logits with -100) makes softmax produce subnormals, which
    # x86 handles ~100x slower; swin3d_t ran ~9% faster with this, outputs unchanged at fp32
    # tolerance (values below 1.2e-38 become 0).
    "session.set_denormal_as_zero": "1",
}


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


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class OnnxModel:
    """``OnnxModel(path).classify(video)`` -> top-k :class:`Prediction` list."""

    def __init__(self, path: str | Path, providers: str | list[str] | None = None, threads: int | None = None):
        ort = require("onnxruntime")
        self.path = require_file(path, "ONNX model")
        providers = select_providers(providers)
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(threads), providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise InputError(f"{self.path}: ONNX Runtime cannot load this model ({e})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise InputError(f"{self.path}: no '{METADATA_KEY}' metadata; export it with `jedi export`")
        self.meta = json.loads(raw)
        self.preprocess = Preprocess.from_dict(self.meta["preprocess"])
        self.categories: list[str] = list(self.meta["categories"])
        self.uint8_input = bool(self.meta.get("uint8_input", False))
        self.graph_views = int(self.meta.get("views", 1))  # >1: the graph averages the views itself
        self.input_name = self.meta.get("input", self.session.get_inputs()[0].name)
        self.output_name = self.meta.get("output", self.session.get_outputs()[0].name)

    @property
    def name(self) -> str:
        return self.meta.get("name", self.path.stem)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch in the graph's input format (see :meth:`prepare`)."""
        dtype = np.uint8 if self.uint8_input else np.float32
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, dtype)})[0]

    def input_signature(self) -> tuple:
        """(sample shape without batch, dtype) of the graph's input."""
        shape = self.meta.get("input_shape")
        if shape:
            shape = tuple(int(d) for d in shape[1:])
        else:
            shape = self.preprocess.input_shape()
        return shape, "uint8" if self.uint8_input else "float32"

    def sample_input(self, batch: int, seed: int = 0) -> np.ndarray:
        """Random input of the graph's shape and dtype (for benchmarks)."""
        shape, dtype = self.input_signature()
        rng = np.random.default_rng(seed)
        if dtype == "uint8":
            return rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
        return rng.standard_normal((batch, *shape)).astype(np.float32)

    def prepare(self, video: str | Path) -> np.ndarray:
        """A video's test views in the graph's input format: ``[V, ...]`` (one batch row per
        view), or ``[1, V, ...]`` for a graph that averages V views itself."""
        views = crop_views(decode_frames(video, self.preprocess), self.preprocess)
        x = views if self.uint8_input else normalize_views(views, self.preprocess)
        if self.graph_views > 1:
            x = np.concatenate([x] * (-(-self.graph_views // len(x))))[:self.graph_views][None]
        return x

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """Class probabilities of ONE video from the logits of its :meth:`prepare` rows, averaged
        over its views as the model's preprocessing says (mean score, or mean probability)."""
        if self.graph_views > 1:
            return softmax(logits[0])
        if self.preprocess.average == "prob":
            return softmax(logits).mean(axis=0)
        return softmax(logits.mean(axis=0))

    def run_many(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Class probabilities of several prepared videos, run as ONE batch."""
        logits = self.run(np.concatenate(inputs) if len(inputs) > 1 else inputs[0])
        bounds = np.cumsum([len(x) for x in inputs])[:-1]
        return [self.probs(part) for part in np.split(logits, bounds)]

    def video_probs(self, video: str | Path) -> np.ndarray:
        """Class probabilities of one video: every test view (clips x crops) in one batch."""
        return self.probs(self.run(self.prepare(video)))

    def top(self, probs: np.ndarray, topk: int = 5) -> list[Prediction]:
        order = np.argsort(-probs, kind="stable")[:max(1, topk)]
        return [Prediction(self.categories[i], int(i), float(probs[i])) for i in order]

    def classify(self, video: str | Path, topk: int = 5) -> list[Prediction]:
        return self.top(self.video_probs(video), topk)
