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
  ``head`` = attribute path of its final ``nn.Linear``/1x1 conv, ``factory_kwargs``,
  ``layout`` ``NCTHW`` or ``NTCHW``), format ``state_dict`` (the module's own keys).

Every encoder takes ``float32[B, T, 3, H, W]`` (our layout) and returns ``[B, D]``; the head
is an ``nn.Linear`` holding the checkpoint's classifier, so ``head(encoder(x))`` is exactly the
original model's output. Converting a foreign checkpoint file into an expert
(``jedi import-expert``) is :mod:`jedi_deploy.importer`'s job; the key mappings it uses live here.
"""
from __future__ import annotations

import importlib
import re

import torch
from torch import nn

from .archs import ArchEntry, register_arch
from .errors import CheckpointError, ConfigError, InputError
from .models import TemporalShift
from .video import Preprocess

IMAGENET = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
KINETICS_TV = dict(mean=(110.2008, 100.63983, 95.99475), std=(58.14765, 56.46975, 55.332195))  # (0.43216, ...)*255


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


class HeadlessEncoder(nn.Module):
    """A classifier with its final linear layer replaced by ``Identity``: ``[B, T, 3, H, W]``
    (permuted to ``NCTHW`` when the network wants it) -> ``[B, D]``."""

    def __init__(self, net: nn.Module, head_path: str, layout: str = "NCTHW"):
        super().__init__()
        self.embed_dim = head_features(_get(net, head_path), head_path)
        _set(net, head_path, nn.Identity())
        self.net, self.layout = net, layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "NCTHW":
            x = x.permute(0, 2, 1, 3, 4)
        return self.net(x).flatten(1)


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


# ----------------------------------------------------------------------------- torchvision
RESNET3D = Preprocess(16, "clip", 1, 128, 112, **KINETICS_TV)  # torchvision's Kinetics-400 recipe
SWIN = Preprocess(32, "clip", 2, 224, 224, **IMAGENET)  # MMAction2's Video Swin test clip
SWIN_DESC = "(torchvision SwinTransformer3d); reads torchvision and MMAction2 checkpoints"
TV_VIDEO = {
    # name: (head attribute, embed dim, preprocess, test input T/H, description)
    "r3d_18": ("fc", 512, RESNET3D, (4, 32), "torchvision R3D-18 (3D ResNet): 16 frames, 112 crop"),
    "mc3_18": ("fc", 512, RESNET3D, (4, 32), "torchvision MC3-18 (mixed 3D/2D convolutions)"),
    "r2plus1d_18": ("fc", 512, RESNET3D, (4, 32), "torchvision R(2+1)D-18 (factorised 3D convolutions)"),
    "s3d": ("classifier.1", 1024, Preprocess(32, "clip", 1, 256, 224, **KINETICS_TV), (16, 224),
            "torchvision S3D (separable 3D Inception); needs >= 16 frames of 224 px"),
    "mvit_v2_s": ("head.1", 768, Preprocess(16, "clip", 4, 256, 224, mean=(114.75,) * 3, std=(57.375,) * 3),
                  (16, 224), "torchvision MViT-v2-S (multiscale ViT); fixed input 16 x 224 x 224"),
    "swin3d_t": ("head", 768, SWIN, (8, 64), f"Video Swin-T {SWIN_DESC}"),
    "swin3d_s": ("head", 768, SWIN, (8, 64), f"Video Swin-S {SWIN_DESC}"),
    "swin3d_b": ("head", 1024, SWIN, (8, 64), f"Video Swin-B {SWIN_DESC}"),
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
def resolve_factory(spec: str):
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise ConfigError(f"factory must be 'package.module:callable', got {spec!r}")
    if mod.split(".")[0] == "torchvision":
        _tv_models()  # through the compatibility step (tv_compat)
    try:
        obj = importlib.import_module(mod)
    except ImportError as e:
        raise ConfigError(f"factory {spec!r}: cannot import {mod!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"factory {spec!r}: {mod!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"factory {spec!r} is not callable")
    return obj


def build_generic_encoder(factory: str = "", head: str = "fc", factory_kwargs: dict | None = None,
                          layout: str = "NCTHW") -> HeadlessEncoder:
    if layout not in ("NCTHW", "NTCHW"):
        raise ConfigError(f"layout must be NCTHW or NTCHW, got {layout!r}")
    net = resolve_factory(factory)(**(factory_kwargs or {}))
    if not isinstance(net, nn.Module):
        raise ConfigError(f"factory {factory!r} returned {type(net).__name__}, not an nn.Module")
    try:
        _get(net, head)
    except (AttributeError, IndexError, TypeError):
        raise ConfigError(f"{factory}: the model has no head attribute {head!r}") from None
    return HeadlessEncoder(net, head, layout)


# ------------------------------------------------------------------------- registration
def _register() -> None:
    for name, (head, dim, pre, (t, s), desc) in TV_VIDEO.items():
        formats = ("jedi-safetensors", "torchvision") + (("mmaction2",) if name.startswith("swin3d") else ())
        register_arch(ArchEntry(name, "torchvision-video", lambda _n=name: build_torchvision_encoder(_n), {}, pre,
                                desc, formats, extra={"head": head, "embed_dim": dim, "test_input": (t, 3, s, s)}))
    tsn_test = Preprocess(25, "segments", 1, 256, 224, crops=10, average="prob", **IMAGENET)
    tsm_test = Preprocess(8, "segments", 1, 256, 224, crops=3, num_clips=2, average="prob", **IMAGENET)
    register_arch(ArchEntry(
        "tsn_r50", "mmaction2", lambda: SegmentResNet50(shift=False), {},
        Preprocess(8, "segments", 1, 256, 224, **IMAGENET),
        "TSN on ResNet-50 (MMAction2 checkpoints); test preset: 25 segments x 10 crops, prob averaging",
        ("jedi-safetensors", "mmaction2"), extra={"embed_dim": 2048, "test_input": (3, 3, 32, 32),
                                                  "presets": {"test": tsn_test}}))
    register_arch(ArchEntry(
        "tsm_r50", "mmaction2", lambda num_segments=8, shift_div=8: SegmentResNet50(True, num_segments, shift_div),
        {"num_segments": 8, "shift_div": 8}, Preprocess(8, "segments", 1, 256, 224, **IMAGENET),
        "TSM on ResNet-50 (temporal shift 1/8 in each block, MMAction2 checkpoints); test preset: "
        "8 segments x 2 clips x 3 crops, prob averaging",
        ("jedi-safetensors", "mmaction2"), extra={"embed_dim": 2048, "test_input": (8, 3, 32, 32),
                                                  "presets": {"test": tsm_test}}))
    register_arch(ArchEntry(
        "generic", "generic", build_generic_encoder,
        {"factory": "", "head": "fc", "factory_kwargs": {}, "layout": "NCTHW"},
        Preprocess(16, "clip", 1, 128, 112, **IMAGENET),
        "any nn.Module from 'package.module:callable' (+ its head attribute); state_dict checkpoints",
        ("jedi-safetensors", "state_dict"),
        extra={"test_input": (4, 3, 32, 32), "test_kwargs": {"factory": "torchvision.models.video:mc3_18"}}))


_register()
