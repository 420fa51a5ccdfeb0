"""Sliding-window inference on generated long videos with known segment boundaries, through
`jedi infer --window` (torch-free), and its memory bound on a 10-minute video."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from jedi_deploy.contracts.errors import ConfigError
from support.colour import colour_model, coloured_video
from support.poll import until


def infer(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jedi_deploy.serve.infer", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def test_segments_are_found_within_one_stride(tmp_path):
    model = colour_model(tmp_path / "colour.onnx")
    plan = [("red", 37.0), ("green", 23.5), ("blue", 41.0), ("red", 18.0)]
    video = coloured_video(tmp_path / "long.mp4", plan)
    out = tmp_path / "timeline.jsonl"
    r = infer(model, video, "--window", 4, "--stride", 2, "--topk", 2, "--out", out, "--plot", tmp_path / "t.png",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["start"] == 0 and rows[1]["start"] == 2 and len(rows[0]["top"]) == 2
    assert all(r["end"] - r["start"] <= 4 + 1e-6 for r in rows)
    seg = json.loads(out.with_suffix(".segments.json").read_text())["segments"]
    assert [s["label"] for s in seg] == [c for c, _ in plan]
    bounds = np.cumsum([d for _, d in plan])[:-1]
    for s, b in zip(seg[1:], bounds):
        assert abs(s["start"] - b) <= 2.0, (s, b)  # within one stride
    assert seg[-1]["end"] == pytest.approx(sum(d for _, d in plan), abs=0.5)
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "red" in r.stderr and "segment(s)" in r.stderr
    # CSV rows, and smoothing keeps the segments
    r = infer(model, video, "--window", 4, "--stride", 2, "--smooth", 3, "--out", tmp_path / "t.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("start,end,label1,prob1") and len(lines) == len(rows) + 1


def test_window_errors_are_one_line(tmp_path):
    model = colour_model(tmp_path / "colour.onnx")
    video = coloured_video(tmp_path / "v.mp4", [("red", 3.0)])
    for args, needle in ((["--window", 2, "--stride", 3], "longer than --window"),
                         (["--stride", 1], "give --window"),
                         (["--window", 0], "must be > 0"),
                         (["--window", 2, video], "one video")):
        r = infer(model, video, *args, cwd=tmp_path)
        assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error:") and needle in r.stderr
    from jedi_deploy.serve.config import WindowSpec

    with pytest.raises(ConfigError):
        WindowSpec.parse(1, 2)


@pytest.mark.slow
def test_memory_is_bounded_by_the_window_on_a_ten_minute_video(tmp_path):
    """Peak memory of `jedi infer --window` on a 10-minute 320x240 video stays within a few MB of the
    same run on a 1-minute video: frames are kept only while a window needs them (holding every frame of
    the long video would take ~550 MB)."""
    model = colour_model(tmp_path / "colour.onnx", short_side=0)  # frames kept at full size
    plan = [("red", 200.0), ("green", 200.0), ("blue", 200.0)]
    long = coloured_video(tmp_path / "long.mp4", plan, size=(320, 240))
    short = coloured_video(tmp_path / "short.mp4", [("red", 20.0), ("green", 20.0), ("blue", 20.0)], size=(320, 240))
    peak = {}
    for name, video in (("short", short), ("long", long)):
        code = ("import resource, subprocess, sys; r = subprocess.run([sys.executable, '-m', "
                "'jedi_deploy.serve.infer', sys.argv[1], sys.argv[2], '--window', '4', '--stride', '2', '--out', "
                "sys.argv[3]]); assert r.returncode == 0; print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        r = subprocess.run([sys.executable, "-c", code, model, video, tmp_path / f"{name}.jsonl"], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        peak[name] = int(r.stdout.split()[-1]) / 1024  # MB
    seg = json.loads((tmp_path / "long.segments.json").read_text())
    assert [s["label"] for s in seg["segments"]] == ["red", "green", "blue"] and seg["duration_s"] >= 599
    assert peak["long"] - peak["short"] < 25, peak


def test_the_service_returns_the_same_timeline(tmp_path):
    """POST /v1/predict?window=..&stride=.. (raw body and multipart) answers with the windows and the
    segments `jedi infer --window` finds; bad window fields are a 422 and the service goes on."""
    import requests

    from support.service import predict, start, stop

    model = colour_model(tmp_path / "colour.onnx")
    video = coloured_video(tmp_path / "v.mp4", [("green", 11.0), ("blue", 9.0)])
    proc, addr = start([model])
    try:
        url = f"http://{addr}"
        r = requests.post(f"{url}/v1/predict?window=4&stride=2&topk=1", data=video.read_bytes(),
                          headers={"Content-Type": "video/mp4"}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert [s["label"] for s in body["segments"]] == ["green", "blue"] and abs(body["segments"][1]["start"] - 11) <= 2
        assert body["windows"][0]["start"] == 0 and len(body["windows"][0]["top"]) == 1 and body["video"] == "upload"
        r2 = predict(url, video, window="4", stride="2", name="v.mp4")
        assert r2.status_code == 200 and r2.json()["segments"] == body["segments"] and r2.json()["video"] == "v.mp4"
        for q in ("window=0", "window=4&stride=5", "stride=2", "window=abc", "window=nan", "window=1e9"):
            bad = requests.post(f"{url}/v1/predict?{q}", data=video.read_bytes(), headers={"Content-Type": "video/mp4"},
                                timeout=60)
            assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_field", (q, bad.text)
        tiny = requests.post(f"{url}/v1/predict?window=1e-9&stride=1e-9", data=video.read_bytes(),
                             headers={"Content-Type": "video/mp4"}, timeout=60)  # once froze the service
        assert tiny.status_code == 422 and tiny.json()["error"]["type"] == "over_budget", tiny.text
        job = requests.post(f"{url}/v1/jobs?window=1e-300&stride=1e-300", data=video.read_bytes(),
                            headers={"Content-Type": "video/mp4"}, timeout=60).json()
        done = until(lambda: requests.get(f"{url}/v1/jobs/{job['id']}", timeout=10).json()["status"] != "running"
                     and requests.get(f"{url}/v1/jobs/{job['id']}", timeout=10).json(), timeout=30)
        assert done["status"] == "failed" and "frame interval" in done["error"]
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        stop(proc)


# --- budgets: no window/stride choice and no file makes the window loop run away -------------------

def test_a_stride_below_one_frame_interval_is_refused_before_decoding(tmp_path):
    import time

    from jedi_deploy.contracts.errors import BudgetError
    from jedi_deploy.serve.config import WindowSpec
    from jedi_deploy.serve.runtime import OnnxModel
    from jedi_deploy.serve.timeline import run_windows

    model = OnnxModel(colour_model(tmp_path / "colour.onnx"))
    video = coloured_video(tmp_path / "v.mp4", [("red", 2.0)], fps=4)
    for window, stride in ((1e-9, 1e-9), (1e-300, 1e-300), (2.0, 0.2)):
        t0 = time.perf_counter()
        with pytest.raises(BudgetError, match=r"below one frame interval of this video \(1/4 s"):
            run_windows(model, video, WindowSpec.parse(window, stride), name="clip.mp4")
        assert time.perf_counter() - t0 < 5
    r = infer(tmp_path / "colour.onnx", video, "--window", "1e-9", "--stride", "1e-9", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: ") and "frame interval" in r.stderr


def test_the_window_count_is_capped_by_duration_and_by_steps(tmp_path, monkeypatch):
    from jedi_deploy.contracts.errors import BudgetError
    from jedi_deploy.media.decode import FrameStream
    from jedi_deploy.serve import timeline
    from jedi_deploy.serve.config import WindowSpec
    from jedi_deploy.serve.runtime import OnnxModel

    model = OnnxModel(colour_model(tmp_path / "colour.onnx"))
    video = coloured_video(tmp_path / "v.mp4", [("red", 6.0)], fps=4)
    monkeypatch.setattr(timeline, "MAX_WINDOWS", 5)
    with pytest.raises(BudgetError, match="more than the 5 a request may have"):  # by the declared duration
        timeline.run_windows(model, video, WindowSpec.parse(1.0, 0.5))
    stream = FrameStream(video, [s.preprocess for s in model.card.inputs])
    stream.duration = None  # a container that declares nothing: the steps themselves are counted
    with pytest.raises(BudgetError, match="more than 5 windows"):
        list(timeline.windows(model, video, WindowSpec.parse(1.0, 0.5), stream))
    assert len(timeline.run_windows(model, video, WindowSpec.parse(2.0, 2.0)).starts) == 3  # within the budget


def test_every_window_and_stride_is_bounded_or_refused(tmp_path):
    """Generated window/stride/frame-rate choices: each either runs at most duration/stride + 1
    windows, or is refused with a BudgetError or ConfigError - never a hang."""
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from jedi_deploy.contracts.errors import BudgetError, InputError
    from jedi_deploy.serve.config import WindowSpec
    from jedi_deploy.serve.runtime import OnnxModel
    from jedi_deploy.serve.timeline import run_windows

    model = OnnxModel(colour_model(tmp_path / "colour.onnx"))
    videos = {fps: coloured_video(tmp_path / f"v{fps}.mp4", [("red", 1.5), ("blue", 1.5)], fps=fps) for fps in (2, 5, 12)}
    seconds = st.floats(min_value=1e-300, max_value=5000, allow_nan=False, allow_infinity=False)

    @settings(max_examples=40, deadline=None, database=None, derandomize=True)
    @given(fps=st.sampled_from(sorted(videos)), window=seconds, stride=seconds | st.none())
    def check(fps, window, stride):
        try:
            spec = WindowSpec.parse(window, stride)
        except ConfigError:
            return
        try:
            tl = run_windows(model, videos[fps], spec)
        except BudgetError as e:
            assert spec.stride < 1 / fps or 3.0 / spec.stride > 20_000 or "MiB of frames" in str(e), e
            return
        except InputError as e:  # a window longer than the video still has its frames: never this
            raise AssertionError(e) from None
        assert 1 <= len(tl.starts) <= 3.0 / spec.stride + 2

    check()


def test_one_window_is_one_window(tmp_path):
    model = colour_model(tmp_path / "colour.onnx")
    video = coloured_video(tmp_path / "v.mp4", [("red", 2.0)])
    r = infer(model, video, "--window", 4, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "1 window of 4 s every 2 s" in r.stderr and "1 windows" not in r.stderr


def test_memory_does_not_grow_with_the_window(tmp_path):
    """Only the frames the windows sample are kept (resized as decoded), so a 40 s window holds about
    what a 4 s one does. The old buffer kept every frame of a window: 10x the memory here."""
    import tracemalloc

    from jedi_deploy.serve.config import WindowSpec
    from jedi_deploy.serve.runtime import OnnxModel
    from jedi_deploy.serve.timeline import run_windows

    model = OnnxModel(colour_model(tmp_path / "colour.onnx", short_side=0))  # frames kept at full size
    video = coloured_video(tmp_path / "v.mp4", [("red", 50.0), ("blue", 50.0)], fps=8, size=(320, 240))
    peak = {}
    for window in (4.0, 40.0):
        tracemalloc.start()
        tl = run_windows(model, video, WindowSpec.parse(window, window / 2))
        peak[window] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert [s["label"] for s in tl.segments] == ["red", "blue"]
    frame = 320 * 240 * 3
    assert peak[40.0] < peak[4.0] + 8 * frame, {k: v / 2**20 for k, v in peak.items()}
    assert peak[40.0] < 40 * 8 * frame / 4  # far below one window's frames (320 frames, 70 MiB)


def test_a_file_that_stops_decoding_is_windowed_up_to_the_error(tmp_path):
    from jedi_deploy.serve.config import WindowSpec
    from jedi_deploy.serve.runtime import OnnxModel
    from jedi_deploy.serve.timeline import run_windows
    from support.footage import truncate, write_video

    model = OnnxModel(colour_model(tmp_path / "colour.onnx"))
    whole = write_video(tmp_path / "v.mp4", 200, size=(64, 48), fps=10, options={"movflags": "faststart"})
    cut = truncate(whole, 0.6, tmp_path / "cut.mp4")  # the index lists 200 frames, the data stops earlier
    full = run_windows(model, whole, WindowSpec.parse(2.0, 1.0))
    tl = run_windows(model, cut, WindowSpec.parse(2.0, 1.0), name="cut.mp4")
    assert tl.warning and "cut.mp4" in tl.warning and "decoding stopped" in tl.warning
    assert 5 <= len(tl.starts) < len(full.starts) and tl.ends[-1] < full.ends[-1]
    same = len(tl.starts) - 2  # the windows wholly before the error are the uncut file's
    np.testing.assert_allclose(tl.probs[:same], full.probs[:same], atol=1e-6)
