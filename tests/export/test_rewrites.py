"""The export-time rewrites equal the upstream code they replace, and are swapped back."""
import pytest
import torch

from jedi_deploy.export.rewrites import (
    depthwise_conv3d_as_2d,
    export_friendly,
    mvit_add_shortcut,
    mvit_attention,
    mvit_pool,
    mvit_rel_pos,
)
from jedi_deploy.models.tv_compat import import_torchvision

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
    attention, pool = mvit.MultiscaleAttention.forward, mvit.Pool.forward
    with export_friendly():
        assert mvit.MultiscaleAttention.forward is mvit_attention and mvit.Pool.forward is mvit_pool
    assert mvit.MultiscaleAttention.forward is attention and mvit.Pool.forward is pool


@pytest.mark.parametrize("t,kernel,stride,padding,bias", [
    (8, (3, 3, 3), (1, 1, 1), (1, 1, 1), False), (8, (3, 3, 3), (1, 2, 2), (1, 1, 1), True),
    (5, (3, 3, 3), (2, 4, 4), (1, 1, 1), False), (4, (1, 3, 3), (1, 1, 1), (0, 1, 1), True),
    (6, (5, 3, 3), (1, 1, 1), (2, 1, 1), False), (6, (3, 1, 1), (3, 1, 1), (0, 0, 0), True)])
def test_depthwise_conv3d_as_grouped_conv2d(t, kernel, stride, padding, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(6, 6, kernel, stride=stride, padding=padding, groups=6, bias=bias).eval()
    x = torch.randn(3, 6, t, 9, 10)
    with torch.no_grad():
        torch.testing.assert_close(depthwise_conv3d_as_2d(conv, x), conv(x), rtol=1e-5, atol=1e-5)


def test_mvit_export_has_no_loops_scatters_or_3d_depthwise_convs(tmp_path):
    """What the rewrites are for: the traced graph keeps none of the ops that made mvit_v2_s
    slow in ONNX Runtime (Loop/ScatterND/Einsum, depthwise Conv3d)."""
    import onnx

    torch.manual_seed(0)
    model = mvit.mvit_v2_s().eval()
    path = tmp_path / "mvit.onnx"
    with torch.no_grad(), export_friendly():
        torch.onnx.export(model, (torch.randn(1, 3, 16, 224, 224),), str(path), opset_version=17, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "b"}})
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"Loop", "ScatterND", "Einsum", "SequenceAt"}
    ranks = {i.name: len(i.dims) for i in graph.initializer}
    ranks.update({n.output[0]: len(n.attribute[0].t.dims) for n in graph.node if n.op_type == "Constant"})
    convs = [ranks[n.input[1]] for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 49 and convs.count(5) == 1  # only the patch embedding stays 3D


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_video_resnets_in_frame_layout_equal_torchvision(name):
    import torchvision.models.video as video

    torch.manual_seed(0)
    model = getattr(video, name)(num_classes=5).eval()
    x = torch.randn(2, 3, 6, 40, 48)  # odd sizes: temporal strides must round like Conv3d
    with torch.no_grad():
        want = model(x)
        with export_friendly():
            got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_video_resnet_export_runs_only_2d_convolutions(tmp_path):
    import onnx
    import torchvision.models.video as video

    model = video.r3d_18(num_classes=5).eval()
    path = tmp_path / "r3d.onnx"
    with torch.no_grad(), export_friendly():
        torch.onnx.export(model, (torch.randn(1, 3, 4, 32, 32),), str(path), opset_version=17, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "b"}})
    graph = onnx.load(str(path)).graph
    ranks = {i.name: len(i.dims) for i in graph.initializer}
    ranks.update({n.output[0]: len(n.attribute[0].t.dims) for n in graph.node if n.op_type == "Constant"})
    convs = [ranks[n.input[1]] for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 20 and set(convs) == {4}
    assert "BatchNormalization" not in {n.op_type for n in graph.node}  # folded into the convs


def test_video_resnet_with_unknown_parts_keeps_the_upstream_forward():
    import torchvision.models.video as video

    model = video.r3d_18(num_classes=5).eval()
    model.layer1[0].relu = torch.nn.GELU()  # not a module the frame-layout walk knows
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        want = model(x)
        with export_friendly():
            got = model(x)
    torch.testing.assert_close(got, want)


def test_frames_under_tap_zero_fills_outside_the_clip():
    from jedi_deploy.export.rewrites import _frames_under_tap

    x = torch.randn(2, 7, 3)
    for first in range(-4, 9):
        for step in (1, 2, 3):
            for count in range(1, 6):
                want = torch.stack([x[:, first + o * step] if 0 <= first + o * step < 7 else torch.zeros(2, 3)
                                    for o in range(count)], 1)
                assert torch.equal(_frames_under_tap(x, first, step, count), want), (first, step, count)
