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
CROP_VIEWS = (1, 3, 10)
AVERAGING = ("score", "prob")


@dataclass(frozen=True)
class Preprocess:
    """How a video becomes a model input (MMAction2's test protocols).

    sampling (frame indices of one *clip*; MMAction2 ``SampleFrames`` in test mode):
      * ``segments`` (TSN/TSM): the video is split into ``num_frames`` equal segments and one
        frame is taken from each (the centre when ``num_clips`` is 1; with ``num_clips`` K,
        clip k takes the frame at (k + 1/2)/K of every segment).
      * ``clip`` (3D CNNs, transformers): ``num_frames`` frames ``frame_interval`` apart; the
        ``num_clips`` clips are spread evenly over the video (one clip: centred). Indices
        past the end repeat the last frame.
    Frames are resized so the short side is ``short_side`` (0 = keep), then cut into
    ``crops`` spatial views of ``crop`` x ``crop`` (1: centre; 3: MMAction2 ``ThreeCrop``, three
    squares along the long side; 10: ``TenCrop``, four corners + centre and their horizontal
    flips), scaled to [0, 255] floats and normalised with ``mean``/``std`` (RGB).
    A video gives ``num_clips * crops`` views ``[T, 3, crop, crop]``; the model's scores over the
    views are averaged (``average`` "score") or its softmax probabilities are ("prob").
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

    @property
    def views(self) -> int:
        return self.num_clips * self.crops

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


def _open_checked(p: Path):
    if not p.is_file():
        raise VideoDecodeError(f"video not found: {p}")
    if p.stat().st_size == 0:
        raise VideoDecodeError(f"video is empty (0 bytes): {p}")


def _rgb(frame, short_side: int, reformatter) -> np.ndarray:
    """``uint8[H, W, 3]`` RGB of a decoded frame (FFmpeg swscale). One ``reformatter`` per
    video keeps swscale's context across frames (``frame.to_ndarray(format=...)`` builds a
    new one per frame: much slower on small videos, same pixels; see benchmarks/RESULTS.md)."""
    w, h = frame.width, frame.height
    size = {}
    if short_side and min(w, h) != short_side:
        scale = short_side / min(w, h)
        size = {"width": max(1, round(w * scale)), "height": max(1, round(h * scale))}
    return reformatter.reformat(frame, format="rgb24", **size).to_ndarray()


def _decode_error(p: Path, e: Exception) -> VideoDecodeError:
    return VideoDecodeError(f"{p}: cannot decode video ({type(e).__name__}: {e})")


def decode_video(path: str | Path, short_side: int = 0) -> np.ndarray:
    """Decode every frame of ``path`` to ``uint8[N, H, W, 3]`` RGB.

    With ``short_side`` > 0 frames are rescaled (FFmpeg swscale) so their shorter side has
    that length. Raises :class:`VideoDecodeError` naming the file for a missing, empty,
    corrupt or frameless video; a truncated tail keeps the frames that decoded cleanly.
    """
    import av  # PyAV bundles FFmpeg

    from av.video.reformatter import VideoReformatter

    p = Path(path)
    _open_checked(p)
    frames, reformatter = [], VideoReformatter()
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{p}: file has no video stream")
            for frame in container.decode(container.streams.video[0]):
                frames.append(_rgb(frame, short_side, reformatter))
    except VideoDecodeError:
        raise
    except Exception as e:  # av.error.* for corrupt/truncated/non-video data
        if not frames:
            raise _decode_error(p, e) from None
    if not frames:
        raise VideoDecodeError(f"{p}: video has no decodable frames")
    return np.stack(frames)


#: FFmpeg decoding threads per video (0 = FFmpeg's choice, one per core). Decode worker
#: processes set 1: they run beside the encoder and several of them already use the cores.
DECODE_THREADS = 0

#: Decode forward instead of seeking while the next wanted frame is at most this many frames
#: ahead (or one keyframe interval, once one has been seen): a seek lands on the previous
#: keyframe, so short gaps are cheaper to decode through.
SEEK_GAP = 48


class _Seeker:
    """Frame-accurate random access on one open video stream: seeks (to the keyframe before a
    target, then decodes forward) only when the next wanted frame is far ahead."""

    def __init__(self, container, stream):
        self.c, self.s = container, stream
        self.tb = float(stream.time_base)
        self.fps = float(stream.average_rate or stream.guessed_rate or 0)
        self.start = stream.start_time or 0
        self.it, self.pos, self.gop, self.last_key = None, -1, 0, None

    def _index(self, frame) -> int:
        return int(round((frame.pts - self.start) * self.tb * self.fps))

    def _seek(self, target: int) -> None:
        ts = self.start + int(target / self.fps / self.tb)
        self.c.seek(ts, stream=self.s, backward=True, any_frame=False)
        self.it, self.pos, self.last_key = self.c.decode(self.s), -1, None

    def frames_at(self, targets) -> dict:
        """{index: decoded frame} for every wanted index (past the end: the last frame)."""
        out: dict = {}
        last = None
        for t in sorted(set(targets)):
            if self.it is None or t - self.pos > max(SEEK_GAP, self.gop):
                self._seek(t)
            hit = None
            for frame in self.it:
                if frame.pts is None:
                    raise ValueError("frames without timestamps")
                idx = self._index(frame)
                if frame.key_frame:
                    if self.last_key is not None:
                        self.gop = max(self.gop, idx - self.last_key)
                    self.last_key = idx
                self.pos, last = idx, frame
                if idx >= t:
                    hit = frame
                    break
            if hit is None:  # past the end: repeat the last frame
                if last is None:
                    raise ValueError("no frame decoded")
                hit = last
            out[t] = hit
        return out


def frame_count(stream) -> int:
    """Frames in ``stream`` from the container's metadata (0 if it does not say)."""
    if stream.frames:
        return int(stream.frames)
    rate = float(stream.average_rate or 0)
    if stream.duration and rate:
        return int(stream.duration * float(stream.time_base) * rate)
    return 0


def decode_frames_multi(path: str | Path, specs: list["Preprocess"]) -> list[np.ndarray]:
    """The frames each of ``specs`` samples from ``path`` - ``uint8[K, T, H, W, 3]`` per spec
    (K = num_clips) - from ONE pass over the file that decodes only around the wanted frames
    (seeking in long videos). Falls back to a full decode when the container gives no frame
    count or timestamps. Errors as :func:`decode_video`."""
    import av
    from av.video.reformatter import VideoReformatter

    p = Path(path)
    _open_checked(p)
    frames: dict | None = None
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{p}: file has no video stream")
            stream = container.streams.video[0]
            if DECODE_THREADS:
                stream.codec_context.thread_count = DECODE_THREADS
            n = frame_count(stream)
            if n > 0 and stream.average_rate:
                idx = [clip_indices(n, s) for s in specs]
                try:
                    frames = _Seeker(container, stream).frames_at(np.concatenate([i.ravel() for i in idx]).tolist())
                except ValueError:
                    frames = None  # no usable timestamps: decode everything below
            if frames is None:
                every = []
                try:
                    for frame in container.decode(stream):
                        every.append(frame)
                except Exception:
                    if not every:
                        raise  # nothing decodable; a truncated tail keeps what decoded
                if not every:
                    raise VideoDecodeError(f"{p}: video has no decodable frames")
                n = len(every)
                idx = [clip_indices(n, s) for s in specs]
                frames = {i: every[i] for i in np.unique(np.concatenate([i.ravel() for i in idx])).tolist()}
            out, reformatter = [], VideoReformatter()
            for s, ix in zip(specs, idx):
                rgb = {i: _rgb(frames[i], s.short_side, reformatter) for i in np.unique(ix).tolist()}
                out.append(np.stack([np.stack([rgb[i] for i in row]) for row in ix.tolist()]))
            return out
    except VideoDecodeError:
        raise
    except Exception as e:
        raise _decode_error(p, e) from None


def decode_frames(path: str | Path, spec: "Preprocess") -> np.ndarray:
    """``decode_frames_multi`` for one spec: ``uint8[K, T, H, W, 3]``."""
    return decode_frames_multi(path, [spec])[0]


def clip_indices(num_total: int, spec: "Preprocess") -> np.ndarray:
    """Frame indices ``int64[num_clips, num_frames]`` of every test clip (deterministic)."""
    t, k = spec.num_frames, spec.num_clips
    if spec.sampling == "segments":
        seg = num_total / t
        within = (np.arange(k) + 0.5) / k  # clip j's position inside each segment
        idx = np.floor(seg * (np.arange(t)[None, :] + within[:, None])).astype(np.int64)
    else:
        span = (t - 1) * spec.frame_interval + 1
        if num_total > span - 1:
            step = (num_total - span + 1) / k
            starts = (np.arange(k) * step + step / 2).astype(np.int64)
        else:
            starts = np.zeros(k, np.int64)
        idx = starts[:, None] + np.arange(t, dtype=np.int64)[None, :] * spec.frame_interval
    return np.clip(idx, 0, num_total - 1)


def sample_indices(num_total: int, spec: "Preprocess") -> np.ndarray:
    """Frame indices of the first test clip (``clip_indices(...)[0]``)."""
    return clip_indices(num_total, spec)[0]


def crop_offsets(h: int, w: int, c: int, crops: int) -> list[tuple[int, int, bool]]:
    """(top, left, flip) of every spatial view, as MMAction2's CenterCrop/ThreeCrop/TenCrop."""
    if crops == 1:
        return [((h - c) // 2, (w - c) // 2, False)]
    if crops == 3:
        if w >= h:
            step = (w - c) // 2
            return [((h - c) // 2, 0, False), ((h - c) // 2, 2 * step, False), ((h - c) // 2, step, False)]
        step = (h - c) // 2
        return [(0, (w - c) // 2, False), (2 * step, (w - c) // 2, False), (step, (w - c) // 2, False)]
    hs, ws = (h - c) // 4, (w - c) // 4
    five = [(0, 0), (0, 4 * ws), (4 * hs, 0), (4 * hs, 4 * ws), (2 * hs, 2 * ws)]
    return [(a, b, False) for a, b in five] + [(a, b, True) for a, b in five]


def crop_views(clips: np.ndarray, spec: "Preprocess") -> np.ndarray:
    """``uint8[K, T, H, W, 3]`` (resized) -> the cropped (and flipped) views, still uint8:
    ``uint8[K * crops, T, crop, crop, 3]`` (what a ``--uint8-input`` graph takes)."""
    if clips.ndim != 5 or clips.shape[-1] != 3:
        raise VideoDecodeError(f"expected frames of shape [K, T, H, W, 3], got {clips.shape}")
    h, w = clips.shape[2:4]
    c = spec.crop
    if h < c or w < c:
        raise VideoDecodeError(f"frames of {h}x{w} are smaller than the crop {c}x{c}; "
                               "set preprocess.short_side >= crop")
    out = np.empty((clips.shape[0] * spec.crops, clips.shape[1], c, c, 3), np.uint8)
    v = 0
    for clip in clips:
        for top, left, flip in crop_offsets(h, w, c, spec.crops):
            x = clip[:, top:top + c, left:left + c]
            out[v] = x[:, :, ::-1] if flip else x
            v += 1
    return out


def normalize_views(views: np.ndarray, spec: "Preprocess") -> np.ndarray:
    """``uint8[V, T, S, S, 3]`` -> ``float32[V, T, 3, S, S]`` normalised with mean/std."""
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(((views.astype(np.float32) - mean) / std).transpose(0, 1, 4, 2, 3))


def views_from_frames(clips: np.ndarray, spec: "Preprocess") -> np.ndarray:
    """``uint8[K, T, H, W, 3]`` (resized) -> ``float32[K * crops, T, 3, crop, crop]``."""
    return normalize_views(crop_views(clips, spec), spec)


def preprocess_frames(frames: np.ndarray, spec: "Preprocess") -> np.ndarray:
    """All frames of a video ``uint8[N, H, W, 3]`` (already resized) -> its views
    ``float32[V, T, 3, crop, crop]`` (V = ``spec.views``)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoDecodeError(f"expected frames of shape [N, H, W, 3], got {frames.shape}")
    return views_from_frames(frames[clip_indices(frames.shape[0], spec)], spec)


def load_views(path: str | Path, spec: "Preprocess") -> np.ndarray:
    """Decode (seeking) and preprocess ``path``: ``float32[V, T, 3, crop, crop]``."""
    return views_from_frames(decode_frames(path, spec), spec)


def load_clip(path: str | Path, spec: "Preprocess") -> np.ndarray:
    """The single view of a one-view ``spec``: ``float32[T, 3, crop, crop]``."""
    if spec.views != 1:
        raise ConfigError(f"this preprocessing has {spec.views} views per video; use load_views")
    return load_views(path, spec)[0]


def load_clips(paths, spec: "Preprocess", progress: bool = False, desc: str = "decoding") -> np.ndarray:
    """Decode and preprocess many one-view videos: ``float32[N, T, 3, crop, crop]``."""
    from tqdm.auto import tqdm

    paths = list(paths)
    out = np.empty((len(paths), *spec.input_shape()), np.float32)
    for i, p in enumerate(tqdm(paths, desc=desc, unit="video", disable=not progress, leave=False)):
        out[i] = load_clip(p, spec)
    return out
