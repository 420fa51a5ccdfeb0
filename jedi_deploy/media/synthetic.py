"""The built-in synthetic multi-dataset video benchmark (the demo's default data).

A fair miniature of the paper's setting: three "datasets" with their own label spaces
(a few classes shared, most not), sizes over 10x apart, and their own nuisances
(background, noise, speed). Each clip shows one object; *appearance* classes differ by
shape/colour with a random jitter, *motion* classes come in pairs with the same object
moving in opposite directions, which only an order-aware model (TSM, 3D CNN) can tell
apart. Everything is a deterministic function of the seed, written as real mp4 files
with MMAction2 annotation lists, so the demo runs the same code path as real data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jedi_deploy.media.datasets import CLASSES_FILE

FRAMES = 16
SIZE = 32
FPS = 8

# name -> (shape, rgb colour, motion)
CLASSES: dict[str, tuple[str, tuple[int, int, int], str]] = {
    "slide_right": ("square", (240, 240, 240), "right"),
    "slide_left": ("square", (240, 240, 240), "left"),
    "rise": ("square", (250, 200, 60), "up"),
    "fall": ("square", (250, 200, 60), "down"),
    "zoom_in": ("disc", (240, 220, 40), "grow"),
    "zoom_out": ("disc", (240, 220, 40), "shrink"),
    "spin_cw": ("bar", (60, 220, 90), "cw"),
    "spin_ccw": ("bar", (60, 220, 90), "ccw"),
    "blink": ("cross", (230, 60, 230), "blink"),
    "red_ball": ("disc", (230, 40, 40), "jitter"),
    "blue_ball": ("disc", (50, 80, 240), "jitter"),
    "green_ring": ("ring", (60, 220, 90), "jitter"),
    "cyan_cross": ("cross", (40, 220, 230), "jitter"),
    "orange_bar": ("bar", (250, 140, 30), "jitter"),
    "yellow_square": ("square", (240, 230, 50), "jitter"),
    "purple_ring": ("ring", (150, 60, 220), "jitter"),
    "white_cross": ("cross", (240, 240, 240), "jitter"),
}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    train_per_class: int
    test_per_class: int
    background: str  # flat | gradient | texture
    noise: float  # std of per-pixel Gaussian noise, in 0..255 units
    speed: tuple[float, float]  # range of motion speed (fraction of the frame per clip)
    arch: str  # registry architecture of this dataset's expert in the demo


def benchmark_specs(quick: bool = False) -> list[DatasetSpec]:
    """The three datasets. ``quick`` shrinks them (for tests) and keeps the 10x size ratio."""
    k_tr, u_tr, h_tr, te = (18, 6, 2, 4) if quick else (32, 12, 4, 8)
    return [
        DatasetSpec("kinetics-mini",
                    ("slide_right", "slide_left", "rise", "fall", "zoom_in", "zoom_out",
                     "red_ball", "blue_ball", "blink"),
                    k_tr, te, "flat", 6.0, (0.35, 0.6), "tiny_c3d"),
        DatasetSpec("ucf-mini",
                    ("slide_right", "slide_left", "red_ball", "spin_cw", "spin_ccw",
                     "green_ring", "cyan_cross"),
                    u_tr, te, "gradient", 10.0, (0.5, 0.8), "tiny_tsm"),
        DatasetSpec("hmdb-mini",
                    ("rise", "fall", "orange_bar", "yellow_square", "purple_ring", "white_cross"),
                    h_tr, te, "texture", 16.0, (0.25, 0.45), "tiny_tsn"),
    ]


def _background(kind: str, rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(40, 110, size=3)
    if kind == "flat":
        bg = np.broadcast_to(base, (SIZE, SIZE, 3)).copy()
    elif kind == "gradient":
        ramp = np.linspace(-35, 35, SIZE)
        theta = rng.uniform(0, 2 * np.pi)
        g = np.cos(theta) * ramp[None, :] + np.sin(theta) * ramp[:, None]
        bg = base + g[..., None]
    else:  # texture: coarse random blocks
        blocks = rng.uniform(-40, 40, size=(SIZE // 4, SIZE // 4, 3))
        bg = base + np.kron(blocks, np.ones((4, 4, 1)))
    return bg


def _mask(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if shape == "square":
        return (np.abs(u) <= r) & (np.abs(v) <= r)
    if shape == "disc":
        return u * u + v * v <= r * r
    if shape == "ring":
        d = np.sqrt(u * u + v * v)
        return (d <= r) & (d >= 0.55 * r)
    if shape == "bar":
        return (np.abs(u) <= 1.6 * r) & (np.abs(v) <= 0.45 * r)
    if shape == "cross":
        return ((np.abs(u) <= r) & (np.abs(v) <= 0.35 * r)) | ((np.abs(v) <= r) & (np.abs(u) <= 0.35 * r))
    raise ValueError(shape)


def render_clip(class_name: str, spec: DatasetSpec, rng: np.random.Generator) -> np.ndarray:
    """One clip of ``class_name`` with ``spec``'s nuisances: ``uint8[FRAMES, SIZE, SIZE, 3]``."""
    shape, colour, motion = CLASSES[class_name]
    bg = _background(spec.background, rng)
    colour = np.clip(np.asarray(colour, np.float64) + rng.normal(0, 12, 3), 0, 255)
    speed = rng.uniform(*spec.speed)
    r = rng.uniform(3.5, 5.0)
    angle0 = rng.uniform(0, np.pi)
    travel = speed * (SIZE - 2 * r - 4)
    lo, hi = r + 2, SIZE - r - 2
    cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
    if motion in ("right", "left"):
        cx = rng.uniform(lo, hi - travel)
    if motion in ("up", "down"):
        cy = rng.uniform(lo + travel, hi)
    period = rng.integers(2, 4)
    walk = np.cumsum(rng.normal(0, 0.8, size=(FRAMES, 2)), axis=0)
    frames = np.empty((FRAMES, SIZE, SIZE, 3), np.uint8)
    for f in range(FRAMES):
        t = f / (FRAMES - 1)
        x, y, rr, a, visible = cx, cy, r, angle0, True
        if motion == "right":
            x = cx + travel * t
        elif motion == "left":
            x = cx + travel * (1 - t)
        elif motion == "up":
            y = cy - travel * t
        elif motion == "down":
            y = cy - travel * (1 - t)
        elif motion == "grow":
            rr = r * (0.45 + 1.1 * speed * t)
        elif motion == "shrink":
            rr = r * (0.45 + 1.1 * speed * (1 - t))
        elif motion == "cw":
            a = angle0 + 2.5 * speed * np.pi * t
        elif motion == "ccw":
            a = angle0 - 2.5 * speed * np.pi * t
        elif motion == "blink":
            visible = (f // period) % 2 == 0
            x, y = cx + walk[f, 0] * 0.3, cy + walk[f, 1] * 0.3
        else:  # jitter
            x, y = np.clip(cx + walk[f, 0], lo, hi), np.clip(cy + walk[f, 1], lo, hi)
        img = bg.copy()
        if visible:
            img[_mask(shape, x, y, rr, a)] = colour
        img += rng.normal(0, spec.noise, img.shape)
        frames[f] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """Encode ``uint8[N, H, W, 3]`` as H.264 (near-lossless) with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "8", "preset": "veryfast", "threads": "1"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)


def _dataset_seed(seed: int, ds_index: int, split_index: int) -> list[int]:
    return [seed, ds_index, split_index]


def plan_split(spec: DatasetSpec, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Labels of a split, class-balanced, in a seeded random order."""
    labels = np.repeat(np.arange(len(spec.classes)), per_class)
    return rng.permutation(labels)


def generate_benchmark(out_dir: str | Path, seed: int = 0, quick: bool = False,
                       progress: bool = True) -> list[Path]:
    """Write the benchmark under ``out_dir``; returns the dataset folders.

    Layout per dataset: ``classes.txt``, ``train.txt``, ``test.txt`` (MMAction2 lists),
    ``videos/<split>/<index>.mp4``. Identical for identical ``seed`` and ``quick``.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    specs = benchmark_specs(quick)
    total = sum(len(s.classes) * (s.train_per_class + s.test_per_class) for s in specs)
    bar = tqdm(total=total, desc="synthesising videos", unit="video", disable=not progress)
    roots = []
    for di, spec in enumerate(specs):
        root = out / spec.name
        root.mkdir(parents=True, exist_ok=True)
        (root / CLASSES_FILE).write_text("\n".join(spec.classes) + "\n")
        for si, (split, per_class) in enumerate((("train", spec.train_per_class), ("test", spec.test_per_class))):
            rng = np.random.default_rng(_dataset_seed(seed, di, si))
            lines = []
            for i, label in enumerate(plan_split(spec, per_class, rng)):
                rel = f"videos/{split}/{i:05d}.mp4"
                clip_rng = np.random.default_rng(_dataset_seed(seed, di, si) + [i])
                write_mp4(root / rel, render_clip(spec.classes[label], spec, clip_rng))
                lines.append(f"{rel} {label}")
                bar.update()
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
        roots.append(root)
    bar.close()
    return roots
