"""The CLI as a user meets it: real subprocesses, one-line errors, non-zero exits."""

import re

import pytest

from support.cli import assert_clean_error, jedi


def command_paths(group=None, prefix=()) -> list[tuple[str, ...]]:
    """Every command of the CLI, nested groups included, from the click group itself."""
    import click

    from jedi_deploy.app.cli import cli

    group = group or cli
    out = []
    for name, cmd in sorted(group.commands.items()):
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += command_paths(cmd, (*prefix, name))
    return out


def test_help_lists_every_stage():
    paths = command_paths()
    assert {"archs", "import-expert", "ablate", "analyze", "export", "serve"} <= {p[0] for p in paths}
    out = jedi("--help")
    assert out.returncode == 0
    for c in {p[0] for p in paths}:
        assert f"  {c}" in out.stdout, c
    for path in paths:
        sub = jedi(*path, "--help")
        assert sub.returncode == 0 and "Usage: jedi" in sub.stdout, path
        summary = sub.stdout.split("\n\n", 2)[1].strip() if sub.stdout.count("\n\n") >= 2 else ""
        assert summary and not summary.startswith("Options:"), f"jedi {' '.join(path)} --help explains nothing"


def test_missing_path(tmp_path):
    assert_clean_error(jedi("infer", tmp_path / "none.onnx", tmp_path / "v.mp4"), "not found")


@pytest.mark.parametrize("content,needle", [(b"", "video is empty (0 bytes)"), (b"\x00garbage" * 50, "cannot decode")])
def test_corrupt_and_zero_byte_videos(onnx_dir, tmp_path, content, needle):
    video = tmp_path / "bad.mp4"
    video.write_bytes(content)
    out = jedi("infer", onnx_dir / "hmdb-mini.student.onnx", video)
    assert out.returncode == 1
    assert_clean_error(out, "error:", needle, "bad.mp4")


def test_cache_built_for_other_experts(bundle_path, experts, datasets, tmp_path):
    from jedi_deploy.train.cache import build_cache

    other = tmp_path / "other_cache"
    build_cache(experts[:2], datasets, other, splits=("test",), progress=False)  # one expert missing
    assert_clean_error(jedi("eval", "--bundle", bundle_path, "--cache", other), "error:", "other experts")


def test_unknown_student(bundle_path, tmp_path):
    out = jedi("export", "--bundle", bundle_path, "--out", tmp_path / "o", "--student", "nope")
    assert_clean_error(out, "error: unknown student 'nope'", "hmdb-mini")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_checkpoint_of_the_wrong_shape(expert_paths, data_root, tmp_path):
    from safetensors.torch import load_file, save_file

    from jedi_deploy.contracts.header import dump_metadata, read_safetensors_metadata

    meta = read_safetensors_metadata(expert_paths[0])
    meta.pop("format_version")
    state = load_file(str(expert_paths[0]))
    state["head.weight"] = state["head.weight"][:, :5].contiguous()
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=dump_metadata(meta))
    out = jedi("cache", "--data", data_root, "--expert", tmp_path / "bad.safetensors", "--out", tmp_path / "c")
    assert_clean_error(out, "error:", "bad.safetensors", "shape mismatch", "head.weight")


def test_stages_chain_through_the_cli(cache_dir, bundle_path, onnx_dir, tmp_path, test_video):
    run = tmp_path / "run"
    out = jedi("train", "--cache", cache_dir, "--out", run, "--epochs", 2, "--burn-in", 1, "--lr", 1e-3,
               "--hidden", 16)
    assert out.returncode == 0, out.stderr
    assert (run / "jedi.safetensors").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) == 3
    ev = jedi("eval", "--bundle", run / "jedi.safetensors", "--cache", cache_dir)
    assert ev.returncode == 0 and "JEDI students" in ev.stdout
    ex = jedi("export", "--bundle", run / "jedi.safetensors", "--out", run / "onnx", "--student", "ucf-mini")
    assert ex.returncode == 0, ex.stderr
    assert sorted(p.name for p in (run / "onnx").glob("*.onnx")) == ["ucf-mini.expert.onnx", "ucf-mini.student.onnx"]
    inf = jedi("infer", run / "onnx" / "ucf-mini.student.onnx", test_video, "--topk", 2)
    assert inf.returncode == 0 and len(inf.stdout.strip().splitlines()) == 3
    b = jedi("bench", run / "onnx", "--runs", 3, "--warmup", 1, "--json", run / "bench.json")
    assert b.returncode == 0 and "ucf-mini" in b.stdout and (run / "bench.json").is_file()


def test_train_does_not_replace_an_existing_bundle(cache_dir, tmp_path):
    run = tmp_path / "run"
    args = ("train", "--cache", cache_dir, "--out", run, "--epochs", 1, "--burn-in", 0, "--hidden", 8)
    assert jedi(*args).returncode == 0
    before = (run / "jedi.safetensors").read_bytes()
    assert_clean_error(jedi(*args, "--lr", 1e-2), "error:", "already exists", "--force")
    assert (run / "jedi.safetensors").read_bytes() == before
    assert jedi(*args, "--lr", 1e-2, "--force").returncode == 0
    assert (run / "jedi.safetensors").read_bytes() != before


def test_serve_start_up_errors(tmp_path, onnx_dir):
    assert_clean_error(jedi("serve", tmp_path / "none.onnx"), "ONNX model not found")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert_clean_error(jedi("serve", junk), "error:", "cannot load")
    assert_clean_error(jedi("serve", onnx_dir / "hmdb-mini.student.onnx", "--max-upload-mb", "0"), "error:",
                       "max_upload_mb")


def test_small_honesty_fixes(onnx_dir, bundle_path, test_video, tmp_path):
    """A bundle given to `jedi infer` says what it is; --topk 0 is refused, not answered with one
    label; the stage list names every stage."""
    out = jedi("infer", bundle_path, test_video)
    assert_clean_error(out, "this is a jedi bundle file (safetensors), not an ONNX model", "jedi export --bundle")
    assert "INVALID_PROTOBUF" not in out.stderr
    out = jedi("infer", onnx_dir / "ucf-mini.student.onnx", test_video, "--topk", "0")
    assert out.returncode == 2 and "--topk" in out.stderr and "Traceback" not in out.stderr
    from jedi_deploy.contracts.errors import InputError
    from jedi_deploy.serve.infer import run_infer

    with pytest.raises(InputError, match="topk must be >= 1"):
        run_infer(onnx_dir / "ucf-mini.student.onnx", [test_video], topk=0)
    top = jedi("--help").stdout
    stages = top.split("Stages and the files between them:")[1].split("Options:")[0]
    for c in {p[0] for p in command_paths()}:  # every command, archs and import-expert included
        assert re.search(rf"^\s+{re.escape(c)}\s+->", stages, re.M), c


def test_archs_lists_the_zoo_with_its_presets_and_kernels():
    """`jedi archs` from a fresh process: every registered entry (the zoo's too, not only the demo's),
    each preset with its upstream, the architecture arguments it sets and its resize kernel."""
    import subprocess
    import sys
    import tempfile

    r = subprocess.run([sys.executable, "-m", "jedi_deploy", "archs"], capture_output=True, text=True,
                       cwd=tempfile.gettempdir(), timeout=300)
    assert r.returncode == 0, r.stderr
    names = {line.split()[0] for line in r.stdout.splitlines() if line and not line.startswith(" ")}
    assert {"r3d_18", "swin3d_t", "tsn_r50", "tsm_r50", "mmaction_vit", "hf", "generic", "tiny_tsn"} <= names
    line = next(x for x in r.stdout.splitlines() if "--preset tsm_k400_pretrained_r50_1x1x16_25e_hmdb51_rgb" in x)
    assert "sets --arg num_segments=16" in line and "cv2.resize INTER_LINEAR" in line and "upright" in line
    assert "--preset R3D_18_Weights.KINETICS400_V1" in r.stdout
