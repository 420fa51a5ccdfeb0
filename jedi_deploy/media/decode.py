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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.errors import BudgetError, ConfigError, VideoDecodeError
from jedi_deploy.contracts.preprocess import (
    Preprocess,
    clip_indices,
    views_from_frames,
)

from .resize import resize_frame

#: Decoded frames larger than this many pixels are refused unless the caller says otherwise
#: (7680x4320, 8K UHD: a file may declare any size; the decoder's buffers grow with it).
MAX_FRAME_PIXELS = 7680 * 4320

#: A decode loop calls :attr:`Limits.check` at least once every this many decoded frames.
CHECK_EVERY = 16


@dataclass(frozen=True)
class Limits:
    """The budget of one decode, set by whoever creates the work (``jedi serve``'s ``ServeConfig``):
    ``max_pixels`` per frame (width x height as stored; larger: :class:`BudgetError` naming the size,
    before a frame of that size is decoded when the stream declares it), and ``check``, called at
    least every :data:`CHECK_EVERY` decoded frames, which may raise to stop (a cancelled job, a
    service shutting down)."""

    max_pixels: int = MAX_FRAME_PIXELS
    check: "Callable[[], None] | None" = None

    def frame(self, width: int, height: int, shown) -> None:
        if width * height > self.max_pixels:
            raise BudgetError(f"{shown}: frames are {width}x{height} ({width * height / 1e6:.1f} MP), over the "
                              f"{self.max_pixels / 1e6:.1f} MP a frame may have here"
                              " (jedi serve --max-frame-pixels)")

    def tick(self, n: int) -> None:
        if self.check is not None and n % CHECK_EVERY == 0:
            try:
                self.check()
            except BaseException as e:  # noqa: BLE001 - carried past the decode-error handling, re-raised
                raise _Stopped(e) from None


NO_LIMITS = Limits()


def _open_checked(p: Path, shown: Path | None = None):
    if not p.is_file():
        raise VideoDecodeError(f"video not found: {shown or p}")
    if p.stat().st_size == 0:
        raise VideoDecodeError(f"video is empty (0 bytes): {shown or p}")


def _full_rgb(frame, reformatter, orient=None) -> np.ndarray:
    """``uint8[H, W, 3]`` RGB of a decoded frame at full resolution (FFmpeg's converter, as PyAV's
    and decord's ``to_rgb`` give the upstreams their frames), turned upright by ``orient``
    (:func:`orientation`). One ``reformatter`` per video keeps swscale's context across frames
    (``frame.to_ndarray(format=...)`` builds a new one per frame: much slower on small videos, same
    pixels; see benchmarks/RESULTS.md)."""
    img = reformatter.reformat(frame, format="rgb24").to_ndarray()
    return upright(img, orient) if orient else img


def _rgbs(frame, specs, reformatter, orient=None) -> list[np.ndarray]:
    """The frame for each of ``specs``: converted once at full resolution, then resized by each spec's
    upstream kernel (:func:`jedi_deploy.media.resize.resize_frame`; None: kept)."""
    full = _full_rgb(frame, reformatter, orient)
    return [resize_frame(full, s) for s in specs]


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

    def __init__(self, container, stream, pts: np.ndarray, reopen=None, keep=None, limits: "Limits" = None,
                 shown=None):
        self.c, self.s, self.pts, self.reopen = container, stream, pts, reopen
        # keep(index, frame) -> what is kept of a wanted frame (its resized RGB), so no source-size
        # frame outlives the decoder's own buffers; the frame itself when None
        self.keep, self.limits, self.shown = keep, limits or NO_LIMITS, shown
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
                self.limits.frame(frame.width, frame.height, self.shown)
                idx = int(np.searchsorted(self.pts, frame.pts))
                self.decoded += 1
                self.limits.tick(self.decoded)
                if frame.is_corrupt:  # concealed damage: the decoder's own flag, as good as its error
                    raise _DecodeFailed(idx, f"frame {idx} is flagged corrupt by the decoder")
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
            out[t] = hit if self.keep is None else self.keep(t, hit)
        return out


@dataclass
class Decoded:
    """What :func:`decode_clips` sampled: per spec ``uint8[K, T, H, W, 3]`` (upright, resized),
    the number of frames sampled from, and a warning when that is not the whole file (it is
    truncated or corrupt: only frames before the first error are used)."""

    clips: list[np.ndarray]
    num_frames: int
    warning: str | None = None


def _count_by_decoding(container, stream, limits: Limits, shown) -> tuple[int, str | None]:
    n = 0
    try:
        for frame in container.decode(stream):
            limits.frame(frame.width, frame.height, shown)
            if frame.is_corrupt:
                return n, f"frame {n} is flagged corrupt by the decoder"
            n += 1
            limits.tick(n)
    except (BudgetError, _Stopped):
        raise
    except Exception as e:
        return n, f"{type(e).__name__}: {e}"
    return n, None


def _decode_in_order(container, stream, targets, keep, limits: "Limits", shown) -> dict:
    """What ``keep`` keeps of the frames at ``targets`` (positions in decode output order), from one pass."""
    want, out = set(targets), {}
    for i, frame in enumerate(container.decode(stream)):
        limits.frame(frame.width, frame.height, shown)
        limits.tick(i + 1)
        if i in want:
            out[i] = keep(i, frame)
            if len(out) == len(want):
                break
    return out


class _CorruptFrame(Exception):
    """A decoded frame that FFmpeg flags corrupt (``AVFrame.flags & CORRUPT`` or decode error flags)."""


class _Stopped(Exception):
    """A budget check or the caller's ``check`` stopped a decode: re-raised as the original error,
    never turned into a decode error."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class _Keeper:
    """What a decode keeps of each wanted frame: its RGB for every spec that samples it, upright and
    resized as it is decoded (:func:`_rgb`), so memory holds model-size frames, never source-size
    ones. The orientation is the first kept frame's."""

    def __init__(self, specs, n: int, fps):
        from av.video.reformatter import VideoReformatter

        self.specs, self.n, self.fps = specs, n, fps
        self.orient, self.first, self.reformatter = None, True, VideoReformatter()
        self.stream = None
        self.indices = [clip_indices(n, s, fps) for s in specs]
        self.users: dict[int, list[int]] = {}
        for k, ix in enumerate(self.indices):
            for i in np.unique(ix).tolist():
                self.users.setdefault(i, []).append(k)

    def targets(self) -> list[int]:
        return sorted(self.users)

    def __call__(self, index: int, frame) -> dict:
        if self.first:
            self.orient, self.first = orientation(frame, self.stream), False
        users = self.users[index]
        return dict(zip(users, _rgbs(frame, [self.specs[k] for k in users], self.reformatter, self.orient)))

    def clips(self, kept: dict) -> list[np.ndarray]:
        return [np.stack([np.stack([kept[i][k] for i in row]) for row in ix.tolist()])
                for k, ix in enumerate(self.indices)]


def decode_clips(path: str | Path, specs: list["Preprocess"], name: str | None = None,
                 limits: Limits = NO_LIMITS) -> Decoded:
    """The frames each of ``specs`` samples from ``path`` (see :class:`Decoded`), decoding the file
    once for all of them and only around the wanted frames.

    Frame-index rule: frame k is the k-th frame in presentation order among the frames the
    container's packets hold (their timestamps, sorted), and N is their count - the order a player
    shows and MMAction2's test-mode samplers count. It does not depend on the container or on the
    frame rate being constant, and it never trusts a container's declared frame count. Memory
    holds one timestamp per frame and the sampled frames, each converted and resized as it is
    decoded (never a source-size frame beyond the decoder's own), never the whole video.

    Corruption: if the demuxer stops early or the decoder fails, frames are sampled again from the
    ones before the first failure and :attr:`Decoded.warning` says so; a file with no decodable
    frame is a :class:`VideoDecodeError`. Videos of up to :data:`VERIFY_FRAMES` frames are decoded
    from the start up to the last wanted frame, so no frame after an error is ever used; longer
    videos seek, and corruption inside a stretch they skip is not seen (only a full decode would).
    Frames are turned upright by the file's rotation metadata (display matrix or rotate tag).
    ``name`` is what errors and warnings call the file (default: ``path``), e.g. an upload's own
    name instead of its temporary file. ``limits`` (:class:`Limits`): frames over its pixel budget
    are a :class:`BudgetError`; its ``check`` may stop the decode by raising."""
    import av

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
            limits.frame(stream.codec_context.width, stream.codec_context.height, shown)
            declared = int(stream.frames or 0)
            fps = _avg_fps(stream)
            index = frame_timestamps(container, stream)
            problem = index[1] if index else None
            if index is not None and not len(index[0]):
                raise VideoDecodeError(f"{shown}: video has no frames" + (f" ({problem})" if problem else ""))

            def sample(n: int) -> tuple[_Keeper, dict, _DecodeFailed | None]:
                keeper = _Keeper(specs, n, fps)
                keeper.stream = stream
                seeker = _Seeker(container, stream, pts[:n], reopen, keeper, limits, shown)
                try:
                    return keeper, seeker.frames_at(keeper.targets()), None
                except _DecodeFailed as f:
                    return keeper, {}, f

            if index is not None:
                pts = index[0]
                n = len(pts)
                try:
                    keeper, frames, failed = sample(n)
                    if failed is not None:  # sample again from the frames before the failure
                        problem, n = str(failed.error), failed.index
                        if n < 1:
                            raise VideoDecodeError(f"{shown}: video has no decodable frames ({problem})")
                        keeper, frames, again = sample(n)
                        if again is not None:
                            raise VideoDecodeError(f"{shown}: cannot decode video ({again.error})")
                except ValueError:  # decoded frames carry no timestamps: count them instead
                    index, problem = None, None
                    container.seek(0, stream=stream)
            if index is None:  # no timestamps: count by decoding, then decode again keeping the wanted frames
                n, problem = _count_by_decoding(container, stream, limits, shown)
                if n < 1:
                    raise VideoDecodeError(f"{shown}: video has no decodable frames" + (f" ({problem})" if problem else ""))
                container.seek(0, stream=stream)
                keeper = _Keeper(specs, n, fps)
                keeper.stream = stream
                frames = _decode_in_order(container, stream, keeper.targets(), keeper, limits, shown)
            if len(frames) < len(keeper.users):
                raise VideoDecodeError(f"{shown}: video has no decodable frames")
            out = keeper.clips(frames)
    except (VideoDecodeError, BudgetError):
        raise
    except _Stopped as e:
        raise e.error from None
    except Exception as e:
        raise _decode_error(shown, e, p) from None
    warning = note
    if problem or (declared and n < declared and p.suffix.lower() in (".mp4", ".mov", ".m4v")):
        warning = "; ".join(filter(None, [note, (
            f"{shown.name}: only the first {n} frames decode cleanly"
            + (f" of {declared} declared" if declared > n else "") + (f" ({problem})" if problem else "")
            + "; sampled from those")]))
    return Decoded(out, n, warning)


def video_feed(card, path: str | Path, name: str | None = None,
               limits: Limits = NO_LIMITS) -> tuple[dict, str | None]:
    """A video's feed for the graph a :class:`~jedi_deploy.contracts.model_card.ModelCard`
    describes - decoded once for every input (:func:`decode_clips`, within ``limits``), its views
    cut and fed as :meth:`ModelCard.feed_from_clips` says - and the partial-decode warning, if any."""
    decoded = decode_clips(path, [s.preprocess for s in card.inputs], name=name, limits=limits)
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
    """A video in one sequential pass, for sliding-window inference. Iterating yields ``(seconds from
    the first frame, [uint8[H, W, 3] per spec])`` for every frame, upright and resized as each of
    ``specs`` says (:func:`resize_shape`; None: kept), one frame at a time, so memory holds what the
    caller keeps. :meth:`times` gives every frame's time before decoding (the packets' timestamps,
    the :func:`decode_clips` frame-index rule) and :meth:`select` decodes once, converting only the
    frames a caller asks for by index. ``fps`` is the stream's average rate (None when the container
    does not say); after iteration ``warning`` says when decoding stopped early (a truncated or
    corrupt file: the frames before the error were yielded; ``frames`` counts them)."""

    def __init__(self, path: str | Path, specs: list["Preprocess | None"], name: str | None = None,
                 limits: Limits = NO_LIMITS):
        import av

        self.limits = limits
        self.path = Path(path)
        self.shown = Path(name) if name else self.path  # what messages call the file
        _open_checked(self.path, self.shown)
        self.specs, self.frames, self._pts = list(specs), 0, None
        try:
            self._container = av.open(str(self.path))
        except Exception as e:
            raise _decode_error(self.shown, e, self.path) from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError(f"{self.shown}: file has no video stream")
        self._stream, self.warning = video_stream(self._container, self.shown)  # several streams: a note
        try:
            limits.frame(self._stream.codec_context.width, self._stream.codec_context.height, self.shown)
        except BudgetError:
            self._container.close()
            raise
        self.fps = _avg_fps(self._stream)
        self.size = (self._stream.codec_context.height, self._stream.codec_context.width)  # as stored
        s, c = self._stream, self._container
        if s.duration and s.time_base:
            self.duration = float(s.duration * s.time_base)  # seconds, as the container declares (may be None)
        else:
            self.duration = c.duration / 1e6 if c.duration else None

    def times(self) -> np.ndarray | None:
        """Seconds from the first frame of every frame, in presentation order, from the packets'
        timestamps (read, not decoded: a small fraction of a decode); None when packets carry none.
        After it, :meth:`select` numbers frames by this index."""
        import av

        if not self._stream.time_base:
            return None
        try:
            with av.open(str(self.path)) as c:
                index = frame_timestamps(c, next(x for x in c.streams.video if x.index == self._stream.index))
        except Exception as e:
            raise _decode_error(self.shown, e, self.path) from None
        if index is None or not len(index[0]):
            return None
        self._pts = index[0]
        t = self._pts * float(self._stream.time_base)
        return t - t[0]

    def __iter__(self):
        for _, t, rgb in self._decode(None):
            yield t, rgb

    def select(self, wanted: Callable[[int], bool]):
        """``(index, [uint8[H, W, 3] per spec])`` of every frame ``wanted(index)`` asks for, in order;
        the others are decoded but never converted. Indices follow :meth:`times` (call it first),
        else the decode order."""
        for i, _, rgb in self._decode(wanted):
            yield i, rgb

    def _decode(self, wanted):
        from av.video.reformatter import VideoReformatter

        stream, reformatter, orient, t0 = self._stream, VideoReformatter(), None, None
        base = float(stream.time_base) if stream.time_base else None
        try:
            for frame in self._container.decode(stream):
                self.limits.frame(frame.width, frame.height, self.shown)
                self.limits.tick(self.frames + 1)
                if self.frames == 0:
                    orient = orientation(frame, stream)
                if frame.pts is not None and base:
                    t = frame.pts * base
                else:  # no timestamps: count frames at the declared rate
                    t = self.frames / (self.fps or 25.0)
                t0 = t if t0 is None else t0
                index = self.frames
                if self._pts is not None and frame.pts is not None:
                    index = int(np.searchsorted(self._pts, frame.pts))
                if frame.is_corrupt:  # concealed damage: the decoder's own flag, as good as its error
                    raise _CorruptFrame(f"frame {index} is flagged corrupt by the decoder")
                self.frames += 1
                if wanted is None or wanted(index):
                    yield index, t - t0, _rgbs(frame, self.specs, reformatter, orient)
        except BudgetError:
            raise
        except _Stopped as e:
            raise e.error from None
        except Exception as e:  # av.error.*: the frames before it stand
            if not self.frames:
                raise _decode_error(self.shown, e, self.path) from None
            stopped = f"{self.shown.name}: decoding stopped after {self.frames} frames ({type(e).__name__}: {e})"
            self.warning = "; ".join(filter(None, [self.warning, stopped]))
        finally:
            self._container.close()
        if not self.frames:
            raise VideoDecodeError(f"{self.shown}: video has no decodable frames")
