"""Every registry entry exports as a fused student and as its initial expert, and both pass
validation (ONNX checker + ONNX Runtime vs PyTorch); tiny input sizes where the architecture
allows (mvit_v2_s only takes 16 x 224 x 224)."""
import collections
from dataclasses import replace

import onnx
import pytest
import torch

from jedi_deploy.export.onnx import OnnxExportConfig
from jedi_deploy.export.students import export_student_and_expert
from jedi_deploy.models.archs import ARCHS, build_expert
from jedi_deploy.models.jedi import AdjustmentModule
from jedi_deploy.models.registry import Expert

FOLD_OPS = collections.Counter({"Gemm": 1, "Sigmoid": 1, "Mul": 1, "MatMul": 1, "Add": 1})


def tiny_expert(arch: str, classes: int = 7) -> Expert:
    entry = ARCHS[arch]
    kwargs = entry.extra.get("test_kwargs", {})
    torch.manual_seed(0)
    model = build_expert(arch, classes, **kwargs).eval().requires_grad_(False)
    t, _, s, _ = entry.extra.get("test_input", entry.preprocess.input_shape())
    pre = replace(entry.preprocess, num_frames=t, crop=s, short_side=s, num_clips=1, crops=1)
    return Expert(f"{arch}-x", arch, kwargs, "d", tuple(f"c{i}" for i in range(classes)), pre, model, None, "0" * 64)


def random_student(expert: Expert):
    adjust = AdjustmentModule(expert.embed_dim, 32, 0.75).eval()
    torch.nn.init.normal_(adjust.fc2.weight, std=0.05)
    torch.nn.init.normal_(adjust.fc2.bias, std=0.05)
    head = torch.nn.Linear(expert.embed_dim, expert.num_classes)
    with torch.no_grad():
        head.weight.copy_(expert.head.weight + 0.01 * torch.randn_like(expert.head.weight))
        head.bias.copy_(expert.head.bias)
    return adjust, head


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_entry_exports_as_student_and_expert(arch, tmp_path):
    ex = tiny_expert(arch)
    adjust, head = random_student(ex)
    reports = export_student_and_expert(ex, adjust, head, tmp_path, OnnxExportConfig(batch_sizes=(2, 1)))
    assert [r["kind"] for r in reports] == ["student", "expert"]
    assert all(r["passed"] and r["top1_agreement"] == 1.0 for r in reports)
    ops = {k: collections.Counter(n.op_type for n in onnx.load(tmp_path / f"{ex.name}.{k}.onnx").graph.node)
           for k in ("student", "expert")}
    assert ops["student"] - ops["expert"] == FOLD_OPS and not ops["expert"] - ops["student"]
    assert (tmp_path / f"{ex.name}.student.validation.json").exists()
