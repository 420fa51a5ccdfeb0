import subprocess
import sys
import tempfile

# Subprocesses run from a temporary folder, never the repository root (where the bare train/,
# export/ and serve/ folders would import as a second copy of the package).
CWD = tempfile.gettempdir()


def test_serve_imports_and_runs_without_torch(onnx_dir, test_video):
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
        "import jedi_deploy.serve.runtime, jedi_deploy.serve.infer, jedi_deploy.serve.bench, jedi_deploy.serve.server\n"
        "import jedi_deploy.serve.cli, jedi_deploy.serve.batcher, jedi_deploy.serve.guard\n"
        "from jedi_deploy.serve.infer import infer\n"
        f"r = infer({str(onnx_dir / 'hmdb-mini.student.onnx')!r}, [{str(test_video)!r}], 3)\n"
        "assert len(next(iter(r.values()))) == 3\n"
        "loaded = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert sys.modules['torch'] is None and loaded == ['torch'], loaded\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=CWD, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_importing_serve_does_not_load_torch():
    code = ("import sys, jedi_deploy.serve.infer, jedi_deploy.serve.bench, jedi_deploy.serve.server, jedi_deploy.serve.cli; "
            "print(any(m.split('.')[0] == 'torch' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=CWD, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
