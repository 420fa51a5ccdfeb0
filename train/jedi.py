"""JEDI training: joint expert distillation on cached embeddings (the paper's section 3).

The model is :mod:`jedi_deploy.models.jedi`, the objective :mod:`train.losses`, the fast step
:mod:`train.engine`, the data protocol (validation split, labeled fraction, pools)
:mod:`train.data`. Every knob is a field of :class:`jedi_deploy.contracts.config.JEDIConfig`.

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

One module because the run folder, the epoch loop and the refit are one training run's life cycle
(the step, the losses and the data live in their own modules).
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

from jedi_deploy.contracts.config import JEDIConfig
from jedi_deploy.contracts.errors import ConfigError, InputError
from jedi_deploy.contracts.expert import ExpertCard
from jedi_deploy.contracts.metrics import classification_metrics
from jedi_deploy.models.jedi import JEDIModel
from jedi_deploy.train.cached import Cache

from .data import EvalSet, TrainData, build_train_data, eval_set
from .engine import Masks, Rng, fused_forward, tune_allocator
from .losses import distillation_weights, jedi_loss

__all__ = ["TrainResult", "train_jedi", "train_to_dir", "evaluate_model", "distillation_weights", "jedi_loss"]


@dataclass
class TrainResult:
    model: JEDIModel
    history: list[dict]
    experts: list[ExpertCard]
    datasets: list[str]
    config: JEDIConfig
    best_epoch: int | None = None
    best_score: float | None = None
    data: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. a validation split the experts have seen


#: An initial expert scoring at least this acc@1 (%) on its validation split has most likely been
#: trained on those videos: validation then measures memory, not generalisation.
SEEN_VALIDATION_ACC1 = 99.0


def seen_validation(data, cache) -> tuple[dict[str, float], list[str]]:
    """Each initial expert's acc@1 on its dataset's validation split (its own cached head on its
    embeddings), and a warning for each at or above :data:`SEEN_VALIDATION_ACC1`."""
    accs, warnings = {}, []
    for j, (e, d) in enumerate(zip(data.experts, data.datasets)):
        v = data.val.get(d)
        if v is None or not len(v.labels):
            continue
        head = cache.heads[e.name]
        logits = v.embs[j].float() @ head["weight"].T + head["bias"]
        accs[d] = round(float(100 * (logits.argmax(1) == v.labels).float().mean()), 2)
        if accs[d] >= SEEN_VALIDATION_ACC1 and e.holdout:  # held out: not memory, a task at the ceiling
            warnings.append(f"dataset {d!r}: the initial expert {e.name!r} already scores {accs[d]:.1f}% acc@1 on its "
                            f"{len(v.labels)} held-out validation videos (never seen): at the ceiling, validation "
                            "cannot tell epochs apart for this dataset")
        elif accs[d] >= SEEN_VALIDATION_ACC1:
            warnings.append(f"dataset {d!r}: the initial expert {e.name!r} already scores {accs[d]:.1f}% acc@1 on the "
                            f"{len(v.labels)} validation videos, so they were most likely in its own training data; "
                            "validation cannot tell epochs apart (pretrain with --holdout, or give the dataset a "
                            "val.txt the expert never saw)")
    return accs, warnings


def build_model(data: TrainData, cache: Cache, cfg: JEDIConfig) -> JEDIModel:
    """Seeded model whose students start as the initial experts (heads from the cache)."""
    torch.manual_seed(cfg.seed)
    model = JEDIModel([e.embed_dim for e in data.experts], [e.num_classes for e in data.experts], cfg)
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
    device = next(model.parameters()).device
    out = {}
    for i, d in enumerate(datasets):
        s = sets.get(d)
        if s is None or len(s.labels) == 0:
            continue
        student, teacher = model([e.to(device).float() for e in s.embs])
        out[d] = {"student": classification_metrics(student[i].cpu().numpy(), s.labels.numpy()),
                  "teacher": classification_metrics(teacher[i].cpu().numpy(), s.labels.numpy())}
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
        with torch.autocast(embs[0].device.type, dtype=torch.bfloat16):
            students, teachers = model(embs, *masks.as_reference())
        students, teachers = [s.float() for s in students], [t.float() for t in teachers]
    else:
        students, teachers = fused_forward(model, embs, masks)
    targets = None
    if distill and cfg.kd_targets == "eval":  # distil from the same teachers without their dropout
        with torch.no_grad():
            model.eval()
            targets = model(embs)[1]
            model.train()
    loss, parts = jedi_loss(students, teachers, dataset, labels, weights, cfg, distill, phase, targets)
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


BUNDLE_NAME = "jedi.safetensors"
BEST_NAME = "best.safetensors"
LOG_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.safetensors"


class RunFolder:
    """A run folder's paths, resume and finalisation (see the module docstring).

    ``RunFolder(None)`` keeps everything in memory (no checkpoint, no best bundle); ``log_path``
    then still gets the per-epoch log."""

    def __init__(self, out: str | Path | None, log_path: str | Path | None = None, cache: Path | None = None):
        self.out = Path(out) if out else None
        self.cache = cache  # the cache folder the run trains on: every bundle it writes records it
        self.work = self.out / "in_progress" if self.out else None
        self.log_path = self.work / LOG_NAME if self.work else (Path(log_path) if log_path else None)
        self._log = None

    @property
    def checkpoint(self) -> Path | None:
        return self.work / CHECKPOINT_NAME if self.work else None

    def claim(self, *, resume: bool, force: bool) -> None:
        """Check ``out`` may be used for this run, then create it; nothing is touched on refusal."""
        bundle = self.out / BUNDLE_NAME
        if resume and force:
            raise ConfigError("--resume and --force contradict each other: resume continues a run, force restarts it")
        if not resume:
            if self.work.exists() and self.checkpoint.exists() and not force:
                raise InputError(f"{self.out} holds a stopped run ({self.work}); pass --resume to continue it "
                                 "or --force to start over")
            if bundle.exists() and not force:
                raise InputError(f"{bundle} already exists; choose another --out or pass --force to replace it")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create run folder {self.out}: {e.strerror or e}") from None

    def start(self, model, optimizer, cfg: JEDIConfig, experts: list[ExpertCard], rng, resume: bool
              ) -> tuple[int, float | None, int | None, list[dict]]:
        """(first epoch, best score, best epoch, history so far): a fresh ``in_progress/``, or the
        stopped run's state restored into ``model``/``optimizer``/``rng``; opens the live log."""
        from .checkpoint import load_checkpoint

        history, start, best, best_epoch = [], 1, None, None
        if resume and self.work is not None and self.work.exists() and not self.checkpoint.exists():
            resume = False  # stopped before its first checkpoint: nothing was kept, so it starts again
        if resume:
            if self.checkpoint is None or not self.checkpoint.exists():
                raise InputError(f"nothing to resume in {self.out}: no in_progress/{CHECKPOINT_NAME}")
            ck = load_checkpoint(self.checkpoint, model, optimizer, config=cfg, experts=experts)
            rng.state = ck.rng_state
            start, best = ck.epoch + 1, ck.best
            if self.log_path.exists():
                history = [json.loads(x) for x in self.log_path.read_text().splitlines() if x.strip()]
                history = [r for r in history if r["epoch"] <= ck.epoch]
            best_epoch = ck.best_epoch
            if best_epoch is None and best is not None:  # a checkpoint of an older release: the live rule
                best_epoch = min((r["epoch"] for r in history if _score(r.get("val", {})) == best), default=None)
        elif self.work:
            if self.work.exists():
                shutil.rmtree(self.work)
            self.work.mkdir(parents=True)
        if self.log_path:
            self.log_path.write_text("".join(json.dumps(r) + "\n" for r in history))
            self._log = open(self.log_path, "a")
        return start, best, best_epoch, history

    def log(self, rec: dict) -> None:
        if self._log:
            self._log.write(json.dumps(rec) + "\n")
            self._log.flush()

    def close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None

    def save_epoch(self, model, optimizer, cfg: JEDIConfig, epoch: int, best, rng, experts: list[ExpertCard],
                   best_epoch: int | None = None) -> None:
        if self.checkpoint:
            from .checkpoint import save_checkpoint

            save_checkpoint(self.checkpoint, model, optimizer, config=cfg, epoch=epoch, best=best,
                            rng_state=rng.state, experts=experts, best_epoch=best_epoch)

    def save_best(self, model, data: TrainData, cfg: JEDIConfig, epoch: int, score: float) -> None:
        if self.work:
            from jedi_deploy.models.bundle import save_bundle

            save_bundle(model, self.work / BEST_NAME, experts=data.experts, datasets=data.datasets, config=cfg,
                        cache=self.cache or "", extra={"epoch": epoch, "val_score": score})

    def finalise(self, result: "TrainResult", extra: dict | None = None) -> Path:
        """Write the final files, move the best bundle and the log out of ``in_progress/``, remove it."""
        from jedi_deploy.contracts.header import write_json
        from jedi_deploy.models.bundle import save_bundle

        bundle = self.out / BUNDLE_NAME
        final = result.history[-1]["eval"]
        info = {"final_eval": final, "best_epoch": result.best_epoch, "data": result.data, **(extra or {})}
        if result.warnings:
            info["warnings"] = result.warnings
        save_bundle(result.model, bundle, experts=result.experts, datasets=result.datasets, config=result.config,
                    cache=self.cache or "", extra=info)
        best = self.work / BEST_NAME
        if best.exists():
            best.replace(self.out / BEST_NAME)
        elif (self.out / BEST_NAME).exists():
            (self.out / BEST_NAME).unlink()  # from an earlier run this one replaced (--force)
        (self.work / LOG_NAME).replace(self.out / LOG_NAME)
        write_json(self.out / "config.json", result.config.to_dict())
        write_json(self.out / "final_eval.json", final)
        shutil.rmtree(self.work)
        return bundle


def run_epoch(model: JEDIModel, optimizer, data: TrainData, weights: torch.Tensor, cfg: JEDIConfig, rng: Rng,
              epoch: int) -> dict:
    """One pass over the training data (shuffled); the epoch's record with mean loss parts."""
    t0 = time.perf_counter()
    phase = phase_of(epoch, cfg)
    distill = epoch > cfg.burn_in and cfg.distill_data != "none"
    n = len(data.labels)
    steps = math.ceil(n / cfg.batch_size)
    model.train()
    _set_phase(model, phase)
    sums: dict[str, float] = {}
    perm = rng.permutation(n)
    for k in range(steps):
        idx = perm[k * cfg.batch_size:(k + 1) * cfg.batch_size]
        parts = train_step(model, optimizer, [e.index_select(0, idx).float() for e in data.embs], data.dataset[idx],
                           data.labels[idx], weights, cfg, rng, distill=distill, phase=phase)
        for key, v in parts.items():
            sums[key] = sums.get(key, 0.0) + v
    _set_phase(model, "joint")
    if not math.isfinite(sums["loss"]):
        raise InputError(f"training diverged at epoch {epoch} (loss {sums['loss']}); lower the learning "
                         "rate (lr) or check the cache for extreme values")
    return {"epoch": epoch, "phase": phase, "distill": distill, **{k: v / steps for k, v in sums.items()},
            "train_s": round(time.perf_counter() - t0, 3)}


def train_jedi(cache: Cache, cfg: JEDIConfig, *, progress: bool = True, run_dir: str | Path | None = None,
               resume: bool = False, on_epoch: Callable[[int, dict], None] | None = None,
               log_path: str | Path | None = None, device: str = "cpu") -> TrainResult:
    """Train JEDI on ``cache`` on ``device`` (the cached embeddings live there, stored as
    ``cfg.embedding_dtype``). With ``run_dir``, checkpoints/logs go to ``run_dir/in_progress``
    (see :func:`train_to_dir`, which also writes the final files). ``on_epoch(epoch, record)``
    is called after each epoch's checkpoint is safely written. The model comes back on the CPU."""
    from tqdm.auto import tqdm

    from jedi_deploy.models.devices import resolve_device

    dev = resolve_device(device)
    data = build_train_data(cache, cfg)  # validates everything before any file is touched
    tune_allocator()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    folder = RunFolder(run_dir, log_path, cache.path)
    store = getattr(torch, cfg.embedding_dtype)
    data.embs = [e.to(dev, store) for e in data.embs]
    data.dataset, data.labels = data.dataset.to(dev), data.labels.to(dev)
    model = build_model(data, cache, cfg).to(dev)
    optimizer = build_optimizer(model, cfg)
    weights = distillation_weights(data.sizes, cfg).to(dev)
    rng = Rng(cfg.seed, dev)
    val_sets, test_sets = data.val, eval_sets(cache, data, cfg.eval_split)
    expert_val_acc1, warnings = seen_validation(data, cache)  # in the log, the result, the bundle and the CLI
    start, best, best_epoch, history = folder.start(model, optimizer, cfg, data.experts, rng, resume)

    def record_eval(rec: dict) -> None:
        nonlocal best, best_epoch
        if val_sets and any(len(s.labels) for s in val_sets.values()):
            rec["val"] = evaluate_model(model, val_sets, data.datasets)
        rec["eval"] = evaluate_model(model, test_sets, data.datasets)
        score = _score(rec.get("val", {}))
        if score is not None and (best is None or score > best):
            best, best_epoch = score, rec["epoch"]
            folder.save_best(model, data, cfg, rec["epoch"], score)

    try:
        if not history:
            rec = {"epoch": 0, "loss": None, "expert_val_acc1": expert_val_acc1}
            if warnings:
                rec["warnings"] = warnings
            record_eval(rec)
            history.append(rec)
            folder.log(rec)
        bar = tqdm(total=cfg.epochs, initial=start - 1, desc="JEDI training", unit="epoch", disable=not progress)
        for epoch in range(start, cfg.epochs + 1):
            rec = run_epoch(model, optimizer, data, weights, cfg, rng, epoch)
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                record_eval(rec)
            history.append(rec)
            folder.log(rec)
            folder.save_epoch(model, optimizer, cfg, epoch, best, rng, data.experts, best_epoch)
            bar.update()
            shown = {"loss": f"{rec['loss']:.3f}"}
            if "val" in rec:
                shown["val_acc1"] = f"{_score(rec['val']):.1f}"
            bar.set_postfix(shown)
            if on_epoch:
                on_epoch(epoch, rec)
        bar.close()
    finally:
        folder.close()
    model.eval().cpu()
    return TrainResult(model, history, data.experts, data.datasets, cfg, best_epoch, best, data.summary(), warnings)


def train_to_dir(cache: Cache, out_dir: str | Path, cfg: JEDIConfig, *, force: bool = False,
                 resume: bool = False, progress: bool = True, extra: dict | None = None,
                 on_epoch: Callable[[int, dict], None] | None = None, device: str = "cpu"
                 ) -> tuple[TrainResult, Path]:
    """Train into a run folder (see module docstring); returns the result and the last bundle.
    With ``cfg.refit``, the validation run is followed by a refit on the whole training set for
    the epoch count it picked (:func:`refit`), and that model is the bundle."""
    folder = RunFolder(out_dir, cache=cache.path)  # the bundle records its cache itself (--int8's videos)
    folder.claim(resume=resume, force=force)
    result = train_jedi(cache, cfg, progress=progress, run_dir=out_dir, resume=resume, on_epoch=on_epoch,
                        device=device)
    if cfg.refit:
        refitted = refit(cache, cfg, result, progress=progress, device=device)
        extra = {**(extra or {}), "refit": {"epochs": refitted.config.epochs, "picked_by": "validation best epoch"
                                            if result.best_epoch is not None else "last epoch (no validation split)",
                                            "validation_run": {"best_epoch": result.best_epoch,
                                                               "best_score": result.best_score}}}
        result = TrainResult(refitted.model, result.history, result.experts, result.datasets, cfg,
                             result.best_epoch, result.best_score, refitted.data, result.warnings)
    return result, folder.finalise(result, extra)


def refit(cache: Cache, cfg: JEDIConfig, validated: TrainResult, *, progress: bool = False,
          device: str = "cpu") -> TrainResult:
    """The paper's final fit: train again, from the same initialisation, on the whole training set
    (no validation split) for the epoch count the validation run picked (its best epoch, else its
    last)."""
    from dataclasses import replace

    epochs = validated.best_epoch if validated.best_epoch is not None else cfg.epochs
    return train_jedi(cache, replace(cfg, val_fraction=0.0, epochs=max(1, epochs), refit=False), progress=progress,
                      device=device)
