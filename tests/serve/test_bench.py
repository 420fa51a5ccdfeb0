import importlib.util
import json
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import pytest

from jedi_deploy.contracts.errors import InputError
from jedi_deploy.serve.bench import (
    bench_dir,
    bench_models,
    bench_pair,
    check_pair,
    discover_pairs,
    extra_node_cost,
    format_bench,
    ort_runtimes,
    round_order,
    time_block,
)


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
        assert 1 < r["profiled_ratio"] < 1.5 and 0 < r["fold_ms"] < r["student"]["max_ms"]
    assert format_bench(report).count("\n") == len(names) + 1
    m = report["machine"]
    assert m["runtimes"]["ort-cpu"]["session.intra_op.allow_spinning"] == "0" and m["runtimes"]["ort-cpu"]["onnxruntime"]


def test_blocks_interleave_in_balanced_orders():
    calls = []
    runners = {k: (lambda k=k: calls.append(k)) for k in ("a", "b", "c")}
    times = time_block(runners, warmup=1, runs=6)
    assert calls[:6] == ["a", "b", "c", "a", "b", "c"]  # the untimed call, then the warm-up
    rounds = ["".join(calls[i:i + 3]) for i in range(6, len(calls), 3)]
    assert rounds == ["abc", "bca", "cab", "cba", "bac", "acb"]  # rotations, then reversed rotations
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6, "c": 6}


@pytest.mark.parametrize("n", [2, 3, 5])
def test_round_orders_balance_positions_and_precedence(n):
    keys = list(range(n))
    orders = [round_order(keys, r) for r in range(2 * n)]
    assert all(sorted(o) == keys for o in orders)
    for k in keys:
        assert [o.index(k) for o in orders].count(0) == 2 and len({o.index(k) for o in orders}) == n
        for j in keys:
            if j != k:
                before = sum(o.index(k) < o.index(j) for o in orders)
                assert before == n  # k runs before j in half the rounds


def test_extra_node_cost_finds_the_fold_in_the_students_own_runs(onnx_dir):
    name, student, expert = discover_pairs(onnx_dir)[0]
    x = check_pair(student, expert).sample_input(1, 0)
    cost = extra_node_cost(student, expert, x, runs=2)
    graph_nodes = {k: {n.name: n.op_type for n in onnx.load(p).graph.node} for k, p in (("s", student), ("e", expert))}
    fold = {n: op for n, op in graph_nodes["s"].items() if n not in graph_nodes["e"]}
    assert sorted(fold.values()) == ["Add", "Gemm", "MatMul", "Mul", "Sigmoid"]
    # ORT may fuse the fold's SiLU (Sigmoid + Mul) into one node named after the Mul
    assert all(any(n.startswith(f) for f in fold) for n in cost["extra_nodes"])
    assert {fold[n] for n in cost["extra_nodes"] if n in fold} >= {"Gemm", "MatMul", "Add"}
    assert cost["missing_nodes"] == [] and cost["runs"] == 2
    assert 0 < cost["extra_ms"] < cost["run_ms"] and cost["ratio"] == pytest.approx(
        cost["run_ms"] / (cost["run_ms"] - cost["extra_ms"]), rel=0.5)
    same = extra_node_cost(expert, expert, x, runs=1)
    assert same["extra_nodes"] == [] == same["missing_nodes"] and same["ratio"] == 1.0
    back = extra_node_cost(expert, student, x, runs=1)  # the expert lacks the fold
    assert back["extra_nodes"] == [] and back["missing_nodes"] == cost["extra_nodes"]


def test_bench_input_errors(onnx_dir, tmp_path, gpu_stack):
    with pytest.raises(InputError, match="no \\*.student.onnx"):
        discover_pairs(tmp_path)
    with pytest.raises(InputError, match="different inputs"):  # the 3D expert samples clips, TSN segments
        bench_pair(onnx_dir / "hmdb-mini.student.onnx", onnx_dir / "kinetics-mini.expert.onnx", runs=1, warmup=0)
    if not gpu_stack["cuda_ep"]:
        with pytest.raises(InputError, match="CUDAExecutionProvider"):
            ort_runtimes(1, ["ort-cuda"])
    else:
        assert [r.name for r in ort_runtimes(1, ["ort-cuda"])] == ["ort-cuda"]
    with pytest.raises(InputError, match="no runtime"):
        bench_models(discover_pairs(onnx_dir), [], runs=1)


def test_torch_runtime_runs_the_graph_the_onnx_came_from(onnx_dir, bundle_path):
    from jedi_deploy.export.eager import torch_runtimes
    from jedi_deploy.serve.runtime import OnnxModel

    (rt,) = torch_runtimes(bundle_path, ["cpu"])
    assert rt.name == "torch-cpu" and rt.info["torch"]
    for kind in ("student", "expert"):
        path = onnx_dir / f"ucf-mini.{kind}.onnx"
        m = OnnxModel(path)
        x = m.sample_input(2)
        np.testing.assert_allclose(rt.open(path).infer(x)["logits"], m.run(x), atol=1e-4)
    report = bench_models(discover_pairs(onnx_dir)[:1], ort_runtimes(1, ["ort-cpu"]) + [rt], batch_sizes=(1, 2),
                          runs=3, warmup=0)
    assert [(r["runtime"], r["batch_size"]) for r in report["results"]] == [
        ("ort-cpu", 1), ("ort-cpu", 2), ("torch-cpu", 1), ("torch-cpu", 2)]
    for s in report["speedups"]:
        torch_row = next(r for r in report["results"] if r["runtime"] == "torch-cpu" and r["batch_size"] == s["batch_size"])
        ort_row = next(r for r in report["results"] if r["runtime"] == "ort-cpu" and r["batch_size"] == s["batch_size"])
        assert s["student_speedup"] == pytest.approx(torch_row["student"]["median_ms"] / ort_row["student"]["median_ms"])
    assert len(report["speedups"]) == 2


def test_cli_bench_writes_json_markdown_and_chart(onnx_dir, bundle_path, tmp_path, gpu_stack):
    from click.testing import CliRunner

    from jedi_deploy.app.cli import cli

    run = CliRunner().invoke
    # a child process, like a user's: OpenVINO (in "auto" when installed) is not loaded into this one
    res = subprocess.run([sys.executable, "-m", "jedi_deploy.app.cli", "bench", str(onnx_dir), "--bundle",
                          str(bundle_path), "--runs", "3", "--warmup", "0", "--batch-sizes", "1,2", "--out",
                          str(tmp_path / "b")], cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "b" / "bench.json").read_text())
    pairs = discover_pairs(onnx_dir)
    ort_gpu = gpu_stack["cuda_ep"] + gpu_stack["trt_ep"]  # "auto" times every runtime present
    n_runtimes = 2 + ort_gpu + gpu_stack["torch_cuda"] + (importlib.util.find_spec("openvino") is not None)
    n_speedups = 1 + (ort_gpu if gpu_stack["torch_cuda"] else 0)
    assert len(report["results"]) == len(pairs) * n_runtimes * 2 and len(report["speedups"]) == len(pairs) * n_speedups * 2
    assert (tmp_path / "b" / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "A/A" in (tmp_path / "b" / "bench.md").read_text()
    cases = [(["--runtimes", "ort-cpu,foo"], "unknown runtime"), (["--runtimes", "torch-cpu"], "need --bundle"),
             (["--batch-sizes", "1,x"], "comma-separated integers")]
    if not gpu_stack["cuda_ep"]:
        cases.append((["--runtimes", "ort-cuda"], "CUDAExecutionProvider"))
    if not gpu_stack["tensorrt"]:
        cases.append((["--runtimes", "tensorrt"], "tensorrt is not installed"))
    for args, text in cases:
        res = run(cli, ["bench", str(onnx_dir), "--runs", "1", *args])
        assert res.exit_code != 0 and text in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_bench_reports_a_runtime_that_cannot_load_a_model_as_skipped(onnx_dir):
    from jedi_deploy.contracts.errors import InputError
    from jedi_deploy.runners.base import Runtime

    def refuse(path):
        raise InputError(f"{path}: this runtime cannot compile it")

    report = bench_models(discover_pairs(onnx_dir)[:1], [*ort_runtimes(1, ["ort-cpu"]), Runtime("picky", refuse)],
                          runs=2, warmup=0)
    assert [r["runtime"] for r in report["results"]] == ["ort-cpu"]
    assert report["skipped"][0]["runtime"] == "picky" and "cannot compile" in report["skipped"][0]["reason"]
    assert "on picky: skipped" in format_bench(report)
