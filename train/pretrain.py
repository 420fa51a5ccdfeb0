"""Pretrain one expert on its own dataset's training split (the demo's initial experts).

Real deployments bring pretrained checkpoints; this stage exists so the built-in
benchmark has experts of its own, trained end to end like the paper's.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from jedi_deploy.contracts.metrics import classification_metrics
from jedi_deploy.media.datasets import VideoDataset
from jedi_deploy.media.decode import load_clips
from jedi_deploy.models.archs import build_expert, get_arch
from jedi_deploy.models.registry import save_expert


def pretrain_expert(dataset: VideoDataset, arch: str, out_path: str | Path, *, epochs: int = 30,
                    lr: float = 3e-3, weight_decay: float = 1e-4, batch_size: int = 16, seed: int = 0,
                    split: str = "train", progress: bool = True, device: str = "cpu") -> Path:
    """Train ``arch`` on ``dataset``/``split`` with cross-entropy and AdamW on ``device``; save a
    checkpoint (on the CPU, so it loads anywhere)."""
    from tqdm.auto import trange

    from jedi_deploy.models.devices import resolve_device

    entry = get_arch(arch)
    samples = [s for s in dataset.samples(split) if s.label >= 0]
    x = torch.from_numpy(load_clips([s.path for s in samples], entry.preprocess, progress,
                                    desc=f"decoding {dataset.name}/{split}"))
    y = torch.tensor([s.label for s in samples])
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = build_expert(arch, dataset.num_classes).to(dev)
    x, y = x.to(dev), y.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    for _ in trange(epochs, desc=f"pretraining {arch} on {dataset.name}", unit="epoch",
                    disable=not progress, leave=False):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            if len(idx) < 2:  # BatchNorm needs > 1 sample
                continue
            opt.zero_grad(set_to_none=True)
            idx = idx.to(dev)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in x.split(64)]).cpu().numpy()
    train_metrics = classification_metrics(logits, y.cpu().numpy())
    return save_expert(model.cpu(), out_path, name=dataset.name, arch=arch, arch_kwargs={},
                       dataset=dataset.name, categories=dataset.categories, preprocess=entry.preprocess,
                       extra={"pretrain": {"epochs": epochs, "lr": lr, "seed": seed,
                                           "train_acc1": round(train_metrics["acc1"], 2),
                                           "num_samples": int(len(y))}})
