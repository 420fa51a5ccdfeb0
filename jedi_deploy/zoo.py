"""Real expert architectures and the checkpoint formats they come in.

Entries (registered into :mod:`jedi_deploy.archs` when this module is imported, which
:mod:`jedi_deploy.registry` does; nothing heavy is imported until a model is built):

* torchvision video classifiers ``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d``,
  ``mvit_v2_s``, ``swin3d_t``/``swin3d_s``/``swin3d_b``: format ``torchvision`` = the model's
  ``state_dict()`` as torchvision saves it (``.pth`` via ``torch.save`` or ``.safetensors``);
  the Swin entries also read ``mmaction2`` checkpoints of Video Swin (``SwinTransformer3D``
  backbone + ``I3DHead``), mapped onto torchvision's ``SwinTransformer3d``;
* ``tsn_r50`` and ``tsm_r50``: MMAction2's TSN / TSM on a ResNet-50 (torchvision's
  ``resnet50`` per frame, segment consensus = mean), format ``mmaction2``: ``backbone.*`` in
  MMAction2's ConvModule naming (``conv1.conv``/``conv1.bn``, ``layerL.i.convK.conv``,
  ``downsample.conv``/``.bn``; TSM's shifted convs ``layerL.i.conv1.conv.net``) and
  ``cls_head.fc_cls.*``;
* ``generic``: any ``nn.Module`` built by ``package.module:callable`` (kwargs ``factory``,
  ``head`` = attribute path of its final ``nn.Linear``/1x1 conv, found when not given,
  ``factory_kwargs``, ``layout`` ``NCTHW`` or ``NTCHW``, ``factory_path`` = where the factory was
  found), format ``state_dict`` (the module's own keys);
* ``hf``: Hugging Face ``*ForVideoClassification`` models (:mod:`jedi_deploy.hf`).

:data:`PRESETS` names each entry's upstream test protocols (:class:`Preset`). One module, because
the entries, their key mappings and their protocols are one table read together; what is not
per-entry (HF loading, decoding) lives elsewhere.

Every encoder takes ``float32[B, T, 3, H, W]`` (our layout) and returns ``[B, D]``; the head
is an ``nn.Linear`` holding the checkpoint's classifier, so ``head(encoder(x))`` is exactly the
original model's output. Converting a foreign checkpoint file into an expert
(``jedi import-expert``) is :mod:`jedi_deploy.importer`'s job; the key mappings it uses live here.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from pathlib import Path
from dataclasses import dataclass

import torch
from torch import nn

from .archs import ArchEntry, register_arch
from .errors import CheckpointError, ConfigError, InputError
from .models import TemporalShift
from .video import Preprocess

IMAGENET = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))  # MMAction2's data_preprocessor


def _tv_models():
    from .tv_compat import import_torchvision

    import_torchvision()
    import torchvision.models as models
    import torchvision.models.video as video

    return models, video


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part) if not part.isdigit() else module[int(part)]
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, last = path.rpartition(".")
    owner = _get(module, parent) if parent else module
    if last.isdigit():
        owner[int(last)] = value
    else:
        setattr(owner, last, value)


def head_features(head: nn.Module, where: str) -> int:
    if isinstance(head, nn.Linear):
        return head.in_features
    if isinstance(head, (nn.Conv3d, nn.Conv2d, nn.Conv1d)) and all(k == 1 for k in head.kernel_size):
        return head.in_channels
    raise ConfigError(f"{where}: the head must be an nn.Linear or a 1x1 convolution, got {type(head).__name__}")


def logits_of(out, where: str = "the model") -> torch.Tensor:
    """The class scores of a classifier's output: a tensor, a ``ModelOutput`` or dict (its
    ``logits``), or a tuple/list (its first element)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise InputError(f"{where} returned {type(out).__name__}, not a tensor, a ModelOutput/dict with 'logits' "
                     "or a tuple whose first element is a tensor")


class HeadlessEncoder(nn.Module):
    """A classifier with its final linear layer replaced by ``Identity``: ``[B, T, 3, H, W]``
    (permuted to ``NCTHW`` when the network wants it) -> ``[B, D]``. The network may return a
    tensor, a ``ModelOutput``/dict (``logits``) or a tuple (first element): :func:`logits_of`."""

    def __init__(self, net: nn.Module, head_path: str, layout: str = "NCTHW"):
        super().__init__()
        if layout not in ("NCTHW", "NTCHW"):
            raise ConfigError(f"layout must be NCTHW or NTCHW, got {layout!r}")
        original = _get(net, head_path)
        self.embed_dim = head_features(original, head_path)
        self.head_path = head_path
        object.__setattr__(self, "_original_head", original)  # not a submodule: no state, only for whole()
        _set(net, head_path, nn.Identity())
        self.net, self.layout = net, layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "NCTHW":
            x = x.permute(0, 2, 1, 3, 4)
        return logits_of(self.net(x)).flatten(1)

    def whole(self, x: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """The original classifier's scores on ``x``: its last layer put back for one call, holding
        ``head``'s weights (reshaped for a 1x1 convolution)."""
        original, layer = self._original_head, head
        if not isinstance(original, nn.Linear):  # a 1x1 convolution with the head's weights
            layer = type(original)(head.in_features, head.out_features, original.kernel_size,
                                   bias=head.bias is not None)
            with torch.no_grad():
                layer.weight.copy_(head.weight.view_as(layer.weight))
                if head.bias is not None:
                    layer.bias.copy_(head.bias)
        _set(self.net, self.head_path, layer)
        try:
            return logits_of(self.net(x.permute(0, 2, 1, 3, 4) if self.layout == "NCTHW" else x)).flatten(1)
        finally:
            _set(self.net, self.head_path, nn.Identity())


def _head_tensors(state: dict, prefix: str, source: str) -> dict:
    try:
        w, b = state[prefix + "weight"], state[prefix + "bias"]
    except KeyError as e:
        raise CheckpointError(f"{source}: no classifier tensor {e.args[0]!r} in the checkpoint") from None
    return {"head.weight": w.reshape(w.shape[0], -1), "head.bias": b}


def split_head(state: dict, head_path: str, source: str, prefix: str = "encoder.net.") -> dict:
    """A whole classifier's state dict -> ExpertModel's (``encoder.net.*`` + ``head.*``)."""
    hp = head_path + "."
    out = {prefix + k: v for k, v in state.items() if not k.startswith(hp)}
    out.update(_head_tensors(state, hp, source))
    return out


# ------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """A named test protocol: the preprocessing that reproduces ``upstream`` (the config or weights
    whose published accuracy it was measured with), and how our views differ, if they do."""

    preprocess: Preprocess
    upstream: str
    note: str = ""


def _tv_weights(name: str, frames: int, fps: float, clips: int, crop: int, resize: tuple, norm: dict) -> Preset:
    fixed = len(resize) == 2
    pre = Preprocess(frames, "clip", 1, 0 if fixed else resize[0], crop, layout="NCTHW", rules="torchvision",
                     resize=tuple(resize) if fixed else (0, 0), target_fps=fps, num_clips=clips, average="prob",
                     **norm)
    return Preset(pre, f"torchvision {name}: VideoClassification(crop_size={crop}, resize_size={tuple(resize)}), "
                       f"evaluated with frame_rate={fps:g}, clips_per_video={clips}, clip_len={frames}",
                  "softmax averaged over the clips as torchvision's reference evaluation does; a video too short for "
                  "one clip loops (torchvision skips it)")


def _default(preset: Preset, **changes) -> Preprocess:
    """An entry's default preprocessing: its preset's resize, crop and normalisation with one clip,
    centred, at the video's own rate (cheap enough for caching; the preset is the published protocol)."""
    from dataclasses import replace

    return replace(preset.preprocess, **{"num_clips": 1, "crops": 1, "target_fps": 0.0, "average": "score",
                                         **changes})


KINETICS_TV = dict(mean=tuple(255 * m for m in (0.43216, 0.394666, 0.37645)),
                   std=tuple(255 * s for s in (0.22803, 0.22145, 0.216989)))
IMAGENET_TV = dict(mean=tuple(255 * m for m in (0.485, 0.456, 0.406)), std=tuple(255 * s for s in (0.229, 0.224, 0.225)))
MVIT_TV = dict(mean=(0.45 * 255,) * 3, std=(0.225 * 255,) * 3)
#: arch -> its torchvision weights: (weights enum, clip_len, frame_rate, clips_per_video, crop, resize_size, norm),
#: as the weights' transforms and "_docs" (torchvision/models/video/*.py) give them.
TV_WEIGHTS = {
    "r3d_18": ("R3D_18_Weights", 16, 15, 5, 112, (128, 171), KINETICS_TV),
    "mc3_18": ("MC3_18_Weights", 16, 15, 5, 112, (128, 171), KINETICS_TV),
    "r2plus1d_18": ("R2Plus1D_18_Weights", 16, 15, 5, 112, (128, 171), KINETICS_TV),
    "s3d": ("S3D_Weights", 128, 15, 1, 224, (256, 256), KINETICS_TV),
    "mvit_v2_s": ("MViT_V2_S_Weights", 16, 7.5, 5, 224, (256,), MVIT_TV),
    "swin3d_t": ("Swin3D_T_Weights", 32, 15, 12, 224, (256,), IMAGENET_TV),
    "swin3d_s": ("Swin3D_S_Weights", 32, 15, 12, 224, (256,), IMAGENET_TV),
    "swin3d_b": ("Swin3D_B_Weights", 32, 15, 12, 224, (256,), IMAGENET_TV),
}


def _mmaction_swin(size: str, note: str = "") -> Preset:
    cfg = f"swin-{size}-p244-w877_in1k-pre_8xb8-amp-32x2x1-30e_kinetics400-rgb"
    return Preset(Preprocess(32, "clip", 2, 224, 224, num_clips=4, crops=3, average="prob", layout="NCTHW", **IMAGENET),
                  f"MMAction2 {cfg}.py test_pipeline: SampleFrames(32, 2, num_clips=4), Resize(-1, 224), "
                  "ThreeCrop(224); I3DHead average_clips='prob'", note)


#: name -> {preset name -> Preset}; each entry's "test" is an alias of its MMAction2 test config.
PRESETS: dict[str, dict[str, Preset]] = {
    **{n: {f"{w}.KINETICS400_V1": _tv_weights(f"{w}.KINETICS400_V1", *rest)} for n, (w, *rest) in TV_WEIGHTS.items()},
    "tsn_r50": {"tsn_imagenet-pretrained-r50_8xb32-1x1x3-100e_kinetics400-rgb": Preset(
        Preprocess(25, "segments", 1, 256, 224, crops=10, average="feature", **IMAGENET),
        "MMAction2 tsn_imagenet-pretrained-r50_8xb32-1x1x3-100e_kinetics400-rgb.py test_pipeline: "
        "SampleFrames(1, 1, num_clips=25), Resize(-1, 256), TenCrop(224); TSNHead AvgConsensus over all 250 frames",
        "the consensus over every view runs inside the exported graph (its input holds all 10 crops)")},
    "tsm_r50": {"tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_kinetics400-rgb": Preset(
        Preprocess(8, "segments", 1, 256, 224, crops=10, average="prob", **IMAGENET),
        "MMAction2 tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_kinetics400-rgb.py test_pipeline: "
        "SampleFrames(1, 1, num_clips=8), Resize(-1, 256), TenCrop(224); TSMHead average_clips='prob'")},
}
for _n, _size in (("swin3d_t", "tiny"), ("swin3d_s", "small"), ("swin3d_b", "base")):
    PRESETS[_n][f"swin-{_size}-p244-w877_in1k-pre_8xb8-amp-32x2x1-30e_kinetics400-rgb"] = _mmaction_swin(_size)
for _n in ("tsn_r50", "tsm_r50"):
    PRESETS[_n]["test"] = next(iter(PRESETS[_n].values()))


def _tv_default(arch: str, **changes) -> Preprocess:
    return _default(PRESETS[arch][f"{TV_WEIGHTS[arch][0]}.KINETICS400_V1"], **changes)



SWIN_DESC = "(torchvision SwinTransformer3d); reads torchvision and MMAction2 checkpoints"
TV_VIDEO = {
    # name: (head attribute, embed dim, default preprocess, test input T/H, description)
    "r3d_18": ("fc", 512, _tv_default("r3d_18"), (4, 32), "torchvision R3D-18 (3D ResNet): 16 frames, 112 crop"),
    "mc3_18": ("fc", 512, _tv_default("mc3_18"), (4, 32), "torchvision MC3-18 (mixed 3D/2D convolutions)"),
    "r2plus1d_18": ("fc", 512, _tv_default("r2plus1d_18"), (4, 32),
                    "torchvision R(2+1)D-18 (factorised 3D convolutions)"),
    "s3d": ("classifier.1", 1024, _tv_default("s3d", num_frames=32), (16, 224),
            "torchvision S3D (separable 3D Inception); needs >= 16 frames of 224 px"),
    "mvit_v2_s": ("head.1", 768, _tv_default("mvit_v2_s", frame_interval=4),
                  (16, 224), "torchvision MViT-v2-S (multiscale ViT); fixed input 16 x 224 x 224"),
    **{n: ("head", dim, _tv_default(n, frame_interval=2), (8, 64), f"Video Swin-{n[-1].upper()} {SWIN_DESC}")
       for n, dim in (("swin3d_t", 768), ("swin3d_s", 768), ("swin3d_b", 1024))},
}


def torchvision_video_model(name: str, num_classes: int = 400) -> nn.Module:
    """The torchvision model itself, randomly initialised (weights=None: nothing downloads)."""
    _, video = _tv_models()
    return getattr(video, name)(weights=None, num_classes=num_classes)


def build_torchvision_encoder(name: str) -> HeadlessEncoder:
    return HeadlessEncoder(torchvision_video_model(name), TV_VIDEO[name][0])


_SWIN_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.*)$")
_SWIN_DOWN = re.compile(r"^layers\.(\d+)\.downsample\.(.*)$")


def split_mmaction(state: dict) -> tuple[dict, dict]:
    """An MMAction2 recognizer's tensors -> (``backbone.*`` without the prefix, the classifier
    ``cls_head.fc_cls.*`` as ``head.*``); anything else (e.g. data_preprocessor buffers) is dropped."""
    backbone, head = {}, {}
    for key, v in state.items():
        if key.startswith("cls_head.fc_cls."):
            head["head." + key[len("cls_head.fc_cls."):]] = v
        elif key.startswith("backbone."):
            backbone[key[len("backbone."):]] = v
    return backbone, head


def mmaction_swin_to_torchvision(state: dict, source: str) -> dict:
    """MMAction2 Video Swin (``backbone.*`` + ``cls_head.fc_cls.*``) -> torchvision
    ``SwinTransformer3d`` keys: ``layers.i.blocks.j`` -> ``features.2i.j``, ``layers.i.downsample``
    -> ``features.2i+1``, ``mlp.fc1``/``fc2`` -> ``mlp.0``/``mlp.3``, ``norm3`` (1.x) or ``norm``
    (0.x) -> ``norm``, ``cls_head.fc_cls`` -> ``head``."""
    backbone, out = split_mmaction(state)
    for k, v in backbone.items():
        key = "backbone." + k
        m = _SWIN_BLOCK.match(k)
        if m:
            rest = m.group(3).replace("mlp.fc1.", "mlp.0.").replace("mlp.fc2.", "mlp.3.")
            out[f"features.{2 * int(m.group(1))}.{m.group(2)}.{rest}"] = v
        elif (m := _SWIN_DOWN.match(k)):
            out[f"features.{2 * int(m.group(1)) + 1}.{m.group(2)}"] = v
        elif k.startswith("norm3.") or k.startswith("norm."):
            out["norm." + k.split(".", 1)[1]] = v
        elif k.startswith("patch_embed."):
            out[k] = v
        else:
            raise CheckpointError(f"{source}: unexpected Video Swin key {key!r}")
    return out


def _fill_buffers(state: dict, model: nn.Module, pattern: str) -> dict:
    """Add deterministic buffers (e.g. Swin's relative_position_index) a checkpoint may omit."""
    own = model.state_dict()
    for k, v in own.items():
        if pattern in k and k not in state:
            state[k] = v
    return state


# ------------------------------------------------------------------------- MMAction2 TSN/TSM
class ShiftedConv(nn.Module):
    """MMAction2's ``TemporalShift(net=conv)`` wrapper (``shift_place='blockres'``): shift
    1/``shift_div`` of the channels one segment back and another 1/``shift_div`` one forward,
    then the wrapped conv. State keys ``net.*`` as in MMAction2."""

    def __init__(self, net: nn.Module, num_segments: int, shift_div: int):
        super().__init__()
        self.net = net
        self.shift = TemporalShift(num_segments, shift_div)

    def forward(self, x):
        return self.net(self.shift(x))


class SegmentResNet50(nn.Module):
    """TSN (``shift=False``) / TSM (``shift=True``) on torchvision's ResNet-50: every frame
    through the 2D network, features averaged over the segments (``AvgConsensus``). The head
    (``fc_cls``) is linear, so averaging features then the head equals MMAction2's
    per-segment scores averaged."""

    def __init__(self, shift: bool = False, num_segments: int = 8, shift_div: int = 8):
        super().__init__()
        models, _ = _tv_models()
        net = models.resnet50(weights=None)
        net.fc = nn.Identity()
        if shift:
            for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
                for block in layer:
                    block.conv1 = ShiftedConv(block.conv1, num_segments, shift_div)
        self.net, self.shift, self.num_segments, self.embed_dim = net, shift, num_segments, 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        if self.shift and t != self.num_segments:
            raise InputError(f"TSM was built for {self.num_segments} segments but got {t} frames per clip; "
                             "set preprocess.num_frames to num_segments")
        y = self.net(x.reshape(b * t, *x.shape[2:]))
        return y.view(b, t, -1).mean(dim=1)


_RESNET_TOP = {"conv1.conv.": "conv1.", "conv1.bn.": "bn1."}
_BLOCK = re.compile(r"^(layer\d+\.\d+)\.(conv(\d)|downsample)\.(conv|bn)\.(.*)$")


def mmaction_resnet_to_ours(state: dict, source: str, shift: bool) -> dict:
    """MMAction2 TSN/TSM state dict -> ``SegmentResNet50`` + head (``encoder.net.*``, ``head.*``)."""
    backbone, out = split_mmaction(state)
    for k, v in backbone.items():
        key = "backbone." + k
        top = next((p for p in _RESNET_TOP if k.startswith(p)), None)
        if top:
            out["encoder.net." + _RESNET_TOP[top] + k[len(top):]] = v
            continue
        m = _BLOCK.match(k)
        if not m:
            raise CheckpointError(f"{source}: unexpected MMAction2 ResNet key {key!r}")
        block, part, idx, kind, rest = m.groups()
        if part == "downsample":
            name = f"downsample.{0 if kind == 'conv' else 1}"
        elif kind == "bn":
            name = f"bn{idx}"
        else:
            name = f"conv{idx}"
            if idx == "1" and shift:
                if not rest.startswith("net."):
                    raise CheckpointError(f"{source}: {key!r} is not a shifted conv (expected "
                                          "'...conv1.conv.net.weight'); is this a TSN checkpoint? use tsn_r50")
            elif rest.startswith("net."):
                raise CheckpointError(f"{source}: {key!r} is a TSM shifted conv; use tsm_r50")
        out[f"encoder.net.{block}.{name}.{rest}"] = v
    if "head.weight" not in out:
        raise CheckpointError(f"{source}: no classifier 'cls_head.fc_cls.weight' in the checkpoint")
    return out


# ------------------------------------------------------------------------------- generic
#: Folders :func:`resolve_factory` also looks in (besides the recorded ``factory_path``), e.g. the
#: expert file's folder while :func:`jedi_deploy.registry.load_expert` builds it (:func:`factory_search`).
FACTORY_SEARCH: list[str] = []


@contextlib.contextmanager
def factory_search(*folders):
    """Let :func:`resolve_factory` also look in ``folders`` for the duration."""
    added = [str(f) for f in folders if f]
    FACTORY_SEARCH.extend(added)
    try:
        yield
    finally:
        for f in added:
            FACTORY_SEARCH.remove(f)


def _import_from(mod: str, folders: list[str]):
    """Import ``mod`` from the normal path, else from the first of ``folders`` that has it (which then
    stays on ``sys.path``, as a script's folder does)."""
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name is None or mod.split(".")[0] != e.name.split(".")[0]:
            raise  # the module exists but one of ITS imports is missing
    for folder in folders:
        top = Path(folder) / mod.split(".")[0]
        if top.is_dir() or top.with_suffix(".py").is_file():
            sys.path.insert(0, folder)
            importlib.invalidate_caches()
            return importlib.import_module(mod)
    return None


def module_root(module) -> str:
    """The ``sys.path`` folder ``module`` was imported from (recorded as ``factory_path``)."""
    depth = module.__name__.count(".") + (1 if Path(module.__file__).name == "__init__.py" else 0)
    return str(Path(module.__file__).resolve().parents[depth])


def resolve_factory(spec: str, factory_path: str = ""):
    """The callable ``package.module:callable``, imported from the normal path, the recorded
    ``factory_path``, :data:`FACTORY_SEARCH` or the current folder."""
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise ConfigError(f"factory must be 'package.module:callable', got {spec!r}")
    if mod.split(".")[0] == "torchvision":
        _tv_models()  # through the compatibility step (tv_compat)
    folders = [f for f in (factory_path, *FACTORY_SEARCH, os.getcwd()) if f]
    try:
        obj = _import_from(mod, folders)
    except Exception as e:
        raise ConfigError(f"factory {spec!r}: importing {mod!r} failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if obj is None:
        raise ConfigError(f"factory {spec!r}: cannot import {mod!r}; looked on PYTHONPATH and in "
                          f"{', '.join(dict.fromkeys(folders))}. Put its package in one of those folders or "
                          "add its folder to PYTHONPATH")
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"factory {spec!r}: {mod!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"factory {spec!r} is not callable")
    return obj


#: Where classifiers usually keep their final linear layer, tried in order when no head is given.
HEAD_NAMES = ("fc", "classifier", "head", "classifier.1", "head.1", "fc_cls", "cls_head.fc_cls", "classifier.fc")


def find_head(net: nn.Module, where: str) -> str:
    """The attribute path of ``net``'s final linear layer: the first of :data:`HEAD_NAMES` that is an
    ``nn.Linear``/1x1 conv, else the last ``nn.Linear`` in the module tree."""
    for name in HEAD_NAMES:
        try:
            head_features(_get(net, name), name)
            return name
        except (AttributeError, IndexError, TypeError, ConfigError):
            continue
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{where}: the model has no nn.Linear to use as the head; pass --arg head=ATTRIBUTE")
    return linears[-1]


def build_generic_encoder(factory: str = "", head: str = "", factory_kwargs: dict | None = None,
                          layout: str = "NCTHW", factory_path: str = "") -> HeadlessEncoder:
    if layout not in ("NCTHW", "NTCHW"):
        raise ConfigError(f"layout must be NCTHW or NTCHW, got {layout!r}")
    net = resolve_factory(factory, factory_path)(**(factory_kwargs or {}))
    if not isinstance(net, nn.Module):
        raise ConfigError(f"factory {factory!r} returned {type(net).__name__}, not an nn.Module")
    head = head or find_head(net, factory)
    try:
        _get(net, head)
    except (AttributeError, IndexError, TypeError):
        linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        raise ConfigError(f"{factory}: the model has no head attribute {head!r}; its linear layers: "
                          f"{linears[-5:] or 'none'}") from None
    return HeadlessEncoder(net, head, layout)


# ------------------------------------------------------------------------- registration
def _register() -> None:
    for name, (head, dim, pre, (t, s), desc) in TV_VIDEO.items():
        formats = ("jedi-safetensors", "torchvision") + (("mmaction2",) if name.startswith("swin3d") else ())
        register_arch(ArchEntry(name, "torchvision-video", lambda _n=name: build_torchvision_encoder(_n), {}, pre,
                                desc, formats, extra={"head": head, "embed_dim": dim, "test_input": (t, 3, s, s),
                                                      "presets": PRESETS[name]}))
    segment_default = Preprocess(8, "segments", 1, 256, 224, **IMAGENET)
    register_arch(ArchEntry(
        "tsn_r50", "mmaction2", lambda: SegmentResNet50(shift=False), {}, segment_default,
        "TSN on ResNet-50 (MMAction2 checkpoints); presets: the MMAction2 test config (25 segments x 10 crops, "
        "consensus before the classifier)",
        ("jedi-safetensors", "mmaction2"), extra={"embed_dim": 2048, "test_input": (3, 3, 32, 32),
                                                  "presets": PRESETS["tsn_r50"]}))
    register_arch(ArchEntry(
        "tsm_r50", "mmaction2", lambda num_segments=8, shift_div=8: SegmentResNet50(True, num_segments, shift_div),
        {"num_segments": 8, "shift_div": 8}, segment_default,
        "TSM on ResNet-50 (temporal shift 1/8 in each block, MMAction2 checkpoints); presets: the MMAction2 test "
        "config (8 segments x 10 crops, prob averaging)",
        ("jedi-safetensors", "mmaction2"), extra={"embed_dim": 2048, "test_input": (8, 3, 32, 32),
                                                  "presets": PRESETS["tsm_r50"]}))
    register_arch(ArchEntry(
        "generic", "generic", build_generic_encoder,
        {"factory": "", "head": "", "factory_kwargs": {}, "layout": "NCTHW", "factory_path": ""},
        Preprocess(16, "clip", 1, 128, 112, layout="NCTHW", **IMAGENET),
        "any nn.Module from 'package.module:callable' (head: its final linear layer, found or --arg head=); "
        "state_dict checkpoints",
        ("jedi-safetensors", "state_dict"),
        extra={"test_input": (4, 3, 32, 32), "test_kwargs": {"factory": "torchvision.models.video:mc3_18"}}))
    from .hf import build_hf_encoder

    register_arch(ArchEntry(
        "hf", "transformers", build_hf_encoder, {"config": {}, "head": "classifier"},
        Preprocess(16, "clip", 4, 224, 224, layout="NTCHW", rules="transformers", **IMAGENET),
        "Hugging Face *ForVideoClassification (VideoMAE, TimeSformer, ViViT, ...) from a local save_pretrained "
        "folder; preprocessing from its processor config",
        ("jedi-safetensors", "transformers"),
        extra={"test_input": (4, 3, 32, 32), "test_kwargs": {"config": {
            "model_type": "videomae", "architectures": ["VideoMAEForVideoClassification"], "hidden_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32,
            "patch_size": 8, "num_frames": 4, "tubelet_size": 2}}}))


_register()
