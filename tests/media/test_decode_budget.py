"""The decode budget (media.decode.Limits): frames are resized as they are decoded, so memory is
bounded by the model's input, not the file's frame size; frames over the pixel budget are refused
before they are decoded; a caller's check stops a decode. And frames the decoder flags corrupt count
as corruption."""
import subprocess
import sys

import numpy as np
import pytest

from jedi_deploy.contracts.errors import BudgetError, VideoDecodeError
from jedi_deploy.contracts.preprocess import Preprocess
from jedi_deploy.media.decode import CHECK_EVERY, FrameStream, Limits, decode_clips
from support.footage import damage_packet, write_video

SPEC = Preprocess(num_frames=16, short_side=64, crop=56)

PEAK = """
import resource, sys
from jedi_deploy.contracts.preprocess import Preprocess
from jedi_deploy.media.decode import decode_clips
import av.video.reformatter
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
d = decode_clips(sys.argv[1], [Preprocess(num_frames=16, short_side=64, crop=56)])
assert d.clips[0].shape == (1, 16, 64, 114, 3), d.clips[0].shape
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


def test_sampled_frames_are_kept_at_model_size_not_source_size(tmp_path):
    # 16 sampled frames of 3840x2160: held as decoded (yuv420p) they are 16 x 12.4 MB = 199 MB
    # (the old code: +213 MiB); resized as decoded, only the decoder's own buffers remain (~57 MiB).
    frames = [np.full((2160, 3840, 3), 15 * i, np.uint8) for i in range(16)]
    video = write_video(tmp_path / "4k.mp4", frames=frames, size=(3840, 2160), fps=8,
                        codec_options={"preset": "ultrafast", "threads": "1"})
    out = subprocess.run([sys.executable, "-c", PEAK, str(video)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    source_frame = 3840 * 2160 * 3 // 2
    assert int(out.stdout) < 8 * source_frame, f"decode grew by {int(out.stdout) / 2**20:.0f} MiB"


def test_frames_over_the_pixel_budget_are_refused_naming_their_size(tmp_path):
    video = write_video(tmp_path / "v.mp4", 12, size=(64, 48))
    for decode in (lambda lim: decode_clips(video, [SPEC], name="clip.mp4", limits=lim),
                   lambda lim: list(FrameStream(video, [SPEC], name="clip.mp4", limits=lim))):
        with pytest.raises(BudgetError, match=r"clip\.mp4: frames are 64x48 \(0\.0 MP\), over the"):
            decode(Limits(max_pixels=64 * 48 - 1))
        decode(Limits(max_pixels=64 * 48))  # the edge: exactly the budget decodes


class Stop(Exception):
    pass


def test_a_check_stops_a_decode_with_its_own_error(tmp_path):
    video = write_video(tmp_path / "v.mp4", 100, size=(64, 48))
    calls = []

    def check():
        calls.append(1)
        if len(calls) == 2:
            raise Stop("cancelled")

    with pytest.raises(Stop):  # not a VideoDecodeError: the caller's own exception
        decode_clips(video, [Preprocess(num_frames=8, short_side=32, crop=32)], limits=Limits(check=check))
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(Stop):
        for _ in FrameStream(video, [None], limits=Limits(check=check)):
            pass
    with pytest.raises(VideoDecodeError):  # what is a decode error stays one
        decode_clips(tmp_path / "missing.mp4", [SPEC], limits=Limits(check=check))
    assert CHECK_EVERY <= 16


def test_frames_flagged_corrupt_count_as_corruption(tmp_path):
    """A scrambled P-frame decodes without an error but flagged corrupt (concealed): it and every frame
    after it are not used, with a warning, as for a decoder error. The old code used them silently."""
    import av

    good = write_video(tmp_path / "v.mp4", 60, size=(128, 96), fps=10, gop=30)
    bad = damage_packet(good, 10, tmp_path / "bad.mp4")
    with av.open(str(bad)) as c:
        assert [i for i, f in enumerate(c.decode(video=0)) if f.is_corrupt] == [10]
    spec = Preprocess(num_frames=8, short_side=64, crop=56)
    d = decode_clips(bad, [spec], name="bad.mp4")
    assert d.num_frames == 10 and "flagged corrupt" in d.warning and "bad.mp4" in d.warning
    stream = FrameStream(bad, [None], name="bad.mp4")
    assert len(list(stream)) == 10 and "flagged corrupt" in stream.warning
    assert decode_clips(good, [spec]).warning is None
