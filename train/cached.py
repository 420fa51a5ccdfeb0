"""The embedding cache's tensors: the one writer of cache files (:func:`write_cache_file`, used by
``jedi cache``) and their loaded form (:class:`Cache`, :func:`load_cache`) for training,
evaluation and CKA. The layout and the header are :mod:`jedi_deploy.contracts.cache`'s; tensors
are torch here because caches may hold bfloat16, which numpy cannot."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from jedi_deploy.contracts.cache import CacheHeader, read_cache_header
from jedi_deploy.contracts.errors import CacheMismatchError, InputError
from jedi_deploy.contracts.expert import ExpertCard, same_experts
from jedi_deploy.contracts.header import atomic_path, dump_metadata


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
    experts: list[ExpertCard]  # in cache order
    categories: dict[str, list[str]]  # dataset -> class names
    splits: dict[str, dict[str, Split]]  # dataset -> split -> Split
    heads: dict[str, dict[str, torch.Tensor]]  # expert -> {"weight", "bias"} of its own head
    path: Path | None = None  # the cache folder (absolute) it was loaded from: bundles record it

    @property
    def expert_names(self) -> list[str]:
        return [e.name for e in self.experts]

    def expert_for_dataset(self, dataset: str) -> ExpertCard | None:
        return next((e for e in self.experts if e.dataset == dataset), None)

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
        names = [x.name for x in experts]
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
    return Cache(experts, categories, splits, heads, cache_dir.resolve())
