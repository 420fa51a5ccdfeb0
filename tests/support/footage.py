"""Generated footage with the shapes real files have: rotation metadata (portrait phone video),
variable frame rate, MKV/WebM/AVI/MOV containers, 10-bit and grayscale pixels, odd sizes,
single frames, corruption mid-stream and truncated tails.

For tests and benchmarks (nothing here is downloaded): every file is written with PyAV, and
every frame is a pure function of its index (:func:`pattern`), so a test can tell exactly which
frames a decoder handed over.
"""
from __future__ import annotations

import fractions
from pathlib import Path

import numpy as np

#: container format -> (file suffix, codec, pixel format) for a typical file of that kind
CONTAINERS = {
    "mp4": (".mp4", "libx264", "yuv420p"),
    "mov": (".mov", "libx264", "yuv420p"),
    "mkv": (".mkv", "libx264", "yuv420p"),
    "webm": (".webm", "libvpx", "yuv420p"),
    "avi": (".avi", "mpeg4", "yuv420p"),
    "ts": (".ts", "libx264", "yuv420p"),  # MPEG-TS: timestamps start late, seeks land inexactly
    "m2ts": (".m2ts", "libx264", "yuv420p"),
}


def pattern(i: int, h: int, w: int) -> np.ndarray:
    """Frame ``i``: ``uint8[h, w, 3]``, asymmetric (so rotations and flips show) and with the
    index encoded in large blocks (so it survives lossy coding): a white block at the top-left
    quarter-width, a grey bar along the bottom, and the index's low 6 bits as six vertical
    bands of bright/dark green in the middle rows."""
    img = np.full((h, w, 3), 40, np.uint8)
    img[: max(1, h // 3), : max(1, w // 4)] = 250
    img[h - max(1, h // 8):, :] = 128
    bands = np.array_split(np.arange(w), 6)
    for b, cols in enumerate(bands):
        if (i >> b) & 1:
            img[h // 3: h - h // 8, cols, 1] = 230
    return img


def frame_index(img: np.ndarray) -> int:
    """The index :func:`pattern` drew into ``img`` (low 6 bits), read back after decoding."""
    h, w = img.shape[:2]
    mid = img[h // 3: h - max(1, h // 8)]
    bands = np.array_split(np.arange(w), 6)
    return sum(1 << b for b, cols in enumerate(bands) if mid[:, cols, 1].mean() > 135)


def write_video(path: str | Path, num_frames: int = 30, *, size: tuple[int, int] = (64, 48), fps: int = 25,
                kind: str = "mp4", pix_fmt: str | None = None, rotation: int | None = None,
                flip: str | None = None, durations: list[int] | None = None, gop: int | None = None,
                frames=None, options: dict | None = None, codec_options: dict | None = None,
                bit_rate: int | None = None) -> Path:
    """Write ``num_frames`` frames of :func:`pattern` (or the given ``frames``: any iterable of
    ``uint8[H, W, 3]``) at ``size`` = (width, height).

    ``kind``: a key of :data:`CONTAINERS`; ``pix_fmt`` overrides its pixel format (e.g.
    ``yuv420p10le``, ``gray``); ``rotation``: display-matrix rotation in degrees counterclockwise
    (what a phone writes for portrait video); ``flip``: ``"h"`` or ``"v"``, a mirroring display
    matrix instead; ``durations``: per-frame durations in ms (variable frame rate; the time base
    becomes 1/1000); ``gop``: keyframe interval; ``options``: container options (e.g.
    ``{"movflags": "faststart"}``: the MP4 index at the front, as streaming files have it);
    ``codec_options`` replace the encoder's defaults; ``bit_rate`` in bit/s."""
    import av

    suffix, codec, default_pix = CONTAINERS[kind]
    path = Path(path)
    w, h = size
    with av.open(str(path), "w", options=options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = pix_fmt or default_pix
        if codec_options is not None:
            stream.options = codec_options
        elif codec == "libx264":
            stream.options = {"crf": "12", "preset": "veryfast", "threads": "1"}
        if bit_rate:
            stream.bit_rate = bit_rate
        if gop:
            stream.gop_size = gop
        if durations is not None:
            stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if flip:
            one = 1 << 16
            stream.set_display_matrix([-one if flip == "h" else one, 0, 0, 0, -one if flip == "v" else one, 0,
                                       0, 0, 1 << 30])
        images = frames if frames is not None else (pattern(i, h, w) for i in range(num_frames))
        t = 0
        for i, img in enumerate(images):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if durations is not None:
                frame.pts, frame.time_base = t, fractions.Fraction(1, 1000)
                t += durations[i % len(durations)]
            else:
                frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def truncate(path: str | Path, fraction: float, out: str | Path) -> Path:
    """A copy of ``path`` cut after ``fraction`` of its bytes (an interrupted download)."""
    data = Path(path).read_bytes()
    Path(out).write_bytes(data[: int(len(data) * fraction)])
    return Path(out)


def corrupt(path: str | Path, start: float, length: int, out: str | Path, seed: int = 0) -> Path:
    """A copy of ``path`` with ``length`` random bytes written at ``start`` (a fraction of its size):
    a bad sector or a broken transfer in the middle of the stream."""
    data = bytearray(Path(path).read_bytes())
    at = int(len(data) * start)
    data[at:at + length] = np.random.default_rng(seed).integers(0, 256, min(length, len(data) - at),
                                                                 dtype=np.uint8).tobytes()
    Path(out).write_bytes(bytes(data))
    return Path(out)


def damage_packet(path: str | Path, index: int, out: str | Path) -> Path:
    """A copy of ``path`` (remuxed, nothing re-encoded) whose ``index``-th video packet has its last
    two thirds scrambled: the decoder conceals the damage and flags that frame corrupt."""
    import av

    with av.open(str(path)) as inp, av.open(str(out), "w") as dst:
        src = inp.streams.video[0]
        stream = dst.add_stream_from_template(src)
        for i, packet in enumerate(p for p in inp.demux(src) if p.size):
            if i == index:
                data = bytearray(bytes(packet))
                for j in range(len(data) // 3, len(data)):
                    data[j] = (data[j] * 37 + 11) & 255
                bad = av.Packet(bytes(data))
                bad.pts, bad.dts, bad.time_base, bad.is_keyframe = packet.pts, packet.dts, packet.time_base, packet.is_keyframe
                packet = bad
            packet.stream = stream
            dst.mux(packet)
    return Path(out)
