"""The JEDI model and its configuration: the contract between training and export.

For n experts/datasets (expert j <-> dataset j):
  * adjustment module j:  e'_j = e_j + Dropout(p_adj)(W2 · SiLU(W1 · e_j)), W2 zero-initialised
    so that at epoch 0 every student *is* its initial expert;
  * student j:  M_j = Linear(e'_j), initialised from expert j's head;
  * teacher i:  E_i = Linear(Dropout(p_i)(concat_j e'_j)),  p_i = max(0, 1 - k·C_i/D).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .meta import checked_fields


@dataclass
class JEDIConfig:
    """Hyperparameters; defaults are the paper's."""

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 0.4
    k: float = 10.0
    temperature: float = 1.0
    hidden: int = 256
    adjust_dropout: float = 0.75
    burn_in: int = 25
    epochs: int = 500
    lr: float = 1e-5
    weight_decay: float = 3e-3
    batch_size: int = 256
    seed: int = 0
    train_split: str = "train"
    eval_split: str = "test"

    def __post_init__(self):
        for name in ("alpha", "beta", "gamma", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("k", "temperature", "lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.adjust_dropout < 1:
            raise ConfigError(f"adjust_dropout must be in [0, 1), got {self.adjust_dropout}")
        for name in ("hidden", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.burn_in < 0:
            raise ConfigError(f"burn_in must be >= 0, got {self.burn_in}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JEDIConfig":
        return cls(**checked_fields(cls, d, "JEDI config"))


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


class JEDIModel(nn.Module):
    """All adjustment modules, student heads and teachers (expert j <-> dataset j)."""

    def __init__(self, dims: list[int], num_classes: list[int], cfg: JEDIConfig):
        super().__init__()
        total = sum(dims)
        self.dims, self.num_classes = list(dims), list(num_classes)
        self.adjust = nn.ModuleList(AdjustmentModule(d, cfg.hidden, cfg.adjust_dropout) for d in dims)
        self.students = nn.ModuleList(nn.Linear(d, c) for d, c in zip(dims, num_classes))
        self.teacher_p = [teacher_dropout(c, total, cfg.k) for c in num_classes]
        self.teachers = nn.ModuleList(nn.Sequential(nn.Dropout(p), nn.Linear(total, c))
                                      for p, c in zip(self.teacher_p, num_classes))

    def forward(self, embs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        adjusted = [a(e) for a, e in zip(self.adjust, embs)]
        joint = torch.cat(adjusted, dim=1)
        return ([s(e) for s, e in zip(self.students, adjusted)],
                [t(joint) for t in self.teachers])
