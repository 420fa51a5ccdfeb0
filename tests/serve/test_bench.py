import pytest

from jedi_deploy.errors import InputError
from serve.bench import bench_dir, bench_pair, discover_pairs, format_bench


def test_bench_reports_every_pair_with_an_aa_control(onnx_dir):
    report = bench_dir(onnx_dir, runs=6, warmup=1)
    names = [r["name"] for r in report["results"]]
    assert names == sorted(n for n, _, _ in discover_pairs(onnx_dir))
    for r in report["results"]:
        for k in ("student", "expert", "expert_copy"):
            assert 0 < r[k]["min_ms"] <= r[k]["median_ms"] <= r[k]["p90_ms"] <= r[k]["max_ms"]
        assert r["ratio"] == pytest.approx(r["student"]["median_ms"] / r["expert"]["median_ms"])
        assert r["aa_ratio"] > 0
    assert format_bench(report).count("\n") == len(names) + 1
    assert report["machine"]["onnxruntime"]


def test_bench_input_errors(onnx_dir, tmp_path):
    with pytest.raises(InputError, match="no \\*.student.onnx"):
        discover_pairs(tmp_path)
    with pytest.raises(InputError, match="different inputs"):  # the 3D expert samples clips, TSN segments
        bench_pair(onnx_dir / "hmdb-mini.student.onnx", onnx_dir / "kinetics-mini.expert.onnx", runs=1, warmup=0)
