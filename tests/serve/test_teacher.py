"""Teacher ensembles are served like students: one decode per video, every expert's own views
from it, the teacher's predictions out (checked against the JEDI model in PyTorch)."""
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from jedi_deploy.app.cli import cli
from jedi_deploy.contracts.model_card import softmax
from jedi_deploy.media.decode import load_views
from jedi_deploy.models.bundle import load_bundle
from jedi_deploy.serve.bench import (
    bench_models,
    discover_pairs,
    discover_teachers,
    format_bench,
    ort_runtimes,
)
from jedi_deploy.serve.runtime import OnnxModel


def jedi_teacher_probs(bundle_path, experts, video, dataset="ucf-mini"):
    """The teacher's class probabilities in PyTorch: each expert's views decoded by
    jedi_deploy.video, embeddings averaged over views (as the cache does), JEDIModel in eval mode."""
    model, header = load_bundle(bundle_path)
    with torch.no_grad():
        embs = [e.encoder(torch.from_numpy(load_views(video, e.preprocess))).mean(0, keepdim=True) for e in experts]
        _, teachers = model(embs)
    return softmax(teachers[header.datasets.index(dataset)].numpy()[0])


def test_teacher_runtime_equals_the_jedi_model_on_a_decoded_clip(teacher_path, bundle_path, experts, test_video):
    m = OnnxModel(teacher_path)
    assert m.kind == "teacher" and [s.expert for s in m.card.inputs] == [e.name for e in experts]
    assert [s.preprocess for s in m.card.inputs] == [e.preprocess for e in experts]
    assert m.categories == list(experts[[e.dataset for e in experts].index("ucf-mini")].categories)
    feed = m.prepare(test_video)
    assert sorted(feed) == [f"video_{j}" for j in range(len(experts))]
    np.testing.assert_allclose(m.video_probs(test_video), jedi_teacher_probs(bundle_path, experts, test_video),
                               atol=1e-5)


def test_jedi_infer_gives_the_teachers_predictions(teacher_path, bundle_path, experts, datasets, tmp_path):
    ucf = next(d for d in datasets if d.name == "ucf-mini")
    videos = [s.path for s in ucf.samples("test")[:3]]
    out = tmp_path / "preds.jsonl"
    res = CliRunner().invoke(cli, ["infer", str(teacher_path), *map(str, videos), "--out", str(out), "--topk", "2"])
    assert res.exit_code == 0, res.output
    records = [json.loads(x) for x in out.read_text().splitlines()]
    for rec, v in zip(records, videos):
        want = jedi_teacher_probs(bundle_path, experts, v)
        assert rec["predictions"][0]["index"] == int(want.argmax())
        assert rec["predictions"][0]["score"] == pytest.approx(float(want.max()), abs=1e-5)


def test_bench_times_a_teacher_against_its_student(teacher_path, onnx_dir, tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    for p in [teacher_path, *onnx_dir.glob("ucf-mini.*.onnx")]:
        shutil.copy(p, d / p.name)
    triples = discover_teachers(d)
    assert triples == [("ucf-mini", d / "ucf-mini.teacher.onnx", d / "ucf-mini.student.onnx")]
    report = bench_models(discover_pairs(d), ort_runtimes(1, ["ort-cpu"]), batch_sizes=(1, 2), runs=3, warmup=0,
                          teachers=triples)
    rows = report["teachers"]
    assert [(r["dataset"], r["batch_size"]) for r in rows] == [("ucf-mini", 1), ("ucf-mini", 2)]
    for r in rows:
        assert r["teacher_student_ratio"] == pytest.approx(r["teacher"]["median_ms"] / r["student"]["median_ms"])
    assert "teacher/student" in format_bench(report)
