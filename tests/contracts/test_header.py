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
