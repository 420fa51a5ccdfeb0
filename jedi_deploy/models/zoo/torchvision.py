from __future__ import annotations

from torch import nn

from jedi_deploy.contracts.preprocess import Preprocess
from jedi_deploy.models.zoo.common import HeadlessEncoder, _tv_models
from jedi_deploy.models.zoo.presets import PRESETS, TV_WEIGHTS, _default


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
