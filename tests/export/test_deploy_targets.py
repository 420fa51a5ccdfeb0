"""Triton repositories, the TensorRT path's errors here, the teacher ensemble, and the CLI."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from jedi_deploy.app.cli import cli
from jedi_deploy.contracts.errors import ExportValidationError, InputError
from jedi_deploy.export.ensemble import export_teacher
from jedi_deploy.export.triton import parse_config, write_model_repository
from jedi_deploy.media.decode import load_clip
from jedi_deploy.models.bundle import load_bundle


def test_triton_repository_parses_with_tritons_schema(onnx_dir, experts, tmp_path):
    ex = experts[1]
    [folder] = write_model_repository(onnx_dir / f"{ex.name}.student.onnx", tmp_path / "repo", max_batch_size=16,
                                      instances=2)
    assert folder.name == f"{ex.name}_student" and (folder / "1" / "model.onnx").is_file()
    cfg = parse_config((folder / "config.pbtxt").read_text())
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 16
    assert cfg.input[0].name == "video" and list(cfg.input[0].dims) == list(ex.preprocess.input_shape())
    assert cfg.output[0].name == "logits" and list(cfg.output[0].dims) == [ex.num_classes]
    assert cfg.output[0].label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().split() == list(ex.categories)
    assert cfg.dynamic_batching.max_queue_delay_microseconds > 0 and 16 in cfg.dynamic_batching.preferred_batch_size
    assert cfg.instance_group[0].count == 2
    with pytest.raises(InputError, match="already exists"):
        write_model_repository(onnx_dir / f"{ex.name}.student.onnx", tmp_path / "repo")
    from google.protobuf.text_format import ParseError

    with pytest.raises(ParseError):
        parse_config('name: "x" max_batch_size: "eight"')


def test_export_trt_without_tensorrt_says_what_is_missing(bundle_path, tmp_path, gpu_stack):
    if gpu_stack["tensorrt"] and gpu_stack["torch_cuda"]:
        pytest.skip("TensorRT and a GPU are present: --trt would build engines")
    out = tmp_path / "o"
    res = CliRunner().invoke(cli, ["export", "--bundle", str(bundle_path), "--out", str(out), "--trt"])
    assert res.exit_code == 1 and "tensorrt is not installed" in res.output and "GPU" in res.output
    assert not out.exists()  # nothing was exported before the check


def test_teacher_ensemble_runs_all_experts_and_one_teacher(bundle_path, experts, test_video, tmp_path):
    report = export_teacher(bundle_path, tmp_path, "ucf-mini")
    assert report["passed"] and report["max_abs_diff"] < 1e-4
    sess = ort.InferenceSession(str(tmp_path / "ucf-mini.teacher.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [f"video_{j}" for j in range(len(experts))]
    model, meta = load_bundle(bundle_path)
    i = meta.datasets.index("ucf-mini")
    xs = [load_clip(test_video, e.preprocess)[None] for e in experts]
    with torch.no_grad():
        _, teachers = model([e.encoder(torch.from_numpy(x)) for e, x in zip(experts, xs)])
    got = sess.run(None, {f"video_{j}": x for j, x in enumerate(xs)})[0]
    np.testing.assert_allclose(got, teachers[i].numpy(), atol=1e-4)
    with pytest.raises(InputError, match="no teacher"):
        export_teacher(bundle_path, tmp_path, "nope")


def test_cli_export_with_options_teacher_and_triton(bundle_path, test_video, tmp_path):
    out, repo = tmp_path / "onnx", tmp_path / "repo"
    res = CliRunner().invoke(cli, ["export", "--bundle", str(bundle_path), "--out", str(out), "--student", "ucf-mini",
                                   "--uint8-input", "--clip", str(test_video), "--teacher", "ucf-mini",
                                   "--triton", str(repo)])
    assert res.exit_code == 1  # the teacher ensemble refuses --uint8-input, before anything is written
    assert "teacher ensemble is exported with float32 inputs" in res.output and not out.exists()
    res = CliRunner().invoke(cli, ["export", "--bundle", str(bundle_path), "--out", str(out), "--student", "ucf-mini",
                                   "--uint8-input", "--clip", str(test_video), "--triton", str(repo), "--force"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "ucf-mini.student.validation.json").read_text())
    assert report["passed"] and any("decoded clip" in c["input"] for c in report["cases"])
    assert parse_config((repo / "ucf-mini_student" / "config.pbtxt").read_text()).input[0].data_type == \
        parse_config('input [{ name: "x" data_type: TYPE_UINT8 }]').input[0].data_type
    assert (repo / "ucf-mini_expert" / "1" / "model.onnx").exists()


def test_unwritable_output_is_a_clear_error(bundle_path, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(cli, ["export", "--bundle", str(bundle_path), "--out", str(blocker / "sub")])
    assert res.exit_code == 1 and "cannot create output folder" in res.output


def test_validation_failure_leaves_no_partial_teacher(bundle_path, tmp_path):
    from jedi_deploy.export.onnx import OnnxExportConfig

    with pytest.raises(ExportValidationError, match="disagrees"):  # an impossible tolerance
        export_teacher(bundle_path, tmp_path, "ucf-mini", cfg=OnnxExportConfig(atol=-1.0))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_teacher_ensemble_goes_through_the_shared_export_path(bundle_path, experts, tmp_path, exporter):
    """The teacher is exported like every student: the chosen exporter, simplification, the card,
    the checker and the validation against PyTorch (one export path for 1 to n inputs)."""
    from jedi_deploy.contracts.model_card import read_card
    from jedi_deploy.export.onnx import OnnxExportConfig

    report = export_teacher(bundle_path, tmp_path, "ucf-mini", cfg=OnnxExportConfig(exporter=exporter, simplify=True))
    assert report["passed"] and report["max_abs_diff"] < 1e-4 and report["exporter"] == exporter
    assert [c["batch"] for c in report["cases"]] == [8, 3, 1]
    card = read_card(tmp_path / "ucf-mini.teacher.onnx")
    assert card.kind == "teacher" and card.exporter == exporter and card.simplified
    assert [i.name for i in card.inputs] == [f"video_{j}" for j in range(len(experts))]
    saved = json.loads((tmp_path / "ucf-mini.teacher.validation.json").read_text())
    assert saved["exporter"] == exporter and saved["kind"] == "teacher"


# --- export is all-or-nothing ---------------------------------------------------------------------

def _snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_failing_export_leaves_the_previous_one_intact(bundle_path, tmp_path):
    out = tmp_path / "exp1"
    res = CliRunner().invoke(cli, ["export", "--bundle", str(bundle_path), "--out", str(out), "--student", "ucf-mini"])
    assert res.exit_code == 0, res.output
    before = _snapshot(out)
    assert "ucf-mini.student.onnx" in before and "ucf-mini.expert.validation.json" in before
    # an unknown teacher: refused before anything is written (it used to rewrite every file first)
    res = CliRunner().invoke(cli, ["export", "--bundle", str(bundle_path), "--out", str(out), "--teacher", "nosuch"])
    assert res.exit_code == 1 and "no teacher for dataset 'nosuch'" in res.output
    assert _snapshot(out) == before
    # a validation that fails after some files were made: none of them reaches the folder
    res = CliRunner().invoke(cli, ["export", "--bundle", str(bundle_path), "--out", str(out), "--atol", "-1"])
    assert res.exit_code == 1 and "disagrees" in res.output
    assert _snapshot(out) == before and [p.name for p in out.iterdir() if p.is_dir()] == []


def test_a_folder_in_the_way_is_one_line_and_nothing_changes(bundle_path, tmp_path):
    out = tmp_path / "exp"
    (out / "ucf-mini.expert.onnx").mkdir(parents=True)
    res = CliRunner().invoke(cli, ["export", "--bundle", str(bundle_path), "--out", str(out), "--student", "ucf-mini"])
    assert res.exit_code == 1 and "ucf-mini.expert.onnx is in the way: a folder" in res.output
    assert "Traceback" not in res.output and sorted(p.name for p in out.iterdir()) == ["ucf-mini.expert.onnx"]


def test_a_killed_exports_staging_folder_is_removed_by_the_next(bundle_path, tmp_path):
    from jedi_deploy.export.pipeline import STAGING_PREFIX, ExportOptions, export_all

    out = tmp_path / "exp"
    stale = out / f"{STAGING_PREFIX}killed"
    stale.mkdir(parents=True)
    (stale / "ucf-mini.student.onnx").write_bytes(b"half written")
    results = export_all(bundle_path, out, ExportOptions(students=("ucf-mini",), with_experts=False))
    assert [r.path for r in results] == [out / "ucf-mini.student.onnx"] and results[0].path.is_file()
    assert sorted(p.name for p in out.iterdir()) == ["ucf-mini.student.onnx", "ucf-mini.student.validation.json"]
