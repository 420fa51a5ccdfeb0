"""kill -9 at random points, with random option changes on the way back: `jedi train` and `jedi
cache` either end with exactly the files of an uninterrupted run, or refuse a changed setting with
one line naming it (and lose nothing). Seeded, a few kills each, every wait bounded."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from safetensors.torch import load_file

from jedi_deploy.contracts.cache import PARTS_DIR

#: batch_size 2: ~2.5 s of training on a 2-core EPYC, long enough to be killed mid-run (at 16 the whole
#: run took < 1 s there and finished between the check and the kill)
TRAIN = ["--set", "epochs=12", "--set", "burn_in=2", "--set", "hidden=16", "--set", "batch_size=2",
         "--set", "refit=true", "--seed", "3"]


def jedi(*args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "jedi_deploy", *map(str, args)], env=env, cwd=tempfile.gettempdir(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def snapshot(folder) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def same_tensors(a, b) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), (a, k)


@pytest.mark.slow
def test_train_killed_at_random_points_ends_bit_identical(cache_dir, tmp_path):
    rng = random.Random(7)
    ref = tmp_path / "ref"
    assert finish(jedi("train", "--cache", cache_dir, "--out", ref, *TRAIN))[0] == 0
    out, kills, changes = tmp_path / "run", 0, 0
    proc = jedi("train", "--cache", cache_dir, "--out", out, *TRAIN)
    log = out / "in_progress" / "metrics.jsonl"
    for _ in range(4):  # kill it wherever it is: starting, mid-epoch, writing a checkpoint, finishing
        # the epochs logged before the kill (then a random instant more); at most 9 of the 12, so a run
        # resumed late is still running when its turn comes (at 12 a fast machine could finish first)
        epochs = min(rng.randint(0, 12), 9)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and (
                not log.exists() or len(log.read_text().splitlines()) < epochs):
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        if (out / "jedi.safetensors").exists() and not (out / "in_progress").exists():
            break  # killed after it finished
        resume = ["--resume"] if (out / "in_progress").exists() else []  # (before its first checkpoint: anew)
        before = snapshot(out)
        if rng.random() < 0.6:  # come back with another setting: refused, nothing touched
            key, value = rng.choice([("lr", "0.0021"), ("hidden", "32"), ("epochs", "13"), ("refit", "false")])
            if resume:
                code, err = finish(jedi("train", "--cache", cache_dir, "--out", out, *TRAIN, "--set", f"{key}={value}",
                                        *resume))
                last = err.strip().splitlines()[-1]
                assert code == 1 and last.startswith("error: ") and key in last and "Traceback" not in err, err[-2000:]
                assert snapshot(out) == before
                changes += 1
        proc = jedi("train", "--cache", cache_dir, "--out", out, *TRAIN, *resume)
    if proc.returncode == -signal.SIGKILL and not (out / "jedi.safetensors").exists():
        proc = jedi("train", "--cache", cache_dir, "--out", out, *TRAIN, "--resume")
    code, err = finish(proc)
    assert code in (0, -signal.SIGKILL), err[-2000:]
    assert kills >= 2 and changes >= 1, (kills, changes)
    for name in ("jedi.safetensors", "best.safetensors"):
        same_tensors(ref / name, out / name)
    assert not (out / "in_progress").exists()


@pytest.mark.slow
def test_cache_killed_at_random_points_ends_equal_or_refuses(data_root, expert_paths, tmp_path):
    rng = random.Random(11)
    ucf = [p for p in expert_paths if p.stem == "ucf-mini"]
    base = ["cache", "--data", data_root, "--split", "test", "--batch-size", "1", "--workers", "0"]
    for p in ucf:
        base += ["--expert", p]
    ref = tmp_path / "ref"
    assert finish(jedi(*base, "--out", ref, "--chunk-size", "2"))[0] == 0
    out, kills = tmp_path / "run", 0
    for _ in range(3):
        proc = jedi(*base, "--out", out, "--chunk-size", "2")
        want = rng.randint(1, 4)  # parts written before the kill
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and len(list((out / PARTS_DIR).rglob("*.safetensors"))) < want:
            time.sleep(0.01)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        before = snapshot(out)
        extra = rng.choice([["--chunk-size", str(rng.choice([1, 3, 8]))], ["--chunk-size", "2", "--precision", "bf16"]])
        code, err = finish(jedi(*base, "--out", out, *extra))
        last = err.strip().splitlines()[-1]
        assert code == 1 and last.startswith("error: ") and "Resume with the same settings" in last, err[-2000:]
        assert snapshot(out) == before
    code, err = finish(jedi(*base, "--out", out, "--chunk-size", "2"))
    assert code == 0, err[-2000:]
    assert kills >= 1
    shards = sorted(p.relative_to(ref) for p in ref.glob("*/*.safetensors"))
    assert shards == sorted(p.relative_to(out) for p in out.glob("*/*.safetensors"))
    for rel in shards:
        same_tensors(ref / rel, out / rel)
