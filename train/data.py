"""From a cache to in-memory training tensors: expert selection, checks that name the dataset
and sample, the seeded validation split, the class-balanced labeled subset (CMPL protocol)
and unlabeled pools.

All samples of all datasets live in one set of tensors (one per expert, ``[N, D_j]``), with a
dataset index per sample (n = pool) and a label (-1 = unlabeled): a training step is a random
row gather, never a per-sample DataLoader.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from jedi_deploy.contracts.config import JEDIConfig
from jedi_deploy.contracts.errors import CacheMismatchError, ConfigError, InputError
from jedi_deploy.contracts.expert import ExpertCard
from jedi_deploy.train.cached import Cache, Split


@dataclass
class EvalSet:
    """One dataset's evaluation samples (validation or test)."""

    embs: list[torch.Tensor]
    labels: torch.Tensor


def eval_set(cache: Cache, dataset: str, split: str, names: list[str]) -> EvalSet:
    """``dataset``'s ``split`` as the experts ``names`` embed it."""
    s = cache.split(dataset, split)
    return EvalSet([s.emb[n] for n in names], s.labels)


@dataclass
class TrainData:
    experts: list[ExpertCard]  # the selected experts, in model order
    datasets: list[str]  # dataset j <-> expert j
    pools: list[str]  # unlabeled pool datasets (dataset index n)
    embs: list[torch.Tensor]  # per expert [N, D_j], float32
    dataset: torch.Tensor  # [N] int64 in [0, n]
    labels: torch.Tensor  # [N] int64, -1 = unlabeled
    sizes: list[int]  # |D_j|: training samples of dataset j (labeled + unlabeled)
    val: dict[str, EvalSet]  # dataset -> held-out validation samples (may be empty)
    val_source: dict[str, str] = field(default_factory=dict)  # dataset -> where its validation videos come from

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.experts]

    def summary(self) -> dict:
        out = {}
        for j, d in enumerate(self.datasets):
            m = self.dataset == j
            out[d] = {"train": int(m.sum()), "labeled": int((m & (self.labels >= 0)).sum()),
                      "val": len(self.val[d].labels) if d in self.val else 0,
                      "val_source": self.val_source.get(d, "none")}
        for p in self.pools:
            out[p] = {"pool": int((self.dataset == len(self.datasets)).sum())}
        return out


def select_experts(cache: Cache, cfg: JEDIConfig) -> list[ExpertCard]:
    by_name = {e.name: e for e in cache.experts}
    if not cfg.experts:
        return list(cache.experts)
    missing = [n for n in cfg.experts if n not in by_name]
    if missing:
        raise ConfigError(f"experts {missing} are not in the cache; it has {sorted(by_name)}")
    return [by_name[n] for n in cfg.experts]


def _check_split(split: Split, names: list[str], dims: dict[str, int], num_classes: int, what: str) -> None:
    if len(split) == 0:
        raise InputError(f"{what} is empty (no samples)")
    for n in names:
        x = split.emb[n]
        if x.ndim != 2 or x.shape[1] != dims[n]:
            raise CacheMismatchError(f"{what}: expert {n!r} embeddings have shape {list(x.shape)}, "
                                     f"expected [N, {dims[n]}] (embed_dim in the cache metadata)")
        bad = ~torch.isfinite(x).all(dim=1)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise InputError(f"{what} sample {i}{split.where(i)}: expert {n!r} embedding has NaN/Inf values")
    bad = (split.labels >= num_classes) | (split.labels < -1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise InputError(f"{what} sample {i}{split.where(i)}: label {int(split.labels[i])} outside "
                         f"[0, {num_classes}) (-1 = unlabeled)")


def check_cache(cache: Cache, cfg: JEDIConfig) -> tuple[list[dict], list[str], list[str]]:
    """Validate everything training will read; returns (experts, datasets, pools)."""
    experts = select_experts(cache, cfg)
    names = [e.name for e in experts]
    dims = {e.name: e.embed_dim for e in experts}
    datasets = []
    for e in experts:
        d = e.dataset
        if d not in cache.splits:
            raise CacheMismatchError(f"cache has no data for dataset {d!r} of expert {e.name!r}")
        if d in datasets:
            raise ConfigError(f"two selected experts belong to dataset {d!r}; JEDI pairs one expert per dataset")
        if len(cache.categories[d]) != e.num_classes:
            raise CacheMismatchError(f"expert {e.name!r} predicts {e.num_classes} classes but dataset "
                                     f"{d!r} has {len(cache.categories[d])} (classes.txt)")
        head = cache.heads[e.name]["weight"]
        if list(head.shape) != [e.num_classes, e.embed_dim]:
            raise CacheMismatchError(f"expert {e.name!r}: cached head is {list(head.shape)}, expected "
                                     f"[{e.num_classes}, {e.embed_dim}]")
        datasets.append(d)
        for split in (cfg.train_split, cfg.eval_split):
            _check_split(cache.split(d, split), names, dims, e.num_classes, f"dataset {d!r} split {split!r}")
    pools = []
    if cfg.distill_data == "pool":
        pools = cfg.pools or sorted(d for d in cache.splits if d not in datasets)
        if not pools:
            raise ConfigError("distill_data = 'pool' needs an unlabeled pool: a cached dataset without a "
                              "selected expert (set pools = [...] or select fewer experts)")
        for p in pools:
            if p in datasets:
                raise ConfigError(f"pool {p!r} is the dataset of a selected expert; pools must be other data")
            _check_split(cache.split(p, cfg.train_split), names, dims, 1 << 62, f"pool {p!r} split {cfg.train_split!r}")
    if cfg.weights != "paper" and cfg.distill_data == "all" and len(cfg.weights) != len(datasets):
        raise ConfigError(f"weights is {len(cfg.weights)} x {len(cfg.weights)} but there are {len(datasets)} "
                          f"datasets ({datasets}); row = sample's dataset, column = student")
    return experts, datasets, pools


def _rng(seed: int, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, purpose])


def validation_split(labels: torch.Tensor, fraction: float, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows): ``fraction`` of the labeled rows of every class (rounded, at
    least one when the class has two or more), drawn with ``rng``; unlabeled rows stay in train."""
    y = labels.numpy()
    val = []
    if fraction > 0:
        for c in np.unique(y[y >= 0]):
            rows = np.flatnonzero(y == c)
            k = int(round(fraction * len(rows)))
            if k == 0 and len(rows) >= 2:
                k = 1
            val.extend(rng.choice(rows, size=min(k, len(rows) - 1), replace=False).tolist())
    val = np.sort(np.asarray(val, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(y)), val)
    return train, val


def labeled_subset(labels: torch.Tensor, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """``labels`` with all but a class-balanced ``fraction`` of each class set to -1 (CMPL's
    protocol: max(1, round(fraction·n_c)) labeled samples of class c, drawn with ``rng``)."""
    if fraction >= 1:
        return labels.clone()
    y = labels.numpy()
    out = np.full_like(y, -1)
    for c in np.unique(y[y >= 0]):
        rows = np.flatnonzero(y == c)
        keep = rng.choice(rows, size=max(1, int(round(fraction * len(rows)))), replace=False)
        out[keep] = c
    return torch.from_numpy(out)


#: A dataset's own validation list (``val.txt`` / ``val.csv``, cached as the split ``val``): validation
#: when the experts were not pretrained with a holdout.
VAL_SPLIT = "val"


def holdout_rows(split, expert: ExpertCard, dataset: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of a cached split whose expert was pretrained with a holdout:
    the rows of the videos it never saw validate, the rest train."""
    if not split.samples:
        raise CacheMismatchError(f"dataset {dataset!r} split {name!r}: the cache does not name its videos, so expert "
                                 f"{expert.name!r}'s held-out videos cannot be found; cache it again")
    held = set(expert.holdout)
    va = np.asarray([i for i, p in enumerate(split.samples) if p in held], dtype=np.int64)
    if len(va) != len(held):
        raise CacheMismatchError(f"dataset {dataset!r} split {name!r} holds {len(va)} of the {len(held)} videos expert "
                                 f"{expert.name!r} was pretrained without (its card's holdout); cache the same list")
    return np.setdiff1d(np.arange(len(split.labels)), va), va


def build_train_data(cache: Cache, cfg: JEDIConfig) -> TrainData:
    experts, datasets, pools = check_cache(cache, cfg)
    names = [e.name for e in experts]
    parts, index, labels, sizes, val, sources = [], [], [], [], {}, {}
    for j, d in enumerate(datasets):
        s = cache.split(d, cfg.train_split)
        shipped = cfg.val_fraction > 0 and VAL_SPLIT in cache.splits.get(d, {}) and cfg.train_split != VAL_SPLIT
        if experts[j].holdout and cfg.val_fraction > 0:  # the videos the expert never saw are the validation
            tr, va = holdout_rows(s, experts[j], d, cfg.train_split)
            sources[d] = f"the {len(va)} videos expert {experts[j].name!r} was pretrained without (--holdout)"
        elif shipped:  # the dataset's own validation list: train on the whole training split
            tr, va = np.arange(len(s.labels)), np.zeros(0, dtype=np.int64)
            sources[d] = f"the dataset's {VAL_SPLIT}.txt"
        else:
            tr, va = validation_split(s.labels, cfg.val_fraction, _rng(cfg.seed, j, 1))
            sources[d] = f"{cfg.val_fraction:g} of the {cfg.train_split!r} split (seeded)" if len(va) else "none"
        tr_t, va_t = torch.from_numpy(tr), torch.from_numpy(va)
        if len(tr) == 0:
            raise InputError(f"dataset {d!r} split {cfg.train_split!r} has no training samples left "
                             f"after the validation split (val_fraction={cfg.val_fraction})")
        if shipped and not experts[j].holdout:
            v = cache.split(d, VAL_SPLIT)
            val[d] = EvalSet([v.emb[n] for n in names], v.labels)
        else:
            val[d] = EvalSet([s.emb[n].index_select(0, va_t) for n in names], s.labels.index_select(0, va_t))
        y = labeled_subset(s.labels.index_select(0, tr_t), cfg.label_fraction, _rng(cfg.seed, j, 2))
        parts.append([s.emb[n].index_select(0, tr_t) for n in names])
        index.append(torch.full((len(tr),), j, dtype=torch.long))
        labels.append(y)
        sizes.append(len(tr))
    for p in pools:
        s = cache.split(p, cfg.train_split)
        parts.append([s.emb[n] for n in names])
        index.append(torch.full((len(s),), len(datasets), dtype=torch.long))
        labels.append(torch.full((len(s),), -1, dtype=torch.long))
    embs = [torch.cat([p[k] for p in parts]).contiguous() for k in range(len(names))]
    return TrainData(experts, datasets, pools, embs, torch.cat(index), torch.cat(labels), sizes, val, sources)
