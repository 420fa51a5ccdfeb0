"""The architecture table: one :class:`ArchEntry` per expert architecture - how to build its
encoder, its embedding size, its default preprocessing and which checkpoint formats it reads.

The demo's tiny architectures are registered here; the real ones (torchvision, MMAction2,
generic) by :mod:`jedi_deploy.models.zoo` on import. Dependencies point one way: ``zoo`` ->
``archs``; ``registry`` (loading experts) -> both; ``importer`` (foreign checkpoints) -> all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from jedi_deploy.contracts.errors import ConfigError
from jedi_deploy.contracts.preprocess import Preprocess
from jedi_deploy.models.tiny import Conv3DEncoder, ExpertModel, Segment2DEncoder


@dataclass(frozen=True)
class Preset:
    """A named test protocol: the preprocessing that reproduces ``upstream`` (the config or weights
    whose published accuracy it was measured with), and how our views differ, if they do."""

    preprocess: Preprocess
    upstream: str
    note: str = ""
    arch_kwargs: dict = field(default_factory=dict)  # architecture arguments the protocol implies (TSM's segments)

    @property
    def deviations(self) -> str:
        """Every documented way our views differ from the upstream's: the preset's own note, and the
        one that holds for all - frames are turned upright by the file's rotation metadata, where
        MMAction2's PyAV/Decord decoding (and torchvision's) leaves tagged phone video sideways."""
        upright = ("frames are turned upright by the file's rotation metadata (the upstream decoders leave "
                   "tagged phone video sideways)")
        return "; ".join(filter(None, [self.note, upright]))


@dataclass(frozen=True)
class ArchEntry:
    name: str
    family: str  # "2d-segment" | "3d-conv" | ...
    build_encoder: Callable[..., nn.Module]  # kwargs -> encoder with .embed_dim
    default_kwargs: dict
    preprocess: Preprocess
    description: str
    formats: tuple[str, ...] = ("jedi-safetensors",)
    extra: dict = field(default_factory=dict)  # head, embed_dim, test_input, test_kwargs (schema tests)
    presets: dict[str, Preset] = field(default_factory=dict)  # named upstream test protocols


ARCHS: dict[str, ArchEntry] = {}


def register_arch(entry: ArchEntry) -> ArchEntry:
    if entry.name in ARCHS:
        raise ConfigError(f"architecture {entry.name!r} is already registered")
    ARCHS[entry.name] = entry
    return entry


def get_arch(name: str) -> ArchEntry:
    try:
        return ARCHS[name]
    except KeyError:
        raise ConfigError(f"unknown architecture {name!r}; registered: {sorted(ARCHS)}") from None


register_arch(ArchEntry(
    "tiny_tsn", "2d-segment",
    lambda **kw: Segment2DEncoder(shift=False, **kw),
    {"num_segments": 8, "width": 16, "embed_dim": 64},
    Preprocess(num_frames=8, sampling="segments", crop=32),
    "TSN-like 2D CNN per segment with average consensus (order-blind)."))
register_arch(ArchEntry(
    "tiny_tsm", "2d-segment",
    lambda **kw: Segment2DEncoder(shift=True, **kw),
    {"num_segments": 8, "width": 16, "embed_dim": 80},
    Preprocess(num_frames=8, sampling="segments", crop=32),
    "TSM-like 2D CNN with temporal shift (order-aware at 2D cost)."))
register_arch(ArchEntry(
    "tiny_c3d", "3d-conv",
    lambda **kw: Conv3DEncoder(**kw),
    {"width": 16, "embed_dim": 96},
    Preprocess(num_frames=8, sampling="clip", frame_interval=2, crop=32),
    "C3D-like 3D CNN over a dense clip."))


def build_expert(arch: str, num_classes: int, **kwargs) -> ExpertModel:
    entry = get_arch(arch)
    unknown = set(kwargs) - set(entry.default_kwargs)
    if unknown:
        raise ConfigError(f"{arch}: unknown arguments {sorted(unknown)}; known: {sorted(entry.default_kwargs)}")
    kw = {**entry.default_kwargs, **kwargs}
    encoder = entry.build_encoder(**kw)
    return ExpertModel(encoder, encoder.embed_dim, num_classes)


# ------------------------------------------------------------------------------- presets
