"""Latency of each JEDI student vs its initial expert, on the same runtime, in ONE run.

    python benchmarks/student_vs_expert.py [MODEL_DIR] [--runs 500] [--batch-sizes 1 8]

MODEL_DIR holds ``<name>.student.onnx`` / ``<name>.expert.onnx`` pairs (``jedi export``
output, e.g. ``runs/demo/onnx``); without it a quick demo is run into a temp folder first.
Prints a markdown table per batch size; the last line is one JSON object with the
student/expert median ratios and the A/A control ratios (the noise floor).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jedi_deploy.serve.bench import bench_dir, format_bench  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?", type=Path)
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    model_dir = args.model_dir
    if model_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="jedi-bench-"))
        subprocess.run([sys.executable, "-m", "jedi_deploy.app.cli", "demo", "--quick", "--out", str(tmp / "demo")],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        model_dir = tmp / "demo" / "onnx"
    summary = {"threads": args.threads, "runs": args.runs}
    for bs in args.batch_sizes:
        report = bench_dir(model_dir, batch_size=bs, runs=args.runs, warmup=args.warmup, threads=args.threads)
        print(f"\nbatch size {bs}\n" + format_bench(report))
        summary["machine"] = report["machine"]
        for r in report["results"]:
            summary[f"{r['name']}_b{bs}_ratio"] = round(r["ratio"], 4)
            summary[f"{r['name']}_b{bs}_aa_ratio"] = round(r["aa_ratio"], 4)
            summary[f"{r['name']}_b{bs}_extra_us"] = round(1e3 * (r["student"]["median_ms"] - r["expert"]["median_ms"]), 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
