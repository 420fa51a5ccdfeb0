"""Test-time protocols equal their upstreams: MMAction2 1.x's SampleFrames / Resize / crops, torchvision's
VideoClips + UniformClipSampler + VideoClassification, transformers' resize and crop.

The MMAction2 references below are independent ports of its formulas (written from its source,
not calling ours); torchvision and transformers are called directly where they are installed.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from jedi_deploy.contracts.errors import ConfigError
from jedi_deploy.contracts.preprocess import (
    Preprocess,
    clip_indices,
    crop_offsets,
    crop_views,
    resize_shape,
)
from jedi_deploy.models.zoo.presets import PRESETS


# ------------------------------------------------------------------ MMAction2 1.x, ported
def mm_sample_frames(total, clip_len, frame_interval=1, num_clips=1, twice_sample=False, target_fps=None,
                     avg_fps=None, out_of_bound="loop"):
    """MMAction2 1.2.0 SampleFrames(test_mode=True).transform, frame by frame, start_index 0."""
    ratio = 1.0 if (target_fps is None or not avg_fps) else avg_fps / target_fps
    if target_fps is not None:
        ori = max(1.0, clip_len * frame_interval * ratio)
    else:
        ori = (clip_len - 1) * frame_interval + 1
    if clip_len == 1:
        avg = total / float(num_clips)
        base = [i * avg for i in range(num_clips)]
        offsets = [b + avg / 2.0 for b in base] + (base if twice_sample else [])
    else:
        max_off = max(total - ori, 0)
        n = num_clips * 2 if twice_sample else num_clips
        if n > 1:
            between = max_off / float(num_clips - 1)
            if target_fps is not None:
                offsets = [i * math.floor(between) for i in range(n)]
            else:
                offsets = [float(np.round(i * between)) for i in range(n)]
        else:
            offsets = [max_off // 2]
    rows = []
    for off in offsets:
        if target_fps:
            steps = [int(v) for v in np.linspace(0, ori - 1, clip_len)]
        else:
            steps = [j * frame_interval for j in range(clip_len)]
        rows.append([off + s for s in steps])
    out = []
    for row in rows:
        if out_of_bound == "loop":
            out.append([int(v % total) for v in row])
        else:
            last = max(v for v in row if v < total) if any(v < total for v in row) else 0
            out.append([int(v) if v < total else int(last) for v in row])
    if clip_len == 1:  # 2D: MMAction2's flat list of frames = our [clips, segments] (middles, then starts)
        flat = [r[0] for r in out]
        return [flat[i:i + num_clips] for i in range(0, len(flat), num_clips)]
    return out


def spec_of(clip_len, frame_interval=1, num_clips=1, twice_sample=False, target_fps=0.0, out_of_bound="loop"):
    if clip_len == 1:
        return Preprocess(num_clips, "segments", twice_sample=twice_sample)
    return Preprocess(clip_len, "clip", frame_interval, num_clips=num_clips, twice_sample=twice_sample,
                      target_fps=target_fps, out_of_bound=out_of_bound)


def test_mmaction2_own_expected_arrays():
    # tests/datasets/transforms/test_sampling.py (start_index 1 there, 0 here)
    assert clip_indices(6, spec_of(1, num_clips=8)).ravel().tolist() == [0, 1, 1, 2, 3, 4, 4, 5]
    assert clip_indices(5, spec_of(6)).ravel().tolist() == [0, 1, 2, 3, 4, 0]
    # the Video Swin case: 32x2, 4 clips, 300 frames; and one clip with an odd slack
    assert clip_indices(300, spec_of(32, 2, 4))[:, 0].tolist() == [0, 79, 158, 237]
    assert clip_indices(20, spec_of(4, 2))[0].tolist() == [6, 8, 10, 12]


@pytest.mark.parametrize("clip_len,interval,clips,twice", [(1, 1, 8, False), (1, 1, 25, False), (1, 1, 8, True),
                                                           (16, 1, 1, False), (16, 4, 1, False), (32, 2, 4, False),
                                                           (8, 8, 3, False), (4, 2, 2, True), (16, 2, 10, False)])
def test_sample_frames_grid_equals_mmaction2(clip_len, interval, clips, twice):
    for total in list(range(1, 200)) + [299, 300, 301, 960, 1001]:
        for oob in ("loop", "repeat_last") if clip_len > 1 else ("loop",):
            want = mm_sample_frames(total, clip_len, interval, clips, twice, out_of_bound=oob)
            got = clip_indices(total, spec_of(clip_len, interval, clips, twice, out_of_bound=oob)).tolist()
            assert got == want, (total, oob)


@pytest.mark.parametrize("fps", [7.5, 15.0, 24.0, 25.0, 29.97, 30.0, 60.0])
def test_target_fps_grid_equals_mmaction2(fps):
    for total in range(1, 400, 7):
        for clip_len, interval, clips in ((16, 1, 1), (8, 2, 3), (32, 1, 5)):
            want = mm_sample_frames(total, clip_len, interval, clips, target_fps=15.0, avg_fps=fps)
            got = clip_indices(total, spec_of(clip_len, interval, clips, target_fps=15.0), fps).tolist()
            assert got == want, (total, clip_len, clips)


def test_resize_and_crops_equal_mmaction2():
    for h, w in [(240, 320), (320, 240), (360, 640), (480, 854), (257, 255), (100, 100), (1080, 1920)]:
        scale = 256 / min(h, w)  # mmcv.rescale_size with scale (inf, 256), then _scale_size
        assert resize_shape(h, w, Preprocess(short_side=256, crop=224)) == (int(h * scale + 0.5), int(w * scale + 0.5))
    # ThreeCrop / TenCrop, ported (x_offset, y_offset) -> our (top, left, flip)
    h, w, c = 224, 398, 224
    step = (w - c) // 2
    assert crop_offsets(h, w, c, 3) == [(0, 0, False), (0, 2 * step, False), (0, step, False)]
    h, w, c = 256, 341, 224
    ws, hs = (w - c) // 4, (h - c) // 4
    ten = [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]
    assert crop_offsets(h, w, c, 10) == [(y, x, f) for x, y in ten for f in (False, True)]
    with pytest.raises(ConfigError, match="ThreeCrop"):  # MMAction2 asserts crop_h == img_h or crop_w == img_w
        Preprocess(8, "segments", short_side=256, crop=224, crops=3)


# ----------------------------------------------------------------- torchvision, called directly
@pytest.fixture(scope="module")
def tv():
    from jedi_deploy.models.tv_compat import import_torchvision

    return import_torchvision()


def tv_clips(total, fps, target, clip_len, clips):
    from torchvision.datasets.video_utils import VideoClips

    pts = torch.arange(total)
    resampled, idxs = VideoClips.compute_clips_for_video(pts, clip_len, 1, fps, target)
    if not len(resampled):
        return None
    starts = torch.linspace(0, len(resampled) - 1, steps=clips).floor().to(torch.int64)  # UniformClipSampler
    return resampled[starts].tolist()


@pytest.mark.parametrize("fps", [7.5, 12.0, 15.0, 24.0, 25.0, 29.97, 30.0, 50.0, 60.0])
def test_torchvision_clips_equal_video_clips_and_uniform_sampler(tv, fps):
    for total in range(16, 700, 9):
        for clip_len, clips, target in ((16, 5, 15.0), (32, 12, 15.0), (16, 5, 7.5), (128, 1, 15.0)):
            want = tv_clips(total, fps, target, clip_len, clips)
            if want is None:
                continue  # torchvision skips the video; we loop (tested below)
            spec = Preprocess(clip_len, "clip", rules="torchvision", target_fps=target, num_clips=clips,
                              resize=(128, 171), crop=112)
            assert clip_indices(total, spec, fps).tolist() == want, (total, clip_len, clips)
    short = Preprocess(16, "clip", rules="torchvision", target_fps=15.0, num_clips=2, resize=(128, 171), crop=112)
    assert clip_indices(10, short, 30.0).tolist() == [[0, 2, 4, 6, 8, 0, 2, 4, 6, 8, 0, 2, 4, 6, 8, 0]] * 2


def test_torchvision_transform_equals_video_classification(tv):
    from torchvision.transforms import functional as F
    from torchvision.transforms._presets import VideoClassification

    for h, w in [(240, 320), (360, 640), (128, 171), (600, 400)]:
        pre = PRESETS["r3d_18"]["R3D_18_Weights.KINETICS400_V1"].preprocess
        assert resize_shape(h, w, pre) == (128, 171)
        mvit = PRESETS["mvit_v2_s"]["MViT_V2_S_Weights.KINETICS400_V1"].preprocess
        img = torch.zeros(3, h, w)
        assert resize_shape(h, w, mvit) == tuple(F.resize(img, [256], antialias=False).shape[1:])
    # the centre crop: torchvision rounds (h - c) / 2, MMAction2 floors it
    frames = (np.arange(128 * 171) % 251).astype(np.uint8).reshape(1, 1, 128, 171, 1).repeat(3, axis=-1)
    ours = crop_views(frames, pre)[0, 0, :, :, 0]
    vc = VideoClassification(crop_size=(112, 112), resize_size=(128, 171))
    want = F.center_crop(torch.from_numpy(frames[0, 0]).permute(2, 0, 1), [112, 112])[0].numpy()
    np.testing.assert_array_equal(ours, want)
    assert vc.crop_size == [112, 112] and vc.resize_size == [128, 171]
    assert np.allclose(np.array(pre.mean) / 255, vc.mean) and np.allclose(np.array(pre.std) / 255, vc.std)


def test_transformers_resize_equals_get_resize_output_image_size():
    tf = pytest.importorskip("transformers")
    from transformers.image_transforms import get_resize_output_image_size

    del tf
    pre = Preprocess(16, "clip", 4, 224, 224, rules="transformers")
    for h, w in [(240, 320), (320, 240), (360, 640), (257, 255), (1080, 1920), (224, 300)]:
        img = np.zeros((h, w, 3), np.uint8)
        want = get_resize_output_image_size(img, 224, default_to_square=False, input_data_format="channels_last")
        assert resize_shape(h, w, pre) == tuple(want)


# ---------------------------------------------------------------------------- presets
EXPECTED = {  # preset -> the upstream numbers it must carry
    "R3D_18_Weights.KINETICS400_V1": dict(num_frames=16, target_fps=15, num_clips=5, resize=(128, 171), crop=112),
    "S3D_Weights.KINETICS400_V1": dict(num_frames=128, target_fps=15, num_clips=1, resize=(256, 256), crop=224),
    "MViT_V2_S_Weights.KINETICS400_V1": dict(num_frames=16, target_fps=7.5, num_clips=5, short_side=256, crop=224),
    "Swin3D_T_Weights.KINETICS400_V1": dict(num_frames=32, target_fps=15, num_clips=12, short_side=256, crop=224),
    "swin-tiny-p244-w877_in1k-pre_8xb8-amp-32x2x1-30e_kinetics400-rgb":
        dict(num_frames=32, frame_interval=2, num_clips=4, short_side=224, crop=224, crops=3, average="prob"),
    "tsn_imagenet-pretrained-r50_8xb32-1x1x3-100e_kinetics400-rgb":
        dict(num_frames=25, sampling="segments", short_side=256, crop=224, crops=10, average="feature"),
    "tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_kinetics400-rgb":
        dict(num_frames=8, sampling="segments", short_side=256, crop=224, crops=10, average="prob"),
}


def test_presets_carry_their_upstream_numbers_and_the_readme_names_them():
    found = {name: p for presets in PRESETS.values() for name, p in presets.items()}
    for name, fields in EXPECTED.items():
        pre = found[name].preprocess
        for k, v in fields.items():
            assert getattr(pre, k) == v, (name, k)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name in found:
        if name != "test":
            assert re.search(re.escape(name), readme), f"README's zoo table does not name preset {name}"


def test_feature_averaging_is_consensus_before_the_classifier():
    """TSN's protocol: the graph averages the embeddings of every view, then classifies once."""
    from jedi_deploy.export.fuse import StudentReference
    from jedi_deploy.export.graph import GraphWrapper
    from jedi_deploy.models.jedi import AdjustmentModule

    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(2 * 3 * 4 * 4, 6))
    adjust = AdjustmentModule(6, 5, 0.0).eval()
    torch.nn.init.normal_(adjust.fc2.weight)  # a trained (non-zero) residual: the student is non-linear
    head = torch.nn.Linear(6, 3)
    model = StudentReference(enc, adjust, head).eval()
    pre = Preprocess(2, "segments", crop=4, crops=10, short_side=4, average="feature")
    x = torch.randn(2, 10, 2, 3, 4, 4)
    with torch.no_grad():
        got = GraphWrapper(model, pre, views=10, average="feature")(x)
        want = head(adjust(enc(x.flatten(0, 1)).view(2, 10, -1).mean(1)))
        per_view = GraphWrapper(model, pre, views=10, average="score")(x)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, per_view)  # a non-linear student: averaging scores would differ
