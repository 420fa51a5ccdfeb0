"""The installed package as a user gets it: one import name (``jedi_deploy``) in the wheel, and
every entry point working from a project folder that has its own train.py, serve.py and
export.py - in a fresh virtual environment with a non-editable install of the built wheel."""
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a clean copy of the sources (a stale build/ folder in a checkout would
    leak old files into it)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("jedi_deploy", "train", "export", "serve"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(out)], capture_output=True, text=True, timeout=300, cwd=out)
    assert res.returncode == 0, res.stderr[-3000:]
    [whl] = out.glob("jedi_deploy-*.whl")
    return whl


def test_the_wheel_installs_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"jedi_deploy"}
    for stage in ("train", "export", "serve"):  # the design card's folders, inside the package
        assert f"jedi_deploy/{stage}/__init__.py" in names
    assert "jedi_deploy/serve/infer.py" in names and "jedi_deploy/train/cache.py" in names
    for floor in ("contracts", "common", "media", "runners", "models", "models/zoo"):  # the core's floors
        assert f"jedi_deploy/{floor}/__init__.py" in names, floor
    assert not any("footage" in n for n in names)  # test footage is not in the wheel
    # every package in the source tree is in the wheel
    for init in ROOT.glob("jedi_deploy/**/__init__.py"):
        assert str(init.relative_to(ROOT)) in names, init


def fresh_venv_with_our_packages(env_dir: Path) -> Path:
    """A new virtual environment whose other packages (torch, onnxruntime, ...) are the RUNNING
    interpreter's - a user's venv, the system's, whichever runs the tests - and not the base
    interpreter's (``system_site_packages`` would give those: a venv-only torch would be missing).
    Only the paths are added, not their ``.pth`` files, so an editable jedi-deploy of the running
    environment stays out; jedi-deploy itself is then installed from the wheel."""
    import site
    import sysconfig

    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    inner = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    ours = list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                               *site.getsitepackages()]))
    (Path(inner) / "outer_packages.pth").write_text("\n".join(ours) + "\n")
    return py


def test_the_inner_venv_sees_this_interpreters_packages_not_the_base_ones(tmp_path):
    """README command 2 from a user's venv: torch is found where the running interpreter finds it."""
    py = fresh_venv_with_our_packages(tmp_path / "venv")
    out = subprocess.run([str(py), "-c", "import torch, onnx, sys; print(torch.__file__); print(sys.prefix)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    torch_file, prefix = out.stdout.split()
    import torch

    assert Path(torch_file).resolve() == Path(torch.__file__).resolve()
    assert Path(prefix) == tmp_path / "venv"


@pytest.mark.slow
def test_entry_points_work_from_a_project_with_its_own_train_serve_export(wheel, tmp_path, data_root, expert_paths,
                                                                           onnx_dir, test_video):
    env_dir = tmp_path / "venv"
    py = fresh_venv_with_our_packages(env_dir)
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                          "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    work = tmp_path / "project"
    work.mkdir()
    for name in ("train", "serve", "export"):
        (work / f"{name}.py").write_text(f"raise SystemExit('the user\\'s own {name}.py was imported')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}"}

    def run(*args, timeout=600):
        out = subprocess.run([str(a) for a in args], cwd=work, env=env, capture_output=True, text=True,
                             timeout=timeout)
        assert out.returncode == 0, f"{args}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        return out

    where = run(py, "-c", "import jedi_deploy.train.cache as c, jedi_deploy.serve.infer as i; print(c.__file__, i.__file__)")
    assert all(str(env_dir) in f for f in where.stdout.split())  # the installed copy, not the checkout
    experts = [a for p in expert_paths for a in ("--expert", p)]
    run(py, "-m", "jedi_deploy", "cache", "--data", data_root, *experts, "--out", tmp_path / "c1", "--split", "test",
        "--workers", "0")
    run(py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "jedi_deploy", "cache",
        "--data", data_root, *experts, "--out", tmp_path / "c2", "--split", "test", "--workers", "0",
        "--chunk-size", "4")
    assert sorted(p.relative_to(tmp_path / "c1") for p in (tmp_path / "c1").glob("*/*.safetensors")) == \
        sorted(p.relative_to(tmp_path / "c2") for p in (tmp_path / "c2").glob("*/*.safetensors"))
    model = onnx_dir / "ucf-mini.student.onnx"
    a = run(py, "-m", "jedi_deploy.serve.infer", model, test_video, "--json", "--topk", "2")
    b = run(env_dir / "bin" / "jedi", "infer", model, test_video, "--json", "--topk", "2")
    assert a.stdout == b.stdout and '"predictions"' in a.stdout
