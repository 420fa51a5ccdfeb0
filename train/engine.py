"""The fast training step: all adjustment modules, students and teachers of a JEDI model in one
autograd function with a hand-written backward, so a step is a short list of large GEMMs.

Why not plain autograd (``JEDIModel.forward``)? At paper scale (4 experts, 7168-d teacher input,
752 classes) much of a naive step is spent outside matrix products (profile: benchmarks/RESULTS.md,
"JEDI training throughput"): four teachers each drawing and applying a float dropout mask over the
[B, 7168] input, the masks' backward, the concatenation, summing view-gradients, and glibc returning
every large temporary to the OS.
Here:
  * the dropout masks come from one cheap draw per step (SFC64 random bits, 16 per element, via
    numpy), compared against integer thresholds (exact to 2^-16 in p);
  * the teachers' masks are *nested* (one uniform draw u, teacher i keeps u >= p_i): each teacher
    still gets an i.i.d. Bernoulli(1 - p_i) mask - only the correlation between teachers
    differs from independent draws, and it lets forward and backward apply each mask once
    (``x_i = x_{i-1} * m_i``; gradient by a Horner scheme that accumulates inside the GEMMs);
  * the adjusted features are written straight into the teacher-input buffer (no cat), the
    1/(1-p) scales are folded into GEMM ``alpha``;
  * the allocator keeps freed memory (``tune_allocator``) instead of page-faulting it back in.
The reference forward with the same masks gives the same outputs and gradients (tested).
"""
from __future__ import annotations

import ctypes
import sys

import numpy as np
import torch
import torch.nn.functional as F

from jedi_deploy.models.jedi import JEDIModel

_TUNED = False


def tune_allocator() -> None:
    """Ask glibc malloc to keep large freed blocks (no mmap/munmap + page faults per step).
    Process-wide and harmless; a no-op off glibc."""
    global _TUNED
    if _TUNED or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass
    _TUNED = True


def keep_threshold(p: float) -> int:
    """int16 threshold t such that P(u >= t) = 1 - p for u uniform over int16 (p to 2^-16)."""
    return int(round(p * 65536)) - 32768


class Rng:
    """The run's one random stream: numpy SFC64 for epoch permutations and, on the CPU, for the
    dropout masks; on a GPU the masks are drawn there (a torch generator on the device, seeded
    from the SFC64 stream), so no mask bits cross the bus. The state is a small JSON-able dict
    saved in checkpoints; a checkpoint resumes on either device (bit-identical on the same one)."""

    def __init__(self, seed: int, device=None):
        self.gen = np.random.Generator(np.random.SFC64(seed))
        self.device = torch.device(device or "cpu")
        self.device_gen = None
        if self.device.type != "cpu":
            self.device_gen = torch.Generator(self.device)
            self.device_gen.manual_seed(int(self.gen.integers(2 ** 62)))

    def bits16(self, rows: int, cols: int) -> torch.Tensor:
        """Uniform integers in [-32768, 32767] on the device (int16 on the CPU, int32 on a GPU)."""
        if self.device_gen is not None:
            return torch.randint(-32768, 32768, (rows, cols), generator=self.device_gen, device=self.device,
                                 dtype=torch.int32)
        n = rows * cols
        raw = self.gen.bit_generator.random_raw((n + 3) // 4)
        return torch.from_numpy(raw.view(np.int16)[:n].reshape(rows, cols))

    def permutation(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.gen.permutation(n)).to(self.device)

    @property
    def state(self) -> dict:
        """JSON-able state (SFC64 keeps its words in a uint64 array; a device generator its bytes)."""
        st = self.gen.bit_generator.state
        words = st["state"]["state"]
        out = {**st, "state": {"state": [int(w) for w in words]}}
        if self.device_gen is not None:
            out["device_state"] = self.device_gen.get_state().tolist()
        return out

    @state.setter
    def state(self, value: dict) -> None:
        value = dict(value)
        device_state = value.pop("device_state", None)
        words = np.array(value["state"]["state"], dtype=np.uint64)
        self.gen.bit_generator.state = {**value, "state": {"state": words}}
        if self.device_gen is not None and device_state is not None:
            self.device_gen.set_state(torch.tensor(device_state, dtype=torch.uint8))


def _mask(bits: torch.Tensor, p: float) -> torch.Tensor:
    out = torch.empty(bits.shape, dtype=torch.float32, device=bits.device)
    return torch.ge(bits, keep_threshold(p), out=out)


class Masks:
    """Dropout masks (0/1 float) for one batch: per expert for the adjustment modules and per
    teacher for the teacher inputs (nested, see module docstring)."""

    def __init__(self, model: JEDIModel, batch: int, rng: Rng | None):
        self.adjust_p = model.adjust[0].dropout.p
        self.device = rng.device if rng is not None else torch.device("cpu")
        self.teacher_p = list(model.teacher_p)
        dims, zdim = model.dims, model.teachers[0][1].in_features
        self.adjust = None
        self.teacher: list[torch.Tensor | None] = [None] * len(self.teacher_p)
        if rng is None:
            return
        if self.adjust_p > 0:
            full = _mask(rng.bits16(batch, sum(dims)), self.adjust_p)
            self.adjust = list(full.split(dims, dim=1))
        if any(p > 0 for p in self.teacher_p):
            u = rng.bits16(batch, zdim).float()  # one conversion, then float compares
            for i, p in enumerate(self.teacher_p):
                if p > 0:
                    self.teacher[i] = torch.ge(u, float(keep_threshold(p)), out=torch.empty_like(u))

    def as_reference(self) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
        """The same masks in the form ``JEDIModel.forward`` takes (for tests)."""
        ones = None
        teacher = []
        for m in self.teacher:
            if m is None:
                ones = ones if ones is not None else torch.ones(1, device=self.device)
                teacher.append(ones)
            else:
                teacher.append(m)
        adjust = [m.contiguous() for m in self.adjust] if self.adjust is not None else None
        return adjust, teacher


def _params(model: JEDIModel) -> list[torch.Tensor]:
    out = []
    for a in model.adjust:
        out += [a.fc1.weight, a.fc1.bias, a.fc2.weight, a.fc2.bias]
    for s in model.students:
        out += [s.weight, s.bias]
    for t in model.teachers:
        out += [t[1].weight, t[1].bias]
    return out


class _FusedJEDI(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, *params):
        model, embs, masks = spec
        n, mode = len(embs), model.teacher_input
        W = [params[4 * j: 4 * j + 4] for j in range(n)]
        S = [params[4 * n + 2 * j: 4 * n + 2 * j + 2] for j in range(n)]
        T = [params[6 * n + 2 * i: 6 * n + 2 * i + 2] for i in range(n)]
        dims, classes = model.dims, model.num_classes
        batch = embs[0].shape[0]
        s_adj = 1.0 / (1.0 - masks.adjust_p) if masks.adjust is not None else 1.0
        zdim = T[0][0].shape[1]
        z = torch.empty(batch, zdim, dtype=embs[0].dtype, device=embs[0].device)
        adj_in_z = mode in ("adjusted", "adjusted+predictions")
        hpre, h, adjusted, students = [], [], [], []
        off = 0
        for j, e in enumerate(embs):
            w1, b1, w2, b2 = W[j]
            hp = torch.addmm(b1, e, w1.t())
            hj = F.silu(hp)
            r = torch.addmm(b2, hj, w2.t())
            dst = z[:, off:off + dims[j]] if adj_in_z else torch.empty_like(e)
            if masks.adjust is not None:
                torch.addcmul(e, r, masks.adjust[j], value=s_adj, out=dst)
            else:
                torch.add(e, r, out=dst)
            if mode == "base":
                z[:, off:off + dims[j]] = e
            hpre.append(hp)
            h.append(hj)
            adjusted.append(dst)
            students.append(torch.addmm(S[j][1], dst, S[j][0].t()))
            off += dims[j]
        if mode in ("predictions", "adjusted+predictions"):
            off = sum(dims) if mode == "adjusted+predictions" else 0
            for j, s in enumerate(students):
                z[:, off:off + classes[j]] = s
                off += classes[j]
        order = sorted(range(n), key=lambda i: masks.teacher_p[i])
        x, xs, teachers = z, [None] * n, [None] * n
        for i in order:
            p, m = masks.teacher_p[i], masks.teacher[i]
            if m is not None:
                x = x * m  # nested masks: x_{i-1} * m_i == z * m_i
            xs[i] = x
            teachers[i] = torch.addmm(T[i][1], x, T[i][0].t(), alpha=1.0 / (1.0 - p) if m is not None else 1.0)
        ctx.spec = (model, embs, masks, order, s_adj, hpre, h, adjusted, xs)
        ctx.save_for_backward(*params)
        return tuple(students) + tuple(teachers)

    @staticmethod
    def backward(ctx, *grads):
        model, embs, masks, order, s_adj, hpre, h, adjusted, xs = ctx.spec
        params = ctx.saved_tensors
        n, mode, dims, classes = len(embs), model.teacher_input, model.dims, model.num_classes
        need = ctx.needs_input_grad[1:]
        out: list[torch.Tensor | None] = [None] * len(params)
        g_s, g_t = list(grads[:n]), list(grads[n:])
        # Teachers: weight grads, and the input grad by Horner over the nested masks.
        acc = None
        flows = mode != "base" and any(need[:6 * n])
        for i in reversed(order):
            g = g_t[i]
            if g is None:
                continue
            wt = params[6 * n + 2 * i]
            p, m = masks.teacher_p[i], masks.teacher[i]
            alpha = 1.0 / (1.0 - p) if m is not None else 1.0
            if need[6 * n + 2 * i + 1]:
                out[6 * n + 2 * i + 1] = g.sum(0)
            if alpha != 1.0:
                g = g * alpha  # [B, C]: scaling here is cheaper than on [B, D]
            if need[6 * n + 2 * i]:
                out[6 * n + 2 * i] = torch.mm(g.t(), xs[i])
            if flows:
                acc = torch.mm(g, wt) if acc is None else acc.addmm_(g, wt)
                if m is not None:
                    acc.mul_(m)
        if mode in ("predictions", "adjusted+predictions") and acc is not None:
            off = sum(dims) if mode == "adjusted+predictions" else 0
            for j in range(n):
                part = acc[:, off:off + classes[j]]
                g_s[j] = part if g_s[j] is None else g_s[j] + part
                off += classes[j]
        off = 0
        for j in range(n):
            ws = params[4 * n + 2 * j]
            z_part = acc[:, off:off + dims[j]] if (acc is not None and mode in ("adjusted", "adjusted+predictions")) else None
            off += dims[j]
            g = g_s[j]
            if g is not None:
                if need[4 * n + 2 * j]:
                    out[4 * n + 2 * j] = torch.mm(g.t(), adjusted[j])
                if need[4 * n + 2 * j + 1]:
                    out[4 * n + 2 * j + 1] = g.sum(0)
            if not any(need[4 * j: 4 * j + 4]):
                continue
            if g is not None:
                g_adj = torch.addmm(z_part, g, ws) if z_part is not None else torch.mm(g, ws)
            elif z_part is not None:
                g_adj = z_part.contiguous()
            else:
                continue
            if masks.adjust is not None:
                g_adj.mul_(masks.adjust[j])  # = grad of r / s_adj
            w2 = params[4 * j + 2]
            out[4 * j + 2] = torch.mm(g_adj.t(), h[j]).mul_(s_adj)
            out[4 * j + 3] = g_adj.sum(0).mul_(s_adj)
            g_h = torch.mm(g_adj, w2).mul_(s_adj)
            g_hp = torch.ops.aten.silu_backward(g_h, hpre[j])
            out[4 * j] = torch.mm(g_hp.t(), embs[j])
            out[4 * j + 1] = g_hp.sum(0)
        return (None, *out)


def fused_forward(model: JEDIModel, embs: list[torch.Tensor], masks: Masks
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Training-mode forward of ``model`` with ``masks``; backward is hand-written (above)."""
    embs = [e.float().contiguous() for e in embs]
    outs = _FusedJEDI.apply((model, embs, masks), *_params(model))
    n = len(embs)
    return list(outs[:n]), list(outs[n:])
