"""Shared fixtures: one tiny end-to-end pipeline (quick synthetic data -> briefly trained
experts -> cache -> JEDI bundle -> ONNX), built once per test session in a temp folder."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from jedi_deploy.media.synthetic import benchmark_specs, generate_benchmark

sys.path.insert(0, str(Path(__file__).parent))  # tests/support: helpers shared by the test modules


@pytest.fixture(scope="session")
def gpu_stack() -> dict:
    """What this machine has of the GPU stack, so tests of "X is missing" messages run only
    where X is missing (and the same suite passes on a machine that has it)."""
    import importlib.util

    import onnxruntime

    providers = onnxruntime.get_available_providers()
    return {"cuda_ep": "CUDAExecutionProvider" in providers, "trt_ep": "TensorrtExecutionProvider" in providers,
            "tensorrt": importlib.util.find_spec("tensorrt") is not None, "torch_cuda": torch.cuda.is_available()}


@pytest.fixture(scope="session")
def footage(tmp_path_factory) -> dict:
    """Real and real-like clips for the upstream-parity tests (:func:`support.upstream.make_footage`)."""
    from support.upstream import make_footage

    return make_footage(tmp_path_factory.mktemp("footage"))


@pytest.fixture(scope="session")
def mmaction_site(tmp_path_factory) -> Path:
    """MMAction2 1.2.0 installed into a folder of its own, once per session (:mod:`support.upstream`)."""
    from support.upstream import install_mmaction

    return install_mmaction(tmp_path_factory.mktemp("mmaction_site"))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_benchmark(root, seed=0, quick=True, progress=False)
    return root


@pytest.fixture(scope="session")
def datasets(data_root):
    from jedi_deploy.media.datasets import discover_datasets

    return discover_datasets(data_root)


@pytest.fixture(scope="session")
def expert_paths(datasets, tmp_path_factory) -> list[Path]:
    from jedi_deploy.train.pretrain import pretrain_expert

    out = tmp_path_factory.mktemp("experts")
    by_name = {d.name: d for d in datasets}
    return [pretrain_expert(by_name[s.name], s.arch, out / f"{s.name}.safetensors", epochs=2, progress=False)
            for s in benchmark_specs(quick=True)]


@pytest.fixture(scope="session")
def experts(expert_paths):
    from jedi_deploy.models.registry import load_expert

    return [load_expert(p) for p in expert_paths]


@pytest.fixture(scope="session")
def cache_dir(experts, datasets, tmp_path_factory) -> Path:
    from jedi_deploy.train.cache import build_cache

    out = tmp_path_factory.mktemp("cache")
    build_cache(experts, datasets, out, progress=False)
    return out


@pytest.fixture(scope="session")
def cache(cache_dir):
    from jedi_deploy.train.cached import load_cache

    return load_cache(cache_dir)


@pytest.fixture(scope="session")
def trained(cache):
    from jedi_deploy.contracts.config import JEDIConfig
    from jedi_deploy.train.jedi import train_jedi

    cfg = JEDIConfig(epochs=6, burn_in=2, lr=1e-3, batch_size=32, hidden=32)
    return train_jedi(cache, cfg, progress=False)


@pytest.fixture(scope="session")
def bundle_path(trained, tmp_path_factory) -> Path:
    from jedi_deploy.models.bundle import save_bundle

    path = tmp_path_factory.mktemp("run") / "jedi.safetensors"
    # Give the adjustment modules non-zero output layers so the fold is really exercised.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for a in trained.model.adjust:
            a.fc2.weight.copy_(0.05 * torch.randn(a.fc2.weight.shape, generator=g))
            a.fc2.bias.copy_(0.05 * torch.randn(a.fc2.bias.shape, generator=g))
    return save_bundle(trained.model, path, experts=trained.experts, datasets=trained.datasets,
                       config=trained.config)


@pytest.fixture(scope="session")
def onnx_dir(bundle_path, tmp_path_factory) -> Path:
    from jedi_deploy.export.students import export_bundle

    out = tmp_path_factory.mktemp("onnx")
    export_bundle(bundle_path, out, progress=False)
    return out


@pytest.fixture(scope="session")
def teacher_path(bundle_path, tmp_path_factory) -> Path:
    """ucf-mini's teacher ensemble (every expert's encoder + adjustments + that teacher)."""
    from jedi_deploy.export.ensemble import export_teacher

    return Path(export_teacher(bundle_path, tmp_path_factory.mktemp("teacher"), "ucf-mini")["path"])


@pytest.fixture(scope="session")
def test_video(datasets) -> Path:
    return datasets[0].samples("test")[0].path
