"""A served model: a runner (:mod:`jedi_deploy.runners`) plus what its model card says about
feeding it and reading its answer. Inputs, preprocessing and categories come from the card
``jedi export`` embeds (:mod:`jedi_deploy.contracts.model_card`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.errors import InputError
from jedi_deploy.contracts.header import require_file
from jedi_deploy.contracts.metrics import top_classes
from jedi_deploy.contracts.model_card import Feed
from jedi_deploy.contracts.preprocess import Preprocess
from jedi_deploy.media.decode import NO_LIMITS, Limits, video_feed
from jedi_deploy.runners import open_runner
from jedi_deploy.runners.base import video_probs


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Prepared:
    """One video, ready for the model: its feed, and a warning when only part of the file was usable."""

    feed: Feed
    warning: str | None = None


class OnnxModel:
    """``OnnxModel(path).classify(video)`` -> top-k :class:`Prediction` list.

    Everything about feeding the graph comes from its model card: a student or expert has one
    input; a teacher ensemble has one per expert, each with that expert's own preprocessing. A
    video is decoded once for all inputs (:func:`jedi_deploy.media.decode.decode_clips`) and each
    input's views are cut from that one decode (:meth:`ModelCard.feed_from_clips`). ``runtime``
    runs the graph (:data:`jedi_deploy.runners.RUNTIMES`, or ``auto``); ``runtime_info`` says
    which, and for ``auto`` what the probe measured and skipped."""

    def __init__(self, path: str | Path, providers: str | list[str] | None = None, threads: int | None = None,
                 runtime: str = "ort"):
        self.path = require_file(path, "ONNX model")
        self.runner, pick = open_runner(self.path, runtime, providers=providers, threads=threads)
        self.runtime_info = {**self.runner.info, **({"picked_by_probe": pick} if pick else {})}
        self.card = self.runner.card
        self.categories: list[str] = list(self.card.categories)
        if not self.categories:
            raise InputError(f"{self.path}: the model card lists no categories")
        self.output_name = self.card.output

    @property
    def runtime(self) -> str:
        return self.runner.runtime

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def kind(self) -> str:
        return self.card.kind

    # Single-input views of the card, for students and experts (and code written for them).
    @property
    def preprocess(self) -> Preprocess:
        return self.card.inputs[0].preprocess

    def run(self, feed: Feed | np.ndarray) -> np.ndarray:
        """Logits for a batch: a feed ``{input: array}`` (see :meth:`prepare`), or one array for a
        single-input graph."""
        if not isinstance(feed, dict):
            feed = {self.card.input.name: feed}
        return self.runner.infer(feed)[self.output_name]

    def input_signature(self) -> tuple:
        """Per input: (name, sample shape without batch, dtype)."""
        return tuple((s.name, s.sample_shape(), s.dtype) for s in self.card.inputs)

    def sample_input(self, batch: int, seed: int = 0) -> Feed:
        """Random inputs of the graph's shapes and dtypes (for benchmarks and warm-up)."""
        return self.card.dummy_feed(batch, seed)

    def prepare(self, video: str | Path) -> Feed:
        """A video's test views in the graph's input format (see :meth:`prepare_video`)."""
        return self.prepare_video(video).feed

    def prepare_video(self, video: str | Path, name: str | None = None, limits: Limits = NO_LIMITS) -> Prepared:
        """A video's test views in the graph's input format, decoded once for every input. Each
        input gets ``[V, ...]`` (one batch row per view), or ``[1, V, ...]`` for an input whose
        graph averages V views itself; every input of one video has the same number of rows.
        ``warning`` says when the file is truncated or corrupt and only the frames before the
        first error were sampled. ``name`` is how errors and warnings call the file (an upload's
        own name rather than its temporary path). ``limits``: the decode's budget (frame size, a stop check)."""
        return Prepared(*video_feed(self.card, video, name, limits))

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """Class probabilities of ONE video from the logits of its :meth:`prepare` rows."""
        return self.card.video_probs(logits, str(self.path))

    def run_many(self, feeds: list[Feed]) -> list[np.ndarray]:
        """Class probabilities of several prepared videos, run as ONE batch."""
        return video_probs(self.runner, feeds)

    def video_probs(self, video: str | Path) -> np.ndarray:
        """Class probabilities of one video: every test view (clips x crops) in one batch."""
        return self.probs(self.run(self.prepare(video)))

    def top(self, probs: np.ndarray, topk: int = 5) -> list[Prediction]:
        return [Prediction(self.categories[i], int(i), float(probs[i])) for i in top_classes(probs, topk)]

    def classify(self, video: str | Path, topk: int = 5) -> list[Prediction]:
        return self.top(self.video_probs(video), topk)
