import json

import numpy as np
import pytest

from jedi_deploy.errors import InputError
from serve.bench import bench_dir, bench_models, bench_pair, discover_pairs, format_bench, ort_runtimes, time_block


def test_bench_reports_every_pair_with_an_aa_control(onnx_dir):
    report = bench_dir(onnx_dir, runs=6, warmup=1)
    names = [r["name"] for r in report["results"]]
    assert names == sorted(n for n, _, _ in discover_pairs(onnx_dir))
    for r in report["results"]:
        assert r["runtime"] == "ort-cpu"
        for k in ("student", "expert", "expert_copy"):
            s = r[k]
            assert 0 < s["min_ms"] <= s["median_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
            assert s["throughput_per_s"] == pytest.approx(1e3 / s["median_ms"])
            assert s["spread"] == pytest.approx((s["max_ms"] - s["min_ms"]) / s["median_ms"])
        assert r["ratio"] == pytest.approx(r["student"]["median_ms"] / r["expert"]["median_ms"])
        assert r["aa_ratio"] == pytest.approx(r["expert_copy"]["median_ms"] / r["expert"]["median_ms"])
    assert format_bench(report).count("\n") == len(names) + 1
    m = report["machine"]
    assert m["runtimes"]["ort-cpu"]["session.intra_op.allow_spinning"] == "0" and m["runtimes"]["ort-cpu"]["onnxruntime"]


def test_blocks_interleave_and_rotate():
    calls = []
    runners = {k: (lambda x, k=k: calls.append(k)) for k in ("a", "b", "c")}
    times = time_block(runners, np.zeros(1), warmup=1, runs=3)
    assert calls[:6] == ["a", "b", "c", "a", "b", "c"]  # the untimed call, then the warm-up
    assert calls[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # who goes first rotates
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_blocks_can_also_record_cpu_time():
    """A sleeping call costs wall time but almost no CPU time; a busy one costs both."""
    import time

    def busy(_x):
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass

    cpu: dict = {}
    wall = time_block({"sleep": lambda _x: time.sleep(0.02), "busy": busy}, None, warmup=0, runs=3, cpu_times=cpu)
    assert set(cpu) == {"sleep", "busy"} and all(len(v) == 3 for v in cpu.values())
    assert min(wall["sleep"]) >= 0.02 and max(cpu["sleep"]) < 0.005
    assert sum(cpu["busy"]) > 0.2 * sum(wall["busy"])  # not all of it: other tenants may steal the vCPU


def test_bench_input_errors(onnx_dir, tmp_path):
    with pytest.raises(InputError, match="no \\*.student.onnx"):
        discover_pairs(tmp_path)
    with pytest.raises(InputError, match="different inputs"):  # the 3D expert samples clips, TSN segments
        bench_pair(onnx_dir / "hmdb-mini.student.onnx", onnx_dir / "kinetics-mini.expert.onnx", runs=1, warmup=0)
    with pytest.raises(InputError, match="CUDAExecutionProvider"):
        ort_runtimes(1, ["ort-cuda"])
    with pytest.raises(InputError, match="no runtime"):
        bench_models(discover_pairs(onnx_dir), [], runs=1)


def test_torch_runtime_runs_the_graph_the_onnx_came_from(onnx_dir, bundle_path):
    from export.eager import torch_runtimes
    from serve.runtime import OnnxModel

    (rt,) = torch_runtimes(bundle_path, ["cpu"])
    assert rt.name == "torch-cpu" and rt.info["torch"]
    for kind in ("student", "expert"):
        path = onnx_dir / f"ucf-mini.{kind}.onnx"
        m = OnnxModel(path)
        x = m.sample_input(2)
        np.testing.assert_allclose(rt.load(path)(x).numpy(), m.run(x), atol=1e-4)
    report = bench_models(discover_pairs(onnx_dir)[:1], ort_runtimes(1, ["ort-cpu"]) + [rt], batch_sizes=(1, 2),
                          runs=3, warmup=0)
    assert [(r["runtime"], r["batch_size"]) for r in report["results"]] == [
        ("ort-cpu", 1), ("ort-cpu", 2), ("torch-cpu", 1), ("torch-cpu", 2)]
    for s in report["speedups"]:
        torch_row = next(r for r in report["results"] if r["runtime"] == "torch-cpu" and r["batch_size"] == s["batch_size"])
        ort_row = next(r for r in report["results"] if r["runtime"] == "ort-cpu" and r["batch_size"] == s["batch_size"])
        assert s["student_speedup"] == pytest.approx(torch_row["student"]["median_ms"] / ort_row["student"]["median_ms"])
    assert len(report["speedups"]) == 2


def test_cli_bench_writes_json_markdown_and_chart(onnx_dir, bundle_path, tmp_path):
    from click.testing import CliRunner

    from jedi_deploy.app.cli import cli

    run = CliRunner().invoke
    res = run(cli, ["bench", str(onnx_dir), "--bundle", str(bundle_path), "--runs", "3", "--warmup", "0",
                    "--batch-sizes", "1,2", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "b" / "bench.json").read_text())
    pairs = discover_pairs(onnx_dir)
    assert len(report["results"]) == len(pairs) * 2 * 2 and len(report["speedups"]) == len(pairs) * 2
    assert (tmp_path / "b" / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "A/A" in (tmp_path / "b" / "bench.md").read_text()
    for args, text in [(["--runtimes", "ort-cpu,foo"], "unknown runtime"),
                       (["--runtimes", "torch-cpu"], "need --bundle"),
                       (["--runtimes", "ort-cuda"], "CUDAExecutionProvider"),
                       (["--runtimes", "tensorrt"], "tensorrt is not installed"),
                       (["--batch-sizes", "1,x"], "comma-separated integers")]:
        res = run(cli, ["bench", str(onnx_dir), "--runs", "1", *args])
        assert res.exit_code != 0 and text in res.output, (args, res.output)
        assert "Traceback" not in res.output
