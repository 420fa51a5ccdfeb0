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

from .errors import CheckpointError, ConfigError
from .jedi_model import JEDIConfig, JEDIModel
from .meta import atomic_path, check_expert_descriptions, dump_metadata, read_safetensors_metadata
from .registry import load_state_strict

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


def save_bundle(model: JEDIModel, path: str | Path, *, experts: list[dict], datasets: list[str],
                config: JEDIConfig, extra: dict | None = None) -> Path:
    """Write ``model`` with its experts' descriptions, datasets and config (+ ``extra`` JSON)."""
    from safetensors.torch import save_file

    header = BundleHeader(list(experts), list(datasets), config.to_dict(), list(model.teacher_p), dict(extra or {}))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, ".safetensors") as tmp:
        save_file(state, str(tmp), metadata=dump_metadata(header.to_dict()))
    return Path(path)


def load_bundle(path: str | Path) -> tuple[JEDIModel, BundleHeader]:
    """Rebuild the JEDI model from a bundle (eval mode) and return it with its header."""
    from safetensors.torch import load_file

    header = read_bundle_header(path)
    try:
        cfg = header.jedi_config()
    except ConfigError as e:
        raise CheckpointError(f"{path}: bundle config is invalid ({e})") from None
    model = JEDIModel([e["embed_dim"] for e in header.experts], [e["num_classes"] for e in header.experts], cfg)
    load_state_strict(model, load_file(str(path)), str(path))
    return model.eval(), header
