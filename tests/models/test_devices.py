"""--device: resolution, the one-line error where no GPU is visible, and the stages taking it."""
import pytest
import torch
from click.testing import CliRunner

from jedi_deploy.app.cli import cli
from jedi_deploy.contracts.errors import ConfigError
from jedi_deploy.models.devices import resolve_device


def test_resolution_and_errors(gpu_stack):
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if gpu_stack["torch_cuda"] else "cpu")
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu0'"):
        resolve_device("gpu0")
    if not gpu_stack["torch_cuda"]:
        for spec in ("cuda", "cuda:1"):
            with pytest.raises(ConfigError, match=f"device '{spec}': no CUDA GPU is visible here"):
                resolve_device(spec)
    else:
        assert resolve_device("cuda") == torch.device("cuda", 0)
        with pytest.raises(ConfigError, match="cuda:99'.*CUDA GPU"):
            resolve_device("cuda:99")


@pytest.mark.parametrize("command", ["pretrain", "cache", "train", "eval", "ablate", "analyze cka", "export"])
def test_every_torch_stage_takes_device_and_refuses_a_missing_gpu(command, gpu_stack, bundle_path, cache_dir,
                                                                   expert_paths, data_root, tmp_path):
    args = {"pretrain": [str(data_root / "ucf-mini"), "--arch", "tiny_tsm", "--out", str(tmp_path / "e.safetensors"),
                         "--epochs", "1"],
            "cache": ["--data", str(data_root), *[a for p in expert_paths for a in ("--expert", str(p))], "--out",
                      str(tmp_path / "c"), "--workers", "0"],
            "train": ["--cache", str(cache_dir), "--out", str(tmp_path / "r"), "--epochs", "1"],
            "eval": ["--bundle", str(bundle_path), "--cache", str(cache_dir)],
            "ablate": ["--cache", str(cache_dir), "--out", str(tmp_path / "a"), "--epochs", "1"],
            "analyze cka": ["--cache", str(cache_dir), "--out", str(tmp_path / "k"), "--bundle", str(bundle_path)],
            "export": ["--bundle", str(bundle_path), "--out", str(tmp_path / "o"), "--student", "ucf-mini"]}[command]
    help_text = CliRunner().invoke(cli, [*command.split(), "--help"]).output
    assert "--device" in help_text
    if gpu_stack["torch_cuda"]:
        pytest.skip("a CUDA GPU is visible: the no-GPU error cannot happen here")
    res = CliRunner().invoke(cli, [*command.split(), *args, "--device", "cuda"])
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1].startswith("error: device 'cuda': no CUDA GPU")
    assert not any(p.exists() for p in (tmp_path / "e.safetensors", tmp_path / "c" / "ucf-mini", tmp_path / "r" /
                                        "jedi.safetensors", tmp_path / "o" / "ucf-mini.student.onnx"))
