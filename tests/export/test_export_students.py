import json
import shutil

import numpy as np
import pytest
import torch

from jedi_deploy.contracts.errors import CheckpointError, InputError
from jedi_deploy.export.students import export_bundle
from jedi_deploy.media.decode import load_clip
from jedi_deploy.models.bundle import load_bundle


def test_every_student_and_expert_passes_parity(onnx_dir, experts):
    for ex in experts:
        for kind in ("student", "expert"):
            report = json.loads((onnx_dir / f"{ex.name}.{kind}.validation.json").read_text())
            assert report["passed"] and report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1.0
            assert report["num_inputs"] >= 8


def test_student_onnx_matches_the_trained_student_on_a_real_clip(onnx_dir, bundle_path, experts, test_video):
    import onnxruntime as ort

    model, meta = load_bundle(bundle_path)
    for j, ex in enumerate(experts):
        x = load_clip(test_video, ex.preprocess)[None]
        with torch.no_grad():
            want = model.students[j](model.adjust[j](ex.encoder(torch.from_numpy(x)))).numpy()
        sess = ort.InferenceSession(str(onnx_dir / f"{ex.name}.student.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(sess.run(None, {"video": x})[0], want, atol=1e-4)


def test_unknown_student_moved_and_wrong_checkpoints(bundle_path, expert_paths, tmp_path):
    with pytest.raises(InputError, match="unknown student 'nope'; this bundle has students"):
        export_bundle(bundle_path, tmp_path / "o", students=["nope"], progress=False)
    _, meta = load_bundle(bundle_path)
    names = meta.expert_names
    with pytest.raises(CheckpointError, match="hash"):  # another expert's checkpoint in its place
        export_bundle(bundle_path, tmp_path / "o", students=[names[0]],
                      expert_paths={names[0]: str(expert_paths[1])}, progress=False)
    with pytest.raises(InputError, match="not found"):
        export_bundle(bundle_path, tmp_path / "o", expert_paths={names[0]: str(tmp_path / "gone.safetensors")},
                      progress=False)
    moved = tmp_path / "moved.safetensors"
    shutil.copy(expert_paths[0], moved)
    reports = export_bundle(bundle_path, tmp_path / "o", students=[names[0]], with_experts=False,
                            expert_paths={names[0]: str(moved)}, progress=False)
    assert [r["kind"] for r in reports] == ["student"]
    assert not list((tmp_path / "o").glob("*.tmp*"))


def test_unwritable_output_is_a_clear_error(bundle_path, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot create output folder"):
        export_bundle(bundle_path, blocker / "sub", progress=False)


def test_validation_batches_are_budgeted_by_input_size():
    """Random validation batches 8, 3, 1 for ordinary inputs; 2 and 1 where one input is large (TSN's
    250 views, Swin's 32 frames); a user's own batch sizes are kept."""
    from dataclasses import replace

    from jedi_deploy.contracts.preprocess import Preprocess
    from jedi_deploy.export.onnx import OnnxExportConfig
    from jedi_deploy.export.students import SMALL_BATCHES, VALIDATION_VALUES, validation_budget

    cfg = OnnxExportConfig()
    r3d = Preprocess(16, "clip", crop=112)
    assert validation_budget(cfg, r3d).batch_sizes == (8, 3, 1)
    assert validation_budget(replace(cfg, views=250), Preprocess(1, "segments", crop=224)).batch_sizes == SMALL_BATCHES
    swin = Preprocess(32, "clip", crop=224)
    assert validation_budget(cfg, swin).batch_sizes == SMALL_BATCHES
    assert validation_budget(replace(cfg, batch_sizes=(4, 1)), swin).batch_sizes == (4, 1)
    edge = Preprocess(1, "segments", crop=8)  # exactly at the budget: kept; one value more: cut
    per_item = VALIDATION_VALUES // 12
    at = replace(cfg, views=per_item // (3 * 8 * 8))
    assert validation_budget(at, edge).batch_sizes == (8, 3, 1)
    assert validation_budget(replace(at, views=at.views + 1), edge).batch_sizes == SMALL_BATCHES
