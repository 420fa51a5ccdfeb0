"""Pretrain one expert on its own dataset's training split (the demo's initial experts).

Real deployments bring pretrained checkpoints; this stage exists so the built-in
benchmark has experts of its own, trained end to end like the paper's.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from jedi_deploy.contracts.errors import ConfigError
from jedi_deploy.contracts.metrics import classification_metrics
from jedi_deploy.media.datasets import VideoDataset
from jedi_deploy.media.decode import load_clips
from jedi_deploy.models.archs import build_expert, get_arch
from jedi_deploy.models.registry import save_expert


def pretrain_expert(dataset: VideoDataset, arch: str, out_path: str | Path, *, epochs: int = 30,
                    lr: float = 3e-3, weight_decay: float = 1e-4, batch_size: int = 16, seed: int = 0,
                    split: str = "train", progress: bool = True, device: str = "cpu", holdout: float = 0.0) -> Path:
    """Train ``arch`` on ``dataset``/``split`` with cross-entropy and AdamW on ``device``; save a
    checkpoint (on the CPU, so it loads anywhere). ``holdout`` > 0: that share of every class of the
    list (seeded, at least one video a class, never all) is held out and never seen; the card records
    those videos and ``<checkpoint>.holdout.txt`` lists them (``path label``), so ``jedi train``
    validates on videos the expert has not memorised."""
    from tqdm.auto import trange

    from jedi_deploy.models.devices import resolve_device

    entry = get_arch(arch)
    samples = [s for s in dataset.samples(split) if s.label >= 0]
    held: list = []
    if holdout:
        if not 0 < holdout < 1:
            raise ConfigError(f"--holdout is a share of the training list, in (0, 1); got {holdout}")
        samples, held = holdout_split(samples, holdout, seed)
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
    rel = tuple(str(s.path.relative_to(dataset.root)) for s in held)
    path = save_expert(model.cpu(), out_path, name=dataset.name, arch=arch, arch_kwargs={},
                       dataset=dataset.name, categories=dataset.categories, preprocess=entry.preprocess,
                       extra={"pretrain": {"epochs": epochs, "lr": lr, "seed": seed,
                                           "train_acc1": round(train_metrics["acc1"], 2),
                                           "num_samples": int(len(y)), "holdout": len(held)}}, holdout=rel)
    if held:
        from jedi_deploy.contracts.header import atomic_path

        with atomic_path(holdout_list(path), ".txt") as tmp:
            Path(tmp).write_text("".join(f"{r} {s.label}\n" for r, s in zip(rel, held)))
    return path


def holdout_list(checkpoint: str | Path) -> Path:
    """``x.safetensors`` -> ``x.holdout.txt``: the videos ``jedi pretrain --holdout`` kept from the expert."""
    return Path(checkpoint).with_suffix(".holdout.txt")


def holdout_split(samples: list, share: float, seed: int) -> tuple[list, list]:
    """(kept, held out): ``share`` of every class's samples, rounded, at least one and never all."""
    import numpy as np

    rng = np.random.default_rng([seed, 7])
    held = set()
    for c in sorted({s.label for s in samples}):
        rows = [i for i, s in enumerate(samples) if s.label == c]
        k = min(len(rows) - 1, max(1, int(round(share * len(rows)))))
        if k > 0:
            held.update(rng.choice(rows, size=k, replace=False).tolist())
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]
