"""MMAction2-style checkpoints made from torchvision models: the key layouts MMAction2 writes."""
from __future__ import annotations


def _mmaction_swin_keys(tv_state: dict, depths) -> dict:
    """torchvision SwinTransformer3d keys -> MMAction2 1.x SwinTransformer3D + I3DHead names."""
    out = {}
    for k, v in tv_state.items():
        parts = k.split(".")
        if parts[0] == "features":
            stage, rest = int(parts[1]), parts[2:]
            if stage % 2 == 0:
                name = f"backbone.layers.{stage // 2}.blocks.{rest[0]}." + ".".join(rest[1:])
                name = name.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
            else:
                name = f"backbone.layers.{stage // 2}.downsample." + ".".join(rest)
        elif parts[0] == "norm":
            name = "backbone.norm3." + parts[1]
        elif parts[0] == "head":
            name = "cls_head.fc_cls." + parts[1]
        else:
            name = "backbone." + k
        out[name] = v
    return out


def _mmaction_resnet_keys(tv_state: dict, shift: bool) -> dict:
    """torchvision resnet50 keys -> MMAction2 ResNet(TSM) ConvModule names + TSNHead fc_cls."""
    out = {}
    for k, v in tv_state.items():
        p = k.split(".")
        if p[0] == "fc":
            out["cls_head.fc_cls." + p[1]] = v
        elif p[0] == "conv1":
            out["backbone.conv1.conv." + p[1]] = v
        elif p[0] == "bn1":
            out["backbone.conv1.bn." + p[1]] = v
        else:
            block = f"backbone.{p[0]}.{p[1]}"
            if p[2] == "downsample":
                out[f"{block}.downsample.{'conv' if p[3] == '0' else 'bn'}.{p[4]}"] = v
            elif p[2].startswith("conv"):
                net = ".net" if shift and p[2] == "conv1" else ""
                out[f"{block}.{p[2]}.conv{net}.{p[3]}"] = v
            else:
                out[f"{block}.conv{p[2][2:]}.bn.{p[3]}"] = v
    return out
