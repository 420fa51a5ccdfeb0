from __future__ import annotations

from jedi_deploy.contracts.preprocess import Preprocess
from jedi_deploy.models.archs import Preset
from jedi_deploy.models.zoo.common import IMAGENET


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
    "tsn_r50": {f"tsn_imagenet-pretrained-r50_8xb32-1x1x{n}-100e_kinetics400-rgb": Preset(
        Preprocess(25, "segments", 1, 256, 224, crops=10, average="feature", **IMAGENET),
        f"MMAction2 tsn_imagenet-pretrained-r50_8xb32-1x1x{n}-100e_kinetics400-rgb.py test_pipeline: "
        "SampleFrames(1, 1, num_clips=25), Resize(-1, 256), TenCrop(224); TSNHead AvgConsensus over all 250 frames",
        "the consensus over every view runs inside the exported graph (its input holds all 10 crops)")
        for n in (3, 8)},
    "tsm_r50": {f"tsm_imagenet-pretrained-r50_8xb16-1x1x{n}-50e_kinetics400-rgb": Preset(
        Preprocess(n, "segments", 1, 256, 224, crops=10, average="prob", **IMAGENET),
        f"MMAction2 tsm_imagenet-pretrained-r50_8xb16-1x1x{n}-50e_kinetics400-rgb.py test_pipeline: "
        f"SampleFrames(1, 1, num_clips={n}), Resize(-1, 256), TenCrop(224); TSMHead average_clips='prob'",
        arch_kwargs={"num_segments": n}) for n in (8, 16)},
}


def _mmaction_vit(cfg: str) -> Preset:
    return Preset(Preprocess(16, "clip", 4, 224, 224, num_clips=5, crops=3, average="prob", layout="NCTHW", **IMAGENET),
                  f"MMAction2 {cfg}.py test_pipeline: SampleFrames(16, 4, num_clips=5), Resize(-1, 224), ThreeCrop(224); "
                  "TimeSformerHead average_clips='prob'")


#: The paper's experts, as MMAction2 0.x trained them (TSN on ActivityNet with 8 segments; TSM on
#: HMDB51 / UCF101 with 16): their configs' test pipelines. TSM's 16 segments are also its shift width.
PAPER = {
    "tsn_r50": {"tsn_r50_320p_1x1x8_50e_activitynet_video_rgb": Preset(
        Preprocess(25, "segments", 1, 256, 256, crops=3, average="feature", **IMAGENET),
        "MMAction2 0.x tsn_r50_320p_1x1x8_50e_activitynet_video_rgb.py test_pipeline: SampleFrames(1, 1, "
        "num_clips=25), Resize(-1, 256), ThreeCrop(256); TSNHead AvgConsensus over all 75 frames (average_clips=None)",
        "the consensus over every view runs inside the exported graph (its input holds all 3 crops); MMAction2 0.x "
        "read this model's videos as extracted frames (RawFrameDecode): decoding the video instead can differ "
        "where the frame extraction differed")},
    "tsm_r50": {f"tsm_k400_pretrained_r50_1x1x16_25e_{ds}_rgb": Preset(
        Preprocess(16, "segments", 1, 256, 224, average="prob", **IMAGENET),
        f"MMAction2 0.x tsm_k400_pretrained_r50_1x1x16_25e_{ds}_rgb.py test_pipeline: SampleFrames(1, 1, "
        "num_clips=16), Resize(-1, 256), CenterCrop(224); TSMHead average_clips='prob'",
        "MMAction2 0.x read these videos as extracted frames (RawFrameDecode): decoding the video instead can differ "
        "where the frame extraction differed", arch_kwargs={"num_segments": 16}) for ds in ("hmdb51", "ucf101")},
}
for _n, _extra in PAPER.items():
    PRESETS[_n].update(_extra)
PRESETS["mmaction_vit"] = {cfg: _mmaction_vit(cfg) for cfg in (
    "vit-base-p16_videomae-k400-pre_16x4x1_kinetics-400",
    "vit-small-p16_videomaev2-vit-g-dist-k710-pre_16x4x1_kinetics-400",
    "vit-base-p16_videomaev2-vit-g-dist-k710-pre_16x4x1_kinetics-400")}
PRESETS["mmaction_vit"]["test"] = PRESETS["mmaction_vit"]["vit-small-p16_videomaev2-vit-g-dist-k710-pre_16x4x1_kinetics-400"]


for _n, _size in (("swin3d_t", "tiny"), ("swin3d_s", "small"), ("swin3d_b", "base")):
    PRESETS[_n][f"swin-{_size}-p244-w877_in1k-pre_8xb8-amp-32x2x1-30e_kinetics400-rgb"] = _mmaction_swin(_size)
for _n in ("tsn_r50", "tsm_r50"):
    PRESETS[_n]["test"] = next(iter(PRESETS[_n].values()))
