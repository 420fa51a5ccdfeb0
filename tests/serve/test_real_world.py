"""Every real-world video shape through the three ways in - `jedi infer`, `jedi cache` and
`POST /v1/predict`: rotated, variable frame rate, MKV/WebM/AVI/MOV, 10-bit, grayscale, odd size,
one frame, corrupt mid-stream, truncated tail and a 3,000-frame video; plus the folder entries
that cannot be read (broken link, link loop, a FIFO). No traceback, no prediction from frames
the file does not show, and a warning wherever only part of a file could be used."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from jedi_deploy.app.cli import cli
from jedi_deploy.serve.runtime import OnnxModel
from support.footage import corrupt, pattern, truncate, write_video
from support.service import predict, start, stop

requests = pytest.importorskip("requests")

DAMAGED = ("corrupt_middle", "truncated_tail")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("shapes")
    vfr = [40, 40, 100, 33, 250]
    files = {
        "rotated": write_video(d / "rotated.mp4", 40, rotation=90),
        "vfr_mkv": write_video(d / "vfr.mkv", 40, kind="mkv", durations=vfr),
        "webm": write_video(d / "clip.webm", 30, kind="webm"),
        "avi": write_video(d / "clip.avi", 30, kind="avi"),
        "mov": write_video(d / "clip.mov", 30, kind="mov", durations=vfr),
        "ten_bit": write_video(d / "tenbit.mp4", 30, pix_fmt="yuv420p10le"),
        "gray": write_video(d / "gray.mp4", 30, pix_fmt="gray"),
        "odd_size": write_video(d / "odd.mkv", 30, kind="mkv", size=(63, 47), pix_fmt="yuv444p"),
        "one_frame": write_video(d / "one.mp4", 1),
        "long_3000": write_video(d / "long.mkv", kind="mkv", size=(64, 48),
                                 frames=np.broadcast_to(pattern(7, 48, 64), (3000, 48, 64, 3))),
    }
    whole = write_video(d / "whole.mp4", 300, size=(96, 64), gop=30, options={"movflags": "faststart"})
    files["corrupt_middle"] = corrupt(whole, 0.5, 2000, d / "corrupt.mp4")
    files["truncated_tail"] = truncate(whole, 0.6, d / "truncated.mp4")
    whole.unlink()
    return files


def predictions(model: OnnxModel, path: Path, topk: int = 2) -> list[dict]:
    return [p.__dict__ for p in model.classify(path, topk)]


def test_jedi_infer_reads_every_shape_and_reports_unreadable_entries(shapes, onnx_dir, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name, p in shapes.items():
        shutil.copy(p, folder / p.name)
    (folder / "gone.mp4").symlink_to(folder / "nothing.mp4")  # a broken link
    (folder / "loop.mp4").symlink_to(folder / "loop.mp4")  # a link loop
    os.mkfifo(folder / "pipe.mp4")  # would block any reader forever
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder)  # a folder link back up: searched once, then a loop
    model_path = onnx_dir / "ucf-mini.student.onnx"
    out = tmp_path / "preds.jsonl"
    res = CliRunner().invoke(cli, ["infer", str(model_path), str(folder), "--out", str(out), "--topk", "2"])
    assert res.exit_code == 1, res.output  # some entries could not be read: the status says so
    assert "Traceback" not in res.output and "could not be read" in res.output
    records = {Path(r["video"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    model = OnnxModel(model_path)
    for name, p in shapes.items():
        r = records[p.name]
        assert "error" not in r, (name, r)
        want = predictions(model, folder / p.name)
        assert [x["label"] for x in r["predictions"]] == [x["label"] for x in want], name
        assert ("warning" in r) == (name in DAMAGED), (name, r.get("warning"))
    for name, needle in (("gone.mp4", "broken link"), ("loop.mp4", "link loop"), ("pipe.mp4", "not a regular file"),
                         ("up", "link loop")):
        assert needle in records[name]["error"], records[name]


def test_jedi_cache_caches_every_shape_and_notes_the_damaged_ones(shapes, expert_paths, experts, datasets,
                                                                  tmp_path):
    """One dataset of real-world shapes, cached with its own expert."""
    j = next(i for i, e in enumerate(experts) if e.dataset == "ucf-mini")
    ucf = next(d for d in datasets if d.name == "ucf-mini")
    root = tmp_path / "data" / "ucf-mini"
    (root / "videos").mkdir(parents=True)
    shutil.copy(ucf.root / "classes.txt", root / "classes.txt")
    for p in shapes.values():
        shutil.copy(p, root / "videos" / p.name)
    (root / "test.txt").write_text("".join(f"videos/{p.name} 0\n" for p in shapes.values()))
    out = tmp_path / "cache"
    res = subprocess.run([sys.executable, "-m", "jedi_deploy", "cache", "--data", str(tmp_path / "data"), "--expert",
                          str(expert_paths[j]), "--out", str(out), "--workers", "0"], capture_output=True, text=True,
                         timeout=600, cwd=tempfile.gettempdir())
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 corrupt video(s) sampled from the frames before the corruption" in res.stderr
    from jedi_deploy.contracts.cache import read_cache_header
    from jedi_deploy.train.cached import load_cache

    split = load_cache(out).split("ucf-mini", "test")
    assert len(split) == len(shapes) and np.isfinite(split.emb[experts[j].name].numpy()).all()
    header = read_cache_header(out / "ucf-mini" / "test.safetensors")
    assert sorted(Path(n["path"]).name for n in header.notes) == sorted(shapes[k].name for k in DAMAGED)
    lines = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(Path(x["path"]).name for x in lines if "warning" in x) == sorted(shapes[k].name for k in DAMAGED)


def test_post_predict_answers_every_shape(shapes, onnx_dir):
    model_path = onnx_dir / "ucf-mini.student.onnx"
    model = OnnxModel(model_path)
    proc, addr = start([model_path])
    try:
        url = f"http://{addr}"
        for name, p in shapes.items():
            for how in ("multipart", "raw"):
                if how == "multipart":
                    r = predict(url, p, name=p.name, topk=2)
                else:
                    r = requests.post(f"{url}/v1/predict?topk=2&filename={p.name}", data=p.read_bytes(), timeout=60)
                assert r.status_code == 200, (name, how, r.text)
                body = r.json()
                assert [x["label"] for x in body["predictions"]] == [x["label"] for x in predictions(model, p)]
                assert ("warning" in body) == (name in DAMAGED), (name, body)
                if name in DAMAGED:
                    assert p.name in body["warning"] and "jedi-serve" not in body["warning"]
        assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
    finally:
        rc, err = stop(proc)
    assert "Traceback" not in err, err
