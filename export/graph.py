"""What goes around a model inside the exported graph: uint8 input with normalisation, and
multi-view averaging (MMDeploy's ``average_clip``). One wrapper serves the exported module and
its PyTorch reference alike, so validation compares whole graphs.

Input contract of an exported graph (``input_spec``):
  * default: ``float32[B, T, 3, H, W]``, already normalised (jedi_deploy.video's output);
  * ``uint8_input``: ``uint8[B, T, H, W, 3]`` decoded, resized and cropped RGB frames; the
    graph casts, normalises with the expert's mean/std and transposes;
  * ``views`` V > 1: one more axis after the batch, ``[B, V, ...]``; the graph runs the B*V
    views as one batch and averages per video: mean logits ("score"), the log of the mean
    softmax ("prob", so the output stays logit-like: its softmax is the averaged probability),
    or the mean embedding before the rest of the model ("feature", TSN's segmental consensus:
    the model must expose ``encoder`` and ``classify(embedding)``).
"""
from __future__ import annotations

import torch
from torch import nn

from jedi_deploy.contracts.errors import ConfigError
from jedi_deploy.contracts.preprocess import Preprocess


class GraphWrapper(nn.Module):
    def __init__(self, model: nn.Module, preprocess: Preprocess, *, uint8_input: bool = False, views: int = 1,
                 average: str = "score"):
        super().__init__()
        if views < 1:
            raise ConfigError(f"--views must be >= 1, got {views}")
        if average not in ("score", "prob", "feature"):
            raise ConfigError(f"average must be 'score', 'prob' or 'feature', got {average!r}")
        self.model, self.uint8_input, self.views, self.average = model, uint8_input, views, average
        self.register_buffer("mean", torch.tensor(preprocess.mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(preprocess.std, dtype=torch.float32).view(3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.views > 1:
            x = x.flatten(0, 1)  # [B*V, ...]
        if self.uint8_input:  # [N, T, H, W, 3] uint8 -> [N, T, 3, H, W] normalised
            x = (x.permute(0, 1, 4, 2, 3).float() - self.mean) * self.inv_std
        if self.views > 1 and self.average == "feature":
            e = self.model.encoder(x)
            return self.model.classify(e.view(b, self.views, -1).mean(dim=1))
        y = self.model(x)
        if self.views > 1:
            y = y.view(b, self.views, -1)
            y = y.mean(dim=1) if self.average == "score" else torch.log(torch.softmax(y, dim=-1).mean(dim=1))
        return y


def input_spec(preprocess: Preprocess, *, uint8_input: bool = False, views: int = 1) -> tuple[tuple[int, ...], str]:
    """(shape of one sample without the batch axis, numpy dtype name) of the graph's input."""
    t, c = preprocess.num_frames, preprocess.crop
    shape = (t, c, c, 3) if uint8_input else (t, 3, c, c)
    if views > 1:
        shape = (views, *shape)
    return shape, "uint8" if uint8_input else "float32"
