"""benchmarks/gpu_check.py keeps working where there is no GPU: its CPU-only mode runs the same
code paths (device caching with bf16 autocast, device training, the runtime checks) at a tiny size
and says it measured no GPU."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_cpu_mode_prints_one_json_line():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--videos", "2",
                          "--epochs", "1", "--samples", "400"], capture_output=True, text=True, timeout=900,
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["gpu_measured"] is False and "no GPU measured" in report["note"]
    parity = report["cache"]["parity_vs_cpu_fp32"]
    assert parity and all(v["emb_max_abs_rel"] < 0.1 for v in parity.values())
    assert report["train"]["epochs"] == 1 and report["train"]["wall_s"] > 0
    assert report["ort_cuda"].startswith("absent") or "max_abs_diff" in report["ort_cuda"]
    assert report["tensorrt"].startswith("absent") or "passed" in report["tensorrt"]
