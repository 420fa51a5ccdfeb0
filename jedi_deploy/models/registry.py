"""The expert registry: one entry per architecture.

The architecture table lives in :mod:`jedi_deploy.models.archs` (re-exported here; the real
architectures are registered by :mod:`jedi_deploy.models.zoo`). ``load_expert`` turns a checkpoint
file into an :class:`Expert` (frozen encoder + head + preprocessing + categories);
``save_expert`` writes one. Foreign checkpoints are converted by :mod:`jedi_deploy.models.importer`.

Checkpoint format ``jedi-safetensors``: the model's ``state_dict`` (``encoder.*``,
``head.weight``, ``head.bias``) in a safetensors file whose ``jedi`` metadata holds
``kind="expert"``, ``name``, ``arch``, ``arch_kwargs``, ``num_classes``, ``dataset``,
``categories`` and ``preprocess``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from jedi_deploy.contracts.errors import CheckpointError, ConfigError
from jedi_deploy.contracts.expert import ExpertCard
from jedi_deploy.contracts.header import (
    atomic_path,
    dump_metadata,
    read_safetensors_metadata,
    sha256_file,
)
from jedi_deploy.contracts.preprocess import Preprocess
from jedi_deploy.models.archs import (
    ARCHS,
    ArchEntry,
    build_expert,
    get_arch,
    register_arch,
)
from jedi_deploy.models.loading import load_state_strict
from jedi_deploy.models.tiny import ExpertModel
from jedi_deploy.models.zoo.generic import factory_search

__all__ = ["ARCHS", "ArchEntry", "Expert", "build_expert", "get_arch", "register_arch", "load_expert", "save_expert",
           "load_state_strict"]


@dataclass
class Expert:
    """A loaded expert: the model (frozen, eval mode) and everything needed to feed it."""

    name: str
    arch: str
    arch_kwargs: dict
    dataset: str
    categories: tuple[str, ...]
    preprocess: Preprocess
    model: ExpertModel
    path: Path | None = None
    sha256: str | None = None
    holdout: tuple[str, ...] = ()  # training videos it never saw (ExpertCard.holdout)

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder

    @property
    def head(self) -> nn.Linear:
        return self.model.head

    @property
    def embed_dim(self) -> int:
        return self.model.head.in_features

    @property
    def num_classes(self) -> int:
        return self.model.head.out_features

    @property
    def card(self) -> ExpertCard:
        """What later stages carry (cache, bundle, checkpoint headers) to identify and rebuild this expert."""
        return ExpertCard(name=self.name, arch=self.arch, dataset=self.dataset, categories=tuple(self.categories),
                          preprocess=self.preprocess, embed_dim=self.embed_dim, num_classes=self.num_classes,
                          arch_kwargs=dict(self.arch_kwargs), checkpoint=str(self.path) if self.path else None,
                          sha256=self.sha256, holdout=tuple(self.holdout))


def save_expert(model: ExpertModel, path: str | Path, *, name: str, arch: str, arch_kwargs: dict,
                dataset: str, categories, preprocess: Preprocess, extra: dict | None = None,
                holdout: tuple[str, ...] = ()) -> Path:
    from safetensors.torch import save_file

    if len(categories) != model.head.out_features:
        raise ConfigError(f"{len(categories)} categories for a head of {model.head.out_features} classes")
    card = ExpertCard(name, arch, dataset, tuple(categories), preprocess, model.head.in_features,
                      model.head.out_features, dict(arch_kwargs), holdout=tuple(holdout))
    # the card, less what a file cannot say of itself (where it is, its own hash)
    meta = {"kind": "expert", **{k: v for k, v in card.to_dict().items() if k not in ("checkpoint", "sha256")},
            **(extra or {})}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, ".safetensors") as tmp:
        save_file(state, str(tmp), metadata=dump_metadata(meta))
    return Path(path)


def load_expert(path: str | Path, expected_sha256: str | None = None) -> Expert:
    """Load a ``jedi-safetensors`` expert checkpoint; the model comes back frozen, in eval mode."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_safetensors_metadata(path, kind="expert")
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256:
        raise CheckpointError(f"{path}: checkpoint hash {digest[:12]} differs from the one recorded "
                              f"({expected_sha256[:12]}); it is not the expert this was built with")
    card = ExpertCard.from_dict({"embed_dim": 0, **meta}, str(path), "expert checkpoint")  # embed_dim: the head's
    try:
        with factory_search(path.resolve().parent):  # generic: its factory may sit beside the expert file
            model = build_expert(card.arch, card.num_classes, **card.arch_kwargs)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    load_state_strict(model, load_file(str(path)), str(path))
    model.eval().requires_grad_(False)
    return Expert(card.name, card.arch, dict(card.arch_kwargs), card.dataset, card.categories, card.preprocess,
                  model, path.resolve(), digest, card.holdout)
