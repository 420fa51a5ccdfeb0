import importlib.util

import pytest
import torch
from safetensors.torch import save_file

from jedi_deploy.contracts.errors import CheckpointError, InputError
from jedi_deploy.contracts.header import (
    atomic_path,
    dump_metadata,
    read_safetensors_metadata,
)


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) != 0o600


def test_metadata_kind_and_garbage_files(tmp_path):
    p = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(1)}, str(p), metadata=dump_metadata({"kind": "cache"}))
    assert read_safetensors_metadata(p, "cache")["kind"] == "cache"
    with pytest.raises(CheckpointError, match="expected a jedi 'expert' file"):
        read_safetensors_metadata(p, "expert")
    (tmp_path / "g.safetensors").write_bytes(b"\x10" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_safetensors_metadata(tmp_path / "g.safetensors")
    with pytest.raises(InputError, match="not found"):
        read_safetensors_metadata(tmp_path / "none.safetensors")
    save_file({"a": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="no 'jedi' metadata"):
        read_safetensors_metadata(tmp_path / "plain.safetensors")


def test_missing_optional_dependency_says_how_to_install():
    from jedi_deploy.contracts.deps import require
    from jedi_deploy.contracts.errors import MissingDependencyError

    assert require("json").dumps(1) == "1"
    with pytest.raises(MissingDependencyError, match="jedi_no_such_module is not installed: pip install jedi_no_such"):
        require("jedi_no_such_module")
    if importlib.util.find_spec("tensorrt") is None:  # the hint for a real optional dependency
        with pytest.raises(MissingDependencyError, match="tensorrt is not installed: pip install 'jedi-deploy\\[gpu\\]'"):
            require("tensorrt")


# --- a file system that refuses the write: one line naming the file, nothing changed -------------

FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from jedi_deploy.contracts.errors import InputError
from jedi_deploy.contracts.header import write_json
import numpy as np
from safetensors.numpy import save_file
from jedi_deploy.contracts.header import atomic_path
target = sys.argv[1]
for what in ("json", "safetensors"):
    try:
        if what == "json":
            write_json(target + ".json", {"x": "y" * 20000})
        else:
            with atomic_path(target + ".safetensors", ".safetensors") as tmp:
                save_file({"w": np.zeros(100000, np.float32)}, str(tmp))
    except InputError as e:
        print("error:", e)
"""


def test_a_full_disk_is_one_line_naming_the_file_and_the_old_file_stays(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "out"
    (tmp_path / "out.json").write_text("previous\n")
    (tmp_path / "out.safetensors").write_bytes(b"previous")
    r = subprocess.run([sys.executable, "-c", FULL_DISK, str(target)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    for line, ext in zip(lines, (".json", ".safetensors")):
        assert line.startswith(f"error: cannot write {target}{ext}: File too large"), line
    assert (tmp_path / "out.json").read_text() == "previous\n" and (tmp_path / "out.safetensors").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.safetensors"]  # no temp file left


def test_finished_files_follow_the_umask_whoever_writes_them(tmp_path):
    import os

    import numpy as np
    from safetensors.numpy import save_file

    from jedi_deploy.contracts.header import atomic_path, current_umask, write_json

    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        write_json(tmp_path / "a.json", {})
        with atomic_path(tmp_path / "b.safetensors") as tmp:
            save_file({"w": np.zeros(3, np.float32)}, str(tmp))
    finally:
        os.umask(old)
    for name in ("a.json", "b.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
