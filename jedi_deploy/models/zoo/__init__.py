"""Real expert architectures and the checkpoint formats they come in.

Entries (registered into :mod:`jedi_deploy.models.archs` when this package is imported, which
:mod:`jedi_deploy.models.registry` does; nothing heavy is imported until a model is built):

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
* ``mmaction_vit``: MMAction2's ``VisionTransformer`` (VideoMAE / VideoMAE V2 checkpoints, the
  distilled ViT-S/B included; :mod:`jedi_deploy.models.zoo.vit`), format ``mmaction2``, its sizes
  read from the checkpoint's shapes;
* ``generic``: any ``nn.Module`` built by ``package.module:callable`` (kwargs ``factory``,
  ``head`` = attribute path of its final ``nn.Linear``/1x1 conv, found when not given,
  ``factory_kwargs``, ``layout`` ``NCTHW`` or ``NTCHW``, ``factory_path`` = where the factory was
  found), format ``state_dict`` (the module's own keys);
* ``hf``: Hugging Face ``*ForVideoClassification`` models (:mod:`jedi_deploy.models.zoo.hf`).

:data:`PRESETS` names each entry's upstream test protocols (:class:`Preset`). One module, because
the entries, their key mappings and their protocols are one table read together; what is not
per-entry (HF loading, decoding) lives elsewhere.

Every encoder takes ``float32[B, T, 3, H, W]`` (our layout) and returns ``[B, D]``; the head
is an ``nn.Linear`` holding the checkpoint's classifier, so ``head(encoder(x))`` is exactly the
original model's output. Converting a foreign checkpoint file into an expert
(``jedi import-expert``) is :mod:`jedi_deploy.models.importer`'s job; the key mappings it uses live here.
"""
from __future__ import annotations

from ...contracts.preprocess import Preprocess
from ..archs import ArchEntry, register_arch
from .common import IMAGENET
from .generic import build_generic_encoder
from .hf import build_hf_encoder
from .mmaction import SegmentResNet50
from .presets import PRESETS
from .torchvision import TV_VIDEO, build_torchvision_encoder
from .vit import MMActionViT


# ------------------------------------------------------------------------- registration
def _register() -> None:
    for name, (head, dim, pre, (t, s), desc) in TV_VIDEO.items():
        formats = ("jedi-safetensors", "torchvision") + (("mmaction2",) if name.startswith("swin3d") else ())
        register_arch(ArchEntry(name, "torchvision-video", lambda _n=name: build_torchvision_encoder(_n), {}, pre,
                                desc, formats, extra={"head": head, "embed_dim": dim, "test_input": (t, 3, s, s)},
                                presets=PRESETS[name]))
    segment_default = Preprocess(8, "segments", 1, 256, 224, **IMAGENET)
    register_arch(ArchEntry(
        "tsn_r50", "mmaction2", lambda: SegmentResNet50(shift=False), {}, segment_default,
        "TSN on ResNet-50 (MMAction2 checkpoints); presets: the MMAction2 test config (25 segments x 10 crops, "
        "consensus before the classifier)",
        ("jedi-safetensors", "mmaction2"), extra={"embed_dim": 2048, "test_input": (3, 3, 32, 32)},
        presets=PRESETS["tsn_r50"]))
    register_arch(ArchEntry(
        "tsm_r50", "mmaction2", lambda num_segments=8, shift_div=8: SegmentResNet50(True, num_segments, shift_div),
        {"num_segments": 8, "shift_div": 8}, segment_default,
        "TSM on ResNet-50 (temporal shift 1/8 in each block, MMAction2 checkpoints); presets: the MMAction2 test "
        "config (8 segments x 10 crops, prob averaging)",
        ("jedi-safetensors", "mmaction2"), extra={"embed_dim": 2048, "test_input": (8, 3, 32, 32)},
        presets=PRESETS["tsm_r50"]))
    vit = dict(img_size=224, patch_size=16, embed_dims=768, depth=12, num_heads=0, mlp_dims=0, qkv_bias=True,
               num_frames=16, tubelet_size=2, use_mean_pooling=True, layer_scale=False, norm_eps=1e-6)
    register_arch(ArchEntry(
        "mmaction_vit", "mmaction2", MMActionViT, vit, Preprocess(16, "clip", 4, 224, 224, layout="NCTHW", **IMAGENET),
        "MMAction2 VisionTransformer: VideoMAE / VideoMAE V2 (distilled ViT-S/B) checkpoints, sizes read from the "
        "checkpoint (--arg num_heads=N when heads are not 64 wide); presets: the MMAction2 test configs "
        "(16x4x1, 5 clips x 3 crops, prob)",
        ("jedi-safetensors", "mmaction2"),
        extra={"embed_dim": 768, "test_input": (4, 3, 32, 32), "test_kwargs": dict(
            img_size=32, patch_size=8, embed_dims=32, depth=1, num_heads=2, num_frames=4)},
        presets=PRESETS["mmaction_vit"]))
    register_arch(ArchEntry(
        "generic", "generic", build_generic_encoder,
        {"factory": "", "head": "", "factory_kwargs": {}, "layout": "NCTHW", "factory_path": ""},
        Preprocess(16, "clip", 1, 128, 112, layout="NCTHW", **IMAGENET),
        "any nn.Module from 'package.module:callable' (head: its final linear layer, found or --arg head=); "
        "state_dict checkpoints",
        ("jedi-safetensors", "state_dict"),
        extra={"test_input": (4, 3, 32, 32), "test_kwargs": {"factory": "torchvision.models.video:mc3_18"}}))
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
