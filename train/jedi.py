"""JEDI training: joint expert distillation on cached embeddings (the paper's section 3).

The model (adjustment modules, students, teachers) is :mod:`jedi_deploy.jedi_model`.
  * loss for x in D_i with label y (y = -1: unlabeled, KD term only):
      α·CE(M_i(x), y) + β·Hinge(E_i(x), y) + γ·Σ_j w_ij·KD_T(M_j(x), E_j(x)),
      w_ij = 1 if i = j else |D_j| / Σ_k |D_k|;  KD = cross-entropy to softmax(E_j/T),
    teachers' outputs are pseudo-labels (no gradient through the KD target);
  * every sample of every dataset passes through all students and teachers; KD starts
    after ``burn_in`` epochs; AdamW.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from jedi_deploy.errors import CacheMismatchError, InputError
from jedi_deploy.jedi_model import JEDIConfig, JEDIModel
from jedi_deploy.metrics import classification_metrics

from .cache import Cache


def distillation_weights(sizes: list[int]) -> torch.Tensor:
    """The paper's Eq. 2: w_ij = 1 if i == j else |D_j| / Σ_k |D_k|  (shape [n, n])."""
    s = torch.tensor(sizes, dtype=torch.float32)
    w = (s / s.sum()).expand(len(sizes), -1).clone()
    w.fill_diagonal_(1.0)
    return w


def jedi_loss(student_logits: list[torch.Tensor], teacher_logits: list[torch.Tensor],
              dataset_index: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
              cfg: JEDIConfig, distill: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over the batch of the paper's Eq. 1 (see module docstring)."""
    n, batch = len(student_logits), len(labels)
    zero = student_logits[0].new_zeros(())
    ce, hinge, kd = zero, zero, zero
    for i in range(n):
        m = (dataset_index == i) & (labels >= 0)
        if m.any():
            ce = ce + F.cross_entropy(student_logits[i][m], labels[m], reduction="sum")
            hinge = hinge + F.multi_margin_loss(teacher_logits[i][m], labels[m], reduction="sum")
    if distill:
        t = cfg.temperature
        for j in range(n):
            target = F.softmax(teacher_logits[j].detach() / t, dim=1)
            per_sample = -(target * F.log_softmax(student_logits[j] / t, dim=1)).sum(dim=1)
            kd = kd + (weights[dataset_index, j] * per_sample).sum()
    loss = (cfg.alpha * ce + cfg.beta * hinge + cfg.gamma * kd) / batch
    return loss, {"ce": ce.item() / batch, "hinge": hinge.item() / batch, "kd": kd.item() / batch}


@dataclass
class TrainResult:
    model: JEDIModel
    history: list[dict]
    experts: list[dict]
    datasets: list[str]
    config: JEDIConfig


def _gather(cache: Cache, datasets: list[str], names: list[str], split: str):
    """Stack one split of all datasets: per-expert embeddings, dataset index, labels."""
    parts = [cache.split(d, split) for d in datasets]
    embs = [torch.cat([p.emb[n] for p in parts]) for n in names]
    index = torch.cat([torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(parts)])
    labels = torch.cat([p.labels for p in parts])
    return embs, index, labels


def check_cache(cache: Cache, cfg: JEDIConfig) -> list[str]:
    """Validate the cache for training; returns the dataset order (= expert order)."""
    datasets = []
    for e in cache.experts:
        if e["dataset"] not in cache.splits:
            raise CacheMismatchError(f"cache has no data for dataset {e['dataset']!r} of expert {e['name']!r}")
        if len(cache.categories[e["dataset"]]) != e["num_classes"]:
            raise CacheMismatchError(f"expert {e['name']!r} predicts {e['num_classes']} classes but dataset "
                                     f"{e['dataset']!r} has {len(cache.categories[e['dataset']])}")
        datasets.append(e["dataset"])
    for d in datasets:
        for split in (cfg.train_split, cfg.eval_split):
            s = cache.split(d, split)
            if len(s) == 0:
                raise InputError(f"dataset {d!r} split {split!r} is empty")
            bad = (s.labels >= len(cache.categories[d])) | (s.labels < -1)
            if bad.any():
                raise InputError(f"dataset {d!r} split {split!r}: label {int(s.labels[bad][0])} outside "
                                 f"[0, {len(cache.categories[d])}) (-1 = unlabeled)")
    return datasets


@torch.no_grad()
def evaluate_model(model: JEDIModel, cache: Cache, datasets: list[str], names: list[str],
                   split: str) -> dict[str, dict[str, dict[str, float]]]:
    """{dataset: {"student": metrics, "teacher": metrics}} on ``split``."""
    model.eval()
    out = {}
    for i, d in enumerate(datasets):
        s = cache.split(d, split)
        student, teacher = model([s.emb[n] for n in names])
        out[d] = {"student": classification_metrics(student[i].numpy(), s.labels.numpy()),
                  "teacher": classification_metrics(teacher[i].numpy(), s.labels.numpy())}
    return out


def train_jedi(cache: Cache, cfg: JEDIConfig, *, progress: bool = True,
               log_path: str | Path | None = None) -> TrainResult:
    """Joint end-to-end JEDI training; logs per-epoch test metrics (for the Figure-3 curves)."""
    from tqdm.auto import trange

    datasets = check_cache(cache, cfg)
    names = cache.expert_names
    torch.manual_seed(cfg.seed)
    dims = [e["embed_dim"] for e in cache.experts]
    classes = [e["num_classes"] for e in cache.experts]
    for e, n in zip(cache.experts, names):
        got = cache.split(e["dataset"], cfg.train_split).emb[n].shape[1]
        if got != e["embed_dim"]:
            raise CacheMismatchError(f"expert {n!r}: cache embeddings have dim {got}, metadata says {e['embed_dim']}")
    model = JEDIModel(dims, classes, cfg)
    with torch.no_grad():  # students start as the initial experts (heads from the cache)
        for head, n in zip(model.students, names):
            head.weight.copy_(cache.heads[n]["weight"])
            head.bias.copy_(cache.heads[n]["bias"])
    embs, index, labels = _gather(cache, datasets, names, cfg.train_split)
    sizes = [int((index == i).sum()) for i in range(len(datasets))]
    weights = distillation_weights(sizes)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    log = open(log_path, "w") if log_path else None
    try:
        record = {"epoch": 0, "loss": None, "eval": evaluate_model(model, cache, datasets, names, cfg.eval_split)}
        history.append(record)
        if log:
            log.write(json.dumps(record) + "\n")
        bar = trange(1, cfg.epochs + 1, desc="JEDI training", unit="epoch", disable=not progress)
        for epoch in bar:
            model.train()
            distill = epoch > cfg.burn_in
            total, parts, steps = 0.0, {"ce": 0.0, "hinge": 0.0, "kd": 0.0}, 0
            for idx in torch.randperm(len(labels), generator=gen).split(cfg.batch_size):
                student, teacher = model([e[idx] for e in embs])
                loss, p = jedi_loss(student, teacher, index[idx], labels[idx], weights, cfg, distill)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
                steps += 1
                for k in parts:
                    parts[k] += p[k]
            if not math.isfinite(total):
                raise InputError(f"training diverged at epoch {epoch} (loss {total}); lower the learning rate")
            record = {"epoch": epoch, "loss": total / steps, **{k: v / steps for k, v in parts.items()},
                      "distill": distill,
                      "eval": evaluate_model(model, cache, datasets, names, cfg.eval_split)}
            history.append(record)
            if log:
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.set_postfix(loss=f"{record['loss']:.3f}")
    finally:
        if log:
            log.close()
    model.eval()
    return TrainResult(model, history, cache.experts, datasets, cfg)


BUNDLE_NAME = "jedi.safetensors"
LOG_NAME = "metrics.jsonl"


def train_to_dir(cache: Cache, out_dir: str | Path, cfg: JEDIConfig, *, force: bool = False,
                 progress: bool = True, extra: dict | None = None) -> tuple[TrainResult, Path]:
    """Train and write ``out_dir/jedi.safetensors`` (bundle), ``metrics.jsonl`` and
    ``final_eval.json``. Refuses to replace an existing bundle unless ``force``."""
    from jedi_deploy.bundle import save_bundle
    from jedi_deploy.meta import write_json

    out_dir = Path(out_dir)
    bundle = out_dir / BUNDLE_NAME
    if bundle.exists() and not force:
        raise InputError(f"{bundle} already exists; choose another --out or pass --force to replace it")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create run folder {out_dir}: {e.strerror or e}") from None
    result = train_jedi(cache, cfg, progress=progress, log_path=out_dir / LOG_NAME)
    final = result.history[-1]["eval"]
    save_bundle(result.model, bundle, experts=result.experts, datasets=result.datasets, config=cfg,
                extra={"final_eval": final, **(extra or {})})
    write_json(out_dir / "final_eval.json", final)
    return result, bundle
