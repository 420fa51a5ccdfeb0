"""An ONNX Runtime session that knows its model: inputs, preprocessing and categories come
from the model card that ``jedi export`` embeds (:mod:`jedi_deploy.model_card`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jedi_deploy.deps import require
from jedi_deploy.errors import InputError
from jedi_deploy.meta import require_file
from jedi_deploy.model_card import ModelCard
from jedi_deploy.video import Preprocess, crop_views, decode_clips, normalize_views

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
    # x86 handles very slowly (figure: benchmarks/RESULTS.md); outputs are unchanged at fp32
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


Feed = dict  # {input name: array}: what a graph is run on


@dataclass(frozen=True)
class Prepared:
    """One video, ready for the model: its feed, and a warning when only part of the file was usable."""

    feed: Feed
    warning: str | None = None


class OrtSession:
    """ONNX Runtime behind :class:`OnnxModel` (the default runtime)."""

    runtime = "ort"

    def __init__(self, path: Path, providers: str | list[str] | None = None, threads: int | None = None):
        ort = require("onnxruntime")
        providers = select_providers(providers)
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise InputError(f"{path}: ONNX Runtime cannot load this model ({e})") from None
        self.info = {"runtime": "ort", "onnxruntime": ort.__version__, "providers": self.session.get_providers(),
                     "intra_op_threads": threads}

    def metadata(self) -> dict[str, str]:
        return self.session.get_modelmeta().custom_metadata_map

    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def run(self, feed: Feed, output: str) -> np.ndarray:
        return self.session.run([output], feed)[0]


#: Runtimes :class:`OnnxModel` can run a graph on: name -> "module:class" (imported lazily, so a
#: runtime that is not installed costs nothing). ``auto`` picks one per model by a timed probe
#: in child processes (:func:`jedi_deploy.serve.probe.pick_runtime`).
RUNTIMES = {"ort": "jedi_deploy.serve.runtime:OrtSession", "openvino": "jedi_deploy.serve.openvino:OpenVinoSession"}
RUNTIME_HELP = ("Runtime: ort (ONNX Runtime), openvino (needs the [openvino] extra), or auto (a short timed probe "
                "of every installed one, each in a child process - one that crashes on the model is skipped - "
                "and the fastest runs it).")


def session_class(runtime: str):
    """The session class of a runtime name from :data:`RUNTIMES`, or of a ``module:class`` spec."""
    import importlib

    spec = RUNTIMES.get(runtime, runtime)
    module, sep, cls = spec.partition(":")
    if not sep:
        raise InputError(f"unknown runtime {runtime!r}; choose from {', '.join([*RUNTIMES, 'auto'])}")
    return getattr(importlib.import_module(module), cls)


class OnnxModel:
    """``OnnxModel(path).classify(video)`` -> top-k :class:`Prediction` list.

    Everything about feeding the graph comes from its model card
    (:class:`jedi_deploy.model_card.ModelCard`): a student or expert has one input; a teacher
    ensemble has one per expert, each with that expert's own preprocessing. A video is decoded
    once for all inputs (:func:`jedi_deploy.video.decode_clips`) and each input's views
    are cut from that one decode. ``runtime`` runs the graph (:data:`RUNTIMES`, or ``auto``);
    ``runtime_info`` says which, and for ``auto`` what the probe measured and skipped."""

    def __init__(self, path: str | Path, providers: str | list[str] | None = None, threads: int | None = None,
                 runtime: str = "ort"):
        self.path = require_file(path, "ONNX model")
        pick = None
        if runtime == "auto":
            from .probe import pick_runtime

            pick = pick_runtime(self.path, threads=threads, providers=providers)
            runtime = pick["runtime"]
        cls = session_class(runtime)
        if providers and cls.runtime != "ort":
            raise InputError(f"--providers chooses ONNX Runtime execution providers; runtime {cls.runtime!r} has none")
        self.session = cls(self.path, providers, threads)
        self.runtime_info = {**self.session.info, **({"picked_by_probe": pick} if pick else {})}
        self.card = ModelCard.from_props(self.session.metadata(), str(self.path))
        names = self.session.input_names()
        if sorted(names) != sorted(s.name for s in self.card.inputs):
            raise InputError(f"{self.path}: the graph's inputs {names} are not the ones its model card describes "
                             f"{[s.name for s in self.card.inputs]}")
        self.categories: list[str] = list(self.card.categories)
        if not self.categories:
            raise InputError(f"{self.path}: the model card lists no categories")
        self.output_name = self.card.output
        self._specs = [s.preprocess for s in self.card.inputs]

    @property
    def runtime(self) -> str:
        return self.session.runtime

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

    @property
    def graph_views(self) -> int:
        return self.card.inputs[0].views

    def run(self, feed: Feed | np.ndarray) -> np.ndarray:
        """Logits for a batch: a feed ``{input: array}`` (see :meth:`prepare`), or one array for a
        single-input graph."""
        if not isinstance(feed, dict):
            feed = {self.card.input.name: feed}
        x = {s.name: np.ascontiguousarray(feed[s.name], np.uint8 if s.uint8 else np.float32) for s in self.card.inputs}
        return self.session.run(x, self.output_name)

    def input_signature(self) -> tuple:
        """Per input: (name, sample shape without batch, dtype)."""
        return tuple((s.name, s.sample_shape(), s.dtype) for s in self.card.inputs)

    def sample_input(self, batch: int, seed: int = 0) -> Feed:
        """Random inputs of the graph's shapes and dtypes (for benchmarks and warm-up)."""
        rng = np.random.default_rng(seed)
        feed = {}
        for s in self.card.inputs:
            shape = (batch, *s.sample_shape())
            feed[s.name] = (rng.integers(0, 256, shape, dtype=np.uint8) if s.uint8
                            else rng.standard_normal(shape).astype(np.float32))
        return feed

    def prepare(self, video: str | Path) -> Feed:
        """A video's test views in the graph's input format (see :meth:`prepare_video`)."""
        return self.prepare_video(video).feed

    def prepare_video(self, video: str | Path) -> Prepared:
        """A video's test views in the graph's input format, decoded once for every input. Each
        input gets ``[V, ...]`` (one batch row per view), or ``[1, V, ...]`` for an input whose
        graph averages V views itself; every input of one video has the same number of rows.
        ``warning`` says when the file is truncated or corrupt and only the frames before the
        first error were sampled."""
        decoded = decode_clips(video, self._specs)
        return Prepared(self.feed_from_clips(decoded.clips, video), decoded.warning)

    def feed_from_clips(self, clips: list[np.ndarray], source: str | Path) -> Feed:
        """The graph's feed from sampled frames, ``uint8[K, T, H, W, 3]`` per input (resized)."""
        feed = {}
        for s, c in zip(self.card.inputs, clips):
            views = crop_views(c, s.preprocess, source)
            x = views if s.uint8 else normalize_views(views, s.preprocess)
            if s.views > 1:
                x = np.concatenate([x] * (-(-s.views // len(x))))[:s.views][None]
            feed[s.name] = x
        rows = {len(x) for x in feed.values()}
        if len(rows) > 1:
            raise InputError(f"{self.path}: its inputs take different numbers of views per video "
                             f"({ {k: len(x) for k, x in feed.items()} }); re-export it")
        return feed

    def rows(self, feed: Feed) -> int:
        return len(next(iter(feed.values())))

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """Class probabilities of ONE video from the logits of its :meth:`prepare` rows, averaged
        over its views as the model's card says (mean score, or mean probability)."""
        if len(logits) == 1:
            return softmax(logits[0])
        if self.card.average == "prob":
            return softmax(logits).mean(axis=0)
        if self.card.average == "feature":
            raise InputError(f"{self.path}: its card averages embeddings over the views, which only the graph "
                             "itself can do, but the graph takes one view; re-export it with jedi export")
        return softmax(logits.mean(axis=0))

    def run_many(self, feeds: list[Feed]) -> list[np.ndarray]:
        """Class probabilities of several prepared videos, run as ONE batch."""
        if len(feeds) == 1:
            logits = self.run(feeds[0])
        else:
            logits = self.run({k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})
        bounds = np.cumsum([self.rows(f) for f in feeds])[:-1]
        return [self.probs(part) for part in np.split(logits, bounds)]

    def video_probs(self, video: str | Path) -> np.ndarray:
        """Class probabilities of one video: every test view (clips x crops) in one batch."""
        return self.probs(self.run(self.prepare(video)))

    def top(self, probs: np.ndarray, topk: int = 5) -> list[Prediction]:
        order = np.argsort(-probs, kind="stable")[:max(1, topk)]
        return [Prediction(self.categories[i], int(i), float(probs[i])) for i in order]

    def classify(self, video: str | Path, topk: int = 5) -> list[Prediction]:
        return self.top(self.video_probs(video), topk)
