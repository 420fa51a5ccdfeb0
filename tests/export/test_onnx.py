import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from jedi_deploy.contracts.errors import ExportValidationError
from jedi_deploy.contracts.model_card import read_card
from jedi_deploy.export.fuse import ExpertGraph
from jedi_deploy.export.onnx import OnnxExportConfig, export_onnx
from jedi_deploy.export.students import model_card


def _card(ex, cfg=OnnxExportConfig()):
    return model_card("expert", ex, cfg)


def test_export_writes_metadata_validates_and_has_a_dynamic_batch(experts, tmp_path):
    ex = experts[1]
    module = ExpertGraph(ex.encoder, ex.head).eval()
    shape = ex.preprocess.input_shape()
    report = export_onnx(module, tmp_path / "m.onnx", _card(ex))
    assert report["passed"] and report["num_inputs"] >= 8 and report["max_abs_diff"] <= 1e-4
    assert report["top1_agreement"] == 1.0
    model = onnx.load(tmp_path / "m.onnx")
    card = read_card(tmp_path / "m.onnx")
    assert card.name == ex.name and card.input.name == "video" and card.output == "logits"
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
        export_onnx(module, target, _card(ex),
                    reference=ExpertGraph(ex.encoder, wrong_head).eval())
    assert e.value.report["failures"] and e.value.report["max_abs_diff"] > 1e-4
    assert target.read_bytes() == b"previous file"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_tolerance_is_configurable(experts, tmp_path):
    ex = experts[2]
    module = ExpertGraph(ex.encoder, ex.head).eval()
    cfg = OnnxExportConfig(atol=1e-3, batch_sizes=(2, 7), input_name="x", output_name="y")
    report = export_onnx(module, tmp_path / "m.onnx", _card(ex, cfg), cfg=cfg)
    assert report["num_inputs"] == 9 and report["tolerance"]["atol"] == 1e-3
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"] and [o.name for o in sess.get_outputs()] == ["y"]


def _pair(experts, idx=0):
    ex = experts[idx]
    return ex, ExpertGraph(ex.encoder, ex.head).eval()


def test_uint8_input_normalises_inside_the_graph(experts, test_video, tmp_path):
    from jedi_deploy.export.students import export_model
    from jedi_deploy.serve.runtime import OnnxModel

    ex, graph = _pair(experts)
    cfg = OnnxExportConfig(uint8_input=True, batch_sizes=(2, 1))
    rep = export_model(graph, graph, ex, tmp_path / "u8.onnx", "expert", cfg, clip=test_video)
    assert rep["passed"] and any(c["input"].startswith("decoded clip") for c in rep["cases"])
    sess = ort.InferenceSession(str(tmp_path / "u8.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(uint8)"
    assert sess.get_inputs()[0].shape[1:] == [ex.preprocess.num_frames, ex.preprocess.crop, ex.preprocess.crop, 3]
    # same prediction as the float graph fed by jedi_deploy.video
    float_path = tmp_path / "f.onnx"
    export_model(graph, graph, ex, float_path, "expert", OnnxExportConfig(batch_sizes=(1,)))
    np.testing.assert_allclose(OnnxModel(tmp_path / "u8.onnx").video_probs(test_video),
                               OnnxModel(float_path).video_probs(test_video), atol=1e-5)


@pytest.mark.parametrize("average", ["score", "prob"])
def test_views_are_averaged_inside_the_graph(experts, test_video, tmp_path, average):
    from dataclasses import replace

    from jedi_deploy.contracts.model_card import softmax
    from jedi_deploy.export.students import export_model
    from jedi_deploy.media.decode import load_views
    from jedi_deploy.serve.runtime import OnnxModel

    ex, graph = _pair(experts, 1)
    pre = replace(ex.preprocess, crops=10, short_side=40, average=average)
    ex = replace(ex, preprocess=pre)
    rep = export_model(graph, graph, ex, tmp_path / "v.onnx", "expert", OnnxExportConfig(views=10, batch_sizes=(2, 1)),
                       clip=test_video)
    assert rep["passed"]
    with torch.no_grad():
        logits = graph(torch.from_numpy(load_views(test_video, pre))).numpy()
    want = softmax(logits).mean(0) if average == "prob" else softmax(logits.mean(0))
    np.testing.assert_allclose(OnnxModel(tmp_path / "v.onnx").video_probs(test_video), want, atol=1e-5)


def test_fp16_and_simplify_pass_their_own_tolerance(experts, tmp_path):
    ex, graph = _pair(experts, 2)
    rep = export_onnx(graph, tmp_path / "h.onnx", _card(ex),
                      cfg=OnnxExportConfig(fp16=True, simplify=True, batch_sizes=(4, 1)))
    assert rep["passed"] and rep["precision"] == "fp16" and rep["tolerance"]["atol"] == 2e-2
    model = onnx.load(tmp_path / "h.onnx")
    dtypes = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in dtypes and onnx.TensorProto.FLOAT not in dtypes
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O kept
    card = read_card(tmp_path / "h.onnx")
    assert card.precision == "fp16" and card.simplified is True


def test_bad_options_and_exporter_failures_are_clear(experts, tmp_path):
    from jedi_deploy.contracts.errors import ConfigError

    with pytest.raises(ConfigError, match="opset"):
        OnnxExportConfig(opset=13)
    with pytest.raises(ConfigError, match="exporter"):
        OnnxExportConfig(exporter="tf")

    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy() * 2)  # leaves the graph: no exporter can trace it

    target = tmp_path / "u.onnx"
    with pytest.raises(ExportValidationError, match="does not take its input") as e:
        export_onnx(Unexportable(), target, _card(experts[0]))
    assert "u.onnx" in str(e.value) and not target.exists()
