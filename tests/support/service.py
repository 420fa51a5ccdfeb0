"""Starting the real service in a subprocess (torch made unimportable) and talking to it: shared
by the service tests (tests/serve/conftest.py puts this folder on sys.path)."""
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from jedi_deploy.serve.runtime import OnnxModel

# Subprocesses run from a temporary folder, never the repository root (where the bare train/,
# export/ and serve/ folders would import as a second copy of the package).
CWD = tempfile.gettempdir()


def start(models: list[Path], *args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``jedi serve MODELS --port 0 ARGS`` in a torch-free subprocess (``env`` added to the environment)."""
    code = ("import sys\n"
            "sys.modules['torch'] = None  # the service must run without torch\n"
            "from jedi_deploy.serve.cli import serve\n"
            "serve.main(sys.argv[1:], prog_name='jedi serve')\n")
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, models), "--port", "0", *args], cwd=CWD,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        pytest.fail(f"service did not start: {line}{proc.stderr.read()}")
    return proc, line.split("http://", 1)[1].split()[0]


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, proc.stderr.read()


def predict(url, path=None, data=None, name="clip.mp4", **fields):
    files = {"video": (name, data if data is not None else Path(path).read_bytes())}
    return requests.post(f"{url}/v1/predict", files=files, data=fields, timeout=60)


def expected(model_path, video, topk=3):
    return [p.__dict__ for p in OnnxModel(model_path).classify(video, topk)]


def assert_same_predictions(got, want):
    assert [p["label"] for p in got] == [p["label"] for p in want]
    assert [p["score"] for p in got] == pytest.approx([p["score"] for p in want], abs=1e-5)


def metrics(url) -> dict:
    text = requests.get(f"{url}/metrics", timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}
