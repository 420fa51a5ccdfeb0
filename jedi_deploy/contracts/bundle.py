"""The JEDI bundle: all adjustment modules, student heads and teachers in one safetensors
file whose header (:class:`BundleHeader`, the only writer and reader of that metadata)
describes the experts (arch, checkpoint path + sha256, categories, preprocessing), the
datasets, the resolved training config and the final metrics.

Tensor names: ``adjust.<j>.fc1.weight`` ..., ``students.<j>.weight``,
``teachers.<i>.1.weight`` (index j = position in ``experts``; expert j <-> dataset j).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jedi_deploy.contracts.config import JEDIConfig
from jedi_deploy.contracts.errors import CheckpointError
from jedi_deploy.contracts.expert import check_expert_descriptions
from jedi_deploy.contracts.header import (
    read_safetensors_metadata,
)

BUNDLE_KIND = "bundle"


@dataclass(frozen=True)
class BundleHeader:
    """What a bundle says about itself (the ``jedi`` JSON of its safetensors header)."""

    experts: list[dict]  # expert descriptions (registry.Expert.describe), in model order
    datasets: list[str]  # dataset j is expert j's
    config: dict  # the resolved JEDIConfig
    teacher_dropout: list[float]
    extra: dict = field(default_factory=dict)  # final_eval, best_epoch, data summary, cache, epoch, ...

    @property
    def expert_names(self) -> list[str]:
        return [e["name"] for e in self.experts]

    def jedi_config(self) -> JEDIConfig:
        return JEDIConfig.from_dict(self.config)

    def to_dict(self) -> dict:
        return {**self.extra, "kind": BUNDLE_KIND, "experts": self.experts, "datasets": self.datasets,
                "config": self.config, "teacher_dropout": self.teacher_dropout}

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "BundleHeader":
        try:
            experts, datasets, config = d["experts"], d["datasets"], d["config"]
        except KeyError as e:
            raise CheckpointError(f"{source}: bundle header lacks field {e.args[0]!r}") from None
        check_expert_descriptions(experts, source, "bundle")
        if len(datasets) != len(experts):
            raise CheckpointError(f"{source}: bundle header has {len(experts)} experts but {len(datasets)} datasets")
        extra = {k: v for k, v in d.items() if k not in ("kind", "format_version", "experts", "datasets", "config",
                                                          "teacher_dropout")}
        return cls(list(experts), list(datasets), dict(config), list(d.get("teacher_dropout", [])), extra)


def read_bundle_header(path: str | Path) -> BundleHeader:
    """The header of a bundle file, without loading its tensors."""
    return BundleHeader.from_dict(read_safetensors_metadata(path, kind=BUNDLE_KIND), str(path))


