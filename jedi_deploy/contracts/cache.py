"""The embedding-cache file format: the contract between ``jedi cache`` and everything that
reads a cache (training, evaluation, CKA). The builder lives in ``jedi_deploy.train.cache``;
this module owns the layout and the typed header (:class:`CacheHeader`, the only writer and
reader of a cache file's metadata). The tensors are written and loaded (as torch tensors, which
also hold bfloat16) by :mod:`jedi_deploy.train.cached`.

Layout: ``CACHE/<dataset>/<split>.safetensors``, one self-describing shard per dataset and
split. Tensors: ``emb.<expert>`` ``[N, D_expert]``, ``logits.<expert>`` ``[N, C_expert]``,
``labels`` ``[N]`` (int64, -1 = unlabeled), and each expert's head
``head.<expert>.weight``/``.bias`` (the students' starting point), so training needs no
checkpoint. While a split is being cached its chunks are ``kind="cache-part"`` files under
``CACHE/.parts/<dataset>/<split>/<n>.safetensors`` (tensors ``index``, ``labels``, ``emb.*``,
``logits.*``). Every file is written atomically.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jedi_deploy.contracts.errors import CacheMismatchError, InputError
from jedi_deploy.contracts.expert import ExpertCard, read_expert_cards
from jedi_deploy.contracts.header import (
    read_safetensors_metadata,
)

SHARD_KIND, PART_KIND = "cache", "cache-part"
PARTS_DIR = ".parts"
FAILURES_FILE = "failures.jsonl"


def shard_path(cache_dir: str | Path, dataset: str, split: str) -> Path:
    return Path(cache_dir) / dataset / f"{split}.safetensors"


def part_path(cache_dir: str | Path, dataset: str, split: str, number: int) -> Path:
    return Path(cache_dir) / PARTS_DIR / dataset / split / f"{number:06d}.safetensors"


@dataclass(frozen=True)
class CacheHeader:
    """The header of a cache shard (``kind="cache"``) or of one chunk of it (``"cache-part"``)."""

    kind: str
    dataset: str
    split: str
    experts: list[ExpertCard]  # in cache order
    failures: list[dict] = field(default_factory=list)  # {"path", "error"} of videos left out
    notes: list[dict] = field(default_factory=list)  # {"path", "warning"}: kept, sampled from a clean prefix
    categories: list[str] = field(default_factory=list)  # shard: the dataset's class names
    samples: list[str] = field(default_factory=list)  # shard: relative video path of every row
    dtype: str = "float32"  # shard: how emb/logits are stored
    root: str = ""  # shard: the dataset folder ``samples`` are relative to, absolute, at cache time
    start: int = 0  # part: the chunk's first and one-past-last sample of the split
    stop: int = 0
    chunk_size: int = 0  # part: the layout it belongs to (0: written before parts recorded it)
    precision: str = ""  # part: the encoders' precision (fp32, fp16, bf16)
    videos: str = ""  # part: sha256 of its videos and labels, in order (the split's list may change)

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "dataset": self.dataset, "split": self.split,
             "experts": [e.to_dict() for e in self.experts],
             "failures": self.failures, "notes": self.notes}
        if self.kind == SHARD_KIND:
            d.update(categories=self.categories, samples=self.samples, dtype=self.dtype, root=self.root)
        else:
            d.update(start=self.start, stop=self.stop, chunk_size=self.chunk_size, precision=self.precision,
                     videos=self.videos)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "CacheHeader":
        kind = d.get("kind")
        need = ("dataset", "split", "experts") + (("categories",) if kind == SHARD_KIND else ("start", "stop"))
        missing = [k for k in need if k not in d]
        if missing:
            raise CacheMismatchError(f"{source}: cache header lacks field {missing[0]!r}")
        experts = read_expert_cards(d["experts"], source, "cache")
        return cls(kind, d["dataset"], d["split"], experts, list(d.get("failures", [])),
                   list(d.get("notes", [])), list(d.get("categories", [])), list(d.get("samples") or []),
                   d.get("dtype", "float32"),
                   str(d.get("root") or ""), int(d.get("start", 0)), int(d.get("stop", 0)),
                   int(d.get("chunk_size", 0)), str(d.get("precision") or ""), str(d.get("videos") or ""))

    def where(self, i: int) -> str:
        """`` (<video path>)`` of row ``i`` when known, for error messages."""
        return f" ({self.samples[i]})" if i < len(self.samples) else ""


def read_cache_header(path: str | Path, kind: str = SHARD_KIND) -> CacheHeader:
    return CacheHeader.from_dict(read_safetensors_metadata(path, kind=kind), str(path))


@dataclass(frozen=True)
class CachedVideos:
    """The videos (and labels) of one cached split, as the cache recorded them: what ``jedi
    export --int8`` calibrates and evaluates on by default."""

    dataset: str
    split: str
    paths: list[Path]
    labels: list[int]
    categories: list[str]


def cached_videos(cache_dir: str | Path, dataset: str, split: str) -> CachedVideos:
    """Read only the header and the labels of ``<cache>/<dataset>/<split>.safetensors``."""
    from safetensors import safe_open

    path = shard_path(cache_dir, dataset, split)
    if not path.is_file():
        raise InputError(f"cache has no split {dataset}/{split}: {path} not found")
    h = read_cache_header(path)
    if not h.root or not h.samples:
        raise InputError(f"{path}: this cache does not record where its videos are (built before jedi-deploy "
                         "recorded its data folder); rebuild it with `jedi cache`, or pass the video lists explicitly")
    with safe_open(str(path), framework="numpy") as f:
        labels = [int(v) for v in f.get_tensor("labels")]
    if len(labels) != len(h.samples):
        raise CacheMismatchError(f"{path}: {len(h.samples)} sample paths but {len(labels)} labels")
    return CachedVideos(dataset, split, [Path(h.root) / s for s in h.samples], labels, list(h.categories))
