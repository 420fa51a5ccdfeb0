"""The JEDI objective (the paper's Eq. 1-2) and its ablation/CMPL variants.

For a sample x of dataset i with label y (y = -1: unlabeled, distillation terms only):

    α·CE(M_i(x), y) + β·L_teacher(E_i(x), y) + γ·Σ_j w_ij·L_kd(M_j(x), E_j(x))

* ``L_teacher``: multi-class hinge (paper) or cross-entropy;
* ``L_kd``: "soft" = cross-entropy to softmax(E_j/T) (paper, no T² factor, as Eq. 1),
  "mse" = mean squared logit difference, "hard" = cross-entropy to argmax E_j where
  max softmax(E_j) >= τ (one-way pseudo-labels); the teacher side is a fixed target (no gradient);
* "cmpl": the student and its teacher pseudo-label each other (CMPL, Xu et al.): hard labels
  from E_j train M_j and hard labels from M_j train E_j, each only where the labeller's
  confidence is >= τ; weighted by λ (``lam``) instead of γ;
* ``w``: rows are the sample's dataset (last row: samples of an unlabeled pool), columns the
  student j; built by :func:`distillation_weights` for the ``distill_data`` scenario.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from jedi_deploy.contracts.config import JEDIConfig
from jedi_deploy.contracts.errors import ConfigError


def paper_weights(sizes: list[int]) -> torch.Tensor:
    """Eq. 2: w_ij = 1 if i == j else |D_j| / Σ_k |D_k|  (shape [n, n])."""
    s = torch.tensor(sizes, dtype=torch.float64)
    w = (s / s.sum()).expand(len(sizes), -1).clone()
    w.fill_diagonal_(1.0)
    return w.float()


def distillation_weights(sizes: list[int], cfg: JEDIConfig | None = None) -> torch.Tensor:
    """[n + 1, n] weights: row i < n for samples of dataset i, row n for pool samples.

    distill_data "all": Eq. 2 (or ``cfg.weights``); "own": identity (each student distils on its
    own dataset only); "pool": only pool samples, weight 1 for every student; "none": zeros.
    """
    n = len(sizes)
    mode = cfg.distill_data if cfg else "all"
    w = torch.zeros(n + 1, n)
    if mode == "all":
        if cfg is not None and cfg.weights != "paper":
            given = torch.tensor(cfg.weights, dtype=torch.float32)
            if given.shape != (n, n):
                raise ConfigError(f"weights is {list(given.shape)} but there are {n} datasets: "
                                  f"give an {n} x {n} matrix (row = sample's dataset, column = student)")
            w[:n] = given
        else:
            w[:n] = paper_weights(sizes)
    elif mode == "own":
        w[:n] = torch.eye(n)
    elif mode == "pool":
        w[n] = 1.0
    return w


def hinge_loss(logits: torch.Tensor, y: torch.Tensor, form: str = "mean") -> torch.Tensor:
    """Multi-class hinge loss (margin 1), summed over the batch. Per sample, with s = logits:
    ``sum``: the Weston-Watkins sum over wrong classes j of max(0, 1 - s_y + s_j);
    ``mean``: that sum divided by the class count C (what ``F.multi_margin_loss`` computes, and
    what earlier releases used: for 400 classes the term is 400x smaller than the plain sum);
    ``crammer_singer``: max over wrong classes j of max(0, 1 - s_y + s_j)."""
    if form == "mean":
        return F.multi_margin_loss(logits, y, reduction="sum")
    margins = (1.0 - logits.gather(1, y[:, None]) + logits).clamp_min(0.0)
    margins = margins.scatter(1, y[:, None], 0.0)  # the true class contributes nothing
    if form == "sum":
        return margins.sum()
    if form == "crammer_singer":
        return margins.max(dim=1).values.sum()
    raise ValueError(f"unknown hinge form {form!r}")


def _teacher_loss(logits, y, cfg: JEDIConfig):
    if cfg.teacher_loss == "hinge":
        return hinge_loss(logits, y, cfg.hinge_form)
    return F.cross_entropy(logits, y, reduction="sum")


def _hard(labeller: torch.Tensor, learner: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-sample CE of ``learner`` to the labeller's argmax where its confidence >= τ."""
    conf, pseudo = F.softmax(labeller.detach(), dim=1).max(dim=1)
    return F.cross_entropy(learner, pseudo, reduction="none") * (conf >= tau)


def kd_per_sample(student: torch.Tensor, teacher: torch.Tensor, cfg: JEDIConfig) -> torch.Tensor:
    """The distillation term between student j and teacher j for every sample ([B])."""
    if cfg.kd_loss == "soft":
        target = F.softmax(teacher.detach() / cfg.temperature, dim=1)
        return -(target * F.log_softmax(student / cfg.temperature, dim=1)).sum(dim=1)
    if cfg.kd_loss == "mse":
        return (student - teacher.detach()).pow(2).mean(dim=1)
    if cfg.kd_loss == "hard":
        return _hard(teacher, student, cfg.tau)
    return _hard(teacher, student, cfg.tau) + _hard(student, teacher, cfg.tau)  # cmpl


def jedi_loss(student_logits: list[torch.Tensor], teacher_logits: list[torch.Tensor],
              dataset_index: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
              cfg: JEDIConfig, distill: bool, phase: str = "joint",
              kd_targets: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over the batch of Eq. 1. ``dataset_index`` is n for pool samples; ``phase``
    "teachers"/"students" keeps only that side's terms (alternating scheme). ``kd_targets``:
    the teachers' outputs to distil from, when they are not ``teacher_logits`` (``kd_targets
    = "eval"``: the same teachers without dropout)."""
    targets = teacher_logits if kd_targets is None else kd_targets
    n, batch = len(student_logits), len(labels)
    zero = student_logits[0].new_zeros(())
    ce, teach, kd = zero, zero, zero
    for i in range(n):
        m = (dataset_index == i) & (labels >= 0)
        if m.any():
            if phase != "teachers":
                ce = ce + F.cross_entropy(student_logits[i][m], labels[m], reduction="sum")
            if phase != "students":
                teach = teach + _teacher_loss(teacher_logits[i][m], labels[m], cfg)
    if distill and phase != "teachers" and weights.abs().sum() > 0:
        w = weights.to(student_logits[0].dtype)[dataset_index]  # [B, n]
        for j in range(n):
            wj = w[:, j]
            if wj.any():
                kd = kd + (wj * kd_per_sample(student_logits[j], targets[j], cfg)).sum()
    kd_weight = cfg.lam if cfg.kd_loss == "cmpl" else cfg.gamma
    loss = (cfg.alpha * ce + cfg.beta * teach + kd_weight * kd) / batch
    return loss, {"ce": ce.item() / batch, "teacher": teach.item() / batch, "kd": kd.item() / batch}
