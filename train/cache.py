"""The embedding cache: every expert's frozen-encoder embeddings and own-head logits over
every dataset's videos (the paper's section 3.3).

Layout: ``CACHE/<dataset>/<split>.safetensors``, one self-describing shard per dataset and
split. Tensors: ``emb.<expert>`` ``[N, D_expert]``, ``logits.<expert>`` ``[N, C_expert]``,
``labels`` ``[N]`` (int64, -1 = unlabeled), and each expert's head
``head.<expert>.weight``/``.bias`` (the students' starting point), so training needs no
checkpoint. Metadata (``jedi`` JSON): ``kind="cache"``,
dataset, split, categories, the relative sample paths, and the description of every expert
(name, arch, dims, checkpoint sha256). Shards are written atomically; a shard that already
exists for the same experts is kept, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jedi_deploy.datasets import Sample, VideoDataset
from jedi_deploy.errors import CacheMismatchError, CheckpointError, InputError
from jedi_deploy.meta import atomic_path, dump_metadata, read_safetensors_metadata
from jedi_deploy.registry import Expert
from jedi_deploy.video import decode_video, preprocess_frames

EXPERT_IDENTITY = ("name", "arch", "embed_dim", "num_classes", "dataset", "sha256")


def _identity(desc: dict) -> dict:
    return {k: desc.get(k) for k in EXPERT_IDENTITY}


def shard_path(cache_dir: Path, dataset: str, split: str) -> Path:
    return Path(cache_dir) / dataset / f"{split}.safetensors"


def check_experts_match_datasets(experts: list[Expert], datasets: list[VideoDataset]) -> None:
    names = [e.name for e in experts]
    if len(set(names)) != len(names):
        raise InputError(f"two experts share a name: {names}")
    by_name = {d.name: d for d in datasets}
    for e in experts:
        d = by_name.get(e.dataset)
        if d is None:
            raise InputError(f"expert {e.name!r} was trained on dataset {e.dataset!r}, which is not among "
                             f"the datasets given: {sorted(by_name)}")
        if tuple(d.categories) != tuple(e.categories):
            raise CheckpointError(f"expert {e.name!r} has {e.num_classes} categories that differ from "
                                  f"{d.root / 'classes.txt'} ({d.num_classes} classes)")


@torch.no_grad()
def _encode_split(experts: list[Expert], samples: list[Sample], batch_size: int,
                  bar) -> dict[str, torch.Tensor]:
    embs = {e.name: [] for e in experts}
    logits = {e.name: [] for e in experts}
    pending: dict[str, list[np.ndarray]] = {e.name: [] for e in experts}

    def flush():
        for e in experts:
            if pending[e.name]:
                emb = e.encoder(torch.from_numpy(np.stack(pending[e.name])))
                embs[e.name].append(emb)
                logits[e.name].append(e.head(emb))
                pending[e.name].clear()

    for s in samples:
        decoded: dict[int, np.ndarray] = {}  # one decode per distinct resize, shared by experts
        for e in experts:
            side = e.preprocess.short_side
            if side not in decoded:
                decoded[side] = decode_video(s.path, side)
            pending[e.name].append(preprocess_frames(decoded[side], e.preprocess))
        bar.update()
        if len(pending[experts[0].name]) >= batch_size:
            flush()
    flush()
    out = {"labels": torch.tensor([s.label for s in samples], dtype=torch.int64)}
    for e in experts:
        out[f"emb.{e.name}"] = torch.cat(embs[e.name]).contiguous()
        out[f"logits.{e.name}"] = torch.cat(logits[e.name]).contiguous()
        out[f"head.{e.name}.weight"] = e.head.weight.detach().clone()
        out[f"head.{e.name}.bias"] = e.head.bias.detach().clone()
    return out


def build_cache(experts: list[Expert], datasets: list[VideoDataset], cache_dir: str | Path, *,
                splits: tuple[str, ...] | None = None, batch_size: int = 16, dtype: str = "float32",
                progress: bool = True) -> list[Path]:
    """Encode every split of every dataset with every expert; returns the shard paths."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if dtype not in ("float32", "float16"):
        raise InputError(f"cache dtype must be float32 or float16, got {dtype!r}")
    check_experts_match_datasets(experts, datasets)
    cache_dir = Path(cache_dir)
    descs = [e.describe() for e in experts]
    jobs = [(d, s) for d in datasets for s in (splits or d.splits())]
    todo = []
    for d, s in jobs:
        p = shard_path(cache_dir, d.name, s)
        if p.exists():
            meta = read_safetensors_metadata(p, kind="cache")
            if [_identity(x) for x in meta["experts"]] == [_identity(x) for x in descs]:
                continue  # already cached by an earlier (possibly interrupted) run
            raise CacheMismatchError(f"{p} was cached for other experts "
                                     f"({[x['name'] for x in meta['experts']]}); use another cache folder")
        todo.append((d, s, d.samples(s)))
    total = sum(len(samples) for _, _, samples in todo)
    bar = tqdm(total=total, desc="caching embeddings", unit="video", disable=not progress)
    for d, s, samples in todo:
        tensors = _encode_split(experts, samples, batch_size, bar)
        if dtype == "float16":
            tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        meta = {"kind": "cache", "dataset": d.name, "split": s, "categories": list(d.categories),
                "experts": descs, "dtype": dtype,
                "samples": [str(smp.path.relative_to(d.root)) for smp in samples]}
        with atomic_path(shard_path(cache_dir, d.name, s), ".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata=dump_metadata(meta))
    bar.close()
    return [shard_path(cache_dir, d.name, s) for d, s in jobs]


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
        meta = read_safetensors_metadata(p, kind="cache")
        if experts is None:
            experts = meta["experts"]
        elif [_identity(x) for x in meta["experts"]] != [_identity(x) for x in experts]:
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
        samples = meta.get("samples")
        for n, x in list(emb.items()) + list(logits.items()):
            bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1) if x.numel() else torch.zeros(0, dtype=torch.bool)
            if bad.any():
                i = int(bad.nonzero()[0])
                where = f" ({samples[i]})" if samples and i < len(samples) else ""
                raise InputError(f"{p}: dataset {meta['dataset']!r} split {meta['split']!r} sample {i}{where}: "
                                 f"expert {n!r} has NaN/Inf values in the cache")
        categories[meta["dataset"]] = meta["categories"]
        splits.setdefault(meta["dataset"], {})[meta["split"]] = Split(meta["dataset"], meta["split"],
                                                                      emb, logits, labels, samples)
    return Cache(experts, categories, splits, heads)
