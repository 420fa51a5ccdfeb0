from __future__ import annotations

import re

import torch
from torch import nn

from jedi_deploy.contracts.errors import CheckpointError, InputError
from jedi_deploy.models.tiny import TemporalShift
from jedi_deploy.models.zoo.common import _tv_models

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
