"""The fast training step equals the reference model (same masks), for every teacher input."""
import pytest
import torch

from jedi_deploy.contracts.config import TEACHER_INPUTS, JEDIConfig
from jedi_deploy.models.jedi import JEDIModel
from jedi_deploy.train.engine import Masks, Rng, fused_forward, keep_threshold


def _model(mode, adjust_dropout=0.75):
    torch.manual_seed(0)
    m = JEDIModel([12, 8, 12], [5, 3, 7], JEDIConfig(hidden=6, teacher_input=mode, k=1.0,
                                                     adjust_dropout=adjust_dropout))
    for a in m.adjust:
        torch.nn.init.normal_(a.fc2.weight, std=0.3)
    return m.train()


def _grads(model, outs):
    model.zero_grad()
    sum(((x ** 2).sum() * (i + 1)) for i, x in enumerate(outs)).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("mode", TEACHER_INPUTS)
@pytest.mark.parametrize("adjust_dropout", [0.75, 0.0])
def test_fused_step_equals_reference_forward_and_backward(mode, adjust_dropout):
    model = _model(mode, adjust_dropout)
    embs = [torch.randn(9, d) for d in model.dims]
    masks = Masks(model, 9, Rng(3))
    s, t = fused_forward(model, embs, masks)
    fused = _grads(model, s + t)
    s2, t2 = model(embs, *masks.as_reference())
    ref = _grads(model, s2 + t2)
    for a, b in zip(s + t, s2 + t2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for k in ref:
        torch.testing.assert_close(fused[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)


def test_frozen_side_gets_no_gradient():
    model = _model("adjusted")
    for p in model.teachers.parameters():
        p.requires_grad_(False)
    s, t = fused_forward(model, [torch.randn(4, d) for d in model.dims], Masks(model, 4, Rng(0)))
    (sum(x.sum() for x in s) + sum((x ** 2).sum() for x in t)).backward()
    assert all(p.grad is None for p in model.teachers.parameters())
    assert model.adjust[0].fc1.weight.grad.abs().sum() > 0


def test_masks_have_the_right_rates_and_are_nested():
    model = JEDIModel([300, 200], [10, 30], JEDIConfig(hidden=4, k=5))  # p = 0.9, 0.7
    masks = Masks(model, 400, Rng(1))
    keep = [m.mean().item() for m in masks.teacher]
    assert keep == pytest.approx([0.1, 0.3], abs=0.01)
    assert torch.all(masks.teacher[0] <= masks.teacher[1])  # p=0.9 keeps a subset of p=0.7's
    assert torch.cat(masks.adjust, 1).mean().item() == pytest.approx(0.25, abs=0.01)
    # Independent draws for adjustment and teacher masks: no visible correlation.
    a, t = torch.cat(masks.adjust, 1).flatten(), masks.teacher[1].flatten()
    assert torch.corrcoef(torch.stack([a, t]))[0, 1].abs() < 0.02


def test_keep_threshold_is_exact_to_2_pow_16():
    for p in (0.0, 0.25, 0.75, 0.721, 0.929):
        t = keep_threshold(p)
        assert (32768 - t) / 65536 == pytest.approx(1 - p, abs=2 ** -17)


def test_rng_state_round_trip():
    a = Rng(5)
    a.bits16(3, 7)
    state = a.state
    x = a.bits16(4, 4)
    b = Rng(0)
    b.state = state
    assert torch.equal(b.bits16(4, 4), x)
