"""JEDI training throughput at the paper's scale, in one run.

Paper scale (Table 1): 4 experts, embedding dims 2048/2048/1024/2048, classes 200/51/400/101,
training sizes 8398/3570/226070/9537 (random embeddings with those shapes; throughput does not
depend on the values). Measures, interleaved so machine drift hits all figures alike:

  * samples/s of the real training step (``train.jedi.train_step``: fused forward/backward,
    dropout masks, the full JEDI loss with KD on, AdamW) on batches drawn like training does;
  * this machine's sgemm GFLOP/s (best square fp32 matmul at the same thread count);
  * the roofline fraction: (forward + backward FLOPs of the step's matrix products, counted
    exactly as computed) x samples/s / sgemm FLOP/s;
  * samples/s of a straightforward reference: ``nn.Module`` experts with ``nn.Dropout`` and
    a per-dataset Python loop over a ``DataLoader`` of a ``TensorDataset``, same loss and
    optimiser.

Last line: one JSON object. Targets on the 2-core CPU: roofline fraction >= 0.70, speedup >= 3.
Usage: python benchmarks/train_throughput.py [--batch-size 1024] [--seconds 20] [--scale 0.1]
GPU: --device cuda --epochs 500 times 500 full paper-scale epochs instead (unverified here).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from jedi_deploy.contracts.config import JEDIConfig
from jedi_deploy.models.jedi import JEDIModel
from jedi_deploy.train.engine import Rng, tune_allocator  # noqa: E402
from jedi_deploy.train.jedi import build_optimizer, train_step  # noqa: E402
from jedi_deploy.train.losses import distillation_weights, jedi_loss  # noqa: E402

DIMS = [2048, 2048, 1024, 2048]
CLASSES = [200, 51, 400, 101]
SIZES = [8398, 3570, 226070, 9537]


def step_flops(dims, classes, hidden, zdim) -> int:
    """FLOPs of one sample's forward + backward matrix products, as the fused step computes
    them: fc1 has no input gradient (its input is the frozen embedding)."""
    f1 = sum(2 * d * hidden for d in dims)  # fc1
    f2 = sum(2 * hidden * d for d in dims)  # fc2
    st = sum(2 * d * c for d, c in zip(dims, classes))  # students
    te = sum(2 * zdim * c for c in classes)  # teachers
    return f1 * 2 + (f2 + st + te) * 3  # fc1: fwd + dW; others: fwd + dX + dW


def sgemm_gflops(n: int = 2048, reps: int = 6) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def make_data(scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sizes = [max(1, int(s * scale)) for s in SIZES]
    n = sum(sizes)
    embs = [torch.randn(n, d, generator=g) for d in DIMS]
    dataset = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    labels = torch.cat([torch.randint(0, c, (s,), generator=g) for c, s in zip(CLASSES, sizes)])
    return sizes, embs, dataset, labels


class Fast:
    """The real training step, as ``train_jedi`` runs it."""

    def __init__(self, cfg, sizes, embs, dataset, labels):
        torch.manual_seed(0)
        self.cfg, self.embs, self.dataset, self.labels = cfg, embs, dataset, labels
        self.model = JEDIModel(DIMS, CLASSES, cfg).train()
        self.opt = build_optimizer(self.model, cfg)
        self.w = distillation_weights(sizes, cfg)
        self.rng = Rng(0)
        self.perm = self.rng.permutation(len(labels))
        self.pos = 0

    def step(self) -> int:
        b = self.cfg.batch_size
        if self.pos + b > len(self.perm):
            self.perm, self.pos = self.rng.permutation(len(self.labels)), 0
        idx = self.perm[self.pos:self.pos + b]
        self.pos += b
        train_step(self.model, self.opt, [e.index_select(0, idx) for e in self.embs], self.dataset[idx],
                   self.labels[idx], self.w, self.cfg, self.rng, distill=True)
        return b


class Reference:
    """A straightforward implementation: per-dataset DataLoaders over TensorDatasets, a
    Python loop over datasets, nn.Dropout everywhere, autograd for everything."""

    def __init__(self, cfg, sizes, embs, dataset, labels):
        from torch.utils.data import DataLoader, TensorDataset

        torch.manual_seed(0)
        self.cfg = cfg
        self.model = JEDIModel(DIMS, CLASSES, cfg).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.w = distillation_weights(sizes, cfg)
        per = max(1, cfg.batch_size // len(sizes))
        self.loaders = []
        for i in range(len(sizes)):
            rows = (dataset == i).nonzero().squeeze(1)
            ds = TensorDataset(*[e[rows] for e in embs], labels[rows])
            self.loaders.append(DataLoader(ds, batch_size=per, shuffle=True))
        self.iters = [iter(dl) for dl in self.loaders]

    def _next(self, i):
        try:
            return next(self.iters[i])
        except StopIteration:
            self.iters[i] = iter(self.loaders[i])
            return next(self.iters[i])

    def step(self) -> int:
        done = 0
        for i in range(len(self.loaders)):  # one batch of each dataset per "step"
            *e, y = self._next(i)
            s, t = self.model(list(e))
            loss, _ = jedi_loss(s, t, torch.full((len(y),), i), y, self.w, self.cfg, distill=True)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            done += len(y)
        return done


def timed(runner, seconds: float, warmup: int = 2) -> float:
    for _ in range(warmup):
        runner.step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += runner.step()
    return n / (time.perf_counter() - t0)


def gpu_epochs(cfg, epochs: int) -> dict:  # pragma: no cover - needs CUDA (unverified here)
    """Wall time of ``epochs`` full paper-scale epochs on CUDA with the reference forward
    (torch's CUDA kernels; the CPU-tuned fused step is not used there)."""
    dev = torch.device("cuda")
    sizes, embs, dataset, labels = make_data(1.0)
    embs = [e.to(dev) for e in embs]
    dataset, labels = dataset.to(dev), labels.to(dev)
    model = JEDIModel(DIMS, CLASSES, cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    w = distillation_weights(sizes, cfg).to(dev)
    n = len(labels)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n, device=dev)
        for k in range(0, n, cfg.batch_size):
            idx = perm[k:k + cfg.batch_size]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                s, t = model([e[idx] for e in embs])
            loss, _ = jedi_loss([x.float() for x in s], [x.float() for x in t], dataset[idx], labels[idx], w,
                                cfg, distill=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"device": torch.cuda.get_device_name(), "epochs": epochs, "wall_s": wall,
            "samples_per_s": epochs * n / wall, "batch_size": cfg.batch_size, "precision": cfg.precision}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=20.0, help="Timed seconds per runner and round.")
    ap.add_argument("--rounds", type=int, default=2, help="Interleaved rounds (fast, reference, sgemm).")
    ap.add_argument("--scale", type=float, default=0.1, help="Fraction of the paper's training sizes kept in "
                                                              "memory (throughput does not depend on it).")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--epochs", type=int, default=500, help="(cuda) full epochs to time")
    args = ap.parse_args(argv)
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = JEDIConfig(batch_size=args.batch_size, precision=args.precision, burn_in=0)
    if args.device == "cuda":
        res = gpu_epochs(cfg, args.epochs)
        print(json.dumps(res))
        return res
    data = make_data(args.scale)
    fast, ref = Fast(cfg, *data), Reference(cfg, *data)
    fast_rates, ref_rates, gemm = [], [], []
    for r in range(args.rounds):
        gemm.append(sgemm_gflops())
        fast_rates.append(timed(fast, args.seconds))
        ref_rates.append(timed(ref, args.seconds))
        print(f"round {r + 1}: fast {fast_rates[-1]:.0f} samples/s, reference {ref_rates[-1]:.0f} samples/s, "
              f"sgemm {gemm[-1]:.1f} GFLOP/s", file=sys.stderr)
    zdim = fast.model.teachers[0][1].in_features
    flops = step_flops(DIMS, CLASSES, cfg.hidden, zdim)
    sps, peak = max(fast_rates), max(gemm)
    res = {"samples_per_s": round(sps, 1), "reference_samples_per_s": round(max(ref_rates), 1),
           "speedup_vs_reference": round(sps / max(ref_rates), 2),
           "sgemm_gflops": round(peak, 1), "step_gflops": round(sps * flops / 1e9, 1),
           "roofline_fraction": round(sps * flops / (peak * 1e9), 3),
           "flops_per_sample": flops, "batch_size": cfg.batch_size, "precision": cfg.precision,
           "threads": torch.get_num_threads(), "epoch_s_at_paper_scale": round(sum(SIZES) / sps, 1),
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    res["targets_met"] = res["roofline_fraction"] >= 0.70 and res["speedup_vs_reference"] >= 3.0
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
