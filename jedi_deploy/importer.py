"""``jedi import-expert``: a foreign checkpoint (torchvision / MMAction2 / plain state dict) ->
a self-describing jedi expert. ``.pth`` files are read only with ``torch.load(weights_only=True)``.
The architectures and their key mappings are :mod:`jedi_deploy.zoo`'s; this module reads the
file, detects its format, converts its keys and builds the :class:`~jedi_deploy.registry.Expert`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, ConfigError, InputError
from .meta import sha256_file
from .registry import Expert, build_expert, get_arch, load_state_strict, save_expert
from .video import Preprocess
from .zoo import TV_VIDEO, _fill_buffers, mmaction_resnet_to_ours, mmaction_swin_to_torchvision, split_head


def parse_key_value(text: str) -> tuple[str, object]:
    """``key=value`` with a JSON value (numbers, lists, objects) or else a plain string."""
    import json

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"bad option {text!r}: expected KEY=VALUE")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


# ---------------------------------------------------------------------- foreign checkpoints
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch-saved ``.pth``/``.pt``/``.ckpt`` (read with
    ``weights_only=True``), unwrapped from ``{"state_dict": ...}``/``{"model": ...}`` and from a
    DataParallel ``module.`` prefix."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as e:
            raise CheckpointError(f"{p}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{p}: cannot read as a torch checkpoint with weights_only=True "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: expected a state dict of tensors (optionally under 'state_dict' or 'model')")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def detect_format(state: dict) -> str:
    if any(k.startswith("backbone.") for k in state) or any(k.startswith("cls_head.") for k in state):
        return "mmaction2"
    return "torchvision"


def convert_state(arch: str, fmt: str, state: dict, source: str, arch_kwargs: dict, model: nn.Module) -> dict:
    """A foreign checkpoint's tensors -> our ExpertModel state dict for ``arch``."""
    entry = get_arch(arch)
    if fmt not in entry.formats or fmt == "jedi-safetensors":
        raise CheckpointError(f"{source}: {arch} reads formats {[f for f in entry.formats if f != 'jedi-safetensors']}, "
                              f"not {fmt!r}")
    if arch in TV_VIDEO:
        head = TV_VIDEO[arch][0]
        if fmt == "mmaction2":
            state, head = mmaction_swin_to_torchvision(state, source), "head"
        state = split_head(state, head, source)
        return _fill_buffers(state, model, "relative_position_index")
    if arch in ("tsn_r50", "tsm_r50"):
        return mmaction_resnet_to_ours(state, source, shift=arch == "tsm_r50")
    return split_head(state, arch_kwargs.get("head", "fc"), source)  # generic


def import_checkpoint(path: str | Path, arch: str, *, dataset: str, name: str | None = None,
                      categories=None, fmt: str | None = None, arch_kwargs: dict | None = None,
                      preset: str | None = None, preprocess: dict | None = None):
    """Read a foreign checkpoint (torchvision / MMAction2 / generic state dict) as an Expert.

    ``categories``: class names (default ``class_0..``; their count must equal the head's);
    ``preset``: a named preprocessing of the entry (e.g. ``"test"``), ``preprocess``: field
    overrides on top."""
    entry = get_arch(arch)
    state = read_state_dict(path)
    fmt = fmt or detect_format(state)
    kwargs = dict(arch_kwargs or {})
    probe = build_expert(arch, 1, **kwargs)
    ours = convert_state(arch, fmt, state, str(path), kwargs, probe)
    num_classes = ours["head.weight"].shape[0]
    model = build_expert(arch, num_classes, **kwargs)
    load_state_strict(model, ours, str(path))
    model.eval().requires_grad_(False)
    cats = tuple(categories) if categories else tuple(f"class_{i}" for i in range(num_classes))
    if len(cats) != num_classes:
        raise CheckpointError(f"{path}: the head has {num_classes} classes but {len(cats)} category names were given")
    pre = entry.preprocess
    if preset:
        presets = entry.extra.get("presets", {})
        if preset not in presets:
            raise ConfigError(f"{arch} has no preprocessing preset {preset!r}; it has {sorted(presets) or 'none'}")
        pre = presets[preset]
    if preprocess:
        pre = Preprocess.from_dict({**pre.to_dict(), **preprocess})
    return Expert(name or Path(path).stem, arch, kwargs, dataset, cats, pre, model, Path(path).resolve(),
                  sha256_file(path)), fmt


def save_imported(expert, out: str | Path, fmt: str) -> Path:
    return save_expert(expert.model, out, name=expert.name, arch=expert.arch, arch_kwargs=expert.arch_kwargs,
                       dataset=expert.dataset, categories=expert.categories, preprocess=expert.preprocess,
                       extra={"source": {"path": str(expert.path), "sha256": expert.sha256, "format": fmt}})

