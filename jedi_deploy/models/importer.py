"""``jedi import-expert``: a foreign checkpoint (torchvision / MMAction2 / plain state dict) ->
a self-describing jedi expert. ``.pth`` files are read only with ``torch.load(weights_only=True)``.
The architectures and their key mappings are :mod:`jedi_deploy.models.zoo`'s; this module reads the
file, detects its format, converts its keys and builds the :class:`~jedi_deploy.models.registry.Expert`.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from jedi_deploy.contracts.errors import (
    CheckpointError,
    ConfigError,
    InputError,
    JediError,
)
from jedi_deploy.contracts.header import sha256_file
from jedi_deploy.contracts.preprocess import Preprocess
from jedi_deploy.models.archs import build_expert, get_arch
from jedi_deploy.models.loading import load_state_strict
from jedi_deploy.models.registry import Expert, save_expert
from jedi_deploy.models.zoo.common import split_head
from jedi_deploy.models.zoo.mmaction import (
    _fill_buffers,
    mmaction_resnet_to_ours,
    mmaction_swin_to_torchvision,
    split_mmaction,
)
from jedi_deploy.models.zoo.torchvision import TV_VIDEO


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


def detect_format(state: dict, arch: str | None = None) -> str:
    """``mmaction2`` (``backbone.*``/``cls_head.*`` keys), else the plain state dict the architecture
    reads: ``torchvision`` for torchvision's models, ``state_dict`` for ``generic``."""
    if any(k.startswith("backbone.") for k in state) or any(k.startswith("cls_head.") for k in state):
        return "mmaction2"
    formats = get_arch(arch).formats if arch else ()
    return "state_dict" if "state_dict" in formats and "torchvision" not in formats else "torchvision"


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
    if arch == "mmaction_vit":
        backbone, head = split_mmaction(state)
        if "head.weight" not in head:
            raise CheckpointError(f"{source}: no classifier 'cls_head.fc_cls.weight' in the checkpoint")
        return _fill_buffers({**{"encoder." + k: v for k, v in backbone.items()}, **head}, model, "pos_embed")
    return split_head(state, arch_kwargs["head"], source)  # generic: the head the encoder was built with


def import_checkpoint(path: str | Path, arch: str, *, dataset: str, name: str | None = None,
                      categories=None, fmt: str | None = None, arch_kwargs: dict | None = None,
                      preset: str | None = None, preprocess: dict | None = None):
    """Read a foreign checkpoint (torchvision / MMAction2 / generic state dict / Hugging Face
    folder) as an Expert, checked by one forward pass with its preprocessing.

    ``categories``: class names (default: the checkpoint's own, else ``class_0..``; their count must
    equal the head's); ``preset``: a named test protocol of the entry (``jedi archs``),
    ``preprocess``: field overrides on top."""
    entry = get_arch(arch)
    kwargs = dict(arch_kwargs or {})
    path = Path(path)
    pre = _base_preprocess(entry, arch, preset)
    if preset:  # the protocol's architecture arguments (TSM's segment count), unless given
        kwargs = {**entry.presets[preset].arch_kwargs, **kwargs}
    if arch == "hf":
        model, ours, pre, own_cats, fmt = _read_hf(path, kwargs)
        num_classes = ours["head.weight"].shape[0]
    else:
        state = read_state_dict(path)
        fmt = fmt or detect_format(state, arch)
        own_cats = None
        if arch == "generic":
            pre = _generic_setup(path, kwargs, pre, preprocess or {})
        if arch == "mmaction_vit":  # sizes from the checkpoint; frames and crop follow the model
            from jedi_deploy.models.zoo.vit import vit_kwargs_from_state

            kwargs = vit_kwargs_from_state(split_mmaction(state)[0], kwargs, str(path))
            pre = replace(pre, num_frames=kwargs["num_frames"], crop=kwargs["img_size"],
                          short_side=kwargs["img_size"] if pre.short_side == pre.crop else pre.short_side)
        probe = build_expert(arch, 1, **kwargs)
        if arch == "generic":
            kwargs["head"] = probe.encoder.head_path  # as found, so the file rebuilds the same model
        ours = convert_state(arch, fmt, state, str(path), kwargs, probe)
        num_classes = ours["head.weight"].shape[0]
        model = build_expert(arch, num_classes, **kwargs)
    load_state_strict(model, ours, str(path))
    model.eval().requires_grad_(False)
    cats = tuple(categories) if categories else (own_cats or tuple(f"class_{i}" for i in range(num_classes)))
    if len(cats) != num_classes:
        raise CheckpointError(f"{path}: the head has {num_classes} classes but {len(cats)} category names were given")
    if preprocess:
        pre = Preprocess.from_dict({**pre.to_dict(), **preprocess})
    if arch == "generic" and kwargs.get("layout", "NCTHW") != pre.layout:
        raise ConfigError(f"generic: --arg layout={kwargs.get('layout')} and preprocess.layout={pre.layout} disagree; "
                          "set one of them")
    check_forward(model, pre, str(path))
    return Expert(name or path.stem, arch, kwargs, dataset, cats, pre, model, path.resolve(),
                  sha256_file(path) if path.is_file() else _folder_digest(path)), fmt


def _base_preprocess(entry, arch: str, preset: str | None) -> Preprocess:
    if not preset:
        return entry.preprocess
    presets = entry.presets
    if preset not in presets:
        raise ConfigError(f"{arch} has no preprocessing preset {preset!r}; it has {sorted(presets) or 'none'}")
    return presets[preset].preprocess


def _generic_setup(path: Path, kwargs: dict, pre: Preprocess, overrides: dict) -> Preprocess:
    """generic: find the factory (also in the current folder and the checkpoint's folder) and record
    where it was; one layout for the encoder and the preprocessing; the model's own processor
    config (``preprocessor_config.json`` beside the checkpoint) for its normalisation and sizes."""
    from jedi_deploy.models.zoo.generic import (
        factory_search,
        module_root,
        resolve_factory,
    )
    from jedi_deploy.models.zoo.hf import preprocess_fields, read_processor

    if not kwargs.get("factory"):
        raise ConfigError("generic needs --arg factory=package.module:callable (a function returning the nn.Module)")
    with factory_search(path.resolve().parent):
        fn = resolve_factory(kwargs["factory"], kwargs.get("factory_path", ""))
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    if module is not None and getattr(module, "__file__", None):
        kwargs.setdefault("factory_path", module_root(module))
    if "layout" in overrides:
        kwargs["layout"] = overrides["layout"]
    layout = kwargs.setdefault("layout", "NCTHW")
    processor = read_processor(path.resolve().parent)
    fields = preprocess_fields(processor, str(path.parent / "preprocessor_config.json")) if processor else {}
    return Preprocess.from_dict({**pre.to_dict(), **fields, "layout": layout})


def _read_hf(path: Path, kwargs: dict):
    """The loaded model itself becomes the expert (no second, randomly initialised copy); its config is
    recorded so :func:`~jedi_deploy.models.registry.load_expert` rebuilds it from the expert file."""
    from jedi_deploy.models.tiny import ExpertModel
    from jedi_deploy.models.zoo.common import HeadlessEncoder, split_head
    from jedi_deploy.models.zoo.generic import find_head
    from jedi_deploy.models.zoo.hf import (
        categories_from_config,
        preprocess_for,
        read_folder,
        stored_config,
    )

    unknown = set(kwargs) - {"head"}
    if unknown:
        raise ConfigError(f"hf: unknown arguments {sorted(unknown)}; the model comes from the folder's config.json")
    net, config, processor = read_folder(path)
    head = kwargs.get("head") or ("classifier" if hasattr(net, "classifier") else find_head(net, str(path)))
    kwargs.update(config=stored_config(config), head=head)
    state = split_head(net.state_dict(), head, str(path))
    encoder = HeadlessEncoder(net, head, "NTCHW")
    model = ExpertModel(encoder, encoder.embed_dim, state["head.weight"].shape[0])
    pre = preprocess_for(config, processor, str(path))
    return model, state, pre, categories_from_config(config, state["head.weight"].shape[0]), "transformers"


def _folder_digest(folder: Path) -> str:
    """sha256 over a model folder's files (names and bytes), the provenance of an imported folder."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def check_forward(model: nn.Module, pre: Preprocess, source: str) -> None:
    """One forward pass on a clip shaped as ``pre`` feeds it: a model that does not take that input
    fails here, naming the preprocessing fields, not later at cache time. Where the encoder can
    put its head back (generic, hf), ``head(encoder(x))`` must equal the whole model's scores."""
    x = torch.rand(1, *pre.input_shape()) * 2 - 1
    shape = f"[1, {pre.num_frames}, 3, {pre.crop}, {pre.crop}]"
    try:
        with torch.inference_mode():
            y = model.head(model.encoder(x))
            whole = model.encoder.whole(x, model.head) if hasattr(model.encoder, "whole") else None
    except JediError as e:
        raise CheckpointError(f"{source}: {e}") from None
    except Exception as e:  # whatever the model raises on the wrong input
        first = str(e).strip().splitlines()[0][:240] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{source}: the model does not run on the input its preprocessing makes ({shape}, layout {pre.layout}: "
            f"preprocess.num_frames={pre.num_frames}, preprocess.crop={pre.crop}): {type(e).__name__}: {first}. "
            "Set the right values with --set num_frames=... --set crop=... (or --set layout=NTCHW)") from None
    if whole is not None and not torch.allclose(y, whole, rtol=1e-4, atol=1e-4):
        raise CheckpointError(f"{source}: head(encoder(x)) differs from the model's own output by "
                              f"{(y - whole).abs().max().item():.3g}: the head is not the model's last layer; "
                              "pass --arg head=ATTRIBUTE of its final linear layer")


def save_imported(expert, out: str | Path, fmt: str) -> Path:
    return save_expert(expert.model, out, name=expert.name, arch=expert.arch, arch_kwargs=expert.arch_kwargs,
                       dataset=expert.dataset, categories=expert.categories, preprocess=expert.preprocess,
                       extra={"source": {"path": str(expert.path), "sha256": expert.sha256, "format": fmt}})

