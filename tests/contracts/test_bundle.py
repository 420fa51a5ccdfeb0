import pytest
import torch

from jedi_deploy.contracts.errors import CheckpointError
from jedi_deploy.models.bundle import load_bundle


def test_bundle_round_trip_is_exact_and_self_describing(bundle_path, trained):
    model, meta = load_bundle(bundle_path)
    assert meta.datasets == trained.datasets
    assert [e.sha256 for e in meta.experts] == [e.sha256 for e in trained.experts]
    assert meta.config == trained.config
    embs = [torch.randn(3, d) for d in model.dims]
    trained.model.eval()
    with torch.no_grad():
        for a, b in zip(model(embs), trained.model(embs)):
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_expert_checkpoint_is_not_a_bundle(expert_paths):
    with pytest.raises(CheckpointError, match="expected a jedi 'bundle' file, found kind='expert'"):
        load_bundle(expert_paths[0])
