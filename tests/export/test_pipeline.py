"""``jedi export --expert EXPERT.safetensors`` without a bundle: a bare expert through the one export
path (card, validation, staging), then served by `jedi infer` like any exported model."""
from __future__ import annotations

import json

from click.testing import CliRunner

from jedi_deploy.app.cli import cli
from jedi_deploy.contracts.model_card import read_card
from jedi_deploy.serve.runtime import OnnxModel
from support.cli import assert_clean_error, jedi


def test_a_bare_expert_exports_validates_and_serves(expert_paths, test_video, tmp_path):
    path = expert_paths[0]
    r = CliRunner().invoke(cli, ["export", "--expert", str(path), "--out", str(tmp_path), "--clip", str(test_video)])
    assert r.exit_code == 0, r.output
    onnx_files = sorted(p.name for p in tmp_path.glob("*.onnx"))
    assert len(onnx_files) == 1 and onnx_files[0].endswith(".expert.onnx")
    model = tmp_path / onnx_files[0]
    card = read_card(model)
    assert card.kind == "expert" and card.bundle_sha256 is None
    report = json.loads(model.with_suffix(".validation.json").read_text())
    assert report["passed"] and "decoded clip" in json.dumps(report)
    assert f"{model}: max abs diff" in r.output
    assert not list(tmp_path.glob(".jedi-export-*"))  # staged, then moved in
    probs = OnnxModel(model).video_probs(test_video)
    assert probs.shape == (len(card.categories),) and abs(float(probs.sum()) - 1) < 1e-4
    served = jedi("infer", model, test_video, "--topk", "1")
    assert served.returncode == 0 and card.categories[int(probs.argmax())] in served.stdout, served.stderr


def test_bare_expert_export_errors_are_one_line(expert_paths, tmp_path):
    assert_clean_error(jedi("export", "--out", tmp_path), "--bundle", "--expert")
    assert_clean_error(jedi("export", "--expert", tmp_path / "missing.safetensors", "--out", tmp_path), "not found")
    assert_clean_error(jedi("export", "--expert", expert_paths[0], "--out", tmp_path, "--int8"), "--int8 need --bundle")
    assert_clean_error(jedi("export", "--expert", expert_paths[0], "--expert", expert_paths[0], "--out", tmp_path),
                       "two experts are named")
    assert not list(tmp_path.glob("*.onnx"))
