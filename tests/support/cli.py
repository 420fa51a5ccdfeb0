"""Running the ``jedi`` CLI as a user does (a child process, outside the repository) and checking its errors."""
from __future__ import annotations

import subprocess
import sys
import tempfile

#: Children run outside the repository root (where the bare train/, export/, serve/ folders would
#: import as a second copy of the package).
CWD = tempfile.gettempdir()


def jedi(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "jedi_deploy.app.cli", *map(str, args)], cwd=CWD,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_error(out, *needles):
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, out.stderr
