"""`jedi cache` at scale: unreadable files, a kill in the middle, and two torchrun ranks."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from jedi_deploy.app.cli import cli
from jedi_deploy.contracts.cache import FAILURES_FILE, PARTS_DIR, shard_path
from jedi_deploy.contracts.errors import VideoDecodeError
from jedi_deploy.contracts.header import read_safetensors_metadata
from jedi_deploy.media.datasets import load_dataset
from jedi_deploy.models.registry import load_expert
from jedi_deploy.train.cache import build_cache


def cache_cmd(data, experts, out, *extra):
    args = ["cache", "--data", str(data), "--out", str(out)]
    for p in experts:
        args += ["--expert", str(p)]
    return args + list(extra)


def assert_same_cache(a, b, exact=True):
    shards = sorted(p.relative_to(a) for p in a.glob("*/*.safetensors"))
    assert shards and shards == sorted(p.relative_to(b) for p in b.glob("*/*.safetensors"))
    for rel in shards:
        ta, tb = load_file(str(a / rel)), load_file(str(b / rel))
        assert ta.keys() == tb.keys()
        for k in ta:
            if exact or not ta[k].is_floating_point():
                assert torch.equal(ta[k], tb[k]), (rel, k)
            else:
                torch.testing.assert_close(ta[k], tb[k], rtol=1e-5, atol=1e-6)
        ma, mb = read_safetensors_metadata(a / rel), read_safetensors_metadata(b / rel)
        assert ma["samples"] == mb["samples"] and ma["failures"] == mb["failures"]


@pytest.fixture()
def broken_dataset(data_root, tmp_path):
    """ucf-mini's test split plus a corrupt, a zero-byte and a non-video file in its list."""
    src = data_root / "ucf-mini"
    root = tmp_path / "ucf-mini"
    shutil.copytree(src, root)
    (root / "videos" / "corrupt.mp4").write_bytes(os.urandom(5000))
    (root / "videos" / "empty.mp4").write_bytes(b"")
    (root / "videos" / "notes.txt").write_text("not a video\n")
    lines = (src / "test.txt").read_text().splitlines()[:6]
    lines[1:1] = ["videos/corrupt.mp4 0", "videos/empty.mp4 1"]
    lines.append("videos/notes.txt 2")
    for f in ("train.txt", "test.txt"):
        (root / f).unlink()
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    return root


def test_unreadable_videos_are_skipped_and_listed(broken_dataset, expert_paths, tmp_path):
    ucf = [p for p in expert_paths if p.stem == "ucf-mini"]
    out = tmp_path / "cache"
    res = CliRunner().invoke(cli, cache_cmd(broken_dataset, ucf, out, "--workers", "1"))
    assert res.exit_code == 0, res.output + res.stderr
    assert "3 unreadable video(s)" in res.stderr
    failures = [json.loads(x) for x in (out / FAILURES_FILE).read_text().splitlines()]
    assert sorted(f["path"] for f in failures) == ["videos/corrupt.mp4", "videos/empty.mp4", "videos/notes.txt"]
    assert all(f["dataset"] == "ucf-mini" and f["split"] == "test" and f["error"] for f in failures)
    meta = read_safetensors_metadata(shard_path(out, "ucf-mini", "test"))
    assert len(meta["samples"]) == 6 and not any("corrupt" in s or "empty" in s for s in meta["samples"])
    # the good videos' embeddings equal a cache of a list without the bad files
    clean = tmp_path / "clean" / "ucf-mini"
    shutil.copytree(broken_dataset, clean)
    good = [x for x in (clean / "test.txt").read_text().splitlines() if not any(b in x for b in ("corrupt", "empty", "notes"))]
    (clean / "test.txt").write_text("\n".join(good) + "\n")
    build_cache([load_expert(ucf[0])], [load_dataset(clean)], tmp_path / "c2", workers=0, progress=False)
    t1, t2 = load_file(str(shard_path(out, "ucf-mini", "test"))), load_file(str(shard_path(tmp_path / "c2", "ucf-mini", "test")))
    assert torch.equal(t1["labels"], t2["labels"])
    torch.testing.assert_close(t1["emb.ucf-mini"], t2["emb.ucf-mini"], rtol=1e-5, atol=1e-6)
    assert not (out / PARTS_DIR).exists()


def test_strict_stops_at_the_first_unreadable_video(broken_dataset, expert_paths, tmp_path):
    ucf = [load_expert(p) for p in expert_paths if p.stem == "ucf-mini"]
    with pytest.raises(VideoDecodeError, match="corrupt.mp4"):
        build_cache(ucf, [load_dataset(broken_dataset)], tmp_path / "c", strict=True, workers=0,
                    chunk_size=1, progress=False)
    assert not shard_path(tmp_path / "c", "ucf-mini", "test").exists()
    assert len(list((tmp_path / "c" / PARTS_DIR).rglob("*.safetensors"))) == 1  # the chunk before it is kept


def run_cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kw.setdefault("cwd", tempfile.gettempdir())  # never the repository root (its bare train/ folder)
    return subprocess.Popen([sys.executable, "-m", "jedi_deploy", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_killed_run_resumes_to_the_same_cache(data_root, expert_paths, tmp_path):
    args = ["--chunk-size", "4", "--batch-size", "2", "--workers", "1"]
    ref = run_cli(cache_cmd(data_root, expert_paths, tmp_path / "ref", *args))
    out = tmp_path / "killed"
    proc = run_cli(cache_cmd(data_root, expert_paths, out, *args))
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / PARTS_DIR).rglob("*.safetensors"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.glob("*/*.safetensors")))
    assert done_before < 6, "the run finished before it could be killed"
    assert list((out / PARTS_DIR).rglob("*.safetensors"))
    rerun = run_cli(cache_cmd(data_root, expert_paths, out, *args))
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()[-2000:]
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-2000:]
    assert_same_cache(tmp_path / "ref", out, exact=True)
    assert not (out / PARTS_DIR).exists()


def test_two_torchrun_ranks_equal_one_process(data_root, expert_paths, tmp_path):
    """The README's torchrun command, run from a project folder that has its own train.py,
    serve.py and export.py (which must never be imported in place of ours)."""
    work = tmp_path / "project"
    work.mkdir()
    for name in ("train", "serve", "export"):
        (work / f"{name}.py").write_text(f"raise SystemExit('the user\\'s own {name}.py was imported')\n")
    args = ["--chunk-size", "8", "--workers", "0"]
    one = run_cli(cache_cmd(data_root, expert_paths, tmp_path / "one", *args))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "jedi_deploy", *cache_cmd(data_root, expert_paths, tmp_path / "two", *args)],
                         env=env, capture_output=True, text=True, timeout=600, cwd=work)
    assert two.returncode == 0, two.stderr[-3000:]
    assert one.wait(timeout=300) == 0, one.stderr.read()[-2000:]
    assert_same_cache(tmp_path / "one", tmp_path / "two", exact=False)


def test_a_resume_with_other_settings_is_refused_never_mixed(data_root, expert_paths, tmp_path):
    """Killed with one --chunk-size, resumed with another (or another --precision): one line naming
    the setting, the parts kept; resumed with the same settings: the same cache as an uninterrupted run.
    (It used to mix layouts: a split with a third of its samples, or twice as many rows as videos.)"""
    ucf = [p for p in expert_paths if p.stem == "ucf-mini"]
    args = ["--batch-size", "1", "--workers", "0", "--split", "test"]
    ref = run_cli(cache_cmd(data_root, ucf, tmp_path / "ref", "--chunk-size", "2", *args))
    out = tmp_path / "killed"
    proc = run_cli(cache_cmd(data_root, ucf, out, "--chunk-size", "2", *args))
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / PARTS_DIR).rglob("*.safetensors"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts = sorted((out / PARTS_DIR).rglob("*.safetensors"))
    assert len(parts) >= 2 and not list(out.glob("*/*.safetensors")), "the run finished before it could be killed"
    before = {p: p.read_bytes() for p in parts}
    for extra, needle in ((["--chunk-size", "8"], "cached with --chunk-size 2; this run asks for --chunk-size 8"),
                          (["--chunk-size", "1"], "cached with --chunk-size 2; this run asks for --chunk-size 1"),
                          (["--chunk-size", "2", "--precision", "bf16"],
                           "cached with --precision fp32; this run asks for --precision bf16")):
        r = run_cli(cache_cmd(data_root, ucf, out, *extra, *args))
        _, err = r.communicate(timeout=300)
        assert r.returncode == 1 and "Traceback" not in err, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and needle in last and "Resume with the same settings" in last, last
        assert {p: p.read_bytes() for p in parts if p.exists()} == before and all(p.exists() for p in parts)
    rerun = run_cli(cache_cmd(data_root, ucf, out, "--chunk-size", "2", *args))
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()[-2000:]
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-2000:]
    assert_same_cache(tmp_path / "ref", out, exact=True)
    h = read_safetensors_metadata(shard_path(out, "ucf-mini", "test"))
    assert len(h["samples"]) == len((data_root / "ucf-mini" / "test.txt").read_text().split("\n")) - 1
