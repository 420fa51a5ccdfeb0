"""The expert card: what every later stage knows of an expert (cache, bundle and checkpoint
headers carry it; ``Expert.card`` makes it). One typed contract with one writer
(:meth:`ExpertCard.to_dict`) and one reader (:meth:`ExpertCard.from_dict`), and the one rule of
an expert's identity (:meth:`ExpertCard.identity`): two caches whose experts have the same
identities are interchangeable."""
from __future__ import annotations

from dataclasses import dataclass, field

from jedi_deploy.contracts.errors import CheckpointError, ConfigError
from jedi_deploy.contracts.preprocess import Preprocess

#: Fields an expert card must carry (the rest have defaults).
REQUIRED = ("name", "arch", "dataset", "categories", "preprocess", "embed_dim", "num_classes")
#: What identifies an expert: the fields of :meth:`ExpertCard.identity`.
IDENTITY = ("name", "arch", "embed_dim", "num_classes", "dataset", "sha256")


@dataclass(frozen=True)
class ExpertCard:
    name: str
    arch: str
    dataset: str
    categories: tuple[str, ...]
    preprocess: Preprocess
    embed_dim: int
    num_classes: int
    arch_kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None  # where the checkpoint was when this card was made
    sha256: str | None = None  # of the checkpoint file
    # videos of its training list it never saw (``jedi pretrain --holdout``), relative to the dataset
    # folder as cache shards name them: jedi train validates on exactly these
    holdout: tuple[str, ...] = ()

    def identity(self) -> dict:
        """What must match for two caches (or a cache, a bundle and a checkpoint) to have the same
        expert (JSON, as training checkpoints record it)."""
        return {k: getattr(self, k) for k in IDENTITY}

    def to_dict(self) -> dict:
        return {"name": self.name, "arch": self.arch, "arch_kwargs": dict(self.arch_kwargs), "dataset": self.dataset,
                "categories": list(self.categories), "preprocess": self.preprocess.to_dict(),
                "embed_dim": self.embed_dim, "num_classes": self.num_classes, "checkpoint": self.checkpoint,
                "sha256": self.sha256, **({"holdout": list(self.holdout)} if self.holdout else {})}

    @classmethod
    def from_dict(cls, d, source: str, what: str = "expert") -> "ExpertCard":
        """Read one card; a :class:`CheckpointError` names ``source``, ``what`` and the missing or
        malformed field."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: {what} is not an object ({d!r})")
        label = f"{source}: {what} ({d.get('name', '?')})"
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise CheckpointError(f"{label} lacks field {missing[0]!r}")
        try:
            return cls(name=str(d["name"]), arch=str(d["arch"]), dataset=str(d["dataset"]),
                       categories=tuple(str(c) for c in d["categories"]), preprocess=Preprocess.from_dict(d["preprocess"]),
                       embed_dim=int(d["embed_dim"]), num_classes=int(d["num_classes"]),
                       arch_kwargs=dict(d.get("arch_kwargs") or {}), checkpoint=d.get("checkpoint"),
                       sha256=d.get("sha256"), holdout=tuple(str(x) for x in d.get("holdout") or ()))
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(f"{label}: malformed card ({e})") from None


def read_expert_cards(experts, source: str, what: str) -> list[ExpertCard]:
    """The expert cards of a ``what`` header (cache, bundle, checkpoint), in order; at least one."""
    if not isinstance(experts, list) or not experts:
        raise CheckpointError(f"{source}: {what} header has no experts")
    return [ExpertCard.from_dict(e, source, f"{what} header: expert {j}") for j, e in enumerate(experts)]


def same_experts(a: list[ExpertCard], b: list[ExpertCard]) -> bool:
    """The same experts, in the same order, by :meth:`ExpertCard.identity`."""
    return [x.identity() for x in a] == [x.identity() for x in b]
