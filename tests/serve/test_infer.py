import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from jedi_deploy.contracts.errors import InputError
from jedi_deploy.contracts.model_card import softmax
from jedi_deploy.media.datasets import collect_inputs
from jedi_deploy.media.decode import load_clip
from jedi_deploy.serve.infer import format_records, infer, run_infer
from jedi_deploy.serve.runtime import OnnxModel

ROOT = Path(__file__).resolve().parents[2]
# Subprocesses run from a temporary folder, never the repository root (where the bare train/,
# export/ and serve/ folders would import as a second copy of the package).
CWD = tempfile.gettempdir()


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
    assert m.card.kind == "student" and m.name == experts[0].name


def test_script_entry_point(onnx_dir, test_video):
    out = subprocess.run([sys.executable, "-m", "jedi_deploy.serve.infer", str(onnx_dir / "ucf-mini.student.onnx"),
                          str(test_video), "--topk", "2", "--json"], cwd=CWD, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert rec["video"] == str(test_video) and len(rec["predictions"]) == 2
    bad = subprocess.run([sys.executable, "-m", "jedi_deploy.serve.infer", str(onnx_dir / "ucf-mini.student.onnx"),
                          str(ROOT / "missing.mp4")], cwd=CWD, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("error: input not found") and "Traceback" not in bad.stderr


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
    recs = [{"video": "v.mp4", "predictions": [{"label": "run", "index": 0, "score": 0.75},
                                               {"label": "walk", "index": 1, "score": 0.25}]},
            {"video": "bad.mp4", "error": "bad.mp4: cannot decode video"}]
    assert format_records(recs).splitlines() == ["v.mp4", "  1. run                      0.7500",
                                                 "  2. walk                     0.2500", "bad.mp4",
                                                 "  error: bad.mp4: cannot decode video"]


def _some_videos(datasets, n=5):
    d = datasets[0]
    return d, d.samples("test")[:n]


def test_folders_and_manifests_expand_in_order(datasets, tmp_path):
    d, samples = _some_videos(datasets)
    (tmp_path / "list.txt").write_text("# comment\n" + "".join(f"{s.path} {s.label}\n" for s in samples[:2])
                                       + f"{samples[2].path}\n")
    (tmp_path / "m.csv").write_text("path,label\n" + f"{samples[3].path},{samples[3].label}\n{samples[4].path},\n")
    items = collect_inputs([tmp_path / "list.txt", tmp_path / "m.csv", samples[0].path])
    assert [i.path for i in items] == [s.path for s in samples] + [samples[0].path]
    assert [i.label for i in items] == [samples[0].label, samples[1].label, None, samples[3].label, None, None]
    folder = collect_inputs([samples[0].path.parent])
    assert [i.path for i in folder] == sorted(samples[0].path.parent.glob("*.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no video files"):
        collect_inputs([tmp_path / "empty"])
    (tmp_path / "bad.csv").write_text("file,label\nx.mp4,1\n")
    with pytest.raises(Exception, match="bad.csv: CSV header must name a 'path' column"):
        collect_inputs([tmp_path / "bad.csv"])
    (tmp_path / "bad.txt").write_text("a.mp4 1\nb.mp4 one two\n")
    assert [i.label for i in collect_inputs([tmp_path / "bad.txt"])] == [1, None]  # "one two" is part of a path
    with pytest.raises(InputError, match="input not found"):
        collect_inputs([tmp_path / "nope.mp4"])


def test_batched_inference_equals_one_video_at_a_time(onnx_dir, datasets, tmp_path):
    d, samples = _some_videos(datasets, 7)
    model = onnx_dir / f"{d.name}.student.onnx"
    (tmp_path / "list.txt").write_text("".join(f"{s.path} {s.label}\n" for s in samples))
    text, summary = run_infer(model, [tmp_path / "list.txt"], fmt="jsonl", topk=3, batch_size=3, workers=2)
    recs = [json.loads(line) for line in text.splitlines()]
    one = OnnxModel(model)
    for rec, s in zip(recs, samples):
        want = one.classify(s.path, 3)
        assert [p["label"] for p in rec["predictions"]] == [p.label for p in want]
        np.testing.assert_allclose([p["score"] for p in rec["predictions"]], [p.score for p in want], atol=1e-6)
        assert rec["label"] == s.label
    probs = [one.video_probs(s.path) for s in samples]
    acc1 = np.mean([np.argmax(p) == s.label for p, s in zip(probs, samples)])
    assert summary.pop("runtime")["runtime"] == "ort"  # what ran the model (the default runtime)
    assert summary == {"videos": 7, "failed": 0, "labeled": 7, "acc1": pytest.approx(acc1),
                       "acc5": pytest.approx(np.mean([(p > p[s.label]).sum() < 5 for p, s in zip(probs, samples)]))}


def test_unreadable_videos_are_recorded_or_stop_a_strict_run(onnx_dir, datasets, tmp_path):
    d, samples = _some_videos(datasets, 2)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\0" * 100)
    model = onnx_dir / f"{d.name}.student.onnx"
    out = tmp_path / "preds.csv"
    _, summary = run_infer(model, [samples[0].path, bad, samples[1].path], out=out)
    rows = list(csv.DictReader(out.open()))
    assert [r["video"] for r in rows] == [str(samples[0].path), str(bad), str(samples[1].path)]
    assert rows[1]["error"].startswith(f"{bad}: cannot decode video") and not rows[1]["top1"]
    assert rows[0]["top1"] and not rows[0]["error"] and summary["failed"] == 1
    assert summary["first_error"] == rows[1]["error"]
    before = out.read_bytes()
    with pytest.raises(InputError, match="broken.mp4"):
        run_infer(model, [samples[0].path, bad], out=out, strict=True)
    assert out.read_bytes() == before  # a failed run leaves the earlier output as it was
    with pytest.raises(InputError, match="cannot tell the output format"):
        run_infer(model, [samples[0].path], out=tmp_path / "preds.parquet")


def test_cli_infer_writes_jsonl(onnx_dir, datasets, tmp_path, gpu_stack):
    from click.testing import CliRunner

    from jedi_deploy.app.cli import cli

    d, samples = _some_videos(datasets, 3)
    out = tmp_path / "p.jsonl"
    res = CliRunner().invoke(cli, ["infer", str(onnx_dir / f"{d.name}.student.onnx"), str(samples[0].path.parent),
                                   "--out", str(out), "--topk", "2", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == len(list(samples[0].path.parent.glob("*.mp4"))) and all(len(r["predictions"]) == 2 for r in recs)
    if not gpu_stack["trt_ep"]:
        res = CliRunner().invoke(cli, ["infer", str(onnx_dir / f"{d.name}.student.onnx"), str(samples[0].path),
                                       "--providers", "tensorrt"])
        assert res.exit_code == 1 and "provider 'tensorrt' is not available" in res.output


@pytest.mark.parametrize("average", ["score", "prob"])
def test_multi_view_models_average_their_views(experts, test_video, tmp_path, average):
    """A model whose preprocessing asks for clips x crops runs every view and averages them
    the way the metadata says (MMAction2's average_clips)."""
    from dataclasses import replace

    from jedi_deploy.export.fuse import ExpertGraph
    from jedi_deploy.export.onnx import OnnxExportConfig, export_onnx
    from jedi_deploy.export.students import model_card
    from jedi_deploy.media.decode import load_views

    ex = experts[0]
    pre = replace(ex.preprocess, num_clips=2, crops=3, average=average, short_side=32)  # ThreeCrop spans the short side
    path = tmp_path / "m.onnx"
    export_onnx(ExpertGraph(ex.encoder, ex.head), path, model_card("expert", replace(ex, preprocess=pre), OnnxExportConfig()))
    probs = OnnxModel(path).video_probs(test_video)
    with torch.no_grad():
        logits = ex.model(torch.from_numpy(load_views(test_video, pre))).numpy()
    assert logits.shape[0] == 6
    want = softmax(logits).mean(0) if average == "prob" else softmax(logits.mean(0))
    np.testing.assert_allclose(probs, want, atol=1e-5)


def test_provider_preference_and_overrides(monkeypatch):
    import onnxruntime

    from jedi_deploy.runners.onnxruntime import select_providers

    have = ["CPUExecutionProvider", "CUDAExecutionProvider", "AzureExecutionProvider", "TensorrtExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: have)
    assert select_providers() == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("cpu") == ["CPUExecutionProvider"]
    assert select_providers("tensorrt,cuda") == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                 "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: have[:1])
    assert select_providers() == ["CPUExecutionProvider"]
    with pytest.raises(InputError, match="'cuda' is not available here; available: cpu"):
        select_providers("cuda")


def test_acc1_and_the_printed_top1_follow_one_ranking_rule_on_ties(tmp_path):
    """A grey video makes the colour classifier tie all three classes: the top-1 is the lowest class
    (red), and a video labelled green counts as wrong in acc@1, as the CSV's top-1 column says.
    (acc@1 used to count a tie as correct while top-1 and the gate broke it the other way.)"""
    import av

    from support.colour import colour_model

    model = colour_model(tmp_path / "colour.onnx")
    video = tmp_path / "grey.mp4"
    with av.open(str(video), "w") as c:
        s = c.add_stream("libx264", rate=4)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv444p"  # no chroma subsampling: grey stays exactly grey
        s.options = {"qp": "0"}
        frame = av.VideoFrame.from_ndarray(np.full((32, 48, 3), 128, np.uint8), format="rgb24")
        for _ in range(8):
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    (tmp_path / "list.txt").write_text("grey.mp4 1\n")  # labelled green
    text, summary = run_infer(model, [tmp_path / "list.txt"], out=tmp_path / "p.csv", topk=3)
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert rows[0]["top1"] == "red" and rows[0]["topk_labels"] == "red;green;blue"
    assert summary["acc1"] == 0.0 and summary["acc5"] == 1.0
