"""How a video becomes a model input, as plain data and pure numpy (torch- and PyAV-free): the
:class:`Preprocess` card (JSON in expert checkpoints and model cards) and its rules - the frame
indices of every test clip by each upstream's rules (:func:`clip_indices`), the resize shape
(:func:`resize_shape`), the crop windows (:func:`crop_offsets`, :func:`crop_views`) and the
normalisation (:func:`normalize_views`). Decoding a file into those frames is
:mod:`jedi_deploy.media.decode`'s job.

One module because the card and its rules are one contract: every rule reads the card's fields,
and the card's validation states which combinations the rules accept.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.errors import ConfigError, VideoDecodeError
from jedi_deploy.contracts.header import checked_fields

SAMPLING_MODES = ("segments", "clip")


CROP_VIEWS = (1, 3, 10)


AVERAGING = ("score", "prob", "feature")


MODEL_LAYOUTS = ("NTCHW", "NCTHW")


RULES = ("mmaction2", "torchvision", "transformers")


OUT_OF_BOUND = ("loop", "repeat_last")


#: Pillow filters a transformers image processor may resize with (its ``resample``), in the order of
#: Pillow's codes (transformers' ``PILImageResampling``): ``RESAMPLE[code]`` is the filter's name.
RESAMPLE = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")


@dataclass(frozen=True)
class Preprocess:
    """How a video becomes a model input, as the upstream that trained the model tests it.

    The numbers live in the fields; ``rules`` names whose rounding and clip placement they follow
    (``mmaction2``: MMAction2 1.x ``SampleFrames``/``Resize``/``CenterCrop``/``ThreeCrop``/``TenCrop``
    in test mode; ``torchvision``: torchvision's video weights - ``VideoClips`` at ``target_fps`` with
    ``UniformClipSampler`` and the weights' ``VideoClassification`` transform; ``transformers``: a
    Hugging Face image processor's resize and crop, frames placed by MMAction2's rule).

    sampling (frame indices of every *clip*, :func:`clip_indices`):
      * ``segments`` (TSN/TSM; MMAction2 ``clip_len=1, num_clips=num_frames``): the video is split
        into ``num_frames`` equal segments and the middle frame of each is taken; ``twice_sample``
        adds a second clip of each segment's first frame (TSM's accurate protocol). ``num_clips``
        K > 1 (not an MMAction2 option) takes the frame at (k + 1/2)/K of every segment.
      * ``clip`` (3D CNNs, transformers): ``num_frames`` frames ``frame_interval`` apart. mmaction2
        rules: one clip starts at ``(N - span) // 2``; K clips at ``round(k (N - span) / (K - 1))``,
        the first at frame 0 and the last ending on the last frame; indices past the end loop
        (``out_of_bound``: ``loop``, MMAction2's default, or ``repeat_last``); ``target_fps`` > 0
        resamples as MMAction2 does with ``target_fps``. torchvision rules: the video is resampled
        to ``target_fps`` and the K clips of consecutive frames start at ``floor(linspace(0, L - 1,
        K))`` of the L possible starts (a video too short for one clip loops; torchvision drops it).
    Frames are resized from the full-resolution RGB frame with the upstream's own kernel
    (:mod:`jedi_deploy.media.resize`: cv2 ``INTER_LINEAR`` for mmaction2, torch's bilinear
    without antialiasing for torchvision, Pillow with ``resample`` for transformers) to
    ``resize`` (H, W) when given, aspect not kept; else the short side to ``short_side``, 0 =
    kept; then cut into ``crops`` views of ``crop`` x ``crop`` (1: centre;
    3: ``ThreeCrop``, which needs ``crop == short_side``; 10: ``TenCrop``, corners + centre, each
    followed by its horizontal flip), scaled to [0, 255] floats and normalised with ``mean``/``std``
    (RGB). A video gives ``views`` = clips x crops inputs ``[T, 3, crop, crop]``, combined by
    ``average``: mean of the scores ("score"), of the softmax probabilities ("prob"), or of the
    embeddings before the classifier ("feature": TSN's segmental consensus over every view).
    """

    num_frames: int = 8
    sampling: str = "segments"
    frame_interval: int = 1
    short_side: int = 0
    crop: int = 32
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    layout: str = field(default="NTCHW")
    num_clips: int = 1
    crops: int = 1
    average: str = "score"
    rules: str = "mmaction2"
    resize: tuple[int, int] = (0, 0)
    target_fps: float = 0.0
    twice_sample: bool = False
    out_of_bound: str = "loop"
    resample: str = "bilinear"  # transformers rules: the processor's Pillow filter

    def __post_init__(self):
        if self.sampling not in SAMPLING_MODES:
            raise ConfigError(f"preprocess.sampling must be one of {SAMPLING_MODES}, got {self.sampling!r}")
        if self.num_frames < 1 or self.frame_interval < 1 or self.crop < 1 or self.short_side < 0 or self.num_clips < 1:
            raise ConfigError(f"preprocess values out of range: {self}")
        if self.crops not in CROP_VIEWS:
            raise ConfigError(f"preprocess.crops must be one of {CROP_VIEWS}, got {self.crops}")
        if self.average not in AVERAGING:
            raise ConfigError(f"preprocess.average must be one of {AVERAGING}, got {self.average!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("preprocess.mean/std must be 3 values each, std > 0")
        if self.layout not in MODEL_LAYOUTS:
            raise ConfigError(f"preprocess.layout must be one of {MODEL_LAYOUTS}, got {self.layout!r}")
        if self.rules not in RULES:
            raise ConfigError(f"preprocess.rules must be one of {RULES}, got {self.rules!r}")
        if self.resample not in RESAMPLE:
            raise ConfigError(f"preprocess.resample must be one of {RESAMPLE}, got {self.resample!r}")
        if self.out_of_bound not in OUT_OF_BOUND:
            raise ConfigError(f"preprocess.out_of_bound must be one of {OUT_OF_BOUND}, got {self.out_of_bound!r}")
        if len(self.resize) != 2 or min(self.resize) < 0 or (0 in self.resize and any(self.resize)):
            raise ConfigError(f"preprocess.resize must be [height, width] > 0 (or [0, 0]: none), got {list(self.resize)}")
        if self.target_fps < 0:
            raise ConfigError(f"preprocess.target_fps must be >= 0 (0: the video's own rate), got {self.target_fps}")
        if self.crops == 3 and self.crop not in ((self.short_side,) if not any(self.resize) else self.resize):
            raise ConfigError(f"preprocess.crops=3 (ThreeCrop) needs the crop to span the short side: crop={self.crop} "
                              f"but short_side={self.short_side}{f', resize={list(self.resize)}' if any(self.resize) else ''}"
                              " (MMAction2 refuses it too); use crops=1 or 10, or set short_side to the crop")
        if self.sampling == "segments" and (self.target_fps or (self.twice_sample and self.num_clips > 1)):
            raise ConfigError("preprocess: segments sampling takes neither target_fps nor twice_sample with num_clips > 1")
        if self.sampling == "clip" and self.twice_sample and self.num_clips < 2:
            raise ConfigError("preprocess.twice_sample with clip sampling needs num_clips >= 2 "
                              "(MMAction2 divides by num_clips - 1)")
        if self.rules == "torchvision" and self.sampling == "clip" and self.target_fps and (
                self.frame_interval != 1 or self.twice_sample):
            raise ConfigError("preprocess: torchvision's clips at target_fps are consecutive frames "
                              "(frame_interval 1, no twice_sample)")

    @property
    def clips(self) -> int:
        """Clips (temporal views) per video."""
        return self.num_clips * (2 if self.twice_sample else 1)

    @property
    def views(self) -> int:
        return self.clips * self.crops

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["resize"] = list(self.resize)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        d = checked_fields(cls, d, "preprocess")
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(v) for v in d[k])
        if "resize" in d:
            d["resize"] = tuple(int(v) for v in d["resize"])
        return cls(**d)

    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of one sample (without batch) as our pipeline produces it: ``(T, 3, crop, crop)``
        (``layout`` is the *model's* order, applied by the expert's encoder)."""
        return (self.num_frames, 3, self.crop, self.crop)


def resize_shape(h: int, w: int, spec: "Preprocess") -> tuple[int, int]:
    """(height, width) a ``h`` x ``w`` upright frame is resized to, by ``spec.rules``:
    ``resize`` when given; else the short side becomes ``short_side`` - MMAction2 (``Resize(-1, S)``
    through mmcv's ``rescale_size``) rounds both sides as ``int(x * S / short + 0.5)``; torchvision
    (``Resize(S)``) and transformers (``shortest_edge``) keep S and truncate the long side
    ``int(S * long / short)``."""
    if any(spec.resize):
        return int(spec.resize[0]), int(spec.resize[1])
    s = spec.short_side
    if not s or min(h, w) == s:
        return h, w
    if spec.rules == "mmaction2":
        scale = s / min(h, w)
        return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    return (int(s * h / w), s) if w <= h else (s, int(s * w / h))


def clip_indices(num_total: int, spec: "Preprocess", fps: float | None = None) -> np.ndarray:
    """Frame indices ``int64[clips, num_frames]`` of every test clip of a video of ``num_total``
    frames at ``fps`` (only read when ``spec.target_fps`` is set), by ``spec.rules`` (see
    :class:`Preprocess`). Deterministic."""
    if num_total < 1:
        raise ValueError("a video has at least one frame")
    if spec.sampling == "segments":
        idx = _segment_indices(num_total, spec)
    elif spec.rules == "torchvision" and spec.target_fps:
        idx = _torchvision_clips(num_total, spec, fps)
    else:
        idx = _mmaction_clips(num_total, spec, fps)
    return idx.astype(np.int64)


def _segment_indices(n: int, spec: "Preprocess") -> np.ndarray:
    """MMAction2 ``SampleFrames(clip_len=1, num_clips=T, test_mode=True)``: the middle of each of T
    equal segments (``twice_sample``: then their starts), truncated to int as MMAction2 does."""
    t, k = spec.num_frames, spec.num_clips
    avg = n / float(t)
    base = np.arange(t) * avg
    if k == 1:
        rows = [base + avg / 2.0] + ([base] if spec.twice_sample else [])
        return np.mod(np.stack(rows), n).astype(np.int32)
    within = (np.arange(k) + 0.5) / k  # our extension: clip j at (j + 1/2)/K of every segment
    return np.minimum(np.floor(avg * (np.arange(t)[None, :] + within[:, None])), n - 1).astype(np.int32)


def _mmaction_clips(n: int, spec: "Preprocess", fps: float | None) -> np.ndarray:
    """MMAction2 1.x ``SampleFrames(clip_len=T, frame_interval, num_clips=K, twice_sample,
    target_fps, out_of_bound_opt, test_mode=True)`` for a 3D recognizer."""
    t, iv, k = spec.num_frames, spec.frame_interval, spec.num_clips
    ratio = fps / spec.target_fps if spec.target_fps and fps else 1.0
    if spec.target_fps:
        span = max(1.0, t * iv * ratio)
    else:
        span = (t - 1) * iv + 1
    max_offset = max(n - span, 0)
    clips = k * (2 if spec.twice_sample else 1)
    if clips > 1:
        between = max_offset / float(k - 1)  # MMAction2 spaces by num_clips - 1 even when twice_sample doubles them
        offsets = np.arange(clips) * (np.floor(between) if spec.target_fps else between)
        if not spec.target_fps:
            offsets = np.round(offsets)
    else:
        offsets = np.array([max_offset // 2])
    if spec.target_fps:
        idx = offsets[:, None] + np.linspace(0, span - 1, t).astype(np.int32)[None, :]
    else:
        idx = offsets[:, None] + np.arange(t)[None, :] * iv
    if spec.out_of_bound == "loop":
        idx = np.mod(idx, n)
    else:  # repeat_last: past the end -> the clip's last index inside the video
        safe = idx < n
        last = np.max(safe * idx, axis=1)
        idx = safe * idx + ((1 - safe).T * last).T
    return idx.astype(np.int32)


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` in float32 as torch's CPU kernel computes it (the first
    half forward from ``start``, the second half back from ``end``), so its floor matches."""
    if steps == 1:
        return np.array([start], np.float32)
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float32((end32 - start32) / np.float32(steps - 1))
    i = np.arange(steps)
    fwd = start32 + step * i.astype(np.float32)
    back = end32 - step * (steps - 1 - i).astype(np.float32)
    return np.where(i < steps // 2, fwd, back).astype(np.float32)


def _torchvision_clips(n: int, spec: "Preprocess", fps: float | None) -> np.ndarray:
    """torchvision's video evaluation: ``VideoClips(clip_length_in_frames=T, frames_between_clips=1,
    frame_rate=target_fps)`` resamples the N frames to the target rate (``_resample_video_idx``), and
    ``UniformClipSampler(K)`` takes the clips at ``floor(linspace(0, L - 1, K))`` of the L clips. A
    video with fewer resampled frames than T has no clip there (torchvision skips it); here it loops."""
    t, k = spec.num_frames, spec.num_clips
    fps = fps or spec.target_fps
    total = int(math.floor(n * spec.target_fps / fps))
    step = fps / spec.target_fps
    if float(step).is_integer():
        frames = np.arange(n)[::int(step)]
    else:
        frames = np.floor(np.arange(total, dtype=np.float32) * np.float32(step)).astype(np.int64)
    frames = frames[frames < n]
    if not len(frames):
        frames = np.zeros(1, np.int64)
    count = len(frames) - t + 1
    if count >= 1:
        starts = np.floor(_linspace_f32(0, count - 1, k)).astype(np.int64)
    else:
        starts = np.zeros(k, np.int64)
    pos = starts[:, None] + np.arange(t)[None, :]
    return frames[np.mod(pos, len(frames))]


def crop_offsets(h: int, w: int, c: int, crops: int, rules: str = "mmaction2") -> list[tuple[int, int, bool]]:
    """(top, left, flip) of every spatial view: the centre (MMAction2 and transformers floor
    ``(h - c) // 2``; torchvision's ``center_crop`` rounds ``(h - c) / 2``), MMAction2's
    ``ThreeCrop`` (the crop spans the short side; two ends and the middle of the long side) and
    ``TenCrop`` (four corners and the centre, each followed by its horizontal flip)."""
    if crops == 1:
        if rules == "torchvision":
            return [(int(round((h - c) / 2.0)), int(round((w - c) / 2.0)), False)]
        return [((h - c) // 2, (w - c) // 2, False)]
    if crops == 3:
        if c == h:
            step = (w - c) // 2
            return [(0, 0, False), (0, 2 * step, False), (0, step, False)]
        if c == w:
            step = (h - c) // 2
            return [(0, 0, False), (2 * step, 0, False), (step, 0, False)]
        raise ConfigError(f"ThreeCrop needs the {c}-pixel crop to span the frame's short side, but frames are {w}x{h}")
    hs, ws = (h - c) // 4, (w - c) // 4
    five = [(0, 0), (0, 4 * ws), (4 * hs, 0), (4 * hs, 4 * ws), (2 * hs, 2 * ws)]
    return [(a, b, flip) for a, b in five for flip in (False, True)]


def crop_views(clips: np.ndarray, spec: "Preprocess", source: str | Path | None = None) -> np.ndarray:
    """``uint8[K, T, H, W, 3]`` (resized) -> the cropped (and flipped) views, still uint8:
    ``uint8[K * crops, T, crop, crop, 3]`` (what a ``--uint8-input`` graph takes). ``source``
    (the video's path) names the file in errors."""
    where = f"{source}: " if source else ""
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise VideoDecodeError(f"{where}expected frames of shape [K, T, H, W, 3], got {clips.shape}")
    h, w = clips.shape[2:4]
    c = spec.crop
    if h < c or w < c:
        resized = f" after resizing the short side to {spec.short_side}" if spec.short_side else ""
        raise VideoDecodeError(f"{where}frames are {w}x{h}{resized}, smaller than the model's {c}x{c} crop "
                               "(its preprocessing does not enlarge them); this video is too small for this model")
    out = np.empty((clips.shape[0] * spec.crops, clips.shape[1], c, c, 3), np.uint8)
    v = 0
    for clip in clips:
        for top, left, flip in crop_offsets(h, w, c, spec.crops, spec.rules):
            x = clip[:, top:top + c, left:left + c]
            out[v] = x[:, :, ::-1] if flip else x
            v += 1
    return out


def normalize_views(views: np.ndarray, spec: "Preprocess") -> np.ndarray:
    """``uint8[V, T, S, S, 3]`` -> ``float32[V, T, 3, S, S]`` normalised with mean/std."""
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(((views.astype(np.float32) - mean) / std).transpose(0, 1, 4, 2, 3))


def views_from_frames(clips: np.ndarray, spec: "Preprocess", source: str | Path | None = None) -> np.ndarray:
    """``uint8[K, T, H, W, 3]`` (resized) -> ``float32[K * crops, T, 3, crop, crop]``."""
    return normalize_views(crop_views(clips, spec, source), spec)
