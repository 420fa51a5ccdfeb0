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
