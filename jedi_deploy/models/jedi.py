"""The JEDI model (its configuration, ``JEDIConfig``, lives in :mod:`jedi_deploy.contracts.config`):
the contract between training and export.

For n experts/datasets (expert j <-> dataset j):
  * adjustment module j:  e'_j = e_j + Dropout(p_adj)(W2 · SiLU(W1 · e_j)), W2 zero-initialised
    so that at epoch 0 every student *is* its initial expert;
  * student j:  M_j = Linear(e'_j), initialised from expert j's head;
  * teacher i:  E_i = Linear(Dropout(p_i)(z)),  p_i = max(0, 1 - k·C_i/D),  D = dim(z), where the
    teacher input z is (``teacher_input``) concat_j e'_j ("adjusted", the paper), concat_j e_j
    ("base"), concat_j M_j ("predictions") or both ("adjusted+predictions").

``forward`` is the plain reference implementation (evaluation, export, tests); it takes the
dropout masks as arguments so that the fast training engine (``train.engine``) can be
checked against it exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jedi_deploy.contracts.config import JEDIConfig

__all__ = ["JEDIConfig", "JEDIModel", "AdjustmentModule", "teacher_dropout", "teacher_input_dim"]


def teacher_dropout(num_classes: int, total_dim: int, k: float) -> float:
    """The paper's Eq. 4: p_i = max(0, 1 - k·C_i / D)."""
    return max(0.0, 1.0 - k * num_classes / total_dim)


class AdjustmentModule(nn.Module):
    """e' = e + Dropout(p)(fc2(SiLU(fc1(e)))); fc2 is zero-initialised."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e + self.dropout(self.fc2(F.silu(self.fc1(e))))


def teacher_input_dim(dims: list[int], num_classes: list[int], mode: str) -> int:
    return {"adjusted": sum(dims), "base": sum(dims), "predictions": sum(num_classes),
            "adjusted+predictions": sum(dims) + sum(num_classes)}[mode]


class JEDIModel(nn.Module):
    """All adjustment modules, student heads and teachers (expert j <-> dataset j)."""

    def __init__(self, dims: list[int], num_classes: list[int], cfg: JEDIConfig):
        super().__init__()
        self.dims, self.num_classes = list(dims), list(num_classes)
        self.teacher_input = cfg.teacher_input
        total = teacher_input_dim(dims, num_classes, cfg.teacher_input)
        self.adjust = nn.ModuleList(AdjustmentModule(d, cfg.hidden, cfg.adjust_dropout) for d in dims)
        self.students = nn.ModuleList(nn.Linear(d, c) for d, c in zip(dims, num_classes))
        self.teacher_p = [teacher_dropout(c, total, cfg.k) for c in num_classes]
        self.teachers = nn.ModuleList(nn.Sequential(nn.Dropout(p), nn.Linear(total, c))
                                      for p, c in zip(self.teacher_p, num_classes))

    def teacher_features(self, embs, adjusted, student_logits) -> torch.Tensor:
        parts = {"adjusted": adjusted, "base": embs, "predictions": student_logits,
                 "adjusted+predictions": list(adjusted) + list(student_logits)}[self.teacher_input]
        return torch.cat(parts, dim=1)

    def forward(self, embs: list[torch.Tensor], adjust_masks: list[torch.Tensor] | None = None,
                teacher_masks: list[torch.Tensor] | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(student logits, teacher logits). With masks (0/1 floats), dropout uses them (scaled
        by 1/(1-p)); without, ``nn.Dropout`` applies in train mode and nothing in eval mode."""
        if adjust_masks is None:
            adjusted = [a(e) for a, e in zip(self.adjust, embs)]
        else:
            s = 1.0 / (1.0 - self.adjust[0].dropout.p)
            adjusted = [e + a.fc2(F.silu(a.fc1(e))) * m * s for a, e, m in zip(self.adjust, embs, adjust_masks)]
        students = [s(e) for s, e in zip(self.students, adjusted)]
        z = self.teacher_features(embs, adjusted, students)
        if teacher_masks is None:
            teachers = [t(z) for t in self.teachers]
        else:
            teachers = [t[1](z * m / (1.0 - p)) if p > 0 else t[1](z)
                        for t, m, p in zip(self.teachers, teacher_masks, self.teacher_p)]
        return students, teachers
