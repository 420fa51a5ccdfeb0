"""Runtimes behind OnnxModel: ONNX Runtime, OpenVINO, and ``--runtime auto``'s probe in child processes."""
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from jedi_deploy.contracts.errors import InputError
from jedi_deploy.runners.probe import describe_pick, pick_runtime
from jedi_deploy.serve.runtime import OnnxModel

CWD = tempfile.gettempdir()
HERE = Path(__file__).parent
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="openvino is not installed (extra [openvino])")


@pytest.fixture
def test_runtimes_importable(monkeypatch):
    """The probe's children find tests/support/crash_runtime.py."""
    monkeypatch.setenv("PYTHONPATH", f"{HERE.parent}:{__import__('os').environ.get('PYTHONPATH', '')}")


def torch_free(code: str, timeout=300) -> str:
    """Run ``code`` in a child process without torch, as ``jedi serve`` / ``jedi infer`` run. (In
    this test process, after the session fixtures' DataLoader workers, a freed OpenVINO model
    crashed the process at the next child's exit; a torch-free service never has those workers.)"""
    out = subprocess.run([sys.executable, "-c", "import sys\nsys.modules['torch'] = None\n" + code], cwd=CWD,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


@needs_openvino
def test_openvino_matches_onnx_runtime(onnx_dir, test_video, teacher_path):
    torch_free(f"""
import numpy as np
from jedi_deploy.serve.runtime import OnnxModel
for path in {[str(onnx_dir / n) for n in ("hmdb-mini.student.onnx", "hmdb-mini.expert.onnx")]!r}:
    ort, ov = OnnxModel(path), OnnxModel(path, runtime="openvino", threads=1)
    assert ov.runtime == "openvino" and ov.runtime_info["openvino"]
    feed = ort.prepare({str(test_video)!r})
    np.testing.assert_allclose(ov.run(feed), ort.run(feed), atol=1e-3, rtol=1e-3)
    x = ort.sample_input(3)  # dynamic batch
    np.testing.assert_allclose(ov.run(x), ort.run(x), atol=1e-3, rtol=1e-3)
ort, ov = OnnxModel({str(teacher_path)!r}), OnnxModel({str(teacher_path)!r}, runtime="openvino")
np.testing.assert_allclose(ov.video_probs({str(test_video)!r}), ort.video_probs({str(test_video)!r}), atol=1e-4)
""")


@needs_openvino
def test_openvino_precision_is_pinned_asked_for_by_name_and_reported(onnx_dir, test_video):
    """fp32 graphs run in f32 on OpenVINO (its CPU default is bf16 where the CPU has it); bf16 only
    as `openvino-bf16`, never picked by `auto`; every place that names the runtime says the precision
    the compiled model computes in. (In a child process, like every OpenVINO run here: see torch_free.)"""
    torch_free(f"""
import numpy as np
import openvino as ov
from jedi_deploy.app.bench import resolve_runtimes
from jedi_deploy.runners.probe import installed_runtimes
from jedi_deploy.serve.bench import bench_models
from jedi_deploy.serve.runtime import OnnxModel

has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
path, expert = {str(onnx_dir / "hmdb-mini.student.onnx")!r}, {str(onnx_dir / "hmdb-mini.expert.onnx")!r}
ort, f32, bf16 = OnnxModel(path), OnnxModel(path, runtime="openvino"), OnnxModel(path, runtime="openvino-bf16")
assert f32.runtime_info["precision_asked"] == "f32" and f32.runtime_info["inference_precision"] == "f32"
assert bf16.runtime_info["precision_asked"] == "bf16"
assert bf16.runtime_info["inference_precision"] == ("bf16" if has_bf16 else "f32")  # what it really runs
feed = ort.prepare({str(test_video)!r})
np.testing.assert_allclose(f32.run(feed), ort.run(feed), atol=1e-3, rtol=1e-3)
np.testing.assert_allclose(bf16.run(feed), ort.run(feed), atol=0.1, rtol=0.05)
assert "openvino-bf16" not in installed_runtimes() and "openvino" in installed_runtimes()
rts = resolve_runtimes(["ort-cpu", "openvino-cpu", "openvino-bf16-cpu"])
rows = bench_models([("hmdb-mini", path, expert)], rts, runs=2, warmup=0)["results"]
assert {{r["runtime"]: r["precision"] for r in rows}} == {{
    "ort-cpu": "fp32", "openvino-cpu": "f32", "openvino-bf16-cpu": "bf16" if has_bf16 else "f32"}}, rows
""")


def test_providers_are_for_onnx_runtime_only(onnx_dir):
    with pytest.raises(InputError, match="--providers"):
        OnnxModel(onnx_dir / "hmdb-mini.student.onnx", providers="cpu",
                  runtime="jedi_deploy.runners.openvino:OpenVinoRunner")
    with pytest.raises(InputError, match="unknown runtime"):
        OnnxModel(onnx_dir / "hmdb-mini.student.onnx", runtime="tvm")


def test_probe_skips_a_runtime_that_crashes_the_process(onnx_dir, test_runtimes_importable):
    warnings = []
    pick = pick_runtime(onnx_dir / "hmdb-mini.student.onnx", threads=1, warn=warnings.append,
                        candidates={"crashy": "support.crash_runtime:CrashSession", "ort": "ort"})
    assert pick["name"] == "ort" and pick["runtime"] == "ort" and pick["probes"]["ort"] > 0
    assert "crashy" in pick["skipped"] and "SIGSEGV" in pick["skipped"]["crashy"]
    assert len(warnings) == 1 and "runtime crashy skipped" in warnings[0] and "SIGSEGV" in warnings[0]
    assert "skipped crashy" in describe_pick(pick)


def test_probe_skips_a_hang_and_a_refusal_and_fails_when_nothing_runs(onnx_dir, tmp_path, test_runtimes_importable):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="no runtime could run") as e:
        pick_runtime(junk, candidates={"ort": "ort", "hang": "support.crash_runtime:HangSession"}, timeout_s=5,
                     warn=lambda m: None)
    assert "ONNX Runtime cannot load" in str(e.value) and "no answer within 5 s" in str(e.value)


def test_auto_picks_among_installed_runtimes(onnx_dir, test_video):
    path = onnx_dir / "hmdb-mini.student.onnx"
    out = torch_free(f"""
import json, numpy as np
from jedi_deploy.serve.runtime import OnnxModel
m = OnnxModel({str(path)!r}, runtime="auto", threads=1)
ref = OnnxModel({str(path)!r})
np.testing.assert_allclose(m.video_probs({str(test_video)!r}), ref.video_probs({str(test_video)!r}), atol=1e-4)
print(json.dumps({{"runtime": m.runtime, "pick": m.runtime_info["picked_by_probe"]}}))
""")
    got = json.loads(out.strip().splitlines()[-1])
    pick = got["pick"]
    installed = {"ort"} | ({"openvino"} if importlib.util.find_spec("openvino") else set())
    assert set(pick["probes"]) | set(pick["skipped"]) == installed and not pick["skipped"]
    assert got["runtime"] == pick["name"] == min(pick["probes"], key=pick["probes"].get)


def test_cli_infer_runtime_auto_reports_the_pick(onnx_dir, test_video):
    out = subprocess.run([sys.executable, "-m", "jedi_deploy.serve.infer", onnx_dir / "hmdb-mini.student.onnx",
                          test_video, "--runtime", "auto", "--threads", "1"], cwd=CWD, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "hmdb-mini.student.onnx: runtime " in out.stderr and "(probe, batch 1 median:" in out.stderr


@pytest.fixture(scope="module")
def int8_dir(onnx_dir, datasets, tmp_path_factory):
    """hmdb-mini's student, expert and a gated INT8 student (calibrated on its training videos)."""
    import shutil

    from jedi_deploy.export.quantize import Int8Options, VideoList, quantize_student

    out = tmp_path_factory.mktemp("int8")
    for n in ("hmdb-mini.student.onnx", "hmdb-mini.expert.onnx"):
        shutil.copy(onnx_dir / n, out / n)
    d = next(x for x in datasets if x.name == "hmdb-mini")
    lists = [VideoList([s.path for s in d.samples(sp)], [s.label for s in d.samples(sp)], sp) for sp in ("train", "test")]
    quantize_student(out / "hmdb-mini.student.onnx", *lists, Int8Options(max_drop=100.0, keep_slower=True))
    return out


def test_cli_bench_times_int8_students_and_shows_their_gate(int8_dir, tmp_path):
    runtimes = "ort-cpu" + (",openvino-cpu" if importlib.util.find_spec("openvino") else "")
    out = subprocess.run([sys.executable, "-m", "jedi_deploy.app.cli", "bench", int8_dir, "--runtimes", runtimes,
                          "--runs", "3", "--warmup", "0", "--batch-sizes", "1", "--json", tmp_path / "b.json"],
                         cwd=CWD, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert [r["runtime"] for r in report["results"]] == runtimes.split(",")
    for r in report["results"]:
        assert r["student_int8"]["median_ms"] > 0 and r["int8_speedup"] > 0
    assert report["int8_gates"][0]["passed"] and "| expert / INT8 student | fp32 / INT8 student | INT8 |" in out.stdout
    assert "INT8 gate for `hmdb-mini.student.onnx`: PASSED" in out.stdout


@needs_openvino
def test_service_on_openvino(int8_dir, test_video):
    import requests

    from support.service import predict, start, stop

    models = [int8_dir / "hmdb-mini.student.onnx", int8_dir / "hmdb-mini.student.int8.onnx"]
    proc, addr = start(models, "--runtime", "openvino")
    url = f"http://{addr}"
    try:
        info = requests.get(f"{url}/v1/models", timeout=30).json()["models"]
        assert {m["runtime"] for m in info} == {"openvino"}
        assert {m["precision"] for m in info} == {"fp32", "int8"}
        for m, path in zip(sorted(info, key=lambda m: m["file"]), sorted(models)):
            got = predict(url, test_video, model=m["name"], topk=3).json()["predictions"]
            want = OnnxModel(path).classify(test_video, 3)  # ONNX Runtime in this process
            assert [p["label"] for p in got][:1] == [want[0].label]
            assert got[0]["score"] == pytest.approx(want[0].score, abs=2e-2 if "int8" in m["file"] else 1e-3)
    finally:
        stop(proc)
