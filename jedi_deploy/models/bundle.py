"""The JEDI bundle's tensors: the JEDI model written with its header
(:class:`~jedi_deploy.contracts.bundle.BundleHeader`) and rebuilt from it."""
from __future__ import annotations

from pathlib import Path

from jedi_deploy.contracts.bundle import BundleHeader, read_bundle_header
from jedi_deploy.contracts.config import JEDIConfig
from jedi_deploy.contracts.expert import ExpertCard
from jedi_deploy.contracts.header import atomic_path, dump_metadata
from jedi_deploy.models.jedi import JEDIModel
from jedi_deploy.models.loading import load_state_strict


def save_bundle(model: JEDIModel, path: str | Path, *, experts: list[ExpertCard], datasets: list[str],
                config: JEDIConfig, cache: str | Path = "", extra: dict | None = None) -> Path:
    """Write ``model`` with its experts' cards, datasets, config, the cache it was trained on
    (absolute) and ``extra`` JSON."""
    from safetensors.torch import save_file

    header = BundleHeader(list(experts), list(datasets), config, list(model.teacher_p),
                          str(Path(cache).resolve()) if cache else "", dict(extra or {}))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, ".safetensors") as tmp:
        save_file(state, str(tmp), metadata=dump_metadata(header.to_dict()))
    return Path(path)


def load_bundle(path: str | Path) -> tuple[JEDIModel, BundleHeader]:
    """Rebuild the JEDI model from a bundle (eval mode) and return it with its header."""
    from safetensors.torch import load_file

    header = read_bundle_header(path)
    model = JEDIModel([e.embed_dim for e in header.experts], [e.num_classes for e in header.experts], header.config)
    load_state_strict(model, load_file(str(path)), str(path))
    return model.eval(), header
