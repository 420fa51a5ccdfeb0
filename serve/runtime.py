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

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def session_options(threads: int | None = None):
    """Options for steady latency: no thread spinning, an explicit intra-op thread count."""
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
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

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None):
        ort = require("onnxruntime")
        self.path = require_file(path, "ONNX model")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in PREFERRED_PROVIDERS if p in available]
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

    def video_probs(self, video: str | Path) -> np.ndarray:
        """Class probabilities of one video: every test view (clips x crops) in one batch,
        averaged as the model's preprocessing says (mean score, or mean probability)."""
        logits = self.run(self.prepare(video))
        if self.graph_views > 1:
            return softmax(logits[0])
        if self.preprocess.average == "prob":
            return softmax(logits).mean(axis=0)
        return softmax(logits.mean(axis=0))

    def classify(self, video: str | Path, topk: int = 5) -> list[Prediction]:
        probs = self.video_probs(video)
        order = np.argsort(-probs)[:max(1, topk)]
        return [Prediction(self.categories[i], int(i), float(probs[i])) for i in order]
