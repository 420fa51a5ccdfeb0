"""JEDI training: joint expert distillation on cached embeddings (the paper's section 3).

The model is :mod:`jedi_deploy.jedi_model`, the objective :mod:`train.losses`, the fast step
:mod:`train.engine`, the data protocol (validation split, labeled fraction, pools)
:mod:`train.data`. Every knob is a field of :class:`jedi_deploy.config.JEDIConfig`.

Schemes: "joint" (paper) updates students and teachers with every batch; "alternating"
switches every ``alternate_every`` epochs between a teacher phase (teachers learn their
classification loss, students frozen) and a student phase (students learn CE + distillation
from the frozen teachers), starting with the teachers. Distillation switches on after
``burn_in`` epochs in both.

A run folder holds, when a run completes: ``jedi.safetensors`` (last epoch), ``best.safetensors``
(best mean student acc@1 on the validation split), ``metrics.jsonl`` (one record per epoch),
``final_eval.json`` and ``config.json``. While it runs, everything lives in
``in_progress/`` (checkpoint after every epoch + live log), so a failed or stopped run never
touches the outputs of an earlier one, and ``--resume`` continues from the last epoch with the
same result as an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from jedi_deploy.config import JEDIConfig
from jedi_deploy.errors import ConfigError, InputError
from jedi_deploy.jedi_model import JEDIModel
from jedi_deploy.metrics import classification_metrics

from .cache import Cache
from .data import EvalSet, TrainData, build_train_data, eval_set
from .engine import Masks, Rng, fused_forward, tune_allocator
from .losses import distillation_weights, jedi_loss

__all__ = ["TrainResult", "train_jedi", "train_to_dir", "evaluate_model", "distillation_weights", "jedi_loss"]


@dataclass
class TrainResult:
    model: JEDIModel
    history: list[dict]
    experts: list[dict]
    datasets: list[str]
    config: JEDIConfig
    best_epoch: int | None = None
    best_score: float | None = None
    data: dict = field(default_factory=dict)


def build_model(data: TrainData, cache: Cache, cfg: JEDIConfig) -> JEDIModel:
    """Seeded model whose students start as the initial experts (heads from the cache)."""
    torch.manual_seed(cfg.seed)
    model = JEDIModel([e["embed_dim"] for e in data.experts], [e["num_classes"] for e in data.experts], cfg)
    with torch.no_grad():
        for head, n in zip(model.students, data.names):
            head.weight.copy_(cache.heads[n]["weight"])
            head.bias.copy_(cache.heads[n]["bias"])
    return model


def build_optimizer(model: JEDIModel, cfg: JEDIConfig) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)


@torch.no_grad()
def evaluate_model(model: JEDIModel, sets: dict[str, EvalSet], datasets: list[str]
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """{dataset: {"student": metrics, "teacher": metrics}} (eval mode, no dropout)."""
    was_training = model.training
    model.eval()
    out = {}
    for i, d in enumerate(datasets):
        s = sets.get(d)
        if s is None or len(s.labels) == 0:
            continue
        student, teacher = model([e.float() for e in s.embs])
        out[d] = {"student": classification_metrics(student[i].numpy(), s.labels.numpy()),
                  "teacher": classification_metrics(teacher[i].numpy(), s.labels.numpy())}
    model.train(was_training)
    return out


def eval_sets(cache: Cache, data: TrainData, split: str) -> dict[str, EvalSet]:
    return {d: eval_set(cache, d, split, data.names) for d in data.datasets}


def phase_of(epoch: int, cfg: JEDIConfig) -> str:
    if cfg.scheme == "joint":
        return "joint"
    return "teachers" if ((epoch - 1) // cfg.alternate_every) % 2 == 0 else "students"


def _set_phase(model: JEDIModel, phase: str) -> None:
    for p in list(model.adjust.parameters()) + list(model.students.parameters()):
        p.requires_grad_(phase != "teachers")
    for p in model.teachers.parameters():
        p.requires_grad_(phase != "students")


def train_step(model: JEDIModel, optimizer, embs: list[torch.Tensor], dataset: torch.Tensor,
               labels: torch.Tensor, weights: torch.Tensor, cfg: JEDIConfig, rng: Rng, *,
               distill: bool, phase: str = "joint") -> dict[str, float]:
    """One optimisation step on one batch; returns the loss parts (batch means)."""
    masks = Masks(model, len(labels), rng)
    if cfg.precision == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            students, teachers = model(embs, *masks.as_reference())
        students, teachers = [s.float() for s in students], [t.float() for t in teachers]
    else:
        students, teachers = fused_forward(model, embs, masks)
    loss, parts = jedi_loss(students, teachers, dataset, labels, weights, cfg, distill, phase)
    if loss.requires_grad:  # a batch without labels in a teacher phase has nothing to learn
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    parts["loss"] = loss.item()
    return parts


def _score(val: dict) -> float | None:
    if not val:
        return None
    return sum(r["student"]["acc1"] for r in val.values()) / len(val)


class _RunFolder:
    """Where a run writes (see module docstring); ``None`` folder = keep everything in memory."""

    def __init__(self, out: Path | None):
        self.out = out
        self.work = out / "in_progress" if out else None

    def path(self, name: str) -> Path | None:
        return self.work / name if self.work else None


def train_jedi(cache: Cache, cfg: JEDIConfig, *, progress: bool = True, run_dir: str | Path | None = None,
               resume: bool = False, on_epoch: Callable[[int, dict], None] | None = None,
               log_path: str | Path | None = None) -> TrainResult:
    """Train JEDI on ``cache``. With ``run_dir``, checkpoints/logs go to ``run_dir/in_progress``
    (see :func:`train_to_dir`, which also writes the final files). ``on_epoch(epoch, record)``
    is called after each epoch's checkpoint is safely written."""
    from tqdm.auto import tqdm

    from .checkpoint import load_checkpoint, save_checkpoint

    data = build_train_data(cache, cfg)  # validates everything before any file is touched
    tune_allocator()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    folder = _RunFolder(Path(run_dir) if run_dir else None)
    model = build_model(data, cache, cfg)
    optimizer = build_optimizer(model, cfg)
    weights = distillation_weights(data.sizes, cfg)
    rng = Rng(cfg.seed)
    val_sets, test_sets = data.val, eval_sets(cache, data, cfg.eval_split)
    history: list[dict] = []
    best, best_epoch, start = None, None, 1
    ckpt_path, live_log = folder.path("checkpoint.safetensors"), folder.path("metrics.jsonl")
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise InputError(f"nothing to resume in {run_dir}: no in_progress/checkpoint.safetensors")
        ck = load_checkpoint(ckpt_path, model, optimizer, config=cfg, experts=data.experts)
        rng.state = ck.rng_state
        start, best = ck.epoch + 1, ck.best
        if live_log.exists():
            history = [json.loads(x) for x in live_log.read_text().splitlines() if x.strip()]
            history = [r for r in history if r["epoch"] <= ck.epoch]
        best_epoch = max((r["epoch"] for r in history if _score(r.get("val", {})) == best), default=None)
    elif folder.work:
        if folder.work.exists():
            shutil.rmtree(folder.work)
        folder.work.mkdir(parents=True)
    log_file = live_log or (Path(log_path) if log_path else None)
    if log_file:
        log_file.write_text("".join(json.dumps(r) + "\n" for r in history))
    log = open(log_file, "a") if log_file else None

    def record_eval(rec: dict) -> None:
        nonlocal best, best_epoch
        if val_sets and any(len(s.labels) for s in val_sets.values()):
            rec["val"] = evaluate_model(model, val_sets, data.datasets)
        rec["eval"] = evaluate_model(model, test_sets, data.datasets)
        score = _score(rec.get("val", {}))
        if score is not None and (best is None or score > best):
            best, best_epoch = score, rec["epoch"]
            if folder.work:
                from jedi_deploy.bundle import save_bundle

                save_bundle(model, folder.path("best.safetensors"), experts=data.experts,
                            datasets=data.datasets, config=cfg, extra={"epoch": rec["epoch"], "val_score": score})

    try:
        if not history:
            rec = {"epoch": 0, "loss": None}
            record_eval(rec)
            history.append(rec)
            if log:
                log.write(json.dumps(rec) + "\n")
        n = len(data.labels)
        steps = math.ceil(n / cfg.batch_size)
        bar = tqdm(total=cfg.epochs, initial=start - 1, desc="JEDI training", unit="epoch", disable=not progress)
        for epoch in range(start, cfg.epochs + 1):
            t0 = time.perf_counter()
            phase = phase_of(epoch, cfg)
            distill = epoch > cfg.burn_in and cfg.distill_data != "none"
            model.train()
            _set_phase(model, phase)
            sums: dict[str, float] = {}
            perm = rng.permutation(n)
            for k in range(steps):
                idx = perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]
                parts = train_step(model, optimizer, [e.index_select(0, idx) for e in data.embs],
                                   data.dataset[idx], data.labels[idx], weights, cfg, rng,
                                   distill=distill, phase=phase)
                for key, v in parts.items():
                    sums[key] = sums.get(key, 0.0) + v
            _set_phase(model, "joint")
            if not math.isfinite(sums["loss"]):
                raise InputError(f"training diverged at epoch {epoch} (loss {sums['loss']}); lower the learning "
                                 "rate (lr) or check the cache for extreme values")
            rec = {"epoch": epoch, "phase": phase, "distill": distill,
                   **{k: v / steps for k, v in sums.items()}, "train_s": round(time.perf_counter() - t0, 3)}
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                record_eval(rec)
            history.append(rec)
            if log:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if ckpt_path:
                save_checkpoint(ckpt_path, model, optimizer, config=cfg, epoch=epoch, best=best,
                                rng_state=rng.state, experts=data.experts)
            bar.update()
            shown = {"loss": f"{rec['loss']:.3f}"}
            if "val" in rec:
                shown["val_acc1"] = f"{_score(rec['val']):.1f}"
            bar.set_postfix(shown)
            if on_epoch:
                on_epoch(epoch, rec)
        bar.close()
    finally:
        if log:
            log.close()
    model.eval()
    return TrainResult(model, history, data.experts, data.datasets, cfg, best_epoch, best, data.summary())


BUNDLE_NAME = "jedi.safetensors"
BEST_NAME = "best.safetensors"
LOG_NAME = "metrics.jsonl"


def train_to_dir(cache: Cache, out_dir: str | Path, cfg: JEDIConfig, *, force: bool = False,
                 resume: bool = False, progress: bool = True, extra: dict | None = None,
                 on_epoch: Callable[[int, dict], None] | None = None) -> tuple[TrainResult, Path]:
    """Train into a run folder (see module docstring); returns the result and the last bundle."""
    from jedi_deploy.bundle import save_bundle
    from jedi_deploy.meta import write_json

    out_dir = Path(out_dir)
    bundle = out_dir / BUNDLE_NAME
    work = out_dir / "in_progress"
    if resume and force:
        raise ConfigError("--resume and --force contradict each other: resume continues a run, force restarts it")
    if not resume:
        if work.exists() and not force:
            raise InputError(f"{out_dir} holds a stopped run ({work}); pass --resume to continue it "
                             "or --force to start over")
        if bundle.exists() and not force:
            raise InputError(f"{bundle} already exists; choose another --out or pass --force to replace it")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create run folder {out_dir}: {e.strerror or e}") from None
    result = train_jedi(cache, cfg, progress=progress, run_dir=out_dir, resume=resume, on_epoch=on_epoch)
    final = result.history[-1]["eval"]
    info = {"final_eval": final, "best_epoch": result.best_epoch, "data": result.data, **(extra or {})}
    save_bundle(result.model, bundle, experts=result.experts, datasets=result.datasets, config=cfg, extra=info)
    best = work / BEST_NAME
    if best.exists():
        best.replace(out_dir / BEST_NAME)
    elif (out_dir / BEST_NAME).exists():
        (out_dir / BEST_NAME).unlink()  # from an earlier run this one replaced (--force)
    (work / LOG_NAME).replace(out_dir / LOG_NAME)
    write_json(out_dir / "config.json", cfg.to_dict())
    write_json(out_dir / "final_eval.json", final)
    shutil.rmtree(work)
    return result, bundle
