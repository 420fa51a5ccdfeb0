"""The inference-time student: frozen encoder + adjustment module + head as ONE module.

With dropout off, ``head(e + W2·SiLU(W1·e + b1) + b2)`` equals
``(Wh·e + bh + Wh·b2) + (Wh·W2)·SiLU(W1·e + b1)``: the adjustment folds into the head, so
the student costs the expert's encoder plus ``d×256 + 256×C`` multiply-adds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StudentReference(nn.Module):
    """The student exactly as trained (unfused), in eval mode: the parity reference."""

    def __init__(self, encoder: nn.Module, adjust: nn.Module, head: nn.Linear):
        super().__init__()
        self.encoder, self.adjust, self.head = encoder, adjust, head

    def classify(self, e: torch.Tensor) -> torch.Tensor:
        return self.head(self.adjust(e))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.encoder(x))


class FusedStudent(nn.Module):
    """``logits = head'(e) + fold(SiLU(fc1(e)))`` with ``head'.bias = bh + Wh·b2`` and
    ``fold = Wh·W2`` (no bias)."""

    def __init__(self, encoder: nn.Module, adjust: nn.Module, head: nn.Linear):
        super().__init__()
        self.encoder = encoder
        d, c, h = head.in_features, head.out_features, adjust.fc1.out_features
        self.fc1 = nn.Linear(d, h)
        self.head = nn.Linear(d, c)
        self.fold = nn.Linear(h, c, bias=False)
        with torch.no_grad():
            wh = head.weight.double()
            self.fc1.load_state_dict(adjust.fc1.state_dict())
            self.head.weight.copy_(head.weight)
            self.head.bias.copy_((head.bias.double() + wh @ adjust.fc2.bias.double()).float())
            self.fold.weight.copy_((wh @ adjust.fc2.weight.double()).float())

    def classify(self, e: torch.Tensor) -> torch.Tensor:
        return self.head(e) + self.fold(F.silu(self.fc1(e)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.encoder(x))


class ExpertGraph(nn.Module):
    """The initial expert (encoder + its own head), exported the same way as a student."""

    def __init__(self, encoder: nn.Module, head: nn.Linear):
        super().__init__()
        self.encoder, self.head = encoder, head

    def classify(self, e: torch.Tensor) -> torch.Tensor:
        return self.head(e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.encoder(x))
