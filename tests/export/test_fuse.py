import collections

import onnx
import torch

from jedi_deploy.export.fuse import ExpertGraph, FusedStudent, StudentReference
from jedi_deploy.models.jedi import AdjustmentModule


def test_fold_equals_the_unfused_student(experts):
    torch.manual_seed(0)
    ex = experts[0]
    adjust = AdjustmentModule(ex.embed_dim, 16, 0.75).eval()
    torch.nn.init.normal_(adjust.fc2.weight, std=0.3)
    torch.nn.init.normal_(adjust.fc2.bias, std=0.3)
    head = torch.nn.Linear(ex.embed_dim, ex.num_classes)
    x = torch.randn(4, *ex.preprocess.input_shape())
    with torch.no_grad():
        torch.testing.assert_close(FusedStudent(ex.encoder, adjust, head)(x),
                                   StudentReference(ex.encoder, adjust, head)(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ExpertGraph(ex.encoder, ex.head)(x), ex.model(x))


def test_fused_graph_adds_only_the_fold_ops(onnx_dir, experts):
    for ex in experts:
        ops = {k: collections.Counter(n.op_type for n in onnx.load(onnx_dir / f"{ex.name}.{k}.onnx").graph.node)
               for k in ("student", "expert")}
        assert ops["student"] - ops["expert"] == collections.Counter(
            {"Gemm": 1, "Sigmoid": 1, "Mul": 1, "MatMul": 1, "Add": 1})  # fc1, SiLU, fold, sum
        assert not ops["expert"] - ops["student"]
