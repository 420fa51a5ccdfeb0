"""Video decoding and preprocessing, in numpy: the one implementation used by
pretraining, caching and serving alike (torch-free, so ``serve`` can import it).

A :class:`Preprocess` is plain data (JSON in checkpoints and ONNX metadata): how many
frames, how they are sampled, the resize/crop and the normalisation. ``load_clip`` turns a
video file into the model input ``float32[T, 3, S, S]``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, VideoDecodeError
from .meta import checked_fields

SAMPLING_MODES = ("segments", "clip")
CROP_VIEWS = (1, 3, 10)
AVERAGING = ("score", "prob", "feature")
LAYOUTS = ("NTCHW", "NCTHW")
RULES = ("mmaction2", "torchvision", "transformers")
OUT_OF_BOUND = ("loop", "repeat_last")


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
    Frames are resized (``resize`` (H, W) when given, aspect not kept; else the short side to
    ``short_side``, 0 = kept), then cut into ``crops`` views of ``crop`` x ``crop`` (1: centre;
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
        if self.layout not in LAYOUTS:
            raise ConfigError(f"preprocess.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.rules not in RULES:
            raise ConfigError(f"preprocess.rules must be one of {RULES}, got {self.rules!r}")
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


def _open_checked(p: Path):
    if not p.is_file():
        raise VideoDecodeError(f"video not found: {p}")
    if p.stat().st_size == 0:
        raise VideoDecodeError(f"video is empty (0 bytes): {p}")


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


def _rgb(frame, spec: "Preprocess | None", reformatter, orient=None) -> np.ndarray:
    """``uint8[H, W, 3]`` RGB of a decoded frame (FFmpeg swscale, bilinear), turned upright by
    ``orient`` (:func:`orientation`) and resized as :func:`resize_shape` says for ``spec`` (None:
    kept). One ``reformatter`` per video keeps swscale's context across frames
    (``frame.to_ndarray(format=...)`` builds a new one per frame: much slower on small videos, same
    pixels; see benchmarks/RESULTS.md)."""
    w, h = frame.width, frame.height
    turned = bool(orient) and orient[0] == 0  # a quarter turn: the upright frame is h wide, w high
    uh, uw = (w, h) if turned else (h, w)
    th, tw = resize_shape(uh, uw, spec) if spec is not None else (uh, uw)
    size = {}
    if (th, tw) != (uh, uw):
        size = {"width": th, "height": tw} if turned else {"width": tw, "height": th}
    img = reformatter.reformat(frame, format="rgb24", **size).to_ndarray()
    return upright(img, orient) if orient else img


def orientation(frame, stream=None) -> tuple[int, int, int, int] | None:
    """The display transform of a video as the 2x2 integer part ``(a, b, c, d)`` of its display
    matrix (FFmpeg's convention: a source pixel (x, y) is shown at (a·x + c·y, b·x + d·y)), from
    the frame's DISPLAYMATRIX side data, else the stream's legacy ``rotate`` tag (degrees
    clockwise); None when the frames are shown as stored."""
    for sd in frame.side_data:
        if getattr(sd.type, "name", str(sd.type)).endswith("DISPLAYMATRIX"):
            m = np.frombuffer(bytes(sd)[:36], dtype="<i4").astype(np.float64)
            a, b, c, d = (int(round(v / 65536.0)) for v in (m[0], m[1], m[3], m[4]))
            if abs(a) + abs(b) != 1 or abs(c) + abs(d) != 1 or (a == 1 and d == 1):
                return None  # identity, or not a multiple of 90 degrees (left as stored)
            return a, b, c, d
    tag = (stream.metadata or {}).get("rotate") if stream is not None else None
    if tag and str(tag).lstrip("-").isdigit() and int(tag) % 90 == 0 and int(tag) % 360:
        k = (-int(tag) // 90) % 4  # clockwise tag -> counterclockwise quarter turns
        return {1: (0, -1, 1, 0), 2: (-1, 0, 0, -1), 3: (0, 1, -1, 0)}[k]
    return None


def upright(img: np.ndarray, orient: tuple[int, int, int, int]) -> np.ndarray:
    """Apply a display transform (:func:`orientation`) to ``[H, W, C]``: the frame as players show it."""
    a, b, c, d = orient
    if a:  # no transpose: x' = a·x, y' = d·y
        out = img[:, ::-1] if a < 0 else img
        return np.ascontiguousarray(out[::-1] if d < 0 else out)
    out = img.transpose(1, 0, 2)  # x' = c·y, y' = b·x
    out = out[::-1] if b < 0 else out
    return np.ascontiguousarray(out[:, ::-1] if c < 0 else out)


def _decode_error(p: Path, e: Exception) -> VideoDecodeError:
    return VideoDecodeError(f"{p}: cannot decode video ({type(e).__name__}: {e})")


def decode_video(path: str | Path, short_side: int = 0) -> np.ndarray:
    """Decode every frame of ``path`` to ``uint8[N, H, W, 3]`` RGB, upright (rotation metadata
    applied). For tests and small files: it holds the whole video in memory; models sample
    with :func:`decode_clips`, which never does.

    With ``short_side`` > 0 frames are rescaled (FFmpeg swscale) so their shorter side has
    that length. Raises :class:`VideoDecodeError` naming the file for a missing, empty,
    corrupt or frameless video; a truncated tail keeps the frames that decoded cleanly.
    """
    spec = Preprocess(short_side=short_side) if short_side else None
    return np.stack([frames[0] for _, frames in FrameStream(path, [spec])])


#: FFmpeg decoding threads per video (0 = FFmpeg's choice, one per core). Decode worker
#: processes set 1: they run beside the encoder and several of them already use the cores.
DECODE_THREADS = 0

#: Decode forward instead of seeking while the next wanted frame is at most this many frames
#: ahead (or one keyframe interval, once one has been seen): a seek lands on the previous
#: keyframe, so short gaps are cheaper to decode through.
SEEK_GAP = 48

#: Videos of up to this many frames are decoded from their first frame up to the last wanted one,
#: never seeking past a stretch, so a corruption anywhere before a sampled frame is seen (and the
#: video is sampled again from the frames before it). Longer videos seek; corruption inside a
#: stretch they skip is not seen (only a full decode would see it).
VERIFY_FRAMES = 900


class _DecodeFailed(Exception):
    """Decoding stopped with an error; frames before ``index`` (presentation order) decoded cleanly."""

    def __init__(self, index: int, error: Exception | str):
        super().__init__(str(error))
        self.index, self.error = index, error


def frame_timestamps(container, stream) -> tuple[np.ndarray, str | None] | None:
    """The frame index of a video: the presentation timestamps of every frame the demuxer
    delivers (packets read, nothing decoded; sorted = presentation order), and what stopped the
    demuxer early, if anything. None when packets carry no timestamps (then frames are counted by
    decoding). Cheap: reading packets costs a small fraction of decoding them, and memory holds one
    integer per frame."""
    pts, error = [], None
    try:
        for packet in container.demux(stream):
            if not packet.size:
                continue  # the demuxer's flush packet
            if packet.pts is None:
                return None
            pts.append(packet.pts)
    except Exception as e:  # a corrupt container: the packets before it are the index
        error = f"{type(e).__name__}: {e}"
    return np.unique(np.asarray(pts, dtype=np.int64)), error


class _Seeker:
    """Frame-accurate random access by presentation timestamp on one open video stream: seeks
    (to the keyframe before a target, then decodes forward) only when the next wanted frame is
    far ahead; otherwise decodes through."""

    def __init__(self, container, stream, pts: np.ndarray):
        self.c, self.s, self.pts = container, stream, pts
        self.it, self.pos, self.gop, self.last_key, self.first = None, -1, 0, None, None
        self.seeks = len(pts) > VERIFY_FRAMES  # short videos: decode through, so every error is seen

    def _seek(self, target: int) -> None:
        self.c.seek(int(self.pts[target]), stream=self.s, backward=True, any_frame=False)
        self.it, self.pos, self.last_key = self.c.decode(self.s), -1, None

    def frames_at(self, targets) -> dict:
        """{index: decoded frame} for every wanted index; :class:`_DecodeFailed` at the first
        error or when the stream ends before a wanted frame."""
        out: dict = {}
        for t in sorted(set(targets)):
            if self.it is None:
                self._seek(t if self.seeks else 0)
            elif self.seeks and t - self.pos > max(SEEK_GAP, self.gop):
                self._seek(t)
            hit = None
            while hit is None:
                try:
                    frame = next(self.it)
                except StopIteration:
                    raise _DecodeFailed(self.pos + 1, "the stream ended early") from None
                except Exception as e:  # the decoder's error: frames from here on are not to be trusted
                    raise _DecodeFailed(self.pos + 1, f"{type(e).__name__}: {e}") from None
                if frame.pts is None:
                    raise ValueError("decoded frames without timestamps")
                idx = int(np.searchsorted(self.pts, frame.pts))
                if self.first is None:
                    self.first = frame
                if frame.key_frame:
                    if self.last_key is not None:
                        self.gop = max(self.gop, idx - self.last_key)
                    self.last_key = idx
                self.pos = idx
                if idx >= t:
                    hit = frame
            out[t] = hit
        return out


@dataclass
class Decoded:
    """What :func:`decode_clips` sampled: per spec ``uint8[K, T, H, W, 3]`` (upright, resized),
    the number of frames sampled from, and a warning when that is not the whole file (it is
    truncated or corrupt: only frames before the first error are used)."""

    clips: list[np.ndarray]
    num_frames: int
    warning: str | None = None


def _count_by_decoding(container, stream) -> tuple[int, str | None]:
    n = 0
    try:
        for _ in container.decode(stream):
            n += 1
    except Exception as e:
        return n, f"{type(e).__name__}: {e}"
    return n, None


def _decode_in_order(container, stream, targets) -> dict:
    """Frames at ``targets`` (positions in decode output order) from one pass, keeping only those."""
    want, out = set(targets), {}
    for i, frame in enumerate(container.decode(stream)):
        if i in want:
            out[i] = frame
            if len(out) == len(want):
                break
    return out


def decode_clips(path: str | Path, specs: list["Preprocess"]) -> Decoded:
    """The frames each of ``specs`` samples from ``path`` (see :class:`Decoded`), decoding the file
    once for all of them and only around the wanted frames.

    Frame-index rule: frame k is the k-th frame in presentation order among the frames the
    container's packets hold (their timestamps, sorted), and N is their count - the order a player
    shows and MMAction2's test-mode samplers count. It does not depend on the container or on the
    frame rate being constant, and it never trusts a container's declared frame count. Memory
    holds one timestamp per frame and the sampled frames, never the whole video.

    Corruption: if the demuxer stops early or the decoder fails, frames are sampled again from the
    ones before the first failure and :attr:`Decoded.warning` says so; a file with no decodable
    frame is a :class:`VideoDecodeError`. Videos of up to :data:`VERIFY_FRAMES` frames are decoded
    from the start up to the last wanted frame, so no frame after an error is ever used; longer
    videos seek, and corruption inside a stretch they skip is not seen (only a full decode would).
    Frames are turned upright by the file's rotation metadata (display matrix or rotate tag)."""
    import av
    from av.video.reformatter import VideoReformatter

    p = Path(path)
    _open_checked(p)
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{p}: file has no video stream")
            stream = container.streams.video[0]
            declared = int(stream.frames or 0)
            fps = _avg_fps(stream)
            index = frame_timestamps(container, stream)
            problem = index[1] if index else None
            if index is not None and not len(index[0]):
                raise VideoDecodeError(f"{p}: video has no frames" + (f" ({problem})" if problem else ""))
            if index is not None:
                pts = index[0]
                n = len(pts)
                try:
                    frames, failed = _sample_by_timestamp(container, stream, pts, n, specs, fps)
                    if failed is not None:  # sample again from the frames before the failure
                        problem, n = str(failed.error), failed.index
                        if n < 1:
                            raise VideoDecodeError(f"{p}: video has no decodable frames ({problem})")
                        frames, again = _sample_by_timestamp(container, stream, pts, n, specs, fps)
                        if again is not None:
                            raise VideoDecodeError(f"{p}: cannot decode video ({again.error})")
                except ValueError:  # decoded frames carry no timestamps: count them instead
                    index, problem = None, None
                    container.seek(0, stream=stream)
            if index is None:  # no timestamps: count by decoding, then decode again keeping the wanted frames
                n, problem = _count_by_decoding(container, stream)
                if n < 1:
                    raise VideoDecodeError(f"{p}: video has no decodable frames" + (f" ({problem})" if problem else ""))
                container.seek(0, stream=stream)
                frames = _decode_in_order(container, stream, _targets(n, specs, fps))
            if not frames:
                raise VideoDecodeError(f"{p}: video has no decodable frames")
            first = frames[min(frames)]
            orient = orientation(first, stream)
            out, reformatter = [], VideoReformatter()
            for s in specs:
                ix = clip_indices(n, s, fps)
                rgb = {i: _rgb(frames[i], s, reformatter, orient) for i in np.unique(ix).tolist()}
                out.append(np.stack([np.stack([rgb[i] for i in row]) for row in ix.tolist()]))
    except VideoDecodeError:
        raise
    except Exception as e:
        raise _decode_error(p, e) from None
    warning = None
    if problem or (declared and n < declared and p.suffix.lower() in (".mp4", ".mov", ".m4v")):
        warning = (f"{p.name}: only the first {n} frames decode cleanly"
                   + (f" of {declared} declared" if declared > n else "") + (f" ({problem})" if problem else "")
                   + "; sampled from those")
    return Decoded(out, n, warning)


def _avg_fps(stream) -> float | None:
    """The stream's average frame rate (FFmpeg's ``avg_frame_rate``, as decord's ``get_avg_fps`` and
    torchvision's ``read_video_timestamps`` report it), None when the container does not say."""
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _targets(n: int, specs, fps: float | None = None) -> list[int]:
    return np.unique(np.concatenate([clip_indices(n, s, fps).ravel() for s in specs])).tolist()


def _sample_by_timestamp(container, stream, pts, n, specs, fps) -> tuple[dict, _DecodeFailed | None]:
    try:
        return _Seeker(container, stream, pts[:n]).frames_at(_targets(n, specs, fps)), None
    except _DecodeFailed as f:
        return {}, f


def decode_frames_multi(path: str | Path, specs: list["Preprocess"]) -> list[np.ndarray]:
    """:func:`decode_clips` without the facts: ``uint8[K, T, H, W, 3]`` per spec."""
    return decode_clips(path, specs).clips


def decode_frames(path: str | Path, spec: "Preprocess") -> np.ndarray:
    """``decode_frames_multi`` for one spec: ``uint8[K, T, H, W, 3]``."""
    return decode_frames_multi(path, [spec])[0]


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


def sample_indices(num_total: int, spec: "Preprocess") -> np.ndarray:
    """Frame indices of the first test clip (``clip_indices(...)[0]``)."""
    return clip_indices(num_total, spec)[0]


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


def preprocess_frames(frames: np.ndarray, spec: "Preprocess") -> np.ndarray:
    """All frames of a video ``uint8[N, H, W, 3]`` (already resized) -> its views
    ``float32[V, T, 3, crop, crop]`` (V = ``spec.views``)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoDecodeError(f"expected frames of shape [N, H, W, 3], got {frames.shape}")
    return views_from_frames(frames[clip_indices(frames.shape[0], spec)], spec)


def load_views(path: str | Path, spec: "Preprocess") -> np.ndarray:
    """Decode (seeking) and preprocess ``path``: ``float32[V, T, 3, crop, crop]``."""
    return views_from_frames(decode_frames(path, spec), spec, path)


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


class FrameStream:
    """Every frame of a video in one sequential pass, for sliding-window inference: iterating yields
    ``(seconds from the first frame, [uint8[H, W, 3] per spec])``, upright and resized as each of
    ``specs`` says (:func:`resize_shape`; None: kept), one frame at a time, so memory holds what the caller keeps.
    ``fps`` is the stream's average rate (None when the container does not say); after iteration
    ``warning`` says when decoding stopped early (a truncated or corrupt file: the frames before the
    error were yielded)."""

    def __init__(self, path: str | Path, specs: list["Preprocess | None"]):
        import av

        self.path = Path(path)
        _open_checked(self.path)
        self.specs, self.warning, self.frames = list(specs), None, 0
        try:
            self._container = av.open(str(self.path))
        except Exception as e:
            raise _decode_error(self.path, e) from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError(f"{self.path}: file has no video stream")
        self._stream = self._container.streams.video[0]
        self.fps = _avg_fps(self._stream)
        s, c = self._stream, self._container
        if s.duration and s.time_base:
            self.duration = float(s.duration * s.time_base)  # seconds, as the container declares (may be None)
        else:
            self.duration = c.duration / 1e6 if c.duration else None

    def __iter__(self):
        from av.video.reformatter import VideoReformatter

        stream, reformatter, orient, t0 = self._stream, VideoReformatter(), None, None
        base = float(stream.time_base) if stream.time_base else None
        try:
            for frame in self._container.decode(stream):
                if self.frames == 0:
                    orient = orientation(frame, stream)
                if frame.pts is not None and base:
                    t = frame.pts * base
                else:  # no timestamps: count frames at the declared rate
                    t = self.frames / (self.fps or 25.0)
                t0 = t if t0 is None else t0
                self.frames += 1
                yield t - t0, [_rgb(frame, s, reformatter, orient) for s in self.specs]
        except Exception as e:  # av.error.*: the frames before it stand
            if not self.frames:
                raise _decode_error(self.path, e) from None
            self.warning = f"{self.path.name}: decoding stopped after {self.frames} frames ({type(e).__name__}: {e})"
        finally:
            self._container.close()
        if not self.frames:
            raise VideoDecodeError(f"{self.path}: video has no decodable frames")
