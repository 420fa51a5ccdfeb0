"""Tiny expert architectures for the built-in benchmark (and for tests).

Every expert is ``ExpertModel(encoder, head)``: the encoder maps a batch of clips
``float32[B, T, 3, H, W]`` to embeddings ``[B, D]``; the head is one ``nn.Linear(D, C)``.
That split is the contract JEDI relies on (frozen encoder, retrained head).
"""
from __future__ import annotations

import torch
from torch import nn


class TemporalShift(nn.Module):
    """TSM's zero-cost temporal shift: 1/``fold_div`` of the channels move one step back
    in time, another 1/``fold_div`` one step forward (input ``[B*T, C, H, W]``)."""

    def __init__(self, num_segments: int, fold_div: int = 8):
        super().__init__()
        self.num_segments, self.fold_div = num_segments, fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bt, c, h, w = x.shape
        x = x.view(bt // self.num_segments, self.num_segments, c, h, w)
        fold = c // self.fold_div
        zeros = x.new_zeros(x.shape[0], 1, fold, h, w)
        back = torch.cat([x[:, 1:, :fold], zeros], dim=1)  # frame t sees t+1
        fwd = torch.cat([zeros, x[:, :-1, fold:2 * fold]], dim=1)  # frame t sees t-1
        out = torch.cat([back, fwd, x[:, :, 2 * fold:]], dim=2)
        return out.view(bt, c, h, w)


def _conv2d(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Segment2DEncoder(nn.Module):
    """TSN-like (``shift=False``) or TSM-like (``shift=True``) 2D CNN applied per frame,
    averaged over the segments (TSN's average consensus)."""

    def __init__(self, num_segments: int = 8, width: int = 16, embed_dim: int = 64, shift: bool = False):
        super().__init__()
        self.num_segments = num_segments
        self.stem = _conv2d(3, width)
        self.shift1 = TemporalShift(num_segments) if shift else nn.Identity()
        self.block1 = _conv2d(width, 2 * width)
        self.shift2 = TemporalShift(num_segments) if shift else nn.Identity()
        self.block2 = _conv2d(2 * width, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        y = x.reshape(b * t, *x.shape[2:])
        y = self.stem(y)
        y = self.block1(self.shift1(y))
        y = self.block2(self.shift2(y))
        y = y.mean(dim=(2, 3)).view(b, t, -1)
        return y.mean(dim=1)


def _conv3d(cin: int, cout: int, stride) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class Conv3DEncoder(nn.Module):
    """C3D-like 3D CNN over a dense clip."""

    def __init__(self, width: int = 16, embed_dim: int = 96):
        super().__init__()
        self.features = nn.Sequential(_conv3d(3, width, (1, 2, 2)),
                                      _conv3d(width, 2 * width, (2, 2, 2)),
                                      _conv3d(2 * width, embed_dim, (2, 2, 2)))
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x.permute(0, 2, 1, 3, 4))  # [B, C, T, H, W]
        return y.mean(dim=(2, 3, 4))


class ExpertModel(nn.Module):
    """A video classifier split into a frozen-able ``encoder`` and a linear ``head``."""

    def __init__(self, encoder: nn.Module, embed_dim: int, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
