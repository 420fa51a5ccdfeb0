"""Training checkpoints for ``--resume``: model, optimizer state and the random stream, in one
safetensors file written atomically after every epoch.

Tensors: ``model.<state-dict key>``, ``optim.<param index>.<state key>``. Metadata (``jedi``):
``kind="checkpoint"``, the resolved config, the experts' identity, the epoch reached, the best
validation score so far, the optimizer's param groups and the RNG state.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from jedi_deploy.contracts.config import JEDIConfig
from jedi_deploy.contracts.errors import CheckpointError, ConfigError
from jedi_deploy.contracts.expert import ExpertCard
from jedi_deploy.contracts.header import (
    atomic_path,
    dump_metadata,
    read_safetensors_metadata,
)
from jedi_deploy.models.loading import load_state_strict


@dataclass
class Checkpoint:
    config: JEDIConfig
    epoch: int
    best: float | None
    rng_state: dict
    experts: list[ExpertCard]
    best_epoch: int | None = None  # the first epoch that reached ``best`` (None in older checkpoints)


def save_checkpoint(path: Path, model, optimizer, *, config: JEDIConfig, epoch: int, best: float | None,
                    rng_state: dict, experts: list[ExpertCard], best_epoch: int | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for k, v in state.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"optim.{idx}.{k}"] = t.detach().cpu().contiguous()
    meta = {"kind": "checkpoint", "config": config.to_dict(), "epoch": epoch, "best": best, "best_epoch": best_epoch,
            "param_groups": opt["param_groups"], "rng_state": rng_state,
            "experts": [e.identity() for e in experts]}
    with atomic_path(path, ".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=dump_metadata(meta))


def load_checkpoint(path: Path, model, optimizer, *, config: JEDIConfig, experts: list[ExpertCard]) -> Checkpoint:
    """Restore ``model`` and ``optimizer`` in place; refuses a checkpoint of another config or
    other experts (naming the fields that differ)."""
    from safetensors.torch import load_file

    meta = read_safetensors_metadata(path, kind="checkpoint")
    try:
        saved = JEDIConfig.from_dict(meta["config"])
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{path}: checkpoint config is missing or invalid ({e})") from None
    diff = saved.differences(config)
    if diff:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(f"cannot resume {path}: the run was started with a different config ({shown}); "
                          "resume with the same settings or start a new run folder")
    ident = [e.identity() for e in experts]
    if meta.get("experts") != ident:
        raise CheckpointError(f"cannot resume {path}: it was trained on a cache of other experts")
    t = load_file(str(path))
    load_state_strict(model, {k[6:]: v for k, v in t.items() if k.startswith("model.")}, str(path))
    state: dict[int, dict] = {}
    for k, v in t.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit this model ({e})") from None
    return Checkpoint(saved, int(meta["epoch"]), meta.get("best"), meta["rng_state"], meta["experts"],
                      meta.get("best_epoch"))
