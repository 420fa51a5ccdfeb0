"""``jedi cache``: every expert's frozen-encoder embeddings and own-head logits over every
dataset's videos (the paper's section 3.3), written in the format of
:mod:`jedi_deploy.contracts.cache` (tensors: :mod:`jedi_deploy.train.cached`).

Three steps, one function each: :func:`plan_cache` (which chunks of which splits are still to
do, and this rank's share), :func:`decode_chunks` (worker processes decode each video once for
all experts and cut every expert's views), and :class:`ChunkWriter` (encode, then write each
chunk atomically as soon as it is complete); :func:`join_splits` joins a split's chunks into
its shard. :func:`build_cache` runs them. An existing shard or chunk for the same experts is
kept, so an interrupted run resumes where it stopped.

One module because planning, decoding, encoding and joining share the chunk layout and the resume
rule; each step is a function of its own (``plan_cache``, ``decode_chunks``, ``ChunkWriter``,
``join_splits``).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from jedi_deploy.contracts.cache import (
    FAILURES_FILE,
    PART_KIND,
    PARTS_DIR,
    SHARD_KIND,
    CacheHeader,
    part_path,
    read_cache_header,
    shard_path,
)
from jedi_deploy.contracts.errors import (
    CacheMismatchError,
    CheckpointError,
    InputError,
    JediError,
    VideoDecodeError,
)
from jedi_deploy.contracts.expert import ExpertCard, same_experts
from jedi_deploy.contracts.header import atomic_path
from jedi_deploy.contracts.preprocess import views_from_frames
from jedi_deploy.media.datasets import VideoDataset
from jedi_deploy.media.decode import decode_clips
from jedi_deploy.models.registry import Expert
from jedi_deploy.train.cached import write_cache_file

__all__ = ["build_cache", "plan_cache", "decode_chunks", "ChunkWriter", "join_splits", "encode_views"]


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


def dist_info() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them (RANK / WORLD_SIZE); (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def default_workers() -> int:
    """Decoding processes: one per core left over from encoding (at least one)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True, eq=False)
class Chunk:
    """Samples [start, stop) of ``dataset``/``split``: one resumable part file."""

    dataset: VideoDataset
    split: str
    samples: tuple
    start: int
    stop: int
    number: int

    def part(self, cache_dir: Path) -> Path:
        return part_path(cache_dir, self.dataset.name, self.split, self.number)

    def videos(self) -> str:
        """sha256 of the chunk's videos (relative paths) and labels, in order."""
        import hashlib

        text = "\n".join(f"{s.path.relative_to(self.dataset.root)} {s.label}" for s in self.samples)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class CachePlan:
    """What this rank still has to cache: its chunks, their videos in order, and batches that
    never cross a chunk (so results do not depend on how work is split between ranks/resumes)."""

    chunks: list[Chunk]
    open_splits: list[tuple[VideoDataset, str, list]]  # every split without a final shard (all ranks)
    chunk_size: int
    items: list[tuple[Chunk, int]]  # (chunk, sample index within it)
    batches: list[list[int]]  # indices into ``items``


def plan_cache(datasets: list[VideoDataset], splits: tuple[str, ...] | None, cache_dir: Path, descs: list[ExpertCard], *,
               chunk_size: int, batch_size: int, rank: int = 0, world: int = 1, precision: str = "fp32") -> CachePlan:
    """Chunks still to do (splits with a shard, and chunks already written, are skipped; either
    one written for other experts is refused, and so is a part written with another chunk layout,
    precision or video list: a resume never mixes) and this rank's share: every world-th chunk."""
    chunks, open_splits = [], []
    for d in datasets:
        for s in (splits or d.splits()):
            p = shard_path(cache_dir, d.name, s)
            samples = d.samples(s)
            if p.exists():
                h = read_cache_header(p)
                if same_experts(h.experts, descs):
                    continue  # already cached by an earlier (possibly interrupted) run
                raise CacheMismatchError(f"{p} was cached for other experts ({[x.name for x in h.experts]}); "
                                         "use another cache folder")
            open_splits.append((d, s, samples))
            for k, a in enumerate(range(0, len(samples), chunk_size)):
                chunks.append(Chunk(d, s, tuple(samples[a:a + chunk_size]), a, min(a + chunk_size, len(samples)), k))
    for d, s, _ in open_splits:  # a part the layout does not have (a larger --chunk-size ran before)
        folder = part_path(cache_dir, d.name, s, 0).parent
        have = {c.number for c in chunks if c.dataset is d and c.split == s}
        extra = sorted(int(f.stem) for f in folder.glob("*.safetensors") if f.stem.isdigit() and int(f.stem) not in have)
        if extra:
            _refuse_layout(folder, read_cache_header(folder / f"{extra[0]:06d}.safetensors", PART_KIND), chunk_size,
                           precision)
    mine = [c for k, c in enumerate(chunks)
            if k % world == rank and not _part_done(c, cache_dir, descs, chunk_size, precision)]
    items = [(c, k) for c in mine for k in range(len(c.samples))]
    batches, pos = [], 0
    for c in mine:
        batches += [list(range(pos + a, pos + min(a + batch_size, len(c.samples))))
                    for a in range(0, len(c.samples), batch_size)]
        pos += len(c.samples)
    return CachePlan(mine, open_splits, chunk_size, items, batches)


def _part_done(chunk: Chunk, cache_dir: Path, descs, chunk_size: int, precision: str) -> bool:
    """Whether ``chunk``'s part is already written - by this run's experts, chunk layout, precision
    and videos; a part written otherwise is refused (one line naming the setting), never mixed in."""
    path = chunk.part(cache_dir)
    if not path.exists():
        return False
    h = read_cache_header(path, PART_KIND)
    if not same_experts(h.experts, descs):
        raise CacheMismatchError(f"{path} was cached for other experts; remove {path.parent} or use another "
                                 "cache folder")
    if (h.start, h.stop) != (chunk.start, chunk.stop) or (h.chunk_size and h.chunk_size != chunk_size):
        _refuse_layout(path.parent, h, chunk_size, precision)
    if (h.precision and h.precision != precision) or (h.videos and h.videos != chunk.videos()):
        _refuse_layout(path.parent, h, chunk_size, precision, videos=h.videos != chunk.videos())
    return True


def _refuse_layout(folder: Path, h: CacheHeader, chunk_size: int, precision: str, videos: bool = False) -> None:
    """One line: which setting differs from the run that wrote ``folder``'s parts, and the way out."""
    if videos:
        what = f"its videos: {h.dataset}/{h.split}'s list changed since"
    elif h.precision and h.precision != precision:
        what = f"--precision {h.precision}; this run asks for --precision {precision}"
    else:
        size = h.chunk_size or (h.stop - h.start)
        what = f"--chunk-size {size}; this run asks for --chunk-size {chunk_size}"
    raise CacheMismatchError(f"{folder} holds parts of an interrupted run cached with {what}. Resume with the same "
                             f"settings, or remove {folder} to cache {h.dataset}/{h.split} again")


class _Decode(torch.utils.data.Dataset):
    """Worker-side: decode one video once for all experts and cut each expert's views.
    Returns (item, ([views per expert], warning or None)) or (item, error message)."""

    def __init__(self, items, specs):
        self.items, self.specs = items, specs

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        chunk, k = self.items[i]
        path = chunk.samples[k].path
        try:
            decoded = decode_clips(path, self.specs)
            return i, ([torch.from_numpy(views_from_frames(c, s, path)) for c, s in zip(decoded.clips, self.specs)],
                       decoded.warning)
        except JediError as e:  # VideoDecodeError and friends: recorded, never fatal here
            return i, str(e)


def _collate(batch):
    return batch


PREFETCH = 4  # batches each decode worker prepares ahead


def decode_chunks(plan: CachePlan, specs: list, workers: int, pin_memory: bool = False):
    """Batches of ``(item, views per expert | error message)`` in plan order, decoded by
    ``workers`` processes (0: in this process) ahead of the encoders; ``pin_memory`` (for a GPU)
    puts the views in page-locked memory so they copy to the device without blocking."""
    return torch.utils.data.DataLoader(_Decode(plan.items, specs), batch_sampler=plan.batches, collate_fn=_collate,
                                       num_workers=workers,
                                       prefetch_factor=PREFETCH if workers else None, persistent_workers=False,
                                       pin_memory=pin_memory)


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@torch.inference_mode()
def encode_views(expert: Expert, views: list[torch.Tensor], precision: str = "fp32"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (mean over each video's views) and logits (score or prob averaging, as the
    expert's preprocessing says) of a batch of videos, each ``[V, T, 3, S, S]``, on the expert's
    device, the encoder under ``precision`` autocast (fp16/bf16); results are float32 on the CPU."""
    device = next(expert.model.parameters()).device
    v = views[0].shape[0]
    x = torch.cat(views).to(device, non_blocking=True)
    dtype = PRECISIONS[precision]
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        emb_v = expert.encoder(x)
    emb_v = emb_v.float().view(len(views), v, -1)
    emb = emb_v.mean(dim=1)
    if expert.preprocess.average == "prob" and v > 1:
        logits = torch.log(torch.softmax(expert.head(emb_v), dim=-1).mean(dim=1))
    else:
        logits = expert.head(emb)
    return emb.cpu(), logits.cpu()


def encode_adaptive(expert: Expert, views: list[torch.Tensor], precision: str, start: int,
                    where=lambda i: f"video {i}") -> tuple[torch.Tensor, torch.Tensor, int]:
    """:func:`encode_views` in sub-batches of at most ``start`` videos, halving the sub-batch on a
    device out-of-memory error and going on; returns (emb, logits, the sub-batch size that fit).
    One video that does not fit alone is a clear error naming it (``where(i)``)."""
    size, i, embs, logits = max(1, start), 0, [], []
    while i < len(views):
        try:
            e, lg = encode_views(expert, views[i:i + size], precision)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if size == 1:
                raise InputError(f"{where(i)}: its {views[i].shape[0]} views do not fit in the memory of the "
                                 f"device expert {expert.name!r} runs on, even alone; use a preset with fewer "
                                 "views or clips, --precision fp16/bf16, or a larger device") from None
            size //= 2
            continue
        embs.append(e)
        logits.append(lg)
        i += len(e)
    return torch.cat(embs), torch.cat(logits), size


class ChunkWriter:
    """Encodes decoded batches with every expert, records unreadable videos, and writes each
    chunk's part file atomically the moment its last video is done."""

    def __init__(self, plan: CachePlan, cache_dir: Path, experts: list[Expert], descs: list[ExpertCard], strict: bool,
                 precision: str = "fp32"):
        self.plan, self.cache_dir, self.experts, self.descs, self.strict = plan, cache_dir, experts, descs, strict
        self.precision = precision
        # per expert: the sub-batch that last fitted on its device (halved on out-of-memory)
        self.fits = [max((len(b) for b in plan.batches), default=1)] * len(experts)
        self.results: dict[Chunk, dict] = {c: {} for c in plan.chunks}
        self.failed: dict[Chunk, list] = {c: [] for c in plan.chunks}
        self.notes: dict[Chunk, list] = {c: [] for c in plan.chunks}
        self.left = {c: len(c.samples) for c in plan.chunks}

    @property
    def num_failed(self) -> int:
        return sum(len(f) for f in self.failed.values())

    def add(self, batch: list[tuple[int, object]]) -> None:
        items = self.plan.items
        good = []
        for i, x in batch:
            chunk, k = items[i]
            where = str(chunk.samples[k].path.relative_to(chunk.dataset.root))
            if isinstance(x, str):
                if self.strict:
                    raise VideoDecodeError(f"{x} (--strict: stopped; finished chunks are kept in "
                                           f"{self.cache_dir / PARTS_DIR})")
                self.failed[chunk].append({"path": where, "error": x})
                continue
            views, warning = x
            good.append((i, views))
            if warning:  # sampled from the frames before a corruption: kept, and noted
                self.notes[chunk].append({"path": where, "warning": warning})
        if good:
            def where(n):
                chunk, k = items[good[n][0]]
                return str(chunk.samples[k].path)

            per_expert = []
            for j, e in enumerate(self.experts):
                emb, logits, self.fits[j] = encode_adaptive(e, [v[j] for _, v in good], self.precision,
                                                            self.fits[j], where)
                per_expert.append((emb, logits))
            for n, (i, _) in enumerate(good):
                chunk, k = items[i]
                self.results[chunk][k] = ([pe[0][n] for pe in per_expert], [pe[1][n] for pe in per_expert])
        for i, _ in batch:
            chunk = items[i][0]
            self.left[chunk] -= 1
            if self.left[chunk] == 0:
                self._write(chunk, self.results.pop(chunk), self.failed[chunk], self.notes[chunk])

    def _write(self, chunk: Chunk, results: dict, failures: list, notes: list) -> None:
        ok = sorted(results)
        tensors = {"index": torch.tensor([chunk.start + i for i in ok], dtype=torch.int64),
                   "labels": torch.tensor([chunk.samples[i].label for i in ok], dtype=torch.int64)}
        for j, e in enumerate(self.experts):
            tensors[f"emb.{e.name}"] = (torch.stack([results[i][0][j] for i in ok]) if ok
                                        else torch.zeros(0, e.embed_dim))
            tensors[f"logits.{e.name}"] = (torch.stack([results[i][1][j] for i in ok]) if ok
                                           else torch.zeros(0, e.num_classes))
        header = CacheHeader(PART_KIND, chunk.dataset.name, chunk.split, self.descs, failures, notes,
                             start=chunk.start, stop=chunk.stop, chunk_size=self.plan.chunk_size,
                             precision=self.precision, videos=chunk.videos())
        write_cache_file(chunk.part(self.cache_dir), tensors, header)


def _join_split(d: VideoDataset, split: str, samples, cache_dir: Path, experts, descs, dtype: str,
                chunk_size: int) -> Path | None:
    """Join a split's parts into its shard (atomically); None while parts are missing."""
    from safetensors.torch import load_file

    n_parts = (len(samples) + chunk_size - 1) // chunk_size
    paths = [part_path(cache_dir, d.name, split, k) for k in range(n_parts)]
    if not all(p.exists() for p in paths):
        return None
    parts = [load_file(str(p)) for p in paths]
    headers = [read_cache_header(p, PART_KIND) for p in paths]
    failures, notes = [f for h in headers for f in h.failures], [x for h in headers for x in h.notes]
    index = torch.cat([t["index"] for t in parts]).tolist()
    store = (lambda x: x.to(getattr(torch, dtype)))
    tensors = {"labels": torch.cat([t["labels"] for t in parts])}
    for e in experts:
        for kind in ("emb", "logits"):
            tensors[f"{kind}.{e.name}"] = store(torch.cat([t[f"{kind}.{e.name}"] for t in parts]))
        tensors[f"head.{e.name}.weight"] = store(e.head.weight.detach().clone())
        tensors[f"head.{e.name}.bias"] = store(e.head.bias.detach().clone())
    header = CacheHeader(SHARD_KIND, d.name, split, descs, failures, notes, categories=list(d.categories),
                         samples=[str(samples[i].path.relative_to(d.root)) for i in index], dtype=dtype,
                         root=str(Path(d.root).resolve()))
    out = write_cache_file(shard_path(cache_dir, d.name, split), tensors, header)
    shutil.rmtree(paths[0].parent)
    return out


def join_splits(plan: CachePlan, cache_dir: Path, experts: list[Expert], descs: list[ExpertCard], dtype: str,
                chunk_size: int) -> None:
    """Rank 0, after every rank is done: every open split's chunks -> its shard; failures file."""
    for d, s, samples in plan.open_splits:
        if _join_split(d, s, samples, cache_dir, experts, descs, dtype, chunk_size) is None:
            raise InputError(f"{d.name}/{s}: chunks are missing after all ranks finished; rerun to complete")
    parts = cache_dir / PARTS_DIR
    if parts.exists() and not any(parts.rglob("*.safetensors")):
        shutil.rmtree(parts)
    write_failures(cache_dir)


def write_failures(cache_dir: Path) -> Path:
    """``CACHE/failures.jsonl``: one line per video no shard could hold (dataset, split, path, error)
    and per video kept from the frames before a corruption (dataset, split, path, warning)."""
    lines = []
    for p in sorted(cache_dir.glob("*/*.safetensors")):
        h = read_cache_header(p)
        lines += [json.dumps({"dataset": h.dataset, "split": h.split, **f}) for f in h.failures + h.notes]
    out = cache_dir / FAILURES_FILE
    with atomic_path(out) as tmp:
        tmp.write_text("".join(x + "\n" for x in lines))
    return out


CACHE_DTYPES = ("float32", "float16", "bfloat16")


def build_cache(experts: list[Expert], datasets: list[VideoDataset], cache_dir: str | Path, *,
                splits: tuple[str, ...] | None = None, batch_size: int = 16, dtype: str = "float32",
                progress: bool = True, workers: int | None = None, chunk_size: int = 256,
                strict: bool = False, device: str = "cpu", precision: str = "fp32", log=None) -> list[Path]:
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

    from jedi_deploy.models.devices import describe, resolve_device

    if dtype not in CACHE_DTYPES:
        raise InputError(f"cache dtype must be one of {CACHE_DTYPES}, got {dtype!r}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if chunk_size < 1 or batch_size < 1:
        raise InputError("chunk_size and batch_size must be >= 1")
    check_experts_match_datasets(experts, datasets)
    cache_dir = Path(cache_dir)
    descs = [e.card for e in experts]
    rank, world = dist_info()
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:  # torchrun: rank k on the local rank's GPU
        dev = resolve_device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    group = _init_group(world, dev)
    for e in experts:
        e.model.to(dev)
    nw = default_workers() if workers is None else workers
    if log and rank == 0:
        log(f"caching on {describe(dev)}" + (f" x {world} ranks" if world > 1 else "") + f": {nw} decode worker(s), "
            f"prefetch {PREFETCH if nw else 0} batch(es) each, batch {batch_size}, {precision} encoders, "
            f"{dtype} storage")
    plan = plan_cache(datasets, splits, cache_dir, descs, chunk_size=chunk_size, batch_size=batch_size,
                      rank=rank, world=world, precision=precision)
    writer = ChunkWriter(plan, cache_dir, experts, descs, strict, precision)
    bar = tqdm(total=len(plan.items), desc="caching embeddings" + (f" (rank {rank}/{world})" if world > 1 else ""),
               unit="video", disable=not progress, position=rank if world > 1 else None)
    try:
        for batch in decode_chunks(plan, [e.preprocess for e in experts], nw, pin_memory=dev.type == "cuda"):
            writer.add(batch)
            bar.update(len(batch))
            bar.set_postfix(failed=writer.num_failed)
    finally:
        bar.close()
    _barrier(group)
    if rank == 0:
        join_splits(plan, cache_dir, experts, descs, dtype, chunk_size)
    _barrier(group)
    return CacheSummary.of(cache_dir, [shard_path(cache_dir, d.name, s) for d in datasets for s in (splits or d.splits())],
                           rank)


@dataclass(frozen=True)
class CacheSummary:
    """What ``build_cache`` wrote: the shards, and how many videos were skipped (unreadable) or
    sampled from a clean prefix (corrupt), both listed in ``failures``."""

    shards: list[Path]
    failures: Path
    skipped: int = 0
    partial: int = 0
    rank: int = 0  # under torchrun; only rank 0 reports

    @classmethod
    def of(cls, cache_dir: Path, shards: list[Path], rank: int = 0) -> "CacheSummary":
        path = Path(cache_dir) / FAILURES_FILE
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
        return cls(shards, path, sum("error" in x for x in lines), sum("warning" in x for x in lines), rank)

    def lines(self) -> list[str]:
        """The shards (stdout)."""
        return [str(s) for s in self.shards] if self.rank == 0 else []

    def warnings(self) -> list[str]:
        """What was left out or partly used (stderr)."""
        if self.rank != 0:
            return []
        out = [f"{self.skipped} unreadable video(s) skipped, listed in {self.failures}"] if self.skipped else []
        if self.partial:
            out.append(f"{self.partial} corrupt video(s) sampled from the frames before the corruption, listed in "
                       f"{self.failures}")
        return out


def _init_group(world: int, device):
    """The process group of a torchrun launch: NCCL between GPUs, gloo on CPUs."""
    if world <= 1:
        return None
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(days=2),
                                device_id=device if device.type == "cuda" else None)
    return dist


def _barrier(group) -> None:
    if group is not None:
        group.barrier()
