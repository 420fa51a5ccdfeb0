"""The embedding-cache file format: the contract between ``jedi cache`` and everything that
reads a cache (training, evaluation, CKA). The builder lives in ``jedi_deploy.train.cache``;
this module owns the layout, the typed header (:class:`CacheHeader`, the only writer and
reader of a cache file's metadata) and the loaded form (:class:`Cache`, :func:`load_cache`).

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

import torch

from .errors import CacheMismatchError, InputError
from .meta import atomic_path, check_expert_descriptions, dump_metadata, read_safetensors_metadata

SHARD_KIND, PART_KIND = "cache", "cache-part"
PARTS_DIR = ".parts"
FAILURES_FILE = "failures.jsonl"
#: What identifies an expert in a cache: two caches with the same identities are interchangeable.
EXPERT_IDENTITY = ("name", "arch", "embed_dim", "num_classes", "dataset", "sha256")


def expert_identity(desc: dict) -> dict:
    return {k: desc.get(k) for k in EXPERT_IDENTITY}


def same_experts(a: list[dict], b: list[dict]) -> bool:
    return [expert_identity(x) for x in a] == [expert_identity(x) for x in b]


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
    experts: list[dict]  # expert descriptions (registry.Expert.describe), in cache order
    failures: list[dict] = field(default_factory=list)  # {"path", "error"} of videos left out
    notes: list[dict] = field(default_factory=list)  # {"path", "warning"}: kept, sampled from a clean prefix
    categories: list[str] = field(default_factory=list)  # shard: the dataset's class names
    samples: list[str] = field(default_factory=list)  # shard: relative video path of every row
    dtype: str = "float32"  # shard: how emb/logits are stored
    root: str = ""  # shard: the dataset folder ``samples`` are relative to, absolute, at cache time
    start: int = 0  # part: the chunk's first and one-past-last sample of the split
    stop: int = 0

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "dataset": self.dataset, "split": self.split, "experts": self.experts,
             "failures": self.failures, "notes": self.notes}
        if self.kind == SHARD_KIND:
            d.update(categories=self.categories, samples=self.samples, dtype=self.dtype, root=self.root)
        else:
            d.update(start=self.start, stop=self.stop)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "CacheHeader":
        kind = d.get("kind")
        need = ("dataset", "split", "experts") + (("categories",) if kind == SHARD_KIND else ("start", "stop"))
        missing = [k for k in need if k not in d]
        if missing:
            raise CacheMismatchError(f"{source}: cache header lacks field {missing[0]!r}")
        check_expert_descriptions(d["experts"], source, "cache")
        return cls(kind, d["dataset"], d["split"], list(d["experts"]), list(d.get("failures", [])),
                   list(d.get("notes", [])), list(d.get("categories", [])), list(d.get("samples") or []), d.get("dtype", "float32"),
                   str(d.get("root") or ""), int(d.get("start", 0)), int(d.get("stop", 0)))

    def where(self, i: int) -> str:
        """`` (<video path>)`` of row ``i`` when known, for error messages."""
        return f" ({self.samples[i]})" if i < len(self.samples) else ""


def read_cache_header(path: str | Path, kind: str = SHARD_KIND) -> CacheHeader:
    return CacheHeader.from_dict(read_safetensors_metadata(path, kind=kind), str(path))


def write_cache_file(path: str | Path, tensors: dict[str, torch.Tensor], header: CacheHeader) -> Path:
    """Write a shard or part atomically (the only writer of cache files)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=dump_metadata(header.to_dict()))
    return path


@dataclass
class Split:
    """One dataset split of the cache, loaded as float32 tensors."""

    dataset: str
    name: str
    emb: dict[str, torch.Tensor]  # expert -> [N, D]
    logits: dict[str, torch.Tensor]  # expert -> [N, C_expert]
    labels: torch.Tensor  # [N]
    samples: list[str] | None = None  # relative video paths, as recorded at cache time

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, i: int) -> str:
        """`` (<video path>)`` of sample ``i`` when known, for error messages."""
        return f" ({self.samples[i]})" if self.samples and i < len(self.samples) else ""


@dataclass
class Cache:
    experts: list[dict]  # expert descriptions, in cache order
    categories: dict[str, list[str]]  # dataset -> class names
    splits: dict[str, dict[str, Split]]  # dataset -> split -> Split
    heads: dict[str, dict[str, torch.Tensor]]  # expert -> {"weight", "bias"} of its own head

    @property
    def expert_names(self) -> list[str]:
        return [e["name"] for e in self.experts]

    def expert_for_dataset(self, dataset: str) -> dict | None:
        return next((e for e in self.experts if e["dataset"] == dataset), None)

    def split(self, dataset: str, split: str) -> Split:
        try:
            return self.splits[dataset][split]
        except KeyError:
            raise InputError(f"cache has no split {dataset}/{split}; it has "
                             f"{sorted(f'{d}/{s}' for d in self.splits for s in self.splits[d])}") from None


def load_cache(cache_dir: str | Path) -> Cache:
    """Load every shard, checking they were built by the same experts and are finite."""
    from safetensors.torch import load_file

    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise InputError(f"cache folder not found: {cache_dir}")
    shards = sorted(cache_dir.glob("*/*.safetensors"))
    if not shards:
        raise InputError(f"{cache_dir}: no cache shards (<dataset>/<split>.safetensors); run `jedi cache` first")
    experts, categories, splits, heads = None, {}, {}, {}
    for p in shards:
        h = read_cache_header(p)
        if experts is None:
            experts = h.experts
        elif not same_experts(h.experts, experts):
            raise CacheMismatchError(f"{p} was built by other experts than {shards[0]}; "
                                     "a cache folder must hold one set of experts")
        t = load_file(str(p))
        names = [x["name"] for x in experts]
        try:
            emb = {n: t[f"emb.{n}"].float() for n in names}
            logits = {n: t[f"logits.{n}"].float() for n in names}
            labels = t["labels"].long()
            heads = {n: {"weight": t[f"head.{n}.weight"].float(), "bias": t[f"head.{n}.bias"].float()}
                     for n in names}
        except KeyError as e:
            raise CacheMismatchError(f"{p}: shard lacks tensor {e}") from None
        for n, x in list(emb.items()) + list(logits.items()):
            bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1) if x.numel() else torch.zeros(0, dtype=torch.bool)
            if bad.any():
                i = int(bad.nonzero()[0])
                raise InputError(f"{p}: dataset {h.dataset!r} split {h.split!r} sample {i}{h.where(i)}: "
                                 f"expert {n!r} has NaN/Inf values in the cache")
        categories[h.dataset] = h.categories
        splits.setdefault(h.dataset, {})[h.split] = Split(h.dataset, h.split, emb, logits, labels, h.samples or None)
    return Cache(experts, categories, splits, heads)


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
