"""Torch runtimes for ``jedi bench``: the very graphs the ONNX files were exported from - the
fused student and the initial expert, with the same uint8-input / views wrapper - rebuilt
from the bundle and the expert checkpoints, run eagerly on CPU or CUDA as
:class:`~jedi_deploy.runners.eager.TorchRunner` objects."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from jedi_deploy.contracts.errors import InputError
from jedi_deploy.contracts.header import sha256_file
from jedi_deploy.contracts.model_card import read_card
from jedi_deploy.models.bundle import load_bundle
from jedi_deploy.runners.base import Runtime
from jedi_deploy.runners.eager import TorchRunner

from .fuse import ExpertGraph, FusedStudent
from .graph import GraphWrapper
from .students import resolve_experts


def torch_runtimes(bundle_path: str | Path, devices: list[str] | None = None, threads: int | None = 1,
                   expert_paths: dict[str, str] | None = None) -> list[Runtime]:
    """``torch-cpu`` (and ``torch-cuda`` when a GPU is visible, or as ``devices`` say)."""
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        raise InputError("runtime 'torch-cuda' needs a CUDA GPU and a CUDA build of torch; none is visible here")
    if threads:
        torch.set_num_threads(threads)
    model, meta = load_bundle(bundle_path)
    experts = resolve_experts(meta, expert_paths)
    bundle_sha = sha256_file(bundle_path)
    index = {ex.name: (j, ex) for j, ex in enumerate(experts)}

    def graph(onnx_path: Path) -> torch.nn.Module:
        card = read_card(onnx_path)
        name, kind = card.name, card.kind
        if kind == "teacher":
            raise InputError(f"{onnx_path}: the torch runtimes rebuild students and experts, not teacher ensembles")
        if name not in index:
            raise InputError(f"{onnx_path}: model {name!r} is not in bundle {bundle_path} (it has {sorted(index)})")
        if kind == "student" and card.bundle_sha256 not in (None, bundle_sha):
            raise InputError(f"{onnx_path} was exported from another bundle than {bundle_path} (sha256 differs)")
        j, ex = index[name]
        if card.expert_sha256 not in (None, ex.sha256):
            raise InputError(f"{onnx_path} was exported from another checkpoint of expert {name!r}")
        core = (FusedStudent(ex.encoder, model.adjust[j], model.students[j]) if kind == "student"
                else ExpertGraph(ex.encoder, ex.head))
        wrapped = GraphWrapper(core, ex.preprocess, uint8_input=card.input.uint8, views=card.input.views,
                               average=card.average)
        return copy.deepcopy(wrapped).eval()  # every load its own weights (the A/A copy too)

    def opener(device: str):
        return lambda onnx_path: TorchRunner(graph(onnx_path), read_card(onnx_path), device)

    info = {"torch": torch.__version__, "intra_op_threads": torch.get_num_threads()}
    return [Runtime(f"torch-{d}", opener(d), {**info, "device": torch.cuda.get_device_name() if d == "cuda" else "cpu"},
                    runs_onnx=False) for d in devices]
