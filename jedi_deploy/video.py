"""Video decoding and preprocessing, in numpy: the one implementation used by
pretraining, caching and serving alike (torch-free, so ``serve`` can import it).

A :class:`Preprocess` is plain data (JSON in checkpoints and ONNX metadata): how many
frames, how they are sampled, the resize/crop and the normalisation. ``load_clip`` turns a
video file into the model input ``float32[T, 3, S, S]``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, VideoDecodeError
from .meta import checked_fields

SAMPLING_MODES = ("segments", "clip")


@dataclass(frozen=True)
class Preprocess:
    """How a video becomes a model input.

    sampling:
      * ``segments`` (TSN/TSM): the video is split into ``num_frames`` equal segments and
        the centre frame of each is taken (MMAction2 ``SampleFrames`` test mode).
      * ``clip`` (3D CNNs): ``num_frames`` frames ``frame_interval`` apart, centred in time.
    Frames are resized so the short side is ``short_side`` (0 = keep), centre-cropped to
    ``crop`` x ``crop``, scaled to [0, 255] floats and normalised with ``mean``/``std``
    (RGB, MMAction2 convention). Layout of the result: ``T, C, H, W``.
    """

    num_frames: int = 8
    sampling: str = "segments"
    frame_interval: int = 1
    short_side: int = 0
    crop: int = 32
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    layout: str = field(default="NTCHW")

    def __post_init__(self):
        if self.sampling not in SAMPLING_MODES:
            raise ConfigError(f"preprocess.sampling must be one of {SAMPLING_MODES}, got {self.sampling!r}")
        if self.num_frames < 1 or self.frame_interval < 1 or self.crop < 1 or self.short_side < 0:
            raise ConfigError(f"preprocess values out of range: {self}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("preprocess.mean/std must be 3 values each, std > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        d = checked_fields(cls, d, "preprocess")
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(v) for v in d[k])
        return cls(**d)

    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of one sample (without batch): ``(T, 3, crop, crop)``."""
        return (self.num_frames, 3, self.crop, self.crop)


def decode_video(path: str | Path, short_side: int = 0) -> np.ndarray:
    """Decode every frame of ``path`` to ``uint8[N, H, W, 3]`` RGB.

    With ``short_side`` > 0 frames are rescaled (FFmpeg swscale, bilinear) so their
    shorter side has that length. Raises :class:`VideoDecodeError` naming the file for a
    missing, empty, corrupt or frameless video.
    """
    import av  # PyAV bundles FFmpeg

    p = Path(path)
    if not p.is_file():
        raise VideoDecodeError(f"video not found: {p}")
    if p.stat().st_size == 0:
        raise VideoDecodeError(f"video is empty (0 bytes): {p}")
    frames = []
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{p}: file has no video stream")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                w, h = frame.width, frame.height
                if short_side and min(w, h) != short_side:
                    scale = short_side / min(w, h)
                    w, h = max(1, round(w * scale)), max(1, round(h * scale))
                    frames.append(frame.to_ndarray(format="rgb24", width=w, height=h))
                else:
                    frames.append(frame.to_ndarray(format="rgb24"))
    except VideoDecodeError:
        raise
    except Exception as e:  # av.error.* for corrupt/truncated/non-video data
        if not frames:
            raise VideoDecodeError(f"{p}: cannot decode video ({type(e).__name__}: {e})") from None
        # A truncated tail: keep what decoded cleanly.
    if not frames:
        raise VideoDecodeError(f"{p}: video has no decodable frames")
    return np.stack(frames)


def sample_indices(num_total: int, spec: Preprocess) -> np.ndarray:
    """Frame indices to take from a video of ``num_total`` frames (deterministic, test mode)."""
    t = spec.num_frames
    if spec.sampling == "segments":
        seg = num_total / t
        idx = np.floor(seg * np.arange(t) + seg / 2).astype(np.int64)
    else:
        span = (t - 1) * spec.frame_interval + 1
        start = max(0, (num_total - span) // 2)
        idx = start + np.arange(t, dtype=np.int64) * spec.frame_interval
    return np.clip(idx, 0, num_total - 1)


def preprocess_frames(frames: np.ndarray, spec: Preprocess) -> np.ndarray:
    """``uint8[N, H, W, 3]`` (already resized) -> ``float32[T, 3, crop, crop]``."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoDecodeError(f"expected frames of shape [N, H, W, 3], got {frames.shape}")
    clip = frames[sample_indices(frames.shape[0], spec)]
    h, w = clip.shape[1:3]
    c = spec.crop
    if h < c or w < c:
        raise VideoDecodeError(f"frames of {h}x{w} are smaller than the crop {c}x{c}; "
                               "set preprocess.short_side >= crop")
    top, left = (h - c) // 2, (w - c) // 2
    clip = clip[:, top:top + c, left:left + c].astype(np.float32)
    clip = (clip - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(clip.transpose(0, 3, 1, 2))


def load_clip(path: str | Path, spec: Preprocess) -> np.ndarray:
    """Decode ``path`` and preprocess it as ``spec`` says: ``float32[T, 3, crop, crop]``."""
    return preprocess_frames(decode_video(path, spec.short_side), spec)


def load_clips(paths, spec: Preprocess, progress: bool = False, desc: str = "decoding") -> np.ndarray:
    """Decode and preprocess many videos: ``float32[N, T, 3, crop, crop]``."""
    from tqdm.auto import tqdm

    paths = list(paths)
    out = np.empty((len(paths), *spec.input_shape()), np.float32)
    for i, p in enumerate(tqdm(paths, desc=desc, unit="video", disable=not progress, leave=False)):
        out[i] = load_clip(p, spec)
    return out
