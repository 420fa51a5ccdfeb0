"""MMAction2's ``VisionTransformer`` backbone (VideoMAE / VideoMAE V2 checkpoints, incl. the
distilled ViT-S/B of VideoMAE V2) in plain torch, with MMAction2's own parameter names, so a
checkpoint's ``backbone.*`` tensors load as they are.

The math is MMAction2 1.x ``mmaction/models/backbones/vit_mae.py``: a tubelet ``Conv3d`` patch
embedding, a position table (MMAction2's fixed sinusoid one unless the checkpoint holds its own),
pre-norm blocks whose attention has separate ``q_bias``/``v_bias`` (no key bias) and an MLP ``Linear -> GELU -> Linear``, optional
layer-scale ``gamma_1``/``gamma_2``, then mean pooling + ``fc_norm`` (or the first token after
``norm``). The head (``TimeSformerHead``/``I3DHead``: ``cls_head.fc_cls``) is our linear head.
The architecture's sizes are read from the checkpoint's shapes (:func:`vit_kwargs_from_state`);
only ``num_heads`` (default ``embed_dims // 64``, VideoMAE's convention) and the split of the
position table into frames x image size (default 224 px) cannot be, and are ``--arg`` options.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jedi_deploy.contracts.errors import CheckpointError, ConfigError, InputError


def sinusoid_table(n_position: int, dims: int) -> torch.Tensor:
    """The fixed position table MMAction2 registers when positions are not learnt: ``[1, N, D]``."""
    vec = torch.arange(dims, dtype=torch.float64)
    vec = torch.pow(10000, -((vec - vec % 2) / dims)).view(1, -1)
    table = torch.arange(n_position).view(-1, 1) * vec
    table[:, 0::2].sin_()
    table[:, 1::2].cos_()
    return table.to(torch.float32).unsqueeze(0)


class _Attention(nn.Module):
    def __init__(self, dims: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dims // num_heads) ** -0.5
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dims))
            self.v_bias = nn.Parameter(torch.zeros(dims))
        self.qkv = nn.Linear(dims, dims * 3, bias=False)
        self.proj = nn.Linear(dims, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        if hasattr(self, "q_bias"):
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            qkv = F.linear(x, self.qkv.weight, bias)
        else:
            qkv = self.qkv(x)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class _Block(nn.Module):
    def __init__(self, dims: int, num_heads: int, mlp_dims: int, qkv_bias: bool, layer_scale: bool, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dims, eps=eps)
        self.attn = _Attention(dims, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dims, eps=eps)
        self.mlp = nn.Module()
        self.mlp.layers = nn.Sequential(nn.Sequential(nn.Linear(dims, mlp_dims), nn.GELU()), nn.Linear(mlp_dims, dims))
        if layer_scale:
            self.gamma_1 = nn.Parameter(torch.ones(dims))
            self.gamma_2 = nn.Parameter(torch.ones(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "gamma_1"):
            x = x + self.gamma_1 * self.attn(self.norm1(x))
            return x + self.gamma_2 * self.mlp.layers(self.norm2(x))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.layers(self.norm2(x))


class MMActionViT(nn.Module):
    """``float32[B, T, 3, H, W]`` -> ``[B, embed_dims]``, as MMAction2's ``VisionTransformer`` computes it."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dims: int = 768, depth: int = 12,
                 num_heads: int = 0, mlp_dims: int = 0, qkv_bias: bool = True, num_frames: int = 16,
                 tubelet_size: int = 2, use_mean_pooling: bool = True, layer_scale: bool = False,
                 norm_eps: float = 1e-6):
        super().__init__()
        num_heads = check_heads({"embed_dims": embed_dims, "num_heads": num_heads})["num_heads"]
        if img_size % patch_size or num_frames % tubelet_size:
            raise ConfigError(f"mmaction_vit: img_size {img_size} / patch_size {patch_size} and num_frames {num_frames} "
                              f"/ tubelet_size {tubelet_size} must divide evenly")
        self.patch_embed = nn.Module()
        self.patch_embed.projection = nn.Conv3d(3, embed_dims, (tubelet_size, patch_size, patch_size),
                                                (tubelet_size, patch_size, patch_size))
        self.grid, self.patch_size, self.num_frames, self.embed_dim = img_size // patch_size, patch_size, num_frames, embed_dims
        n = self.grid ** 2 * (num_frames // tubelet_size)
        # MMAction2's fixed table; a checkpoint's own (fixed or learnt) table loads over it
        self.register_buffer("pos_embed", sinusoid_table(n, embed_dims))
        mlp_dims = mlp_dims or 4 * embed_dims
        self.blocks = nn.ModuleList(_Block(embed_dims, num_heads, mlp_dims, qkv_bias, layer_scale, norm_eps)
                                    for _ in range(depth))
        if use_mean_pooling:
            self.norm, self.fc_norm = nn.Identity(), nn.LayerNorm(embed_dims, eps=norm_eps)
        else:
            self.norm, self.fc_norm = nn.LayerNorm(embed_dims, eps=norm_eps), None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.num_frames:
            raise InputError(f"mmaction_vit was built for {self.num_frames} frames per clip but got {x.shape[1]}; "
                             "set preprocess.num_frames (or --arg num_frames) to match")
        x = x.permute(0, 2, 1, 3, 4)  # NCTHW, as MMAction2's data preprocessor formats it
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.patch_embed.projection(x).flatten(2).transpose(1, 2)
        pos = self.pos_embed
        if (h, w) != (self.grid, self.grid):  # MMAction2 interpolates the table (bicubic) to another image size
            d = pos.shape[-1]
            pos = pos.reshape(-1, self.grid, self.grid, d).permute(0, 3, 1, 2)
            pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
            pos = pos.permute(0, 2, 3, 1).flatten(1, 2).reshape(1, -1, d)
        x = x + pos
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.fc_norm(x.mean(1)) if self.fc_norm is not None else x[:, 0]


def vit_kwargs_from_state(backbone: dict, given: dict, source: str) -> dict:
    """The :class:`MMActionViT` arguments a checkpoint's ``backbone.*`` shapes fix, on top of the
    user's ``given`` (``num_heads``, ``img_size``, ``num_frames``: what shapes cannot tell)."""
    try:
        proj = backbone["patch_embed.projection.weight"]
    except KeyError:
        raise CheckpointError(f"{source}: no 'backbone.patch_embed.projection.weight'; not an MMAction2 "
                              "VisionTransformer (VideoMAE) checkpoint") from None
    dims, _, tubelet, patch = proj.shape[:4]
    depth = len({k.split(".")[1] for k in backbone if k.startswith("blocks.")})
    out = dict(embed_dims=int(dims), patch_size=int(patch), tubelet_size=int(tubelet), depth=depth,
               qkv_bias="blocks.0.attn.q_bias" in backbone, layer_scale="blocks.0.gamma_1" in backbone,
               use_mean_pooling="fc_norm.weight" in backbone,
               mlp_dims=int(backbone["blocks.0.mlp.layers.0.0.weight"].shape[0]) if depth else 4 * int(dims))
    img = int(given.get("img_size", 224))
    out["img_size"] = img
    pos = backbone.get("pos_embed")
    if pos is not None:
        per_frame = (img // int(patch)) ** 2
        steps = pos.shape[1] / per_frame
        if steps != int(steps) or "num_frames" in given and int(given["num_frames"]) // int(tubelet) != steps:
            raise CheckpointError(f"{source}: the position table holds {pos.shape[1]} tokens, which is not "
                                  f"(img_size {img} / patch {patch})^2 x (num_frames / tubelet {tubelet}); "
                                  "pass --arg img_size=... --arg num_frames=... as the model was trained")
        out["num_frames"] = int(steps) * int(tubelet)
    unknown = set(given) - {"num_heads", "img_size", "num_frames", "norm_eps"}
    if unknown:
        raise ConfigError(f"mmaction_vit: unknown arguments {sorted(unknown)}; the others come from the checkpoint")
    return check_heads({**out, **{k: given[k] for k in ("num_heads", "num_frames", "norm_eps") if k in given}})


def check_heads(kwargs: dict) -> dict:
    """``num_heads`` must divide the width; VideoMAE's convention (64-wide heads) is the default. The
    value is recorded in the kwargs, so the expert file rebuilds the same model."""
    dims = int(kwargs.get("embed_dims", 768))
    heads = int(kwargs.get("num_heads") or max(1, dims // 64))
    if dims % heads:
        raise ConfigError(f"mmaction_vit: embed_dims {dims} is not divisible by num_heads {heads}; "
                          "pass --arg num_heads=N as the model was trained")
    return {**kwargs, "num_heads": heads}
