"""The expert card: one reader, one writer, one identity rule."""
from dataclasses import replace

import pytest

from jedi_deploy.contracts.errors import CheckpointError
from jedi_deploy.contracts.expert import ExpertCard, read_expert_cards, same_experts
from jedi_deploy.contracts.preprocess import Preprocess

CARD = ExpertCard("ucf", "tiny_tsm", "ucf-mini", ("a", "b"), Preprocess(num_frames=4), 80, 2,
                  {"width": 16}, "/x/ucf.safetensors", "ab" * 32)


def test_round_trip_is_exact():
    assert ExpertCard.from_dict(CARD.to_dict(), "x") == CARD
    assert read_expert_cards([CARD.to_dict()] * 2, "x", "cache") == [CARD, CARD]


@pytest.mark.parametrize("field", ["name", "arch", "dataset", "categories", "preprocess", "embed_dim", "num_classes"])
def test_a_missing_field_is_named(field):
    d = {k: v for k, v in CARD.to_dict().items() if k != field}
    with pytest.raises(CheckpointError, match=f"bundle.safetensors: bundle header: expert 0 .* lacks field '{field}'"):
        read_expert_cards([d], "bundle.safetensors", "bundle")


def test_malformed_cards_and_empty_lists_are_refused():
    with pytest.raises(CheckpointError, match="malformed card"):
        ExpertCard.from_dict({**CARD.to_dict(), "embed_dim": "wide"}, "x")
    with pytest.raises(CheckpointError, match="malformed card"):
        ExpertCard.from_dict({**CARD.to_dict(), "preprocess": {"sampling": "random"}}, "x")
    with pytest.raises(CheckpointError, match="has no experts"):
        read_expert_cards([], "x", "cache")
    with pytest.raises(CheckpointError, match="not an object"):
        read_expert_cards(["ucf"], "x", "cache")


def test_identity_is_what_must_match():
    moved = replace(CARD, checkpoint="/elsewhere/ucf.safetensors", preprocess=Preprocess(num_frames=8))
    assert moved.identity() == CARD.identity() and same_experts([moved], [CARD])
    for change in ({"sha256": "cd" * 32}, {"embed_dim": 64}, {"dataset": "hmdb"}, {"name": "u"}):
        assert not same_experts([replace(CARD, **change)], [CARD]), change
    assert not same_experts([CARD, CARD], [CARD])
