"""Export-friendly forms of upstream code, swapped in only while a graph is traced.

The PyTorch reference a graph is validated against keeps the original code, so validation
proves each rewrite exact (to fp32 rounding) on every export.

Each rewrite exists because an ONNX Runtime profile of the traced upstream code showed the
upstream form slow; the profiles and the gains are in benchmarks/RESULTS.md ("Profiles behind
the export rewrites").

torchvision MViT (``mvit_v2_s``):

* ``MultiscaleAttention.forward`` -> :func:`mvit_attention`. Upstream computes
  ``attn = (scale*q) @ k^T`` and then ``_add_rel_pos`` adds the decomposed relative-position
  bias: three einsums, a broadcast sum into a [B, heads, Q, K] tensor and an in-place
  ``attn[:, :, 1:, 1:] += bias``. Traced, that slice assignment became a ScatterND over an
  int64 index grid (most of the model's ORT time); a Pad + Add form of it still cost three extra
  passes over every attention matrix plus the Einsums. Here the bias rides inside the one
  attention product instead: ``bias[q, k] = a_t[q, t(k)] + a_h[q, h(k)] + a_w[q, w(k)]`` is
  ``A @ onehot^T`` with ``A = [a_t | a_h | a_w]`` (the per-axis products of the query with the
  position tables; a zero row for the class-token query) and ``onehot`` the constant
  [K, kt+kh+kw] indicator of each key's (t, h, w) (a zero row for the class-token key), so
  ``attn = [scale*q | A] @ [k | onehot]^T`` - the head dim grows from 96 to ~118.
  The residual pooling's ``x[:, :, 1:, :] += shortcut[:, :, 1:, :]`` becomes one Pad + Add.
* ``Pool.forward``: ``torch.tensor_split`` traced into a Loop with SequenceInsert/SequenceAt
  (51 Loops per graph); two slices instead. Pooled sizes are Python ints (MViT's input size is
  fixed), so every index and one-hot table above is a constant in the graph. Its depthwise
  Conv3d pooling runs as a grouped Conv2d (:func:`depthwise_conv3d_as_2d`).

torchvision VideoResNet (``r3d_18``, ``mc3_18``, ``r2plus1d_18``): ``VideoResNet.forward`` ->
:func:`video_resnet_frames`, which keeps activations as frames [B*T, C, H, W] and runs each
Conv3d as a Conv2d over temporally stacked frames. ONNX Runtime's CPU Conv3d is an im2col +
GEMM (slower than torch eager on these models); its Conv2d is a blocked direct convolution
with BatchNorm and ReLU fused in.

Not rewritten: Video Swin's shifted-window mask, rebuilt on every call from shapes, would be
a constant - but a [windows, N, N] float one per shifted block, a large file growth for a
small gain.

Every rewrite is used only for the shapes it was traced with; the graphs these models export
have a fixed T x H x W anyway (only the batch axis is dynamic), as the validation's batch
sizes 8/3/1 show.
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


def _static(thw) -> tuple[int, int, int]:
    return tuple(int(v) for v in thw)


def rel_pos_coefficients(q, q_thw, k_thw, rel_pos_h, rel_pos_w, rel_pos_t) -> torch.Tensor:
    """A = [a_t | a_h | a_w]: [B, heads, 1 + Q, kt + kh + kw], the query's products with the
    relative-position tables along each axis; row 0 (class token) is zero."""
    from torchvision.models.video.mvit import (
        _interpolate,  # the table resize, as upstream does it
    )

    (qt, qh, qw), (kt, kh, kw) = q_thw, k_thw
    tables = [_interpolate(t, 2 * max(a, b) - 1)
              for t, a, b in ((rel_pos_t, qt, kt), (rel_pos_h, qh, kh), (rel_pos_w, qw, kw))]
    r_t, r_h, r_w = (tab[_rel_index(a, b)].transpose(1, 2)  # [q_axis, dim, k_axis]
                     for tab, a, b in zip(tables, (qt, qh, qw), (kt, kh, kw)))
    b, heads, _, dim = q.shape
    qs = q[:, :, 1:].reshape(b, heads, qt, qh, qw, dim)  # without the class token
    a_t = (qs.reshape(b, heads, qt, qh * qw, dim) @ r_t).reshape(b, heads, qt, qh, qw, kt)
    a_h = qs @ r_h  # batch dims (.., qh) meet r_h's leading qh
    a_w = (qs.transpose(3, 4) @ r_w).transpose(3, 4)
    coef = torch.cat([a_t, a_h, a_w], dim=-1).reshape(b, heads, qt * qh * qw, kt + kh + kw)
    return F.pad(coef, (0, 0, 1, 0))


def key_onehot(k_thw, dtype=torch.float32) -> torch.Tensor:
    """[1 + K, kt + kh + kw]: which t, h and w each key token has (row 0, the class token: none)."""
    kt, kh, kw = k_thw
    t = torch.arange(kt).repeat_interleave(kh * kw)
    h = torch.arange(kh).repeat_interleave(kw).repeat(kt)
    w = torch.arange(kw).repeat(kt * kh)
    onehot = torch.cat([F.one_hot(t, kt), F.one_hot(h, kh), F.one_hot(w, kw)], dim=1).to(dtype)
    return F.pad(onehot, (0, 0, 1, 0))


def mvit_rel_pos(attn, q, q_thw, k_thw, rel_pos_h, rel_pos_w, rel_pos_t):
    """``_add_rel_pos``'s result, as ``attn + A @ onehot^T`` (the factored form used inside
    :func:`mvit_attention`; kept as a function so the factorisation is tested on its own)."""
    coef = rel_pos_coefficients(q, q_thw, k_thw, rel_pos_h, rel_pos_w, rel_pos_t)
    return attn + coef @ key_onehot(k_thw, q.dtype).t()


def mvit_add_shortcut(x, shortcut, residual_with_cls_embed: bool):
    """In place, like upstream: its caller ignores the return value and uses the mutated ``x``."""
    if residual_with_cls_embed:
        return x.add_(shortcut)
    return x.add_(F.pad(shortcut[:, :, 1:, :], (0, 0, 1, 0)))


def mvit_attention(self, x: torch.Tensor, thw):
    """``MultiscaleAttention.forward`` with the relative-position bias inside the product."""
    b, n, _ = x.shape
    q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(dim=2)
    k_thw = thw
    if self.pool_k is not None:
        k, k_thw = self.pool_k(k, thw)
    if self.pool_v is not None:
        v = self.pool_v(v, thw)[0]
    if self.pool_q is not None:
        q, thw = self.pool_q(q, thw)
    if self.rel_pos_h is not None and self.rel_pos_w is not None and self.rel_pos_t is not None:
        q_thw, k_thw = _static(thw), _static(k_thw)
        coef = rel_pos_coefficients(q, q_thw, k_thw, self.rel_pos_h, self.rel_pos_w, self.rel_pos_t)
        onehot = key_onehot(k_thw, k.dtype).expand(k.shape[0], k.shape[1], -1, -1)
        attn = torch.cat([self.scaler * q, coef], -1) @ torch.cat([k, onehot], -1).transpose(2, 3)
    else:
        attn = torch.matmul(self.scaler * q, k.transpose(2, 3))
    x = torch.matmul(attn.softmax(dim=-1), v)
    if self.residual_pool:
        mvit_add_shortcut(x, q, self.residual_with_cls_embed)
    x = x.transpose(1, 2).reshape(b, -1, self.output_dim)
    return self.project(x), thw


def mvit_pool(self, x: torch.Tensor, thw):
    """``Pool.forward`` with slices for ``tensor_split`` and Python-int output sizes."""
    from torchvision.models.video.mvit import _squeeze, _unsqueeze

    x, tensor_dim = _unsqueeze(x, 4, 1)
    class_token, x = x[:, :, :1], x[:, :, 1:]
    x = x.transpose(2, 3)
    b, n, c = x.shape[:3]
    x = x.reshape((b * n, c) + _static(thw)).contiguous()
    if self.norm_before_pool and self.norm_act is not None:
        x = self.norm_act(x)
    x = depthwise_conv3d_as_2d(self.pool, x) if _is_depthwise3d(self.pool) else self.pool(x)
    out_thw = _static(x.shape[2:])
    x = x.reshape(b, n, c, -1).transpose(2, 3)
    x = torch.cat((class_token, x), dim=2)
    if not self.norm_before_pool and self.norm_act is not None:
        x = self.norm_act(x)
    return _squeeze(x, 4, 1, tensor_dim), out_thw


@contextmanager
def _untraced():
    """Run eagerly while a TorchScript trace is recording: tensors made here enter the graph
    as constants."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        with torch.no_grad():
            yield
    finally:
        torch._C._set_tracing_state(state)


def _plain_conv3d(m) -> bool:
    """A Conv3d the rewrites can restate: no dilation, explicit zero padding."""
    return (isinstance(m, torch.nn.Conv3d) and m.dilation == (1, 1, 1) and m.padding_mode == "zeros"
            and not isinstance(m.padding, str))


def _is_depthwise3d(m) -> bool:
    return _plain_conv3d(m) and m.groups == m.in_channels == m.out_channels


def depthwise_conv3d_as_2d(conv, x: torch.Tensor) -> torch.Tensor:
    """A depthwise Conv3d as one grouped Conv2d over [N, C*T, H, W] (a free reshape): group c
    maps channel c's T frames to its T_out frames with a banded [T_out, T] kernel whose band
    holds the 3D kernel's temporal taps. ONNX Runtime's CPU Conv3d handles depthwise groups
    one channel at a time; its grouped Conv2d runs the same pooling faster.
    The banded weight (T_out/kt times the taps, all but those zero) is a graph constant."""
    n, c, t, h, w = x.shape
    t = int(t)
    kt, st, pt = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    t_out = (t + 2 * pt - kt) // st + 1
    with _untraced():  # a constant of the graph, not ops on the weight (the TorchScript exporter
        weight = conv.weight.detach()[:, 0]  # needs a Conv's kernel shape)  [C, kt, kh, kw]
        rows = []
        for o in range(t_out):
            first = o * st - pt  # input frame under tap 0
            k0, k1 = max(0, -first), min(kt, t - first)
            rows.append(F.pad(weight[:, k0:k1], (0, 0, 0, 0, first + k0, t - first - k1)))
        banded = torch.stack(rows, 1).reshape(c * t_out, t, *weight.shape[2:])
        bias = conv.bias.detach().repeat_interleave(t_out) if conv.bias is not None else None
    y = F.conv2d(x.reshape(n, c * t, h, w), banded, bias, stride=conv.stride[1:], padding=conv.padding[1:],
                 groups=c)
    return y.reshape(n, c, t_out, y.shape[-2], y.shape[-1])


def _frames_under_tap(x5: torch.Tensor, first: int, step: int, count: int) -> torch.Tensor:
    """Frames ``first + o*step`` for o < count of x5 [B, T, ...], zero frames outside [0, T)
    (a slice plus zero frames: faster in ONNX Runtime than Pad + Slice)."""
    t = int(x5.shape[1])
    before = min(count, -(first // step)) if first < 0 else 0
    last = first + (count - 1) * step
    after = min(count - before, -((t - 1 - last) // step)) if last >= t else 0
    start = first + before * step
    parts = []
    if before:
        parts.append(x5.new_zeros(()).expand(x5.shape[0], before, *x5.shape[2:]))
    if count - before - after > 0:
        part = x5[:, start:start + (count - before - after - 1) * step + 1:step]
        parts.append(part)
    if after:
        parts.append(x5.new_zeros(()).expand(x5.shape[0], after, *x5.shape[2:]))
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def _conv_frames(conv, f: torch.Tensor, t: int) -> tuple[torch.Tensor, int]:
    """A Conv3d on frames [B*T, C, H, W] (T static) as one Conv2d: the kt frames under each
    temporal tap position are stacked along channels (tap-major) and met by the kernel
    reshaped to [O, kt*C, kh, kw]."""
    kt, st, pt = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    t_out = (t + 2 * pt - kt) // st + 1
    c, h, w = f.shape[1:]
    with _untraced():  # constants of the graph (see depthwise_conv3d_as_2d)
        weight = conv.weight.detach().permute(0, 2, 1, 3, 4).reshape(conv.out_channels, kt * c, *conv.kernel_size[1:])
        bias = conv.bias.detach().clone() if conv.bias is not None else None
    if kt == 1 and pt == 0 and st == 1:
        x = f
    else:
        x5 = f.reshape(-1, t, c, h, w)
        taps = [_frames_under_tap(x5, k - pt, st, t_out) for k in range(kt)]
        x = (torch.cat(taps, 2) if kt > 1 else taps[0]).reshape(-1, kt * c, h, w)
    return F.conv2d(x, weight, bias, stride=conv.stride[1:], padding=conv.padding[1:]), t_out


def _frames(module, f: torch.Tensor, t: int) -> tuple[torch.Tensor, int]:
    """``module`` (a part of a torchvision VideoResNet) applied to frames [B*T, C, H, W]."""
    from torchvision.models.video.resnet import BasicBlock, Bottleneck

    if isinstance(module, torch.nn.Sequential):
        for m in module:
            f, t = _frames(m, f, t)
        return f, t
    if isinstance(module, torch.nn.Conv3d):
        return _conv_frames(module, f, t)
    if isinstance(module, torch.nn.BatchNorm3d):
        return F.batch_norm(f, module.running_mean, module.running_var, module.weight, module.bias, False, 0.0,
                            module.eps), t
    if isinstance(module, torch.nn.ReLU):
        return F.relu(f), t
    if isinstance(module, (BasicBlock, Bottleneck)):
        out, t_out = f, t
        for name in ("conv1", "conv2", "conv3"):
            if hasattr(module, name):
                out, t_out = _frames(getattr(module, name), out, t_out)
        residual = _frames(module.downsample, f, t)[0] if module.downsample is not None else f
        return F.relu(out + residual), t_out
    raise NotImplementedError(type(module).__name__)


def _frames_supported(module) -> bool:
    from torchvision.models.video.resnet import BasicBlock, Bottleneck

    leaves = (torch.nn.Conv3d, torch.nn.BatchNorm3d, torch.nn.ReLU)
    for m in module.modules():
        if isinstance(m, torch.nn.Conv3d) and not (_plain_conv3d(m) and m.groups == 1):
            return False
        if isinstance(m, torch.nn.BatchNorm3d) and (m.training or m.running_mean is None):
            return False
        if not isinstance(m, (torch.nn.Sequential, BasicBlock, Bottleneck) + leaves):
            return False
    return True


def video_resnet_frames(self, x: torch.Tensor) -> torch.Tensor:
    """``VideoResNet.forward`` with activations kept as frames [B*T, C, H, W] and every Conv3d
    run as a Conv2d over temporally stacked frames (:func:`_conv_frames`); BatchNorm + ReLU then
    follow their Conv directly, so ONNX Runtime fuses them and runs its blocked (NCHWc) 2D
    kernels instead of its im2col Conv3d."""
    parts = (self.stem, self.layer1, self.layer2, self.layer3, self.layer4)
    if not all(_frames_supported(p) for p in parts):
        return _ORIGINAL["VideoResNet.forward"](self, x)
    _, c, t, h, w = x.shape
    f, t = x.transpose(1, 2).reshape(-1, c, h, w), int(t)
    for part in parts:
        f, t = _frames(part, f, t)
    pooled = f.reshape(-1, t, *f.shape[1:]).mean((1, 3, 4))  # AdaptiveAvgPool3d(1) + flatten
    return self.fc(pooled)


_ORIGINAL: dict = {}  # what export_friendly swapped out, for rewrites that fall back to it


@contextmanager
def export_friendly():
    """Swap in the rewrites above for the modules that are loaded (none is imported here)."""
    swaps = []
    mvit = sys.modules.get("torchvision.models.video.mvit")
    if mvit is not None:
        swaps += [(mvit.MultiscaleAttention, "forward", mvit_attention), (mvit.Pool, "forward", mvit_pool)]
    resnet = sys.modules.get("torchvision.models.video.resnet")
    if resnet is not None:
        swaps.append((resnet.VideoResNet, "forward", video_resnet_frames))
    saved = []
    for owner, name, rewrite in swaps:
        original = owner.__dict__[name]
        saved.append((owner, name, original))
        _ORIGINAL[f"{owner.__name__}.{name}"] = original
        setattr(owner, name, rewrite)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
