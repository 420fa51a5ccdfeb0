"""The JEDI bundle: all adjustment modules, student heads and teachers in one safetensors
file whose metadata describes the experts (arch, checkpoint path + sha256, categories,
preprocessing), the datasets, the resolved training config and the final metrics.

Tensor names: ``adjust.<j>.fc1.weight`` ..., ``students.<j>.weight``,
``teachers.<i>.1.weight`` (index j = position in ``experts``).
"""
from __future__ import annotations

from pathlib import Path


from .errors import CheckpointError, ConfigError
from .meta import atomic_path, dump_metadata, read_safetensors_metadata
from .registry import load_state_strict

from .jedi_model import JEDIConfig, JEDIModel


def save_bundle(model: JEDIModel, path: str | Path, *, experts: list[dict], datasets: list[str],
                config: JEDIConfig, extra: dict | None = None) -> Path:
    """Write ``model`` with its experts' descriptions, datasets and config (+ ``extra`` JSON)."""
    from safetensors.torch import save_file

    meta = {"kind": "bundle", "experts": experts, "datasets": datasets, "config": config.to_dict(),
            "teacher_dropout": model.teacher_p, **(extra or {})}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, ".safetensors") as tmp:
        save_file(state, str(tmp), metadata=dump_metadata(meta))
    return Path(path)


def load_bundle(path: str | Path) -> tuple[JEDIModel, dict]:
    """Rebuild the JEDI model from a bundle (eval mode) and return it with its metadata."""
    from safetensors.torch import load_file

    meta = read_safetensors_metadata(path, kind="bundle")
    try:
        cfg = JEDIConfig.from_dict(meta["config"])
        dims = [e["embed_dim"] for e in meta["experts"]]
        classes = [e["num_classes"] for e in meta["experts"]]
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{path}: bundle metadata is incomplete or invalid ({e})") from None
    model = JEDIModel(dims, classes, cfg)
    load_state_strict(model, load_file(str(path)), str(path))
    return model.eval(), meta
