"""Export-friendly forms of upstream code, swapped in only while a graph is traced.

The PyTorch reference a graph is validated against keeps the original code, so validation
proves each rewrite exact (to fp32 rounding) on every export.

* torchvision MViT (``torchvision.models.video.mvit._add_rel_pos``): the original adds the
  decomposed relative-position bias in place, ``attn[:, :, 1:, 1:] += rel_pos``. Traced, that
  slice assignment becomes a ScatterND whose int64 index grid is materialised with
  Expand/Concat over the whole attention matrix; in ONNX Runtime those three ops took ~67% of
  ``mvit_v2_s``'s time. Here the bias is computed from the same tables and added as
  ``attn + pad(bias)`` (zeros for the class token's row and column): one Pad and one Add.
  Likewise ``_add_shortcut``'s ``x[:, :, 1:, :] += shortcut[:, :, 1:, :]`` (residual pooling that
  skips the class token) becomes ``x.add_(pad(shortcut[:, :, 1:]))`` - still in place, since the
  caller ignores the return value.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

import torch
import torch.nn.functional as F


def _rel_index(q: int, k: int) -> torch.Tensor:
    """Index into a relative-position table of length 2*max(q, k)-1 for every (query, key)
    pair along one axis, with the coarser grid scaled to the finer one (MViTv2)."""
    q_ratio, k_ratio = max(k / q, 1.0), max(q / k, 1.0)
    dist = torch.arange(q)[:, None] * q_ratio - torch.arange(k)[None, :] * k_ratio + (k - 1) * k_ratio
    return dist.long()


def mvit_rel_pos(attn, q, q_thw, k_thw, rel_pos_h, rel_pos_w, rel_pos_t):
    from torchvision.models.video.mvit import _interpolate  # the table resize, as upstream does it

    (qt, qh, qw), (kt, kh, kw) = q_thw, k_thw
    tables = [_interpolate(t, 2 * max(a, b) - 1)
              for t, a, b in ((rel_pos_t, qt, kt), (rel_pos_h, qh, kh), (rel_pos_w, qw, kw))]
    r_t, r_h, r_w = (tab[_rel_index(a, b)] for tab, a, b in zip(tables, (qt, qh, qw), (kt, kh, kw)))
    b, heads, _, dim = q.shape
    qs = q[:, :, 1:].reshape(b, heads, qt, qh, qw, dim)  # without the class token
    bias_t = torch.einsum("bntyxc,tkc->bntyxk", qs, r_t)
    bias_h = torch.einsum("bntyxc,ykc->bntyxk", qs, r_h)
    bias_w = torch.einsum("bntyxc,xkc->bntyxk", qs, r_w)
    bias = (bias_t[..., :, None, None] + bias_h[..., None, :, None] + bias_w[..., None, None, :])
    bias = bias.reshape(b, heads, qt * qh * qw, kt * kh * kw)
    return attn + F.pad(bias, (1, 0, 1, 0))


def mvit_add_shortcut(x, shortcut, residual_with_cls_embed: bool):
    """In place, like upstream: its caller ignores the return value and uses the mutated ``x``."""
    if residual_with_cls_embed:
        return x.add_(shortcut)
    return x.add_(F.pad(shortcut[:, :, 1:, :], (0, 0, 1, 0)))


@contextmanager
def export_friendly():
    """Swap in the rewrites above for the modules that are loaded (none is imported here)."""
    saved = []
    mvit = sys.modules.get("torchvision.models.video.mvit")
    for name, rewrite in (("_add_rel_pos", mvit_rel_pos), ("_add_shortcut", mvit_add_shortcut)):
        if mvit is not None and hasattr(mvit, name):
            saved.append((mvit, name, getattr(mvit, name)))
            setattr(mvit, name, rewrite)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
