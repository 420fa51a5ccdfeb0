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

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from jedi_deploy.datasets import VideoDataset
from jedi_deploy.errors import CacheMismatchError, CheckpointError, InputError, JediError, VideoDecodeError
from jedi_deploy.meta import atomic_path, dump_metadata, read_safetensors_metadata
from jedi_deploy.registry import Expert
from jedi_deploy.video import decode_frames_multi, views_from_frames

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


PARTS_DIR = ".parts"
FAILURES_FILE = "failures.jsonl"


def dist_info() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them (RANK / WORLD_SIZE); (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def default_workers() -> int:
    """Decoding processes: one per core left over from encoding (at least one)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True, eq=False)
class _Unit:
    """A chunk of one split: samples [start, stop) of ``dataset``/``split``; one part file."""

    dataset: VideoDataset
    split: str
    samples: tuple
    start: int
    stop: int
    number: int

    def part(self, cache_dir: Path) -> Path:
        return cache_dir / PARTS_DIR / self.dataset.name / self.split / f"{self.number:06d}.safetensors"


class _Decode(torch.utils.data.Dataset):
    """Worker-side: decode one video once for all experts and cut each expert's views.
    Returns (item, [views per expert]) or (item, error message)."""

    def __init__(self, items, specs):
        self.items, self.specs = items, specs

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        unit, k = self.items[i]
        sample = unit.samples[k]
        try:
            clips = decode_frames_multi(sample.path, self.specs)
            return i, [torch.from_numpy(views_from_frames(c, s)) for c, s in zip(clips, self.specs)]
        except JediError as e:  # VideoDecodeError and friends: recorded, never fatal here
            return i, str(e)


def _collate(batch):
    return batch


def _worker_init(_):
    import jedi_deploy.video as video

    video.DECODE_THREADS = 1


@torch.no_grad()
def encode_views(expert: Expert, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (mean over each video's views) and logits (score or prob averaging, as the
    expert's preprocessing says) of a batch of videos, each ``[V, T, 3, S, S]``."""
    v = views[0].shape[0]
    emb_v = expert.encoder(torch.cat(views)).view(len(views), v, -1)
    emb = emb_v.mean(dim=1)
    if expert.preprocess.average == "prob" and v > 1:
        logits = torch.log(torch.softmax(expert.head(emb_v), dim=-1).mean(dim=1))
    else:
        logits = expert.head(emb)
    return emb, logits


def _units(datasets, splits, cache_dir, descs, chunk_size) -> tuple[list[_Unit], list[tuple]]:
    """(chunks still to cache, (dataset, split, samples) of every split without a final shard)."""
    units, open_splits = [], []
    for d in datasets:
        for s in (splits or d.splits()):
            p = shard_path(cache_dir, d.name, s)
            samples = d.samples(s)
            if p.exists():
                meta = read_safetensors_metadata(p, kind="cache")
                if [_identity(x) for x in meta["experts"]] == [_identity(x) for x in descs]:
                    continue  # already cached by an earlier (possibly interrupted) run
                raise CacheMismatchError(f"{p} was cached for other experts "
                                         f"({[x['name'] for x in meta['experts']]}); use another cache folder")
            open_splits.append((d, s, samples))
            for k, a in enumerate(range(0, len(samples), chunk_size)):
                units.append(_Unit(d, s, tuple(samples[a:a + chunk_size]), a, min(a + chunk_size, len(samples)), k))
    return units, open_splits


def _part_done(path: Path, descs) -> bool:
    if not path.exists():
        return False
    meta = read_safetensors_metadata(path, kind="cache-part")
    if [_identity(x) for x in meta["experts"]] != [_identity(x) for x in descs]:
        raise CacheMismatchError(f"{path} was cached for other experts; remove {path.parent} or use another "
                                 "cache folder")
    return True


def _write_part(unit: _Unit, cache_dir: Path, experts, descs, results: dict, failures: list) -> None:
    from safetensors.torch import save_file

    ok = sorted(results)
    tensors = {"index": torch.tensor([unit.start + i for i in ok], dtype=torch.int64),
               "labels": torch.tensor([unit.samples[i].label for i in ok], dtype=torch.int64)}
    for j, e in enumerate(experts):
        tensors[f"emb.{e.name}"] = torch.stack([results[i][0][j] for i in ok]) if ok else torch.zeros(0, e.embed_dim)
        tensors[f"logits.{e.name}"] = (torch.stack([results[i][1][j] for i in ok]) if ok
                                       else torch.zeros(0, e.num_classes))
    meta = {"kind": "cache-part", "dataset": unit.dataset.name, "split": unit.split, "start": unit.start,
            "stop": unit.stop, "experts": descs, "failures": failures}
    path = unit.part(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=dump_metadata(meta))


def _merge_split(d: VideoDataset, split: str, samples, cache_dir: Path, experts, descs, dtype: str,
                 chunk_size: int) -> Path | None:
    """Join a split's parts into its shard (atomically); None while parts are missing."""
    from safetensors.torch import load_file, save_file

    n_parts = (len(samples) + chunk_size - 1) // chunk_size
    folder = cache_dir / PARTS_DIR / d.name / split
    paths = [folder / f"{k:06d}.safetensors" for k in range(n_parts)]
    if not all(p.exists() for p in paths):
        return None
    parts = [load_file(str(p)) for p in paths]
    failures = [f for p in paths for f in read_safetensors_metadata(p, kind="cache-part")["failures"]]
    index = torch.cat([t["index"] for t in parts]).tolist()
    tensors = {"labels": torch.cat([t["labels"] for t in parts])}
    for e in experts:
        for kind in ("emb", "logits"):
            x = torch.cat([t[f"{kind}.{e.name}"] for t in parts])
            tensors[f"{kind}.{e.name}"] = x.half() if dtype == "float16" else x
        tensors[f"head.{e.name}.weight"] = e.head.weight.detach().clone()
        tensors[f"head.{e.name}.bias"] = e.head.bias.detach().clone()
        if dtype == "float16":
            tensors[f"head.{e.name}.weight"] = tensors[f"head.{e.name}.weight"].half()
            tensors[f"head.{e.name}.bias"] = tensors[f"head.{e.name}.bias"].half()
    meta = {"kind": "cache", "dataset": d.name, "split": split, "categories": list(d.categories),
            "experts": descs, "dtype": dtype, "failures": failures,
            "samples": [str(samples[i].path.relative_to(d.root)) for i in index]}
    with atomic_path(shard_path(cache_dir, d.name, split), ".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=dump_metadata(meta))
    shutil.rmtree(folder)
    return shard_path(cache_dir, d.name, split)


def write_failures(cache_dir: Path) -> Path:
    """``CACHE/failures.jsonl``: one line per video no shard could hold (dataset, split, path, error)."""
    lines = []
    for p in sorted(cache_dir.glob("*/*.safetensors")):
        meta = read_safetensors_metadata(p, kind="cache")
        lines += [json.dumps({"dataset": meta["dataset"], "split": meta["split"], **f}) for f in meta.get("failures", [])]
    out = cache_dir / FAILURES_FILE
    with atomic_path(out) as tmp:
        tmp.write_text("".join(x + "\n" for x in lines))
    return out


def build_cache(experts: list[Expert], datasets: list[VideoDataset], cache_dir: str | Path, *,
                splits: tuple[str, ...] | None = None, batch_size: int = 16, dtype: str = "float32",
                progress: bool = True, workers: int | None = None, chunk_size: int = 256,
                strict: bool = False) -> list[Path]:
    """Encode every split of every dataset with every expert; returns the shard paths.

    Work is cut into chunks of ``chunk_size`` videos, each written atomically to
    ``CACHE/.parts/`` as soon as it is encoded, so a killed run resumes at the first missing
    chunk; a split's chunks are joined into its shard when all exist. ``workers`` processes
    decode while the main process encodes. Unreadable videos are skipped and listed in
    ``CACHE/failures.jsonl`` (``strict``: stop at the first one instead). Under ``torchrun``
    every rank caches every WORLD_SIZE-th chunk and rank 0 joins them (a shared folder across
    nodes); the result equals a single-process run.
    """
    from tqdm.auto import tqdm

    if dtype not in ("float32", "float16"):
        raise InputError(f"cache dtype must be float32 or float16, got {dtype!r}")
    if chunk_size < 1 or batch_size < 1:
        raise InputError("chunk_size and batch_size must be >= 1")
    check_experts_match_datasets(experts, datasets)
    cache_dir = Path(cache_dir)
    descs = [e.describe() for e in experts]
    rank, world = dist_info()
    group = _init_group(world)
    units, open_splits = _units(datasets, splits, cache_dir, descs, chunk_size)
    mine = [u for k, u in enumerate(units) if k % world == rank and not _part_done(u.part(cache_dir), descs)]
    items = [(u, k) for u in mine for k in range(len(u.samples))]
    batches, pos = [], 0
    for u in mine:  # batches never cross a chunk: the same batches whatever the rank split
        batches += [list(range(pos + a, pos + min(a + batch_size, len(u.samples))))
                    for a in range(0, len(u.samples), batch_size)]
        pos += len(u.samples)
    specs = [e.preprocess for e in experts]
    nw = default_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(_Decode(items, specs), batch_sampler=batches, collate_fn=_collate,
                                         num_workers=nw, worker_init_fn=_worker_init if nw else None, prefetch_factor=4 if nw else None,
                                         persistent_workers=False)
    bar = tqdm(total=len(items), desc="caching embeddings" + (f" (rank {rank}/{world})" if world > 1 else ""),
               unit="video", disable=not progress, position=rank if world > 1 else None)
    results: dict[_Unit, dict] = {u: {} for u in mine}
    failed: dict[_Unit, list] = {u: [] for u in mine}
    left = {u: len(u.samples) for u in mine}
    try:
        for batch in loader:
            good = [(i, v) for i, v in batch if not isinstance(v, str)]
            for i, msg in batch:
                if isinstance(msg, str):
                    u, k = items[i]
                    smp = u.samples[k]
                    if strict:
                        raise VideoDecodeError(f"{msg} (--strict: stopped; finished chunks are kept in "
                                               f"{cache_dir / PARTS_DIR})")
                    failed[u].append({"path": str(smp.path.relative_to(u.dataset.root)), "error": msg})
            if good:
                per_expert = [encode_views(e, [v[j] for _, v in good]) for j, e in enumerate(experts)]
                for k, (i, _) in enumerate(good):
                    u, j = items[i]
                    results[u][j] = ([pe[0][k] for pe in per_expert],
                                                       [pe[1][k] for pe in per_expert])
            for i, _ in batch:
                u = items[i][0]
                left[u] -= 1
                if left[u] == 0:
                    _write_part(u, cache_dir, experts, descs, results.pop(u), failed[u])
            bar.update(len(batch))
            bar.set_postfix(failed=sum(len(f) for f in failed.values()))
    finally:
        bar.close()
    _barrier(group)
    if rank == 0:
        for d, s, samples in open_splits:
            if _merge_split(d, s, samples, cache_dir, experts, descs, dtype, chunk_size) is None:
                raise InputError(f"{d.name}/{s}: chunks are missing after all ranks finished; rerun to complete")
        parts = cache_dir / PARTS_DIR
        if parts.exists() and not any(parts.rglob("*.safetensors")):
            shutil.rmtree(parts)
        write_failures(cache_dir)
    _barrier(group)
    return [shard_path(cache_dir, d.name, s) for d in datasets for s in (splits or d.splits())]


def _init_group(world: int):
    if world <= 1:
        return None
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=2))
    return dist


def _barrier(group) -> None:
    if group is not None:
        group.barrier()


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
