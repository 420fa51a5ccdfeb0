"""Real architectures from their upstream checkpoint formats: random init -> save exactly as
torchvision / MMAction2 name things -> import -> identical outputs (and encoder + head == model)."""
import subprocess
import sys

import pytest
import torch
from torch import nn

from jedi_deploy.contracts.errors import CheckpointError, ConfigError
from jedi_deploy.models.archs import ARCHS
from jedi_deploy.models.importer import import_checkpoint, save_imported
from jedi_deploy.models.registry import load_expert
from jedi_deploy.models.tv_compat import import_torchvision
from jedi_deploy.models.zoo.torchvision import TV_VIDEO, torchvision_video_model
from support.checkpoints import _mmaction_resnet_keys, _mmaction_swin_keys

torchvision = import_torchvision()


def ours(expert, x_ntchw):
    with torch.no_grad():
        full = expert.model(x_ntchw)
        torch.testing.assert_close(expert.head(expert.encoder(x_ntchw)), full, rtol=0, atol=0)
    return full


def test_compat_step_imports_torchvision_in_a_fresh_process():
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from jedi_deploy.models.tv_compat import import_torchvision, compiled_ops_available\n"
            "import importlib.util, subprocess, sys\n"
            "plain = subprocess.run([sys.executable, '-c', 'import torchvision'], capture_output=True, text=True)\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    tv = import_torchvision()\n"
            "from torchvision.models.video import r3d_18\n"
            "print('plain-ok' if plain.returncode == 0 else 'plain-broken', compiled_ops_available(),\n"
            "      any('compiled ops' in str(x.message) for x in w))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    plain, ops, warned = out.stdout.split()
    if plain == "plain-broken":  # this machine: CPU torch + CUDA torchvision wheel
        assert ops == "False" and warned == "True"
    else:  # a working torchvision is left alone
        assert ops == "True" and warned == "False"


@pytest.mark.parametrize("arch", sorted(TV_VIDEO))
def test_torchvision_checkpoint_round_trip(arch, tmp_path):
    torch.manual_seed(0)
    tv = torchvision_video_model(arch, num_classes=7).eval()
    path = tmp_path / f"{arch}.pth"
    torch.save(tv.state_dict(), path)  # exactly as torchvision users save
    t, _, s, _ = ARCHS[arch].extra["test_input"]
    small = {"num_frames": t, "crop": s, "short_side": s, "resize": [0, 0]}  # the import's forward check, at test size
    expert, fmt = import_checkpoint(path, arch, dataset="k", categories=[f"c{i}" for i in range(7)], preprocess=small)
    assert fmt == "torchvision" and expert.num_classes == 7 and expert.embed_dim == TV_VIDEO[arch][1]
    x = torch.randn(1, t, 3, s, s)
    with torch.no_grad():
        want = tv(x.permute(0, 2, 1, 3, 4))
    torch.testing.assert_close(ours(expert, x), want, rtol=1e-5, atol=1e-5)
    saved = save_imported(expert, tmp_path / "e.safetensors", fmt)  # our format keeps the outputs
    with torch.no_grad():
        torch.testing.assert_close(load_expert(saved).model(x), want, rtol=1e-5, atol=1e-5)


def test_mmaction2_video_swin_checkpoint(tmp_path):
    torch.manual_seed(0)
    tv = torchvision_video_model("swin3d_t", num_classes=5).eval()
    state = _mmaction_swin_keys(tv.state_dict(), [2, 2, 6, 2])
    for key in ("backbone.patch_embed.proj.weight", "backbone.layers.0.blocks.1.attn.relative_position_bias_table",
                "backbone.layers.0.blocks.0.mlp.fc1.weight", "backbone.layers.2.downsample.reduction.weight",
                "backbone.layers.3.blocks.1.mlp.fc2.bias", "backbone.norm3.weight", "cls_head.fc_cls.weight"):
        assert key in state  # MMAction2's own names
    torch.save({"meta": {"mmaction_version": "1.2.0"}, "state_dict": state}, tmp_path / "swin.pth")
    expert, fmt = import_checkpoint(tmp_path / "swin.pth", "swin3d_t", dataset="k",
                                    preprocess={"num_frames": 8, "crop": 64, "short_side": 64})
    assert fmt == "mmaction2"
    x = torch.randn(1, 8, 3, 64, 64)
    with torch.no_grad():
        want = tv(x.permute(0, 2, 1, 3, 4))
    torch.testing.assert_close(ours(expert, x), want, rtol=1e-5, atol=1e-5)


def _shift(x, segments, div=8):
    """MMAction2's TemporalShift.shift, written out independently (x: [N*T, C, H, W])."""
    nt, c, h, w = x.shape
    x = x.view(nt // segments, segments, c, h * w)
    fold = c // div
    left = torch.cat([x[:, 1:, :fold], torch.zeros_like(x[:, :1, :fold])], 1)
    mid = torch.cat([torch.zeros_like(x[:, :1, fold:2 * fold]), x[:, :-1, fold:2 * fold]], 1)
    return torch.cat([left, mid, x[:, :, 2 * fold:]], 2).view(nt, c, h, w)


@pytest.mark.parametrize("arch", ["tsn_r50", "tsm_r50"])
def test_mmaction2_tsn_tsm_checkpoints(arch, tmp_path):
    torch.manual_seed(0)
    shift = arch == "tsm_r50"
    net = torchvision.models.resnet50(weights=None, num_classes=6).eval()
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = _mmaction_resnet_keys(net.state_dict(), shift)
    assert "backbone.conv1.conv.weight" in state and "backbone.layer1.0.downsample.conv.weight" in state
    assert ("backbone.layer1.0.conv1.conv.net.weight" in state) == shift
    torch.save({"state_dict": state}, tmp_path / f"{arch}.pth")
    expert, fmt = import_checkpoint(tmp_path / f"{arch}.pth", arch, dataset="ucf")
    assert fmt == "mmaction2" and expert.num_classes == 6
    t = ARCHS[arch].extra["test_input"][0]
    x = torch.randn(2, t, 3, 32, 32)
    hooks = []
    if shift:  # reference: shift the residual branch's input of every bottleneck (blockres)
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            for block in layer:
                hooks.append(block.conv1.register_forward_pre_hook(lambda m, a: (_shift(a[0], t),)))
    with torch.no_grad():
        frames = net(x.reshape(2 * t, 3, 32, 32)).view(2, t, -1)
        want = frames.mean(dim=1)  # consensus of per-segment scores
    for h in hooks:
        h.remove()
    torch.testing.assert_close(ours(expert, x), want, rtol=1e-4, atol=1e-5)


def test_wrong_family_and_bad_files_are_clear_errors(tmp_path):
    net = torchvision.models.resnet50(weights=None, num_classes=3)
    torch.save({"state_dict": _mmaction_resnet_keys(net.state_dict(), shift=False)}, tmp_path / "tsn.pth")
    with pytest.raises(CheckpointError, match="tsn_r50"):
        import_checkpoint(tmp_path / "tsn.pth", "tsm_r50", dataset="d")
    with pytest.raises(CheckpointError, match="reads formats"):
        import_checkpoint(tmp_path / "tsn.pth", "r3d_18", dataset="d")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        import_checkpoint(tmp_path / "junk.pth", "r3d_18", dataset="d")
    torch.save(torchvision_video_model("mc3_18", 4).state_dict(), tmp_path / "mc3.pth")
    with pytest.raises(CheckpointError, match="4 classes but 2"):
        import_checkpoint(tmp_path / "mc3.pth", "mc3_18", dataset="d", categories=["a", "b"])
    with pytest.raises(ConfigError, match="preset"):
        import_checkpoint(tmp_path / "mc3.pth", "mc3_18", dataset="d", preset="test")


def test_generic_entry_wraps_any_module(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.video.mc3_18(num_classes=3).eval()
    torch.save(tv.state_dict(), tmp_path / "m.pth")
    kw = {"factory": "torchvision.models.video:mc3_18", "head": "fc", "factory_kwargs": {}, "layout": "NCTHW"}
    expert, fmt = import_checkpoint(tmp_path / "m.pth", "generic", dataset="d", fmt="state_dict", arch_kwargs=kw)
    x = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        want = tv(x.permute(0, 2, 1, 3, 4))
    torch.testing.assert_close(ours(expert, x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="package.module:callable"):
        import_checkpoint(tmp_path / "m.pth", "generic", dataset="d", fmt="state_dict", arch_kwargs={"factory": "x"})
    with pytest.raises(ConfigError, match="no head attribute"):
        import_checkpoint(tmp_path / "m.pth", "generic", dataset="d", fmt="state_dict",
                          arch_kwargs={**kw, "head": "classifier"})


# ---------------------------------------------------------------------- MMAction2 ViT (VideoMAE)
def _vit_checkpoint(path, classes=5, **kwargs):
    """An MMAction2-named VideoMAE checkpoint of a tiny ViT (MMAction2's own class builds these in
    tests/app/test_upstream_scores.py; here our module's keys, which are MMAction2's)."""
    from jedi_deploy.models.zoo.vit import MMActionViT

    torch.manual_seed(0)
    net = MMActionViT(**{**dict(img_size=32, patch_size=8, embed_dims=32, depth=2, num_heads=2, num_frames=4),
                         **kwargs}).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # q/v biases, layer scales: not their initial values
    state = {"backbone." + k: v for k, v in net.state_dict().items()}
    state.update({"cls_head.fc_cls.weight": torch.randn(classes, 32), "cls_head.fc_cls.bias": torch.randn(classes)})
    torch.save({"state_dict": state, "meta": {}}, path)
    return net, state


@pytest.mark.parametrize("variant", [{}, {"layer_scale": True, "use_mean_pooling": False, "qkv_bias": False}])
def test_mmaction_vit_reads_its_sizes_from_the_checkpoint(variant, tmp_path):
    net, state = _vit_checkpoint(tmp_path / "vit.pth", **variant)
    expert, fmt = import_checkpoint(tmp_path / "vit.pth", "mmaction_vit", dataset="k", arch_kwargs={"img_size": 32,
                                                                                                      "num_heads": 2})
    assert fmt == "mmaction2"
    kw = expert.arch_kwargs
    assert (kw["embed_dims"], kw["depth"], kw["patch_size"], kw["tubelet_size"], kw["num_frames"]) == (32, 2, 8, 2, 4)
    assert kw["layer_scale"] == variant.get("layer_scale", False) and kw["qkv_bias"] == variant.get("qkv_bias", True)
    pre = expert.preprocess
    assert (pre.num_frames, pre.crop, pre.short_side, pre.layout) == (4, 32, 32, "NCTHW")
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        want = net(x) @ state["cls_head.fc_cls.weight"].T + state["cls_head.fc_cls.bias"]
    torch.testing.assert_close(ours(expert, x), want, rtol=1e-5, atol=1e-5)
    again = load_expert(save_imported(expert, tmp_path / "e.safetensors", fmt))  # rebuilt from the file alone
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), want, rtol=1e-5, atol=1e-5)


def test_mmaction_vit_errors_name_what_to_pass(tmp_path):
    _vit_checkpoint(tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="img_size"):  # 224 px does not fit the 4 x 16-token table
        import_checkpoint(tmp_path / "vit.pth", "mmaction_vit", dataset="k", arch_kwargs={"num_heads": 2})
    with pytest.raises(ConfigError, match="num_heads"):
        import_checkpoint(tmp_path / "vit.pth", "mmaction_vit", dataset="k", arch_kwargs={"img_size": 32,
                                                                                          "num_heads": 3})
    with pytest.raises(ConfigError, match="unknown arguments"):
        import_checkpoint(tmp_path / "vit.pth", "mmaction_vit", dataset="k", arch_kwargs={"img_size": 32, "depth": 3})
    state = torch.load(tmp_path / "vit.pth", weights_only=True)["state_dict"]
    del state["backbone.patch_embed.projection.weight"]
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="VisionTransformer"):
        import_checkpoint(tmp_path / "bad.pth", "mmaction_vit", dataset="k", arch_kwargs={"img_size": 32})


def test_a_preset_sets_the_architecture_its_protocol_needs(tmp_path):
    """The paper's TSM (MMAction2 0.x, 16 segments): the preset builds the 16-segment shift too."""
    from support.checkpoints import _mmaction_resnet_keys

    net = torchvision.models.resnet50(weights=None, num_classes=4)
    torch.save({"state_dict": _mmaction_resnet_keys(net.state_dict(), True)}, tmp_path / "tsm.pth")
    expert, _ = import_checkpoint(tmp_path / "tsm.pth", "tsm_r50", dataset="hmdb51",
                                  preset="tsm_k400_pretrained_r50_1x1x16_25e_hmdb51_rgb", preprocess={"crop": 32,
                                                                                                      "short_side": 32})
    assert expert.arch_kwargs["num_segments"] == 16 and expert.preprocess.num_frames == 16
    assert expert.model.encoder.num_segments == 16
