"""Video decoding with PyAV: the one implementation used by pretraining, caching and serving
alike (torch-free, so ``serve`` can import it). The preprocessing rules it applies - which
frames, what size, which crops - are :mod:`jedi_deploy.contracts.preprocess`'s; this module
turns a file into those frames: :func:`decode_clips` (sampled clips, seeking, the frame-index
rule, corruption, rotation), :class:`FrameStream` (one sequential pass for long videos),
:func:`video_feed` (a graph's feed for a model card) and ``load_clip`` (``float32[T, 3, S, S]``).

One module because the seeking, the frame index, the corruption handling and the rotation are
one decoder's state machine, read together; splitting them would pass a container, a stream and
a reformatter between files.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.errors import ConfigError, VideoDecodeError
from jedi_deploy.contracts.preprocess import (
    Preprocess,
    clip_indices,
    resize_shape,
    views_from_frames,
)


def _open_checked(p: Path, shown: Path | None = None):
    if not p.is_file():
        raise VideoDecodeError(f"video not found: {shown or p}")
    if p.stat().st_size == 0:
        raise VideoDecodeError(f"video is empty (0 bytes): {shown or p}")


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


def _decode_error(shown: Path, e: Exception, real: Path | None = None) -> VideoDecodeError:
    """The error of a file PyAV cannot open or decode, naming it as ``shown``: FFmpeg's messages
    quote the path they opened (``real``), which may be a temporary file."""
    text = str(e).replace(str(real), str(shown)) if real is not None else str(e)
    return VideoDecodeError(f"{shown}: cannot decode video ({type(e).__name__}: {text})")


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
    """Frame-accurate random access by presentation timestamp on one video stream: seeks (to the
    keyframe before a target, then decodes forward) only when the next wanted frame is far ahead;
    otherwise decodes through. Decoding from the start never seeks: ``reopen()`` gives a fresh
    container positioned on its first packet (a seek to the first timestamp lands later than that
    in some containers - MPEG-TS - and would silently skip frames). A seek that lands after its
    target or yields no frame at all (the container cannot seek exactly) switches to one
    sequential pass from the start; a seek that lands on frames already passed (a video with few
    keyframes: every seek decodes from the same early keyframe) stops seeking, so such a video
    costs about one pass instead of one pass per sampled frame."""

    def __init__(self, container, stream, pts: np.ndarray, reopen=None):
        self.c, self.s, self.pts, self.reopen = container, stream, pts, reopen
        self.it, self.pos, self.gop, self.last_key, self.first = None, -1, 0, None, None
        self.seeks = len(pts) > VERIFY_FRAMES  # short videos: decode through, so every error is seen
        self.decoded = 0  # frames decoded so far (the cost of this access pattern)

    def _from_start(self) -> None:
        if self.reopen is not None:
            self.c, self.s = self.reopen()
        else:
            self.c.seek(int(self.pts[0]), stream=self.s, backward=True, any_frame=False)
        self.it, self.pos, self.last_key = self.c.decode(self.s), -1, None

    def _seek(self, target: int) -> None:
        self.c.seek(int(self.pts[target]), stream=self.s, backward=True, any_frame=False)
        self.it, self.pos, self.last_key = self.c.decode(self.s), -1, None

    def frames_at(self, targets) -> dict:
        """{index: decoded frame} for every wanted index; :class:`_DecodeFailed` at the first
        error or when the stream ends before a wanted frame."""
        out: dict = {}
        for t in sorted(set(targets)):
            sought, before = False, -1
            if self.it is None:
                if self.seeks and t > 0:
                    self._seek(t)
                    sought = True
                else:
                    self._from_start()
            elif self.seeks and t - self.pos > max(SEEK_GAP, self.gop):
                before = self.pos
                self._seek(t)
                sought = True
            hit = None
            while hit is None:
                try:
                    frame = next(self.it)
                except StopIteration:
                    if sought:  # a seek that yields nothing (MPEG-TS): one sequential pass instead
                        sought, self.seeks = False, False
                        self._from_start()
                        continue
                    raise _DecodeFailed(self.pos + 1, "the stream ended early") from None
                except Exception as e:  # the decoder's error: frames from here on are not to be trusted
                    raise _DecodeFailed(self.pos + 1, f"{type(e).__name__}: {e}") from None
                if frame.pts is None:
                    raise ValueError("decoded frames without timestamps")
                idx = int(np.searchsorted(self.pts, frame.pts))
                self.decoded += 1
                if sought:
                    sought = False
                    if idx > t:  # the seek overshot: this container cannot seek exactly
                        self.seeks = False
                        self._from_start()
                        continue
                    if idx <= before:  # it went back to frames already passed (keyframes too sparse):
                        self.seeks = False  # decoding on from here is cheaper than seeking again
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


def decode_clips(path: str | Path, specs: list["Preprocess"], name: str | None = None) -> Decoded:
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
    Frames are turned upright by the file's rotation metadata (display matrix or rotate tag).
    ``name`` is what errors and warnings call the file (default: ``path``), e.g. an upload's own
    name instead of its temporary file."""
    import av
    from av.video.reformatter import VideoReformatter

    p = Path(path)
    shown = Path(name) if name else p
    _open_checked(p, shown)
    opened = contextlib.ExitStack()  # containers reopened to decode from the first packet

    def reopen():
        c = opened.enter_context(av.open(str(p)))
        return c, next(s for s in c.streams.video if s.index == stream.index)

    try:
        with opened, av.open(str(p)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{shown}: file has no video stream")
            stream, note = video_stream(container, shown)
            declared = int(stream.frames or 0)
            fps = _avg_fps(stream)
            index = frame_timestamps(container, stream)
            problem = index[1] if index else None
            if index is not None and not len(index[0]):
                raise VideoDecodeError(f"{shown}: video has no frames" + (f" ({problem})" if problem else ""))
            if index is not None:
                pts = index[0]
                n = len(pts)
                try:
                    frames, failed = _sample_by_timestamp(container, stream, pts, n, specs, fps, reopen)
                    if failed is not None:  # sample again from the frames before the failure
                        problem, n = str(failed.error), failed.index
                        if n < 1:
                            raise VideoDecodeError(f"{shown}: video has no decodable frames ({problem})")
                        frames, again = _sample_by_timestamp(container, stream, pts, n, specs, fps, reopen)
                        if again is not None:
                            raise VideoDecodeError(f"{shown}: cannot decode video ({again.error})")
                except ValueError:  # decoded frames carry no timestamps: count them instead
                    index, problem = None, None
                    container.seek(0, stream=stream)
            if index is None:  # no timestamps: count by decoding, then decode again keeping the wanted frames
                n, problem = _count_by_decoding(container, stream)
                if n < 1:
                    raise VideoDecodeError(f"{shown}: video has no decodable frames" + (f" ({problem})" if problem else ""))
                container.seek(0, stream=stream)
                frames = _decode_in_order(container, stream, _targets(n, specs, fps))
            if not frames:
                raise VideoDecodeError(f"{shown}: video has no decodable frames")
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
        raise _decode_error(shown, e, p) from None
    warning = note
    if problem or (declared and n < declared and p.suffix.lower() in (".mp4", ".mov", ".m4v")):
        warning = "; ".join(filter(None, [note, (
            f"{shown.name}: only the first {n} frames decode cleanly"
            + (f" of {declared} declared" if declared > n else "") + (f" ({problem})" if problem else "")
            + "; sampled from those")]))
    return Decoded(out, n, warning)


def video_feed(card, path: str | Path, name: str | None = None) -> tuple[dict, str | None]:
    """A video's feed for the graph a :class:`~jedi_deploy.contracts.model_card.ModelCard`
    describes - decoded once for every input (:func:`decode_clips`), its views cut and fed as
    :meth:`ModelCard.feed_from_clips` says - and the partial-decode warning, if any."""
    decoded = decode_clips(path, [s.preprocess for s in card.inputs], name=name)
    return card.feed_from_clips(decoded.clips, name or path), decoded.warning


def video_stream(container, shown: Path):
    """The video stream FFmpeg itself would pick (``av_find_best_stream``: the default disposition,
    then the most decodable), and a note naming it when the file has several."""
    streams = container.streams.video
    best = container.streams.best("video") or streams[0]
    if len(streams) == 1:
        return best, None
    return best, (f"{shown.name}: {len(streams)} video streams; using stream #{best.index} "
                  f"({best.codec_context.width}x{best.codec_context.height}, FFmpeg's choice)")


def _avg_fps(stream) -> float | None:
    """The stream's average frame rate (FFmpeg's ``avg_frame_rate``, as decord's ``get_avg_fps`` and
    torchvision's ``read_video_timestamps`` report it), None when the container does not say."""
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _targets(n: int, specs, fps: float | None = None) -> list[int]:
    return np.unique(np.concatenate([clip_indices(n, s, fps).ravel() for s in specs])).tolist()


def _sample_by_timestamp(container, stream, pts, n, specs, fps, reopen=None) -> tuple[dict, _DecodeFailed | None]:
    try:
        return _Seeker(container, stream, pts[:n], reopen).frames_at(_targets(n, specs, fps)), None
    except _DecodeFailed as f:
        return {}, f


def load_views(path: str | Path, spec: "Preprocess") -> np.ndarray:
    """Decode (seeking) and preprocess ``path``: ``float32[V, T, 3, crop, crop]``."""
    return views_from_frames(decode_clips(path, [spec]).clips[0], spec, path)


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

    def __init__(self, path: str | Path, specs: list["Preprocess | None"], name: str | None = None):
        import av

        self.path = Path(path)
        self.shown = Path(name) if name else self.path  # what messages call the file
        _open_checked(self.path, self.shown)
        self.specs, self.frames = list(specs), 0
        try:
            self._container = av.open(str(self.path))
        except Exception as e:
            raise _decode_error(self.shown, e, self.path) from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError(f"{self.shown}: file has no video stream")
        self._stream, self.warning = video_stream(self._container, self.shown)  # several streams: a note
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
                raise _decode_error(self.shown, e, self.path) from None
            stopped = f"{self.shown.name}: decoding stopped after {self.frames} frames ({type(e).__name__}: {e})"
            self.warning = "; ".join(filter(None, [self.warning, stopped]))
        finally:
            self._container.close()
        if not self.frames:
            raise VideoDecodeError(f"{self.shown}: video has no decodable frames")
