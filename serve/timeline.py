"""Sliding-window inference over long videos (``jedi infer MODEL VIDEO --window SEC --stride SEC``).

The frames' times come first, from the packets (no decoding); then one sequential decoding pass
(:class:`jedi_deploy.media.decode.FrameStream`) converts only the frames some window samples and
keeps each only while a window still needs it, so memory is bounded by the model's input and the
windows' overlap (resized as the model's preprocessing says), never by the window's length or the
video. Window k covers ``[k * stride, k * stride + window)`` seconds; inside it the model's own
sampling picks its frames (``clip_indices`` over the window's frames, as if the window were a
video), and the model's views and averaging apply as for a whole video. Per window: class
probabilities; then optional smoothing (a centred moving average over ``smooth`` windows) and
merging of consecutive windows with the same top-1 label into segments.

Outputs: per-window rows (JSONL or CSV: start, end, top-k), the segments, and a PNG plot. Torch-
free. One module: the window plan, the pass that keeps frames for it, the answer and its outputs are
one rule read together (a window's frames, times and rows must agree).
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.errors import BudgetError, InputError
from jedi_deploy.contracts.metrics import top_classes
from jedi_deploy.contracts.preprocess import clip_indices, resize_shape
from jedi_deploy.media.decode import NO_LIMITS, FrameStream, Limits

from .config import MAX_HELD_MB, MAX_WINDOWS, WindowSpec
from .runtime import OnnxModel


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    probs: np.ndarray
    frames: int  # frames of the video inside the window


def check_budget(spec: WindowSpec, stream: FrameStream, shown: str, specs=()) -> None:
    """Refuse, before decoding, a stride below one frame interval of this video (windows that could
    hold no new frame), more windows than :data:`MAX_WINDOWS` by the declared duration, and windows
    whose frames held at once (the frames the windows overlapping one instant sample, resized)
    would pass :data:`MAX_HELD_MB`."""
    if stream.fps and spec.stride < 1.0 / stream.fps - 1e-9:
        raise BudgetError(f"{shown}: stride {spec.stride:g} s is below one frame interval of this video "
                          f"(1/{stream.fps:g} s = {1.0 / stream.fps:.4g} s)")
    if stream.duration and stream.duration / spec.stride > MAX_WINDOWS:
        raise BudgetError(f"{shown}: {stream.duration:.1f} s in windows every {spec.stride:g} s is "
                          f"{stream.duration / spec.stride:.0f} windows, more than the {MAX_WINDOWS} a request may "
                          "have; use a longer stride")
    held = held_bytes(spec, stream.fps or 25.0, stream.size, specs, stream.duration)
    if held > MAX_HELD_MB * 2**20:
        raise BudgetError(f"{shown}: windows of {spec.window:g} s every {spec.stride:g} s hold about "
                          f"{held / 2**20:.0f} MiB of frames at once, more than the {MAX_HELD_MB} MiB a request may "
                          "hold; use a longer stride or a shorter window")


def held_bytes(spec: WindowSpec, fps: float, size: tuple[int, int], specs, duration: float | None = None) -> int:
    """The most bytes of frames :func:`windows` holds at once: every window overlapping one instant
    keeps the frames its sampling picks (at most all the frames of one window, or of the video), per
    input, resized."""
    h, w = size
    per_window = max(1, int(math.ceil(min(spec.window, duration or spec.window) * fps)))
    overlapping = int(math.ceil(spec.window / spec.stride)) + 1
    total = 0
    for s in specs:
        if s is None:
            continue
        th, tw = resize_shape(h, w, s)
        frames = min(per_window + 1, overlapping * clip_indices(per_window, s, fps).size)
        total += frames * th * tw * 3
    return total


@dataclass
class _Planned:
    k: int
    start: float
    end: float
    lo: int  # the first frame inside the window
    frames: int  # frames of the video inside the window
    need: list | None  # per input: the absolute frame indices its sampling picks ([clips, T]); None: empty
    last: int  # the largest index it needs (-1: none)

    def indices(self) -> set[int]:
        return {int(x) for n in self.need for x in n.ravel()} if self.need else set()


def _plan(times: np.ndarray, spec: WindowSpec, specs, fps: float | None, first: int) -> Iterator[_Planned]:
    """Window k covers ``[k * stride, k * stride + window)`` seconds, for every k from ``first`` whose
    start is at or before the last frame; a window that runs past the last frame ends one frame
    interval after it."""
    last, k = float(times[-1]), first
    while k * spec.stride <= last:
        start = k * spec.stride
        lo = int(np.searchsorted(times, start, "left"))
        hi = int(np.searchsorted(times, start + spec.window, "left"))
        end = start + spec.window if last >= start + spec.window else min(start + spec.window,
                                                                            last + 1.0 / (fps or 25.0))
        need = [lo + clip_indices(hi - lo, s, fps) for s in specs] if hi > lo else None
        yield _Planned(k, start, end, lo, hi - lo, need, max(int(n.max()) for n in need) if need else -1)
        k += 1


class _Pass:
    """One decoding pass over the planned windows: which frames to convert, which to keep, which
    windows are complete."""

    def __init__(self, plan: Iterator[_Planned]):
        self.plan, self.upcoming = plan, next(plan, None)
        self.pending: deque[_Planned] = deque()
        self.need: Counter = Counter()  # frame index -> pending windows sampling it
        self.kept: dict[int, list] = {}
        self.seen = -1  # the largest frame index decoded

    def take(self, upto: int) -> None:
        """Plan every window starting at or before frame ``upto`` (windows start in frame order)."""
        while self.upcoming is not None and self.upcoming.lo <= upto:
            self.pending.append(self.upcoming)
            self.need.update(self.upcoming.indices())
            self.upcoming = next(self.plan, None)

    def wanted(self, i: int) -> bool:
        """Frame ``i`` is converted if a window samples it, or a sampled frame before it never came (a
        frame the decoder dropped: the next one stands in, as in decode_clips)."""
        self.take(i)
        if i in self.need:
            return True
        # only past a gap in the indices (rare) is every pending index looked at; every frame pays O(1)
        return i > self.seen + 1 and any(self.seen < j < i and j not in self.kept for j in self.need)

    def keep(self, i: int, frames: list) -> None:
        for j in [j for j in self.need if self.seen < j <= i and j not in self.kept]:
            self.kept[j] = frames
        self.seen = max(self.seen, i)

    def complete(self) -> Iterator[_Planned]:
        """The windows, in order, whose sampled frames have all been decoded; their frames are let go
        once no other pending window samples them."""
        while self.pending and self.pending[0].last <= self.seen:
            w = self.pending.popleft()
            yield w
            for j in w.indices():
                self.need[j] -= 1
                if self.need[j] <= 0:
                    del self.need[j]
                    self.kept.pop(j, None)

    def clips(self, w: _Planned) -> list[np.ndarray]:
        return [np.stack([self.kept[int(j)][i] for j in n.ravel()]).reshape(*n.shape, *self.kept[int(n.flat[0])][i].shape)
                for i, n in enumerate(w.need)]


def windows(model: OnnxModel, video: str | Path, spec: WindowSpec,
            stream: FrameStream | None = None, check: Callable[[], None] | None = None) -> Iterator[Window]:
    """Class probabilities of every window of ``video``, in order, from one decoding pass that keeps
    only the frames some pending window samples (each resized as decoded), so memory is bounded by
    the model's input and the windows' overlap (:data:`MAX_HELD_MB`), never by the window's length or
    the file. At most :data:`MAX_WINDOWS` window steps (empty ones count: a gap in the timestamps
    cannot make the loop run away); ``check()`` is called at every step and may raise to stop (a
    cancelled job). A decode that stops early (a corrupt or truncated file) is planned again over
    the frames before the error, in a second pass for the windows not yet given."""
    specs = [s.preprocess for s in model.card.inputs]
    stream = stream or FrameStream(video, specs)
    shown = str(stream.shown)
    check_budget(spec, stream, shown, specs)
    times = stream.times()
    if times is None:  # no timestamps: count the frames (decoded, not converted), at the declared rate
        counter = FrameStream(video, [None], name=shown, limits=stream.limits)
        for _ in counter.select(lambda i: False):
            pass
        times = np.arange(counter.frames, dtype=np.float64) / (stream.fps or 25.0)
    steps, first, current = 0, 0, stream

    def step(w: _Planned) -> None:
        nonlocal steps, first
        steps += 1
        if steps > MAX_WINDOWS:
            raise BudgetError(f"{shown}: more than {MAX_WINDOWS} windows of {spec.window:g} s every "
                              f"{spec.stride:g} s; use a longer stride")
        if check is not None:
            check()
        first = w.k + 1

    while True:
        run = _Pass(_plan(times, spec, specs, stream.fps, first))
        for i, frames in current.select(run.wanted):
            run.keep(i, frames)
            for w in run.complete():
                step(w)
                if w.need is not None:
                    feed = model.card.feed_from_clips(run.clips(w), video)
                    yield Window(w.start, w.end, model.probs(model.run(feed)), w.frames)
        run.take(len(times))  # what is left: empty windows at the end, or windows past an early stop
        for w in run.complete():  # only empty ones: every other window's frames were seen in the loop
            step(w)
        if not run.pending:
            return
        # the decode stopped early (a corrupt or truncated file; the stream's warning says so): the
        # frames before the error are the video, planned again for the windows not yet given
        if run.seen < 0:
            raise InputError(f"{shown}: video has no decodable frames")
        times = times[: run.seen + 1]
        current = FrameStream(video, specs, name=shown, limits=stream.limits)
        current.times()


def smooth(probs: np.ndarray, size: int) -> np.ndarray:
    """Centred moving average over ``size`` windows (edges average what exists)."""
    if size <= 1 or len(probs) < 2:
        return probs
    half = size // 2
    c = np.cumsum(np.vstack([np.zeros((1, probs.shape[1])), probs]), axis=0)
    lo = np.clip(np.arange(len(probs)) - half, 0, len(probs))
    hi = np.clip(np.arange(len(probs)) + half + 1, 0, len(probs))
    return (c[hi] - c[lo]) / (hi - lo)[:, None]


def segments(starts: np.ndarray, ends: np.ndarray, probs: np.ndarray, categories, stride: float,
             duration: float) -> list[dict]:
    """Consecutive windows with the same top-1 label, merged: each window stands for the stride
    around its centre, so boundaries fall midway between the centres of windows that disagree."""
    top = probs.argmax(axis=1)
    centres = (starts + ends) / 2
    out = []
    i = 0
    while i < len(top):
        j = i
        while j + 1 < len(top) and top[j + 1] == top[i]:
            j += 1
        a = 0.0 if i == 0 else (centres[i - 1] + centres[i]) / 2
        b = duration if j == len(top) - 1 else (centres[j] + centres[j + 1]) / 2
        out.append({"start": round(float(a), 3), "end": round(float(b), 3), "label": categories[top[i]],
                    "index": int(top[i]), "mean_prob": round(float(probs[i:j + 1, top[i]].mean()), 4),
                    "windows": j - i + 1})
        i = j + 1
    return out


@dataclass
class Timeline:
    video: str
    window: float
    stride: float
    smooth: int
    starts: np.ndarray
    ends: np.ndarray
    probs: np.ndarray  # smoothed
    categories: tuple
    segments: list
    duration: float
    warning: str | None = None

    def rows(self, topk: int = 5) -> list[dict]:
        out = []
        for s, e, p in zip(self.starts, self.ends, self.probs):
            order = top_classes(p, topk)
            out.append({"start": round(float(s), 3), "end": round(float(e), 3),
                        "top": [{"label": self.categories[i], "index": int(i), "prob": round(float(p[i]), 5)}
                                for i in order]})
        return out

    def answer(self, topk: int, max_bytes: int | None = None) -> dict:
        """The JSON answer of a windowed request or job: the summary and the windows. With
        ``max_bytes``, an answer that would be larger (as JSON) is a :class:`BudgetError`, refused
        from the window count before any row is built and checked again row by row."""
        per_row = 48 + topk * (40 + max(len(c) for c in self.categories))
        if max_bytes is not None and len(self.starts) * per_row > 2 * max_bytes:
            self._too_large(topk, len(self.starts) * per_row, max_bytes)
        rows, size = [], 0
        for row in self.rows(topk):
            size += len(json.dumps(row)) + 2
            if max_bytes is not None and size > max_bytes:
                self._too_large(topk, size * len(self.starts) / (len(rows) + 1), max_bytes)
            rows.append(row)
        return {**self.summary(), "windows": rows}

    def _too_large(self, topk: int, size: float, max_bytes: int):
        raise BudgetError(f"{self.video}: {len(self.starts)} windows with the top {topk} labels each make an answer of "
                          f"about {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:g} MiB this service returns "
                          "(jedi serve --max-result-mb); use a longer stride or a smaller topk")

    def summary(self) -> dict:
        return {"video": self.video, "duration_s": round(self.duration, 3), "windows": len(self.starts),
                "window_s": self.window, "stride_s": self.stride, "smooth": self.smooth,
                "segments": self.segments, **({"warning": self.warning} if self.warning else {})}


def run_windows(model: OnnxModel, video: str | Path, spec: WindowSpec, *, progress: bool = False, on_window=None,
                name: str | None = None, limits: Limits = NO_LIMITS) -> Timeline:
    """Every window of ``video`` classified, smoothed and merged into segments. ``on_window(fraction)``
    is called after each window with the share of the video done (by its declared duration); it may
    raise to stop; ``limits`` bound the decode (:class:`Limits`), and its ``check()`` is called at
    every window step too, empty ones included, and may raise. ``name`` is what the answer, errors
    and warnings call the video (an upload's own name rather than its temporary file)."""
    from tqdm.auto import tqdm

    window, stride, smooth_windows = spec.window, spec.stride, spec.smooth
    shown = name or str(video)
    stream = FrameStream(video, [s.preprocess for s in model.card.inputs], name=shown, limits=limits)
    found = []
    for w in tqdm(windows(model, video, spec, stream, limits.check), desc=Path(shown).name, unit="window",
                  disable=not progress, leave=False):
        found.append(w)
        if on_window is not None:
            on_window(w.end / stream.duration if stream.duration else 0.0)
    if not found:
        raise InputError(f"{shown}: no window of {window} s has a frame")
    starts = np.array([w.start for w in found])
    ends = np.array([w.end for w in found])
    probs = smooth(np.stack([w.probs for w in found]), smooth_windows)
    duration = float(ends[-1])
    return Timeline(shown, window, stride, smooth_windows, starts, ends, probs, model.categories,
                    segments(starts, ends, probs, model.categories, stride, duration), duration, stream.warning)


def format_rows(rows: list[dict], fmt: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        k = max(len(r["top"]) for r in rows)
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["start", "end"] + [c for i in range(1, k + 1) for c in (f"label{i}", f"prob{i}")])
        for r in rows:
            w.writerow([r["start"], r["end"]] + [v for t in r["top"] for v in (t["label"], t["prob"])])
        return buf.getvalue()
    return "".join(json.dumps(r) + "\n" for r in rows)


def plot_timeline(tl: Timeline, path: str | Path, classes: int = 6) -> Path:
    """A PNG: the probability of the most frequent top-1 labels over time, segments as a bar below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = (tl.starts + tl.ends) / 2
    top = tl.probs.argmax(axis=1)
    shown = [int(c) for c, _ in sorted(zip(*np.unique(top, return_counts=True)), key=lambda x: -x[1])][:classes]
    colours = plt.get_cmap("tab10")
    fig, (ax, bar) = plt.subplots(2, 1, figsize=(10, 4), sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    for n, c in enumerate(shown):
        ax.plot(centres, tl.probs[:, c], color=colours(n % 10), label=tl.categories[c])
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(f"{Path(tl.video).name}: {tl.window:g} s windows every {tl.stride:g} s")
    for s in tl.segments:
        n = shown.index(s["index"]) if s["index"] in shown else len(shown)
        bar.axvspan(s["start"], s["end"], color=colours(n % 10))
        bar.text((s["start"] + s["end"]) / 2, 0.5, s["label"], ha="center", va="center", fontsize="x-small")
    bar.set_yticks([])
    bar.set_xlabel("seconds")
    bar.set_xlim(0, tl.duration)
    fig.tight_layout()
    from jedi_deploy.contracts.header import atomic_path

    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def run_timeline(model_path: str | Path, video: str | Path, spec: WindowSpec, *, topk: int = 5,
                 out: Path | None = None, fmt: str | None = None, plot: Path | None = None,
                 providers: str | None = None, threads: int | None = None, runtime: str = "ort",
                 progress: bool = False) -> tuple[str, Timeline]:
    """``jedi infer MODEL VIDEO --window``: the per-window rows to ``out`` (JSONL or CSV, atomically;
    else returned as text), the segments beside it (``<out stem>.segments.json``) and the plot."""
    from jedi_deploy.contracts.header import atomic_path, require_writable_dir

    from .infer import output_format

    fmt = output_format(out, fmt)
    fmt = "jsonl" if fmt == "text" else fmt
    for p in (out, plot):
        if p is not None:
            require_writable_dir(Path(p).parent)
    model = OnnxModel(model_path, providers=providers, threads=threads, runtime=runtime)
    tl = run_windows(model, video, spec, progress=progress)
    text = format_rows(tl.rows(topk), fmt)
    if plot is not None:
        plot_timeline(tl, plot)
    if out is None:
        return text, tl
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)
    seg = Path(out).with_suffix(".segments.json")
    with atomic_path(seg) as tmp:
        Path(tmp).write_text(json.dumps(tl.summary(), indent=1) + "\n")
    return "", tl


def format_segments(tl: Timeline) -> str:
    lines = [f"{s['start']:9.2f} - {s['end']:9.2f} s  {s['label']}  (mean p {s['mean_prob']:.3f}, "
             f"{s['windows']} window{'s' if s['windows'] != 1 else ''})" for s in tl.segments]
    return "\n".join(lines) + "\n"
