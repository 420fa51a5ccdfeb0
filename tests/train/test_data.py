"""The data protocol: seeded stratified validation split and the CMPL labeled subset."""
import numpy as np
import pytest
import torch

from jedi_deploy.train.data import labeled_subset, validation_split


def _labels():
    return torch.tensor([c for c in range(5) for _ in range(20 * (c + 1))] + [-1] * 30)


def test_validation_split_is_stratified_seeded_and_disjoint():
    y = _labels()
    tr, va = validation_split(y, 0.15, np.random.default_rng(0))
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
    counts = np.bincount(y[va].numpy(), minlength=5)
    assert counts.tolist() == [round(0.15 * 20 * (c + 1)) for c in range(5)]
    assert (y[va] >= 0).all()  # unlabeled samples never validate
    tr2, va2 = validation_split(y, 0.15, np.random.default_rng(0))
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, validation_split(y, 0.15, np.random.default_rng(1))[1])
    assert len(validation_split(y, 0.0, np.random.default_rng(0))[1]) == 0
    tiny = torch.tensor([0, 0, 1])  # a class keeps at least one training sample
    _, va = validation_split(tiny, 0.5, np.random.default_rng(0))
    assert tiny[va].tolist() == [0]


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_label_fraction_keeps_a_class_balanced_seeded_subset(fraction):
    y = _labels()
    kept = labeled_subset(y, fraction, np.random.default_rng(0))
    for c in range(5):
        n = 20 * (c + 1)
        assert int((kept == c).sum()) == max(1, round(fraction * n))
    assert ((kept == y) | (kept == -1)).all()  # labels are kept or hidden, never changed
    assert torch.equal(kept, labeled_subset(y, fraction, np.random.default_rng(0)))
    assert not torch.equal(kept, labeled_subset(y, fraction, np.random.default_rng(7)))
    assert torch.equal(labeled_subset(y, 1.0, np.random.default_rng(0)), y)
