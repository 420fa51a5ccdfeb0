import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.fuse import ExpertGraph
from export.onnx import OnnxExportConfig, export_onnx
from jedi_deploy.errors import ExportValidationError


def test_export_writes_metadata_validates_and_has_a_dynamic_batch(experts, tmp_path):
    ex = experts[1]
    module = ExpertGraph(ex.encoder, ex.head).eval()
    shape = ex.preprocess.input_shape()
    report = export_onnx(module, tmp_path / "m.onnx", shape, {"kind": "expert", "name": ex.name})
    assert report["passed"] and report["num_inputs"] >= 8 and report["max_abs_diff"] <= 1e-4
    assert report["top1_agreement"] == 1.0
    model = onnx.load(tmp_path / "m.onnx")
    meta = json.loads({p.key: p.value for p in model.metadata_props}["jedi"])
    assert meta["name"] == ex.name and meta["input"] == "video" and meta["output"] == "logits"
    assert model.opset_import[0].version >= 17
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((5, *shape)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(sess.run(None, {"video": x})[0], module(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_failed_validation_raises_with_figures_and_writes_nothing(experts, tmp_path):
    ex = experts[0]
    module = ExpertGraph(ex.encoder, ex.head).eval()
    wrong_head = torch.nn.Linear(ex.embed_dim, ex.num_classes)  # a reference that disagrees
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous file")
    with pytest.raises(ExportValidationError, match="max abs diff") as e:
        export_onnx(module, target, ex.preprocess.input_shape(), {"kind": "expert"},
                    reference=ExpertGraph(ex.encoder, wrong_head).eval())
    assert e.value.report["failures"] and e.value.report["max_abs_diff"] > 1e-4
    assert target.read_bytes() == b"previous file"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_tolerance_is_configurable(experts, tmp_path):
    ex = experts[2]
    module = ExpertGraph(ex.encoder, ex.head).eval()
    report = export_onnx(module, tmp_path / "m.onnx", ex.preprocess.input_shape(), {},
                         cfg=OnnxExportConfig(atol=1e-3, batch_sizes=(2, 7), input_name="x", output_name="y"))
    assert report["num_inputs"] == 9 and report["atol"] == 1e-3
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"] and [o.name for o in sess.get_outputs()] == ["y"]
