import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jedi_deploy.errors import InputError
from jedi_deploy.video import load_clip
from serve.infer import format_predictions, infer
from serve.runtime import OnnxModel, softmax

ROOT = Path(__file__).resolve().parents[2]


def test_predictions_match_the_torch_expert(onnx_dir, experts, test_video):
    for ex in experts:
        preds = infer(onnx_dir / f"{ex.name}.expert.onnx", [test_video], topk=3)[str(test_video)]
        with torch.no_grad():
            logits = ex.model(torch.from_numpy(load_clip(test_video, ex.preprocess))[None])[0].numpy()
        probs = softmax(logits)
        order = np.argsort(-probs)[:3]
        assert [p.label for p in preds] == [ex.categories[i] for i in order]
        np.testing.assert_allclose([p.score for p in preds], probs[order], atol=1e-5)


def test_model_reads_its_metadata(onnx_dir, experts):
    m = OnnxModel(onnx_dir / f"{experts[0].name}.student.onnx")
    assert m.categories == list(experts[0].categories) and m.preprocess == experts[0].preprocess
    assert m.meta["kind"] == "student" and m.name == experts[0].name


def test_script_entry_point(onnx_dir, test_video):
    out = subprocess.run([sys.executable, "-m", "serve.infer", str(onnx_dir / "ucf-mini.student.onnx"),
                          str(test_video), "--topk", "2", "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert rec["video"] == str(test_video) and len(rec["predictions"]) == 2
    bad = subprocess.run([sys.executable, "-m", "serve.infer", str(onnx_dir / "ucf-mini.student.onnx"),
                          str(ROOT / "missing.mp4")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("error: video not found") and "Traceback" not in bad.stderr


def test_non_jedi_and_garbage_models(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "plain.onnx")
    with pytest.raises(InputError, match="no 'jedi' metadata"):
        OnnxModel(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(InputError, match="cannot load"):
        OnnxModel(tmp_path / "junk.onnx")


def test_text_format():
    from serve.runtime import Prediction

    text = format_predictions({"v.mp4": [Prediction("run", 0, 0.75), Prediction("walk", 1, 0.25)]})
    assert text.splitlines() == ["v.mp4", "  1. run                      0.7500", "  2. walk                     0.2500"]


@pytest.mark.parametrize("average", ["score", "prob"])
def test_multi_view_models_average_their_views(experts, test_video, tmp_path, average):
    """A model whose preprocessing asks for clips x crops runs every view and averages them
    the way the metadata says (MMAction2's average_clips)."""
    from dataclasses import replace

    from export.fuse import ExpertGraph
    from export.onnx import export_onnx
    from jedi_deploy.video import load_views

    ex = experts[0]
    pre = replace(ex.preprocess, num_clips=2, crops=3, average=average, short_side=40)
    path = tmp_path / "m.onnx"
    export_onnx(ExpertGraph(ex.encoder, ex.head), path, pre.input_shape(),
                {"kind": "expert", "name": ex.name, "categories": list(ex.categories), "preprocess": pre.to_dict()})
    probs = OnnxModel(path).video_probs(test_video)
    with torch.no_grad():
        logits = ex.model(torch.from_numpy(load_views(test_video, pre))).numpy()
    assert logits.shape[0] == 6
    want = softmax(logits).mean(0) if average == "prob" else softmax(logits.mean(0))
    np.testing.assert_allclose(probs, want, atol=1e-5)
