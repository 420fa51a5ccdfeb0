import numpy as np
import pytest

from jedi_deploy.contracts.errors import ConfigError, VideoDecodeError
from jedi_deploy.contracts.preprocess import Preprocess, clip_indices, views_from_frames
from jedi_deploy.media.decode import decode_video, load_clip
from jedi_deploy.media.synthetic import write_mp4


def test_segment_sampling_takes_segment_centres():
    idx = clip_indices(16, Preprocess(num_frames=8, sampling="segments"))[0]
    assert idx.tolist() == [1, 3, 5, 7, 9, 11, 13, 15]


def test_clip_sampling_starts_at_half_the_slack_and_loops_short_videos():
    # MMAction2 test mode: span 7, start (20 - 7) // 2 = 6; a 3-frame video loops (out_of_bound_opt='loop')
    assert clip_indices(20, Preprocess(num_frames=4, sampling="clip", frame_interval=2))[0].tolist() == [6, 8, 10, 12]
    assert clip_indices(3, Preprocess(num_frames=4, sampling="clip", frame_interval=2))[0].tolist() == [0, 2, 1, 0]
    last = Preprocess(num_frames=4, sampling="clip", frame_interval=2, out_of_bound="repeat_last")
    assert clip_indices(3, last)[0].tolist() == [0, 2, 2, 2]


def test_preprocess_normalises_and_centre_crops():
    frames = np.zeros((4, 6, 8, 3), np.uint8)
    frames[:, 1:5, 2:6] = 200  # the centre 4x4 window
    spec = Preprocess(num_frames=2, crop=4, mean=(100, 100, 100), std=(50, 50, 50))
    out = views_from_frames(frames[clip_indices(len(frames), spec)], spec)
    assert out.shape == (1, 2, 3, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, 2.0)


def test_preprocess_rejects_frames_smaller_than_crop():
    with pytest.raises(VideoDecodeError, match="smaller than the model.s 16x16 crop"):
        spec = Preprocess(crop=16)
        views_from_frames(np.zeros((4, 8, 8, 3), np.uint8)[clip_indices(4, spec)], spec)


def test_preprocess_spec_round_trips_and_validates():
    spec = Preprocess(num_frames=4, sampling="clip", frame_interval=3, short_side=40, crop=32)
    assert Preprocess.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="sampling"):
        Preprocess(sampling="random")
    with pytest.raises(ConfigError, match="unknown preprocess fields"):
        Preprocess.from_dict({"frames": 8})


def test_mp4_round_trip_is_close_and_resizes(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 255, (6, 1, 1, 3), dtype=np.uint8), 32, axis=1).repeat(32, axis=2)
    write_mp4(tmp_path / "a.mp4", frames)
    back = decode_video(tmp_path / "a.mp4")
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 4
    assert decode_video(tmp_path / "a.mp4", short_side=16).shape == (6, 16, 16, 3)
    assert load_clip(tmp_path / "a.mp4", Preprocess(num_frames=3, crop=16, short_side=20)).shape == (3, 3, 16, 16)


@pytest.mark.parametrize("content,match", [(None, "not found"), (b"", "empty"),
                                           (b"\x00\x01garbage" * 100, "cannot decode"),
                                           (b"hello, not a video\n", "cannot decode")])
def test_bad_videos_raise_a_clear_error_naming_the_file(tmp_path, content, match):
    p = tmp_path / "bad.mp4"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(VideoDecodeError, match=match) as e:
        decode_video(p)
    assert "bad.mp4" in str(e.value)


def test_truncated_video_is_a_clear_error(tmp_path):
    frames = np.random.default_rng(1).integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    write_mp4(tmp_path / "full.mp4", frames)
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoDecodeError):  # the moov atom is at the end: nothing decodable
        decode_video(tmp_path / "cut.mp4")
