"""The model card: the one typed contract of an exported ONNX graph's ``metadata_props``.

Every ONNX file jedi-deploy writes carries ``metadata_props["jedi"]`` = the JSON of a
:class:`ModelCard`; this module is its only writer (:meth:`ModelCard.to_props`, used through
:func:`embed_card`) and its only reader (:meth:`ModelCard.from_props`, :func:`read_card`).
Everything a runtime needs to feed a graph comes from here: per input its name, dtype, shape,
layout and preprocessing; the categories of the output; and, for provenance, the kind
(student / expert / teacher), dataset, architecture, hashes, precision and format version.

A student or an expert has one input (``video``); a teacher ensemble has one input per expert
(``video_<j>``), each with that expert's own preprocessing. Torch-free: ``serve`` reads it.
Readers refuse a newer ``format_version``, name a missing or malformed field, and read the
flat format-1 metadata that earlier releases wrote.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.errors import InputError
from jedi_deploy.contracts.header import METADATA_KEY
from jedi_deploy.contracts.preprocess import Preprocess

Feed = dict  # {input name: array}: what a graph is run on

#: Format 2: typed inputs (``inputs``), one card for every kind. Format 1 was a flat dict.
CARD_FORMAT_VERSION = 2
KINDS = ("student", "expert", "teacher")
DTYPES = ("float32", "uint8")
#: Layout of a graph input (batch first). ``V`` = views averaged inside the graph.
INPUT_LAYOUTS = ("NTCHW", "NTHWC", "NVTCHW", "NVTHWC")


@dataclass(frozen=True)
class InputSpec:
    """One graph input and how to make it from a video."""

    name: str
    dtype: str  # "float32" (normalised) or "uint8" (decoded frames; the graph normalises)
    shape: tuple  # ("batch", ...) with ints after the batch axis
    layout: str  # one of INPUT_LAYOUTS
    preprocess: Preprocess
    views: int = 1  # > 1: the graph takes [B, V, ...] and averages the V views itself
    expert: str = ""  # the expert whose encoder reads this input
    expert_sha256: str | None = None

    @property
    def uint8(self) -> bool:
        return self.dtype == "uint8"

    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one batch row."""
        return tuple(int(d) for d in self.shape[1:])

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["preprocess"] = self.preprocess.to_dict()
        return d


@dataclass(frozen=True)
class ModelCard:
    kind: str
    name: str
    dataset: str
    arch: str  # the expert's architecture; "ensemble" for a teacher
    categories: tuple[str, ...]
    inputs: tuple[InputSpec, ...]
    output: str = "logits"
    average: str = "score"  # how a runtime averages views it feeds as separate rows
    precision: str = "fp32"
    exporter: str = "torchscript"
    opset: int | None = None
    simplified: bool = False
    bundle_sha256: str | None = None  # students and teachers: the bundle they came from
    extra: dict = field(default_factory=dict)  # free-form facts (e.g. calibration) for newer writers
    format_version: int = CARD_FORMAT_VERSION

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"model card: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.inputs:
            raise InputError("model card: a model needs at least one input")
        for spec in self.inputs:
            if spec.dtype not in DTYPES:
                raise InputError(f"model card: input {spec.name!r} dtype must be one of {DTYPES}, got {spec.dtype!r}")
            if spec.layout not in INPUT_LAYOUTS:
                raise InputError(f"model card: input {spec.name!r} layout must be one of {INPUT_LAYOUTS}, "
                                 f"got {spec.layout!r}")

    @property
    def input(self) -> InputSpec:
        """The only input of a student or expert (a teacher has several: :attr:`inputs`)."""
        if len(self.inputs) != 1:
            raise InputError(f"{self.name}: a {self.kind} graph with {len(self.inputs)} inputs has no single input")
        return self.inputs[0]

    @property
    def expert_sha256(self) -> str | None:
        """The checkpoint hash of a student's or expert's encoder (None for a teacher)."""
        return self.inputs[0].expert_sha256 if self.kind != "teacher" else None

    # ------------------------------------------------------------------------ feeding
    def check_feed(self, feed: Feed, where: str = "") -> Feed:
        """``feed`` as the graph takes it (contiguous, each input's dtype), or one :class:`InputError`
        naming the input that is missing, unexpected or of the wrong shape. Every row batch must agree."""
        src = f"{where or self.name}: "
        if not isinstance(feed, dict):
            raise InputError(f"{src}a feed is a dict {{input name: array}}, got {type(feed).__name__}")
        names = [s.name for s in self.inputs]
        if sorted(feed) != sorted(names):
            raise InputError(f"{src}the feed has inputs {sorted(feed)}, the graph takes {names}")
        out, rows = {}, set()
        for s in self.inputs:
            x = np.ascontiguousarray(feed[s.name], np.uint8 if s.uint8 else np.float32)
            if x.ndim != len(s.shape) or tuple(x.shape[1:]) != s.sample_shape():
                raise InputError(f"{src}input {s.name!r} has shape {list(x.shape)}, expected "
                                 f"[batch, {', '.join(map(str, s.sample_shape()))}]")
            rows.add(x.shape[0])
            out[s.name] = x
        if len(rows) > 1:
            raise InputError(f"{src}the inputs have different batch sizes {sorted(rows)}")
        return out

    def dummy_feed(self, batch: int, rng: np.random.Generator | int = 0) -> Feed:
        """Random inputs of the graph's shapes and dtypes (validation, benchmarks, warm-up):
        uint8 frames uniform in [0, 255], float inputs standard normal."""
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        feed = {}
        for s in self.inputs:
            shape = (batch, *s.sample_shape())
            feed[s.name] = (rng.integers(0, 256, shape, dtype=np.uint8) if s.uint8
                            else rng.standard_normal(shape).astype(np.float32))
        return feed

    def feed_from_clips(self, clips: list[np.ndarray], source: str | Path = "") -> Feed:
        """The graph's feed for ONE video from its sampled frames, ``uint8[K, T, H, W, 3]`` per input
        (resized; :func:`jedi_deploy.media.decode.decode_clips`): each input gets its views cropped
        (and normalised for a float input) as ``[V, ...]`` rows, or ``[1, V, ...]`` for an input whose
        graph averages V views itself (repeated or trimmed to V)."""
        from .preprocess import crop_views, normalize_views

        feed = {}
        for s, c in zip(self.inputs, clips):
            views = crop_views(c, s.preprocess, source or None)
            x = views if s.uint8 else normalize_views(views, s.preprocess)
            if s.views > 1:
                x = np.concatenate([x] * (-(-s.views // len(x))))[:s.views][None]
            feed[s.name] = x
        rows = {len(x) for x in feed.values()}
        if len(rows) > 1:
            raise InputError(f"{source or self.name}: its inputs take different numbers of views per video "
                             f"({ {k: len(x) for k, x in feed.items()} }); re-export it")
        return feed

    def video_probs(self, logits: np.ndarray, source: str = "") -> np.ndarray:
        """Class probabilities of ONE video from the logits of its :meth:`feed_from_clips` rows,
        averaged over its views as :attr:`average` says (mean score, or mean probability)."""
        if len(logits) == 1:
            return softmax(logits[0])
        if self.average == "prob":
            return softmax(logits).mean(axis=0)
        if self.average == "feature":
            raise InputError(f"{source or self.name}: its card averages embeddings over the views, which only the "
                             "graph itself can do, but the graph takes one view; re-export it with jedi export")
        return softmax(logits.mean(axis=0))

    # ------------------------------------------------------------------------ writing
    def to_dict(self) -> dict:
        return {"format_version": self.format_version, "kind": self.kind, "name": self.name,
                "dataset": self.dataset, "arch": self.arch, "categories": list(self.categories),
                "inputs": [i.to_dict() for i in self.inputs], "output": self.output, "average": self.average,
                "precision": self.precision, "exporter": self.exporter, "opset": self.opset,
                "simplified": self.simplified, "bundle_sha256": self.bundle_sha256, "extra": dict(self.extra)}

    def to_props(self) -> dict[str, str]:
        return {METADATA_KEY: json.dumps(self.to_dict(), sort_keys=True)}

    # ------------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, d: dict, source: str = "model") -> "ModelCard":
        version = d.get("format_version", 1)
        if not isinstance(version, int) or version > CARD_FORMAT_VERSION:
            raise InputError(f"{source}: written by a newer jedi-deploy (model card format {version}); this "
                             f"one reads format <= {CARD_FORMAT_VERSION}: upgrade jedi-deploy")
        if version < 2:
            d = _upgrade_v1(d, source)
        try:
            inputs = tuple(_input_from_dict(x, source) for x in d["inputs"])
            return cls(kind=d["kind"], name=d["name"], dataset=d["dataset"], arch=d["arch"],
                       categories=tuple(d["categories"]), inputs=inputs, output=d["output"],
                       average=d.get("average", "score"), precision=d.get("precision", "fp32"),
                       exporter=d.get("exporter", "torchscript"), opset=d.get("opset"),
                       simplified=bool(d.get("simplified", False)), bundle_sha256=d.get("bundle_sha256"),
                       extra=dict(d.get("extra") or {}), format_version=CARD_FORMAT_VERSION)
        except KeyError as e:
            raise InputError(f"{source}: model card lacks field {e.args[0]!r}") from None
        except InputError as e:
            raise InputError(f"{source}: {e}") from None

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> "ModelCard":
        raw = props.get(METADATA_KEY)
        if raw is None:
            raise InputError(f"{source}: no '{METADATA_KEY}' metadata; export the model with `jedi export`")
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(f"{source}: '{METADATA_KEY}' metadata is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise InputError(f"{source}: '{METADATA_KEY}' metadata is not a JSON object")
        return cls.from_dict(d, source)


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _input_from_dict(x: dict, source: str) -> InputSpec:
    from jedi_deploy.contracts.errors import ConfigError

    try:
        pre = Preprocess.from_dict(x["preprocess"])
    except ConfigError as e:
        raise InputError(f"input {x.get('name')!r}: {e}") from None
    return InputSpec(name=x["name"], dtype=x["dtype"], shape=tuple(x["shape"]), layout=x["layout"], preprocess=pre,
                     views=int(x.get("views", 1)), expert=x.get("expert", ""),
                     expert_sha256=x.get("expert_sha256"))


def input_layout(uint8_input: bool, views: int) -> str:
    """The layout name of a graph input: frames (NTHWC) or normalised planes (NTCHW), with V."""
    return ("NVTHWC" if uint8_input else "NVTCHW") if views > 1 else ("NTHWC" if uint8_input else "NTCHW")


def _upgrade_v1(d: dict, source: str) -> dict:
    """Format 1 (flat keys, written before typed cards) -> format 2 fields."""
    d = dict(d)
    if d.get("kind") == "teacher":
        d["inputs"] = [{"name": x["name"], "dtype": "float32", "layout": "NTCHW", "preprocess": x["preprocess"],
                        "shape": ["batch", *Preprocess.from_dict(x["preprocess"]).input_shape()],
                        "expert": x.get("expert", ""), "expert_sha256": sha}
                       for x, sha in zip(d.get("inputs", []), d.get("expert_sha256") or [None] * 99)]
        d.setdefault("arch", "ensemble")
        return d
    if "preprocess" not in d:
        raise InputError(f"{source}: model card lacks field 'preprocess'")
    uint8, views = bool(d.get("uint8_input", False)), int(d.get("views", 1))
    shape = d.get("input_shape") or ["batch", *Preprocess.from_dict(d["preprocess"]).input_shape()]
    d["inputs"] = [{"name": d.get("input", "video"), "dtype": "uint8" if uint8 else "float32", "shape": shape,
                    "layout": input_layout(uint8, views), "preprocess": d["preprocess"], "views": views,
                    "expert": d.get("name", ""), "expert_sha256": d.get("expert_sha256")}]
    d.setdefault("output", "logits")
    return d


def embed_card(model, card: ModelCard) -> None:
    """Replace an ``onnx.ModelProto``'s ``metadata_props`` with ``card`` (the only writer)."""
    del model.metadata_props[:]
    for key, value in card.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_card(path: str | Path) -> ModelCard:
    """The card of an ONNX file on disk. ``onnx.load`` parses the whole protobuf - weights stored
    inside the file included (only external-data files are left unread) - so this costs about the
    file's size in memory and time; a runner that already opened the file reads the card from its
    session instead."""
    import onnx

    p = Path(path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends for garbage files
        raise InputError(f"{p}: not a readable ONNX file ({type(e).__name__})") from None
    return ModelCard.from_props({x.key: x.value for x in model.metadata_props}, str(p))
