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
from jedi_deploy.video import Preprocess, load_views

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
        self.input_name = self.meta.get("input", self.session.get_inputs()[0].name)
        self.output_name = self.meta.get("output", self.session.get_outputs()[0].name)

    @property
    def name(self) -> str:
        return self.meta.get("name", self.path.stem)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed batch ``float32[B, T, 3, H, W]``."""
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]

    def video_probs(self, video: str | Path) -> np.ndarray:
        """Class probabilities of one video: every test view (clips x crops) in one batch,
        averaged as the model's preprocessing says (mean score, or mean probability)."""
        logits = self.run(load_views(video, self.preprocess))
        if self.preprocess.average == "prob":
            return softmax(logits).mean(axis=0)
        return softmax(logits.mean(axis=0))

    def classify(self, video: str | Path, topk: int = 5) -> list[Prediction]:
        probs = self.video_probs(video)
        order = np.argsort(-probs)[:max(1, topk)]
        return [Prediction(self.categories[i], int(i), float(probs[i])) for i in order]
