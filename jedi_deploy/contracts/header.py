"""Self-describing files: JSON metadata inside safetensors headers, hashes, atomic writes.

Torch-free on purpose: ``serve`` may import it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from jedi_deploy.contracts.errors import CheckpointError, ConfigError, InputError

#: The package version (re-exported as ``jedi_deploy.__version__``), written into files and answers.
PACKAGE_VERSION = "0.1.0"
FORMAT_VERSION = 1
METADATA_KEY = "jedi"


def checked_fields(cls, d: dict, what: str) -> dict:
    """``d`` unchanged if every key is a field of dataclass ``cls``; else a ConfigError listing both."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown {what} fields {sorted(unknown)}; known: {sorted(known)}")
    return dict(d)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a Path, or raise InputError naming ``what`` was expected there."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} not found: {p}")
    if not p.is_file():
        raise InputError(f"{what} is not a file: {p}")
    if p.stat().st_size == 0:
        raise InputError(f"{what} is empty (0 bytes): {p}")
    return p


def read_safetensors_metadata(path: str | os.PathLike, kind: str | None = None) -> dict:
    """Read the ``jedi`` JSON from a safetensors header without loading tensors.

    ``kind`` (e.g. ``"expert"``, ``"cache"``, ``"bundle"``) is checked when given.
    """
    from safetensors import safe_open

    p = require_file(path, f"{kind or 'safetensors'} file")
    try:
        with safe_open(str(p), framework="numpy") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as e:  # safetensors raises its own types for garbage files
        raise CheckpointError(f"{p}: not a readable safetensors file ({e})") from None
    if raw is None:
        raise CheckpointError(f"{p}: safetensors file has no '{METADATA_KEY}' metadata; "
                              "was it written by jedi-deploy?")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}: '{METADATA_KEY}' metadata is not valid JSON ({e})") from None
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{p}: expected a jedi '{kind}' file, found kind={meta.get('kind')!r}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{p}: written by a newer jedi-deploy (format {meta['format_version']}); "
                              f"this one reads format <= {FORMAT_VERSION}")
    return meta


def dump_metadata(meta: dict) -> dict[str, str]:
    """The ``metadata=`` argument for ``safetensors.*.save_file``."""
    return {METADATA_KEY: json.dumps({"format_version": FORMAT_VERSION, **meta}, sort_keys=True)}


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, which races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: errno values that mean "this file cannot be written here" (not a bug): disk full, quota, too
#: large for a limit, read-only, permission.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def write_failure(e: BaseException) -> str | None:
    """What went wrong writing a file, when it is the file system's refusal (disk full, quota,
    permission, ...) rather than a bug - also through safetensors, which wraps the OS error in its
    own message (``... (os error 28)``, ``IoError(Os { code: 28, ... })``); else None."""
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        return e.strerror or str(e)
    m = re.search(r"Os \{ code: (\d+)|\(os error (\d+)\)", str(e))
    code = int(next(g for g in m.groups() if g)) if m else None
    if code in WRITE_ERRNOS:
        return os.strerror(code)
    return None


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only on success.

    On any exception the temporary file is removed and ``final`` is untouched, so a crash
    or a failed validation never leaves a partial or corrupted file behind. A file system that
    refuses the write (disk full, quota, permission: :func:`write_failure`) is one
    :class:`InputError` naming ``final``. Finished files get the mode the umask gives every new
    file (0666 & ~umask), whichever library wrote them.
    """
    final = Path(final)
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or ".tmp", dir=parent)
    except OSError as e:
        raise InputError(f"cannot write to {parent}: {e.strerror or e}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())  # after the writer: some recreate the file (0600)
        os.replace(tmp_path, final)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        why = write_failure(e)
        if why is not None:
            raise InputError(f"cannot write {final}: {why}; nothing was changed there") from None
        raise


def require_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) or raise :class:`InputError` naming it."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {p}: {e.strerror or e}") from None
    return p


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
