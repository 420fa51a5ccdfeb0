"""Property-based fuzzing of the whole HTTP surface (/v1, /v2, jobs, health) from the service's own
OpenAPI schema, with schemathesis: every generated request - valid or not - gets a 4xx or a 2xx
within the timeout, never a 5xx or a hang, and the service is healthy afterwards. Bounded: a fixed
number of examples per operation, deterministic generation, loopback only."""
from __future__ import annotations

import subprocess
import sys

import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("schemathesis")

from support.colour import colour_model, coloured_video  # noqa: E402
from support.service import start, stop  # noqa: E402

RUN = "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    coloured_video(root / "v.mp4", [("red", 2.0)])
    (root / "loop.mp4").symlink_to(root / "loop.mp4")
    proc, addr = start([colour_model(tmp_path / "colour.onnx")], "--jobs-root", str(root), "--max-upload-mb", "4")
    # path parameters pinned to the served model, so /v2 requests reach the tensor checks instead of a 404
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\nname = "colour"\nversion = "1"\n')
    try:
        out = subprocess.run([sys.executable, "-c", RUN, "--config-file", str(config), "run",
                              f"http://{addr}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "40",
                              "--generation-deterministic", "--request-timeout", "30", "--phases", "coverage,fuzzing",
                              "--workers", "2"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
        report = out.stdout[-6000:]
        assert out.returncode == 0, report
        assert " passed" in report and "generated" in report, report
        assert requests.get(f"http://{addr}/healthz", timeout=10).status_code == 200
        assert proc.poll() is None
    finally:
        code, err = stop(proc)
    assert "Traceback" not in err, err[-3000:]
