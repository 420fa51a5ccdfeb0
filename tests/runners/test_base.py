"""The runner contract: feeds checked against the card, one comparator, seeded random feeds."""
import numpy as np
import pytest

from jedi_deploy.contracts.errors import ExportValidationError, InputError
from jedi_deploy.contracts.model_card import read_card
from jedi_deploy.runners.base import TOLERANCES, Runner, ToleranceError, compare, random_feeds, video_probs
from jedi_deploy.runners.onnxruntime import OrtRunner
from support.colour import colour_model, coloured_video


class NumpyColour(Runner):
    """A second implementation of the colour classifier (tests/support/colour.py) in numpy:
    logits = mean R, G, B over frames and pixels / 20, plus ``shift``."""

    label = "numpy"

    def __init__(self, card, shift: float = 0.0):
        super().__init__(card, "numpy colour")
        self.shift = shift

    def _infer(self, feed):
        x = feed["video"]  # [B, T, 3, H, W]
        return {"logits": x.mean(axis=(1, 3, 4)) * 0.05 + self.shift}


@pytest.fixture
def colour(tmp_path):
    return colour_model(tmp_path / "colour.onnx")


def test_two_implementations_agree_and_the_report_says_so(colour):
    ort = OrtRunner(colour, providers="cpu")
    report = compare(NumpyColour(ort.card), ort, random_feeds(ort.card, (4, 1), seed=3), TOLERANCES["fp32"],
                     what="colour")
    assert report["passed"] and report["num_inputs"] == 5 and report["max_abs_diff"] < 1e-6
    assert [c["input"] for c in report["cases"]] == ["random batch 4", "random batch 1"]
    assert report["reference"] == "numpy" and report["candidate"] == "ONNX Runtime"


def test_a_disagreement_raises_with_every_failing_case(colour):
    ort = OrtRunner(colour, providers="cpu")
    with pytest.raises(ToleranceError, match="colour: ONNX Runtime disagrees with numpy: random batch 2") as e:
        compare(NumpyColour(ort.card, shift=0.5), ort, random_feeds(ort.card, (2, 3)), TOLERANCES["fp32"],
                what="colour")
    assert isinstance(e.value, ExportValidationError)
    assert len(e.value.report["failures"]) == 2 and not e.value.report["passed"]
    assert e.value.report["max_abs_diff"] == pytest.approx(0.5, abs=1e-5)


def test_feeds_are_checked_against_the_card(colour):
    ort = OrtRunner(colour, providers="cpu")
    good = ort.card.dummy_feed(2)
    assert ort.infer(good)["logits"].shape == (2, 3)
    with pytest.raises(InputError, match=r"the feed has inputs \['x'\], the graph takes \['video'\]"):
        ort.infer({"x": good["video"]})
    with pytest.raises(InputError, match=r"input 'video' has shape \[2, 4, 3, 8, 8\], expected \[batch, 4, 3, 16, 16\]"):
        ort.infer({"video": np.zeros((2, 4, 3, 8, 8), np.float32)})
    with pytest.raises(InputError, match="a feed is a dict"):
        ort.infer(good["video"])
    # the dtype is the card's: float64 rows are cast, not refused
    assert ort.infer({"video": good["video"].astype(np.float64)})["logits"].dtype == np.float32


def test_random_feeds_are_seeded_and_follow_the_card(colour):
    card = read_card(colour)
    a, b = random_feeds(card, (3,), seed=7), random_feeds(card, (3,), seed=7)
    np.testing.assert_array_equal(a[0][1]["video"], b[0][1]["video"])
    assert a[0][1]["video"].shape == (3, 4, 3, 16, 16) and a[0][1]["video"].dtype == np.float32
    assert not np.array_equal(random_feeds(card, (3,), seed=8)[0][1]["video"], a[0][1]["video"])


def test_video_probs_runs_several_videos_as_one_batch(colour, tmp_path):
    from jedi_deploy.media.decode import video_feed

    ort = OrtRunner(colour, providers="cpu")
    videos = [coloured_video(tmp_path / f"{c}.mp4", [(c, 2.0)]) for c in ("red", "green", "blue")]
    feeds = [video_feed(ort.card, v)[0] for v in videos]
    probs = video_probs(ort, feeds)
    assert [int(p.argmax()) for p in probs] == [0, 1, 2]
    for p, f in zip(probs, feeds):  # one batch gives what each video alone gives
        np.testing.assert_allclose(p, video_probs(ort, [f])[0], atol=1e-6)


def test_a_runner_is_a_context_manager_that_activates_once(colour):
    ort = OrtRunner(colour, providers="cpu", eager=False)
    assert not ort.active and ort.card is None
    with ort as r:
        assert r.active and r.card.name == "colour"
        r.activate()  # idempotent
    assert not ort.active
