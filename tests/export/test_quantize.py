"""``jedi export --int8``: static INT8 students behind the accuracy gate."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from jedi_deploy.contracts.errors import InputError, QuantizationGateError
from jedi_deploy.contracts.gate import gate_path, int8_path, read_gate_report
from jedi_deploy.contracts.model_card import InputSpec, ModelCard, embed_card, read_card
from jedi_deploy.contracts.preprocess import Preprocess
from jedi_deploy.export.quantize import (
    Int8Options,
    VideoList,
    balanced_sample,
    centered_sqnr,
    per_student,
    quantize_student,
)
from jedi_deploy.serve.runtime import OnnxModel

CWD = tempfile.gettempdir()


def jedi(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "jedi_deploy.app.cli", *map(str, args)], cwd=CWD,
                          capture_output=True, text=True, timeout=timeout)


def test_balanced_sample_visits_every_class_before_any_twice():
    labels = [0] * 10 + [1] * 3 + [2] * 1
    pick = balanced_sample(labels, 5, seed=0)
    assert len(pick) == 5 and len(set(pick)) == 5
    assert sorted(labels[i] for i in pick) == [0, 0, 1, 1, 2]
    assert balanced_sample(labels, 100) == list(range(14))  # asks for more than there is: all, once


def test_centered_sqnr_sees_an_erased_variation_behind_an_offset():
    rng = np.random.default_rng(0)
    x = 1000 + rng.normal(0, 1, 1000)
    step = 1000 / 255  # uint8 over [0, max]: the range must include 0
    q = np.round(x / step) * step
    plain = 10 * np.log10(np.mean(x ** 2) / np.mean((x - q) ** 2))
    assert plain > 50  # plain SQNR calls this tensor fine ...
    assert centered_sqnr(x, q) < 3  # ... though its information is gone (noise as large as the variation)


# --- a constructed model whose int8 failure has one cause ------------------------------------

def toy_layers(module: torch.nn.Module, classes: int) -> None:
    """Two small 3D convolutions and a classifier, seeded weights: the toy graphs below."""
    g = torch.Generator().manual_seed(0)
    module.c1, module.c2 = torch.nn.Conv3d(3, 8, 3, padding=1), torch.nn.Conv3d(8, 8, 3)
    module.fc = torch.nn.Linear(8, classes)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def export_toy(module: torch.nn.Module, path: Path, t: int = 4, s: int = 32) -> Path:
    """``module`` as a 4-class toy student ONNX file with its model card (input ``[B, t, 3, s, s]``)."""
    torch.onnx.export(module.eval(), torch.randn(1, t, 3, s, s), str(path), input_names=["video"],
                      output_names=["logits"], dynamic_axes={"video": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    proto = onnx.load(str(path))
    name = path.name.removesuffix(".student.onnx")
    embed_card(proto, ModelCard(kind="student", name=name, dataset="toy", arch="toy", categories=tuple("abcd"),
                                inputs=(InputSpec("video", "float32", ("batch", t, 3, s, s), "NTCHW",
                                                  Preprocess(num_frames=t, crop=s, short_side=s)),)))
    onnx.save(proto, str(path))
    return path


class Offset(torch.nn.Module):
    """``c1`` adds 1000 to every activation and ``c2`` removes it again: int8 must span [0, ~1000]
    at c2's input (zero must be representable), erasing the variations that carry the class."""

    def __init__(self, classes=4):
        super().__init__()
        toy_layers(self, classes)
        with torch.no_grad():
            self.c1.bias += 1000.0
            self.c2.bias -= 1000.0 * self.c2.weight.sum(dim=(1, 2, 3, 4))

    def forward(self, x):  # [B, T, C, H, W]
        return self.fc(self.c2(self.c1(x.transpose(1, 2))).mean(dim=(2, 3, 4)))


@pytest.fixture(scope="module")
def offset_case(tmp_path_factory):
    from support.footage import write_video

    root = tmp_path_factory.mktemp("offset")
    path = export_toy(Offset(), root / "offset.student.onnx")
    rng = np.random.default_rng(0)
    tints = [[40, 200, 120], [200, 40, 120], [120, 120, 40], [60, 60, 220]]
    videos = []
    for i in range(24):
        tint = np.array(tints[i % 4]) * (0.6 + 0.4 * rng.random())
        frames = [np.clip(rng.normal(0, 30, (48, 64, 3)) + tint, 0, 255).astype(np.uint8) for _ in range(8)]
        videos.append(write_video(root / f"{i}.mp4", 8, frames=frames))
    model = OnnxModel(path)
    labels = [int(model.video_probs(v).argmax()) for v in videos]  # fp32 is right by definition
    assert len(set(labels)) > 1
    return path, VideoList(videos[:12], [None] * 12, "toy calibration"), VideoList(videos, labels, "toy test")


def test_gate_keeps_the_sensitive_node_in_float_and_passes(offset_case):
    path, calib, held = offset_case
    report = quantize_student(path, calib, held, Int8Options(max_drop=15.0, float_budget=4, reduce_range=False,
                                                             keep_slower=True))
    first, last = report.attempts[0], report.attempts[-1]
    assert not first.passed and first.drop > 30 and first.agreement < 70  # all-int8 breaks this model
    ranked = report.calibration["sensitive_nodes"]
    assert ranked[0]["node"] == "/c2/Conv" and ranked[0]["tensor"] == "/c1/Conv_output_0"
    assert report.attempts[1].float_nodes == ["/c2/Conv"] and report.attempts[1].agreement > first.agreement + 40
    assert report.passed and last is report.attempts[1] and last.drop <= 15.0
    out = int8_path(path)
    card = read_card(out)
    assert card.precision == "int8"
    q = card.extra["quantization"]
    assert q["float_nodes"] == last.float_nodes and q["method"] == "minmax" and q["videos"] == 12
    graph = onnx.load(str(out)).graph
    kept = {n.name: n for n in graph.node}
    for name in last.float_nodes:  # a node kept in float reads float weights, not a DequantizeLinear output
        producers = {o: n.op_type for n in graph.node for o in n.output}
        assert all(producers.get(i) != "DequantizeLinear" for i in kept[name].input[1:2])
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 0
    assert read_gate_report(gate_path(out)).passed
    m8 = OnnxModel(out)
    agree = np.mean([m8.video_probs(v).argmax() == y for v, y in zip(held.paths, held.labels)])
    assert agree == pytest.approx(last.acc1 / 100)


def test_gate_refuses_and_writes_nothing(offset_case, tmp_path):
    path, calib, held = offset_case
    fp32 = tmp_path / path.name
    fp32.write_bytes(path.read_bytes())
    with pytest.raises(QuantizationGateError) as e:
        quantize_student(fp32, calib, held, Int8Options(max_drop=1.0, float_budget=0, reduce_range=False))
    assert "no INT8 file written" in str(e.value) and "| int8 | 0 |" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [fp32.name]  # no int8 model, report or temp files
    assert e.value.reports[0].attempts[0].drop > 30


def test_option_and_list_errors(offset_case):
    path, calib, held = offset_case
    with pytest.raises(InputError, match="calibration method"):
        Int8Options(method="kl")
    with pytest.raises(InputError, match="label for every held-out video"):
        quantize_student(path, calib, VideoList(held.paths, [None] * len(held.paths), "x"))
    with pytest.raises(InputError, match="ambiguous"):
        per_student({"": "list.txt"}, ["a", "b"], "--eval-list")
    with pytest.raises(InputError, match="not exported here"):
        per_student({"c": "list.txt"}, ["a", "b"], "--eval-list")
    assert per_student({"": "l.txt"}, ["a"], "--eval-list") == {"a": "l.txt"}


# --- the real pipeline: the session's bundle, with its cache recorded -------------------------

@pytest.fixture(scope="module")
def cached_bundle(cache, tmp_path_factory):
    """A bundle trained by calling ``train_to_dir`` from Python (no CLI, no demo): it records the
    cache it was trained on itself, so ``--int8`` finds its videos."""
    from jedi_deploy.contracts.config import JEDIConfig
    from jedi_deploy.train.jedi import train_to_dir

    cfg = JEDIConfig(epochs=6, burn_in=2, lr=1e-3, batch_size=32, hidden=32)
    _, path = train_to_dir(cache, tmp_path_factory.mktemp("int8run") / "run", cfg, progress=False)
    return path


def test_a_bundle_trained_from_python_records_its_cache(cached_bundle, cache_dir):
    from jedi_deploy.contracts.bundle import read_bundle_header

    header = read_bundle_header(cached_bundle)
    assert header.cache == str(Path(cache_dir).resolve())
    assert read_bundle_header(Path(cached_bundle).parent / "best.safetensors").cache == header.cache


def test_cli_export_int8_writes_gated_students(cached_bundle, tmp_path):
    out = jedi("export", "--bundle", cached_bundle, "--out", tmp_path, "--student", "ucf-mini", "--no-experts",
               "--int8", "--calib-videos", "8", "--int8-keep-slower")
    assert out.returncode == 0, out.stderr
    fp32, q = tmp_path / "ucf-mini.student.onnx", tmp_path / "ucf-mini.student.int8.onnx"
    assert fp32.is_file() and q.is_file()
    assert "INT8 gate passed" in out.stdout
    report = json.loads(gate_path(q).read_text())
    assert report["passed"] and report["calibration"]["videos"] == 8
    assert report["calibration"]["source"].startswith("cache ucf-mini/train")
    assert report["evaluation"]["source"] == "cache ucf-mini/test" and report["evaluation"]["videos"] > 0
    assert report["attempts"][-1]["drop"] <= 1.0
    assert read_card(q).precision == "int8" and read_card(fp32).precision == "fp32"


def test_cli_export_int8_refusal(cached_bundle, tmp_path):
    out = jedi("export", "--bundle", cached_bundle, "--out", tmp_path, "--student", "ucf-mini", "--no-experts",
               "--int8", "--calib-videos", "4", "--max-drop", "-101", "--float-budget", "1")
    assert out.returncode == 3, out.stderr
    assert "Traceback" not in out.stderr
    assert "no INT8 file written" in out.stderr and "| fp32 |" in out.stderr and "| int8 | 1 |" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ucf-mini.student.onnx", "ucf-mini.student.validation.json"]


def test_cli_export_int8_input_errors(bundle_path, cached_bundle, tmp_path, datasets):
    out = jedi("export", "--bundle", bundle_path, "--out", tmp_path / "a", "--int8")
    assert out.returncode == 1 and "records no cache" in out.stderr and "--calib-list" in out.stderr
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())  # refused before any work
    out = jedi("export", "--bundle", cached_bundle, "--out", tmp_path / "b", "--int8", "--fp16")
    assert out.returncode == 1 and "drop --fp16" in out.stderr
    out = jedi("export", "--bundle", cached_bundle, "--out", tmp_path / "c", "--int8", "--eval-list", "x.txt")
    assert out.returncode == 1 and "ambiguous" in out.stderr
    # explicit lists work without a cache
    ucf = next(d for d in datasets if d.name == "ucf-mini")
    out = jedi("export", "--bundle", bundle_path, "--out", tmp_path / "d", "--student", "ucf-mini", "--no-experts",
               "--int8", "--calib-list", ucf.root / "train.txt", "--eval-list", ucf.root / "test.txt")
    assert out.returncode == 0, out.stderr
    report = read_gate_report(gate_path(tmp_path / "d" / "ucf-mini.student.int8.onnx"))
    assert report.evaluation["source"].endswith("test.txt")
    assert report.calibration["videos"] == min(32, len(ucf.samples("train")))


def test_a_list_too_big_for_memory_is_decoded_again_on_each_pass(offset_case):
    from jedi_deploy.export.quantize import DecodedList

    path, _, held = offset_case
    model = OnnxModel(path)
    kept, streamed = DecodedList(model, held, "held-out"), DecodedList(model, held, "held-out", budget=0)
    assert streamed._feeds is None and kept._feeds is not None and len(streamed) == len(kept) == len(held.paths)
    for _ in range(2):  # every pass re-decodes the same feeds
        for a, b in zip(kept, streamed):
            np.testing.assert_array_equal(a["video"], b["video"])
    sub = streamed.subset([0, 2])
    assert sub.paths == [held.paths[0], held.paths[2]] and len(list(sub)) == 2


def test_calibration_ranges_cover_every_calibration_video(offset_case, tmp_path):
    """The input's int8 scale spans the min and max over ALL calibration videos (ORT's
    CalibMaxIntermediateOutputs would have kept only the last few)."""
    from onnx import numpy_helper

    path, calib, held = offset_case
    fp32 = tmp_path / path.name
    fp32.write_bytes(path.read_bytes())
    model = OnnxModel(fp32)
    x = np.stack([model.prepare(v)["video"] for v in calib.paths])
    quantize_student(fp32, calib, held, Int8Options(max_drop=100.0, float_budget=0, keep_slower=True))
    g = onnx.load(str(int8_path(fp32))).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    first_q = next(n for n in g.node if n.op_type == "QuantizeLinear"
                   and (n.input[0] == "video" or producers.get(n.input[0], n).op_type == "Transpose"))
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    assert float(inits[first_q.input[1]]) == pytest.approx((hi - lo) / 255, rel=1e-3)
    last = x[-1]  # what a calibration of the last video alone would give
    assert (max(0.0, float(last.max())) - min(0.0, float(last.min()))) / 255 < 0.97 * (hi - lo) / 255


class ReluNet(torch.nn.Module):
    """Conv -> ReLU -> Conv -> ReLU -> mean -> fc: the quantizer folds both ReLUs into Q/DQ ranges."""

    def __init__(self, classes=4):
        super().__init__()
        toy_layers(self, classes)

    def forward(self, x):  # [B, T, C, H, W]
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x.transpose(1, 2))))).mean(dim=(2, 3, 4)))


def test_sensitive_nodes_score_a_fused_relu_against_relu_of_its_input(tmp_path):
    """Every ReLU output scored 4-5 dB (the clamp counted as noise), so the gate's fallback would keep
    the wrong nodes in float on any ReLU network; against relu(pre) they score like the rest (~40 dB)."""
    from support.footage import write_video

    path = export_toy(ReluNet(), tmp_path / "relu.student.onnx")
    rng = np.random.default_rng(0)
    videos = [write_video(tmp_path / f"{i}.mp4", 8, frames=[rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
                                                           for _ in range(8)]) for i in range(8)]
    model = OnnxModel(path)
    labels = [int(model.video_probs(v).argmax()) for v in videos]
    with pytest.raises(QuantizationGateError) as refused:  # a gate nothing passes: the ranking is computed
        quantize_student(path, VideoList(videos[:6], [None] * 6, "calibration"), VideoList(videos, labels, "held-out"),
                         Int8Options(max_drop=-100.0, float_budget=2, reduce_range=False))
    ranked = refused.value.reports[0].calibration["sensitive_nodes"]
    relu_inputs = [r for r in ranked if "Relu" in r["tensor"]]
    assert relu_inputs and all(r["sqnr_db"] > 20 for r in ranked), ranked


def test_the_gate_times_int8_against_fp32_and_keeps_fp32_when_int8_is_slower(offset_case, tmp_path):
    """A passed INT8 model is timed against its fp32 model (ONNX Runtime CPU, interleaved rounds); when
    it is slower, only the decision is written (fp32 kept), unless asked to keep it anyway. Both
    branches are checked against the measured verdict (which one runs depends on this CPU)."""
    from jedi_deploy.contracts.gate import format_gate

    path, calib, held = offset_case
    for keep in (False, True):
        fp32 = tmp_path / str(keep) / path.name
        fp32.parent.mkdir()
        fp32.write_bytes(path.read_bytes())
        report = quantize_student(fp32, calib, held, Int8Options(max_drop=100.0, float_budget=0, keep_slower=keep,
                                                                 speed_runs=20))
        sp = report.speed
        assert sp["runtime"] == "ort-cpu" and sp["runs"] == 20 and sp["fp32_ms"] > 0 and sp["int8_ms"] > 0
        assert sp["speedup"] == pytest.approx(sp["fp32_ms"] / sp["int8_ms"])
        faster = sp["speedup"] >= 1.0
        assert report.kept == ("int8" if faster or keep else "fp32")
        assert int8_path(fp32).is_file() == (faster or keep)
        saved = read_gate_report(gate_path(int8_path(fp32)))  # the decision is recorded either way
        assert saved.speed == sp and saved.kept == report.kept
        verdict = format_gate(saved)
        assert ("faster, int8 kept" if faster else ("written anyway" if keep else "slower, fp32 kept")) in verdict
        assert "acc@1 int8 - fp32" in verdict  # one sign for the change and its interval
