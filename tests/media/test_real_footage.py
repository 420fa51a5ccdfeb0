"""The decoder on the shapes real files have (generated with tests/support/footage.py): rotation
metadata, variable frame rate in every container, containers without a frame count (bounded
memory), corruption mid-stream and truncated tails (only frames before the first error), 10-bit,
grayscale, odd sizes, one-frame videos, frames smaller than the crop."""
import subprocess
import sys

import numpy as np
import pytest

from jedi_deploy.contracts.errors import VideoDecodeError
from jedi_deploy.contracts.preprocess import Preprocess, clip_indices
from jedi_deploy.media.decode import decode_clips, decode_video, load_views
from support.footage import corrupt, frame_index, pattern, truncate, write_video

SEG = Preprocess(num_frames=8, sampling="segments", crop=32)
CLIP = Preprocess(num_frames=4, sampling="clip", frame_interval=3, num_clips=2, crop=32)


def close(a, b, tol=3.0):
    return a.shape == b.shape and np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() < tol


@pytest.mark.parametrize("rotation", [90, 180, 270, -90])
def test_rotation_metadata_gives_the_frames_physically_rotated(tmp_path, rotation):
    """A phone's display matrix is applied: the frames equal the same frames physically rotated
    (FFmpeg's own autorotation gives these same pixels; checked once by hand with ffmpeg 5.1)."""
    tagged = decode_video(write_video(tmp_path / "tagged.mp4", 12, rotation=rotation))
    upright = np.stack([np.rot90(pattern(i, 48, 64), rotation // 90) for i in range(12)])
    physical = decode_video(write_video(tmp_path / "physical.mp4", 12, frames=upright,
                                        size=(upright.shape[2], upright.shape[1])))
    assert tagged.shape == physical.shape == (12, *upright.shape[1:])
    assert close(tagged, physical) and close(tagged, upright)
    clips = decode_clips(tmp_path / "tagged.mp4", [SEG]).clips[0]
    assert close(clips[0], physical[clip_indices(12, SEG)[0]])


@pytest.mark.parametrize("flip", ["h", "v"])
def test_mirroring_display_matrices_are_applied(tmp_path, flip):
    got = decode_video(write_video(tmp_path / "m.mp4", 3, flip=flip))[0]
    ref = pattern(0, 48, 64)
    assert close(got, ref[:, ::-1] if flip == "h" else ref[::-1]) and not close(got, ref)


@pytest.mark.parametrize("spec", [SEG, CLIP], ids=["segments", "clips"])
def test_variable_frame_rate_samples_the_same_frames_in_every_container(tmp_path, spec):
    """One frame-index rule: presentation order, whatever the container and the timing."""
    durations = [40, 40, 100, 33, 250]  # ms: a variable frame rate
    picked = {}
    for kind in ("mp4", "mov", "mkv", "webm", "avi"):
        p = write_video(tmp_path / f"v.{kind}", 50, kind=kind, durations=durations)
        d = decode_clips(p, [spec])
        assert d.num_frames == 50 and d.warning is None, kind
        picked[kind] = [frame_index(f) for clip in d.clips[0] for f in clip]
    want = [i % 64 for i in clip_indices(50, spec).ravel()]
    assert all(v == want for v in picked.values()), picked


def test_containers_without_a_frame_count_decode_in_bounded_memory(tmp_path):
    """A long MKV (no frame count in the container) costs no more memory than the same MP4."""
    img = pattern(5, 240, 320)
    frames = np.broadcast_to(img, (1500, 240, 320, 3))
    for kind in ("mkv", "mp4"):
        write_video(tmp_path / f"long.{kind}", frames=frames, size=(320, 240), kind=kind)
    code = ("import resource, sys\n"
            "from jedi_deploy.media.decode import decode_clips\nfrom jedi_deploy.contracts.preprocess import Preprocess\n"
            "d = decode_clips(sys.argv[1], [Preprocess(num_frames=8, sampling='segments', crop=224, short_side=256)])\n"
            "assert d.num_frames == 1500 and d.warning is None\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    peak = {k: int(subprocess.run([sys.executable, "-c", code, str(tmp_path / f"long.{k}")], capture_output=True,
                                  text=True, check=True, cwd=tmp_path).stdout) for k in ("mkv", "mp4")}
    assert peak["mkv"] <= 1.5 * peak["mp4"], peak


@pytest.fixture(scope="module")
def long_mp4(tmp_path_factory):
    """300 frames, the MP4 index at the front (as streamed files have it), a keyframe every 30."""
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", 300, size=(160, 120), gop=30,
                       options={"movflags": "faststart"})


@pytest.mark.parametrize("damage", ["corrupt_middle", "truncated_30", "truncated_80"])
def test_damaged_files_are_sampled_only_from_frames_before_the_first_error(long_mp4, tmp_path, damage):
    bad = tmp_path / "bad.mp4"
    if damage == "corrupt_middle":
        corrupt(long_mp4, 0.5, 3000, bad)
    else:
        truncate(long_mp4, int(damage[-2:]) / 100, bad)
    clean = decode_video(bad)  # everything up to the decoder's first error
    assert 10 < len(clean) < 300
    for spec in (SEG, CLIP):
        d = decode_clips(bad, [spec])
        assert d.warning and "sampled from those" in d.warning and bad.name in d.warning
        assert d.num_frames <= len(clean) + 3
        got = [frame_index(f) for clip in d.clips[0] for f in clip]
        want = [frame_index(f) for f in clean[clip_indices(d.num_frames, spec).ravel()]]
        assert got == want  # the frames the file really shows before the error, at the rule's indices
        assert max(clip_indices(d.num_frames, spec).ravel()) < len(clean)


def test_an_undamaged_long_file_has_no_warning(long_mp4):
    d = decode_clips(long_mp4, [SEG])
    assert d.warning is None and d.num_frames == 300
    assert [frame_index(f) for f in d.clips[0][0]] == [i % 64 for i in clip_indices(300, SEG)[0]]


@pytest.mark.parametrize("kind,kw", [
    ("10bit", {"pix_fmt": "yuv420p10le"}), ("gray", {"pix_fmt": "gray"}),
    ("odd_mkv", {"kind": "mkv", "size": (63, 47), "pix_fmt": "yuv444p"}), ("odd_avi", {"kind": "avi", "size": (63, 47)}),
    ("one_frame", {"num_frames": 1}), ("one_frame_webm", {"num_frames": 1, "kind": "webm"}),
])
def test_other_real_world_sources_keep_working(tmp_path, kind, kw):
    n = kw.pop("num_frames", 20)
    p = write_video(tmp_path / f"x.{kw.get('kind', 'mp4')}", n, **kw)
    w, h = kw.get("size", (64, 48))
    views = load_views(p, SEG)
    assert views.shape == (1, 8, 3, 32, 32) and np.isfinite(views).all()
    d = decode_clips(p, [SEG])
    assert d.num_frames == n and d.clips[0].shape == (1, 8, h, w, 3)
    assert [frame_index(f) for f in d.clips[0][0]] == [i % 64 for i in clip_indices(n, SEG)[0]]


def test_frames_smaller_than_the_crop_name_the_file_and_its_size(tmp_path):
    p = write_video(tmp_path / "tiny.mp4", 5, size=(24, 18))
    with pytest.raises(VideoDecodeError, match=r"tiny\.mp4: frames are 24x18, smaller than the model's 32x32 crop"):
        load_views(p, SEG)
    resized = Preprocess(num_frames=8, sampling="segments", crop=32, short_side=40)
    assert load_views(p, resized).shape == (1, 8, 3, 32, 32)  # a model that resizes takes it


@pytest.mark.parametrize("kind", ["ts", "m2ts", "mp4", "mkv", "mov", "webm", "avi"])
@pytest.mark.parametrize("frames", [60, 1200])  # decoded through / sought (> VERIFY_FRAMES)
def test_every_container_samples_the_frames_the_rule_names(tmp_path, kind, frames):
    """MPEG-TS timestamps start late and its seeks land inexactly: a seek to the first timestamp
    used to start decoding tens of frames in, silently sampling the wrong frames."""
    if kind in ("webm", "avi") and frames > 100:
        pytest.skip("the slow encoders: the short case covers them")
    p = write_video(tmp_path / f"v.{kind}", frames, kind=kind, gop=25)
    for spec in (SEG, CLIP):
        d = decode_clips(p, [spec])
        assert d.num_frames == frames and d.warning is None
        got = [[frame_index(f) for f in clip] for clip in d.clips[0]]
        assert got == [[i % 64 for i in row] for row in clip_indices(frames, spec).tolist()], (kind, spec.sampling)


def test_a_video_with_one_keyframe_costs_about_one_pass_not_one_per_sample(tmp_path):
    """Every seek of a one-keyframe video decodes from its first frame: after one wasted seek the
    decoder goes on sequentially (it cost 8 full decodes for 8 segments)."""
    from jedi_deploy.media import decode

    n = 1200
    p = write_video(tmp_path / "onekey.mp4", n, gop=10 ** 6)
    seen = []
    real = decode._Seeker.frames_at

    def counting(self, targets):  # the real method; records how many frames it decoded
        try:
            return real(self, targets)
        finally:
            seen.append(self.decoded)

    decode._Seeker.frames_at = counting
    try:
        d = decode_clips(p, [SEG])
    finally:
        decode._Seeker.frames_at = real
    assert [frame_index(f) for f in d.clips[0][0]] == [i % 64 for i in clip_indices(n, SEG)[0]]
    assert sum(seen) <= 2 * n, seen  # one pass, plus at most the wasted seek's
    regular = write_video(tmp_path / "gop25.mp4", n, gop=25)
    seen.clear()
    decode._Seeker.frames_at = counting
    try:
        decode_clips(regular, [SEG])
    finally:
        decode._Seeker.frames_at = real
    assert sum(seen) < n / 2, seen  # with keyframes every 25 frames it still seeks


def _two_streams(path, default: int):
    """An MKV with two video streams (32x24 and 64x48) whose frames draw different indices, and
    ``default`` the stream with the default disposition."""
    import av

    with av.open(str(path), "w") as c:
        streams = []
        for w, h in ((32, 24), (64, 48)):
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            streams.append(s)
        for j, s in enumerate(streams):
            s.disposition = av.stream.Disposition.default if j == default else 0
        for i in range(20):
            for j, s in enumerate(streams):
                img = pattern(i + 32 * j, s.height, s.width)  # stream 1 draws indices 32..51
                for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(packet)
        for s in streams:
            for packet in s.encode():
                c.mux(packet)
    return path


@pytest.mark.parametrize("default", [0, 1])
def test_of_several_video_streams_ffmpegs_choice_is_decoded_with_a_note(tmp_path, default):
    from jedi_deploy.media.decode import FrameStream

    p = _two_streams(tmp_path / "two.mkv", default)
    d = decode_clips(p, [SEG])
    w = (32, 64)[default]
    assert d.clips[0].shape[3] == w
    assert [frame_index(f) for f in d.clips[0][0]] == [(i + 32 * default) % 64 for i in clip_indices(20, SEG)[0]]
    assert d.warning == f"two.mkv: 2 video streams; using stream #{default} ({w}x{(24, 48)[default]}, FFmpeg's choice)"
    stream = FrameStream(p, [None])
    frames = [f[0] for _, f in stream]
    assert frames[0].shape[1] == w and frame_index(frames[3]) == (3 + 32 * default) % 64
    assert stream.warning.startswith("two.mkv: 2 video streams; using stream #")
