"""Sliding-window inference over long videos (``jedi infer MODEL VIDEO --window SEC --stride SEC``).

One sequential decoding pass (:class:`jedi_deploy.video.FrameStream`): frames are kept only while a
window still needs them, so memory is bounded by one window's frames (resized as the model's
preprocessing says), never by the video. Window k covers ``[k * stride, k * stride + window)``
seconds; inside it the model's own sampling picks its frames (``clip_indices`` over the window's
frames, as if the window were a video), and the model's views and averaging apply as for a whole
video. Per window: class probabilities; then optional smoothing (a centred moving average over
``smooth`` windows) and merging of consecutive windows with the same top-1 label into segments.

Outputs: per-window rows (JSONL or CSV: start, end, top-k), the segments, and a PNG plot. Torch-free.
"""
from __future__ import annotations

import csv
import io
import json
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.errors import BudgetError, InputError
from jedi_deploy.contracts.metrics import top_classes
from jedi_deploy.contracts.preprocess import clip_indices
from jedi_deploy.media.decode import NO_LIMITS, FrameStream, Limits

from .config import MAX_WINDOWS, WindowSpec
from .runtime import OnnxModel


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    probs: np.ndarray
    frames: int  # frames of the video inside the window


def check_budget(spec: WindowSpec, stream: FrameStream, shown: str) -> None:
    """Refuse, before decoding, a stride below one frame interval of this video (windows that could
    hold no new frame) and more windows than :data:`MAX_WINDOWS` by the declared duration."""
    if stream.fps and spec.stride < 1.0 / stream.fps - 1e-9:
        raise BudgetError(f"{shown}: stride {spec.stride:g} s is below one frame interval of this video "
                          f"(1/{stream.fps:g} s = {1.0 / stream.fps:.4g} s)")
    if stream.duration and stream.duration / spec.stride > MAX_WINDOWS:
        raise BudgetError(f"{shown}: {stream.duration:.1f} s in windows every {spec.stride:g} s is "
                          f"{stream.duration / spec.stride:.0f} windows, more than the {MAX_WINDOWS} a request may "
                          "have; use a longer stride")


def windows(model: OnnxModel, video: str | Path, spec: WindowSpec,
            stream: FrameStream | None = None, check: Callable[[], None] | None = None) -> Iterator[Window]:
    """Class probabilities of every window of ``video``, in order, from one decoding pass. At most
    :data:`MAX_WINDOWS` window steps (empty ones count: a gap in the timestamps cannot make the
    loop run away); ``check()`` is called at every step and may raise to stop (a cancelled job)."""
    window, stride = spec.window, spec.stride
    specs = [s.preprocess for s in model.card.inputs]
    stream = stream or FrameStream(video, specs)
    check_budget(spec, stream, str(stream.shown))
    buf: deque = deque()  # (t, [frame per spec]) of frames some later window still needs
    k, last = 0, None

    def step() -> None:
        nonlocal k
        k += 1
        if k > MAX_WINDOWS:
            raise BudgetError(f"{stream.shown}: more than {MAX_WINDOWS} windows of {window:g} s every {stride:g} s "
                              "(the timestamps run past the declared duration); use a longer stride")
        if check is not None:
            check()

    def classify(k: int, end: float) -> Window | None:
        start = k * stride
        inside = [f for f in buf if start <= f[0] < start + window]
        if not inside:
            return None
        clips = []
        for i, spec in enumerate(specs):
            frames = np.stack([f[1][i] for f in inside])
            clips.append(frames[clip_indices(len(frames), spec, stream.fps)])
        feed = model.card.feed_from_clips(clips, video)
        return Window(start, end, model.probs(model.run(feed)), len(inside))

    for t, frames in stream:
        while t >= k * stride + window:  # window k is complete
            w = classify(k, k * stride + window)
            if w is not None:
                yield w
            step()
            while buf and buf[0][0] < k * stride:
                buf.popleft()
        if t >= k * stride:
            buf.append((t, frames))
        last = t
    while last is not None and k * stride <= last:  # the tail: windows that start before the last frame
        w = classify(k, min(k * stride + window, last + 1.0 / (stream.fps or 25.0)))
        if w is not None:
            yield w
        step()
        while buf and buf[0][0] < k * stride:
            buf.popleft()


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
