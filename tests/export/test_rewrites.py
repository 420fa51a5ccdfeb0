"""The export-time rewrites equal the upstream code they replace, and are swapped back."""
import pytest
import torch

from export.rewrites import export_friendly, mvit_add_shortcut, mvit_rel_pos
from jedi_deploy.tv_compat import import_torchvision

import_torchvision()
import torchvision.models.video.mvit as mvit  # noqa: E402


@pytest.mark.parametrize("q_thw,k_thw", [((2, 4, 4), (2, 4, 4)), ((4, 8, 8), (2, 2, 2)), ((2, 2, 2), (2, 4, 4))])
def test_rel_pos_rewrite_equals_torchvision(q_thw, k_thw):
    torch.manual_seed(0)
    b, heads, dim = 2, 3, 8
    nq, nk = 1 + q_thw[0] * q_thw[1] * q_thw[2], 1 + k_thw[0] * k_thw[1] * k_thw[2]
    size = max(q_thw[1], k_thw[1])
    tables = (torch.randn(2 * size - 1, dim), torch.randn(2 * size - 1, dim),
              torch.randn(2 * max(q_thw[0], k_thw[0]) - 1, dim))
    attn, q = torch.randn(b, heads, nq, nk), torch.randn(b, heads, nq, dim)
    want = mvit._add_rel_pos(attn.clone(), q, q_thw, k_thw, *tables)
    torch.testing.assert_close(mvit_rel_pos(attn, q, q_thw, k_thw, *tables), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_cls", [True, False])
def test_shortcut_rewrite_equals_torchvision_in_place(with_cls):
    """MultiscaleAttention calls ``_add_shortcut(x, q, ...)`` and ignores the result: the
    rewrite must mutate ``x`` exactly like upstream."""
    x, s = torch.randn(2, 3, 9, 4), torch.randn(2, 3, 9, 4)
    a, b = x.clone(), x.clone()
    mvit._add_shortcut(a, s, with_cls)
    mvit_add_shortcut(b, s, with_cls)
    torch.testing.assert_close(b, a)
    assert not torch.equal(a, x)


def test_rewritten_mvit_equals_torchvision():
    torch.manual_seed(0)
    model = mvit.mvit_v2_s().eval()
    x = torch.randn(1, 3, 16, 224, 224)
    with torch.no_grad():
        want = model(x)
        with export_friendly():
            got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_rewrites_apply_only_inside_the_context():
    original = mvit._add_rel_pos
    with export_friendly():
        assert mvit._add_rel_pos is mvit_rel_pos and mvit._add_shortcut is mvit_add_shortcut
    assert mvit._add_rel_pos is original and mvit._add_shortcut is not mvit_add_shortcut
