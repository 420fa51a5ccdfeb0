"""The JEDI bundle: all adjustment modules, student heads and teachers in one safetensors
file whose header (:class:`BundleHeader`, the only writer and reader of that metadata)
describes the experts (:class:`~jedi_deploy.contracts.expert.ExpertCard`: arch, checkpoint path +
sha256, categories, preprocessing), the datasets, the resolved training config
(:class:`~jedi_deploy.contracts.config.JEDIConfig`), the cache it was trained on and the final
metrics. The tensors are written and read by :mod:`jedi_deploy.models.bundle`.

Tensor names: ``adjust.<j>.fc1.weight`` ..., ``students.<j>.weight``,
``teachers.<i>.1.weight`` (index j = position in ``experts``; expert j <-> dataset j).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jedi_deploy.contracts.config import JEDIConfig
from jedi_deploy.contracts.errors import CheckpointError, ConfigError, InputError
from jedi_deploy.contracts.expert import ExpertCard, read_expert_cards
from jedi_deploy.contracts.header import (
    read_safetensors_metadata,
)

BUNDLE_KIND = "bundle"


@dataclass(frozen=True)
class BundleHeader:
    """What a bundle says about itself (the ``jedi`` JSON of its safetensors header)."""

    experts: list[ExpertCard]  # in model order
    datasets: list[str]  # dataset j is expert j's
    config: JEDIConfig  # the resolved training config
    teacher_dropout: list[float]
    cache: str = ""  # the cache folder it was trained on (absolute; written by train_to_dir): --int8's videos
    extra: dict = field(default_factory=dict)  # final_eval, best_epoch, data summary, epoch, ...

    @property
    def expert_names(self) -> list[str]:
        return [e.name for e in self.experts]

    def expert(self, name: str) -> ExpertCard:
        """The card of expert ``name``, or an error naming the bundle's experts."""
        for e in self.experts:
            if e.name == name:
                return e
        raise InputError(f"unknown student {name!r}; this bundle has students {self.expert_names}")

    def to_dict(self) -> dict:
        return {**self.extra, "kind": BUNDLE_KIND, "experts": [e.to_dict() for e in self.experts],
                "datasets": self.datasets, "config": self.config.to_dict(), "teacher_dropout": self.teacher_dropout,
                "cache": self.cache}

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "BundleHeader":
        try:
            experts, datasets, config = d["experts"], d["datasets"], d["config"]
        except KeyError as e:
            raise CheckpointError(f"{source}: bundle header lacks field {e.args[0]!r}") from None
        cards = read_expert_cards(experts, source, "bundle")
        if len(datasets) != len(cards):
            raise CheckpointError(f"{source}: bundle header has {len(cards)} experts but {len(datasets)} datasets")
        try:
            cfg = JEDIConfig.from_dict(config)
        except ConfigError as e:
            raise CheckpointError(f"{source}: bundle config is invalid ({e})") from None
        extra = {k: v for k, v in d.items() if k not in ("kind", "format_version", "experts", "datasets", "config",
                                                          "teacher_dropout", "cache")}
        return cls(cards, list(datasets), cfg, list(d.get("teacher_dropout", [])), str(d.get("cache") or ""), extra)


def read_bundle_header(path: str | Path) -> BundleHeader:
    """The header of a bundle file, without loading its tensors."""
    return BundleHeader.from_dict(read_safetensors_metadata(path, kind=BUNDLE_KIND), str(path))


