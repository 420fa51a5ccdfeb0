"""End to end: `jedi demo --quick` as a new user runs it."""
import json
import subprocess
import sys
from pathlib import Path

from support.cli import CWD  # children run outside the repository root


def test_demo_quick_end_to_end(tmp_path):
    out_dir = tmp_path / "demo"
    out = subprocess.run([sys.executable, "-m", "jedi_deploy.app.cli", "demo", "--quick", "--out", str(out_dir)],
                         cwd=CWD, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[8/8]" in out.stdout and "report:" in out.stdout
    report = (out_dir / "report.md").read_text()
    for section in ("## Accuracy", "Initial experts", "JEDI students", "JEDI teachers", "## Export parity",
                    "## Latency", "Student/expert median-latency ratios", "A/A", "accuracy_curves.png"):
        assert section in report, section
    # the report's inference command runs as printed, from the demo folder (the models are in onnx/)
    command = next(x for x in report.splitlines() if x.startswith("$ python -m jedi_deploy.serve.infer"))
    model = command.split()[4]
    assert model.startswith("onnx/") and (out_dir / model).is_file() and (out_dir / command.split()[5]).is_file()
    assert (out_dir / "accuracy_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out_dir / "onnx").glob("*.student.onnx"))) == 3
    assert len(list((out_dir / "onnx").glob("*.expert.onnx"))) == 3
    for v in (out_dir / "onnx").glob("*.validation.json"):
        r = json.loads(v.read_text())
        assert r["passed"] and r["max_abs_diff"] <= 1e-4 and r["top1_agreement"] == 1.0 and r["num_inputs"] >= 8
    # The figures in the report are this run's: the table matches eval.json.
    table = json.loads((out_dir / "eval.json").read_text())
    for d, rows in table.items():
        assert f"{rows['student']['acc1']:.2f}" in report
    bench = json.loads((out_dir / "bench.json").read_text())
    assert all(f"{r['ratio']:.3f}" in report for r in bench["results"])
    # INT8 students: gated, timed against their experts, their gate tables in the report
    assert "## INT8 students behind the accuracy gate" in report
    for g in (out_dir / "onnx").glob("*.student.int8.gate.json"):
        gate = json.loads(g.read_text())
        assert f"INT8 gate for `{Path(gate['fp32_model']).name}`: {'PASSED' if gate['passed'] else 'FAILED'}" in report
        assert gate["calibration"]["source"].startswith("cache ")
    assert all(f"{r['int8_speedup']:.2f}x" in report for r in bench["results"] if "int8_speedup" in r)
    gates = [json.loads(g.read_text()) for g in (out_dir / "onnx").glob("*.gate.json")]
    kept = [g for g in gates if g["passed"] and g["speed"]["kept"] == "int8"]  # passed, and faster (else fp32 kept)
    assert len(list((out_dir / "onnx").glob("*.student.int8.onnx"))) == len(kept)
    for g in gates:
        if g["passed"]:
            assert ("faster, int8 kept" if g["speed"]["speedup"] >= 1 else "slower, fp32 kept") in report

    again = subprocess.run([sys.executable, "-m", "jedi_deploy.app.cli", "demo", "--quick", "--out", str(out_dir)],
                           cwd=CWD, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "already exists and is not empty" in again.stderr
    assert (out_dir / "report.md").read_text() == report

    (out_dir / "notes.txt").write_text("mine")
    forced = subprocess.run([sys.executable, "-m", "jedi_deploy.app.cli", "demo", "--quick", "--force", "--out",
                             str(out_dir)], cwd=CWD, capture_output=True, text=True, timeout=600)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert (out_dir / "notes.txt").read_text() == "mine" and (out_dir / "report.md").is_file()
