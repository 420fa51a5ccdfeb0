"""Teacher-ensemble export: ONE graph that runs every expert's frozen encoder, its adjustment
module (and student head where the teacher reads predictions) and the teacher of one
dataset - the teacher's accuracy at the cost of all n experts.

The graph has one input per expert, ``video_<j>`` (experts take different clips: frames, crop,
normalisation), each ``float32[batch, T_j, 3, S_j, S_j]`` as ``jedi_deploy.video`` prepares it -
or ``[batch, V_j, T_j, 3, S_j, S_j]`` for an expert whose preprocessing has V_j > 1 test views
(clips x crops): the graph encodes every view and averages the embeddings, exactly as
``jedi cache`` made the embeddings the teacher was trained on - and one output ``logits``
``[batch, C_dataset]``. Its model card lists every input with its expert's preprocessing, so
``jedi infer`` / ``jedi serve`` decode a video once and feed every input from that decode. It goes through the same export path as
every student (:func:`~jedi_deploy.export.onnx.export_onnx`): the chosen exporter, the export
rewrites and simplification, the ONNX checker with full shape inference, then ONNX Runtime vs
PyTorch (the plain ``JEDIModel.forward`` in eval mode) on random inputs at several batch sizes,
before the file is renamed into place.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from jedi_deploy.contracts.errors import InputError
from jedi_deploy.contracts.header import (
    require_writable_dir,
    sha256_file,
    write_json,
)
from jedi_deploy.contracts.model_card import InputSpec, ModelCard, input_layout
from jedi_deploy.models.bundle import load_bundle

from .onnx import OnnxExportConfig, export_onnx
from .students import resolve_experts


class TeacherEnsemble(nn.Module):
    def __init__(self, encoders: list[nn.Module], model, teacher: int, views: list[int] | None = None):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.model, self.teacher = model.eval(), teacher
        self.views = list(views or [1] * len(encoders))

    def forward(self, *videos: torch.Tensor) -> torch.Tensor:
        embs = []
        for enc, v, x in zip(self.encoders, self.views, videos):
            if v > 1:  # [B, V, ...] -> mean embedding over the V views (as the cache averages them)
                b = x.shape[0]
                embs.append(enc(x.flatten(0, 1)).view(b, v, -1).mean(dim=1))
            else:
                embs.append(enc(x))
        _, teachers = self.model(embs)
        return teachers[self.teacher]


def teacher_card(dataset: str, header, experts, output: str, opset: int, bundle_sha256: str) -> ModelCard:
    """The teacher's card: one input per expert, with that expert's preprocessing and views."""
    i = header.datasets.index(dataset)
    inputs = []
    for j, e in enumerate(experts):
        v = e.preprocess.views
        shape = (v, *e.preprocess.input_shape()) if v > 1 else e.preprocess.input_shape()
        inputs.append(InputSpec(f"video_{j}", "float32", ("batch", *shape), input_layout(False, v), e.preprocess,
                                views=v, expert=e.name, expert_sha256=e.sha256))
    return ModelCard(kind="teacher", name=dataset, dataset=dataset, arch="ensemble",
                     categories=tuple(header.experts[i].categories), inputs=tuple(inputs), output=output,
                     opset=opset, bundle_sha256=bundle_sha256)


def check_options(cfg: OnnxExportConfig) -> None:
    if cfg.uint8_input or cfg.views > 1 or cfg.fp16:
        raise InputError("the teacher ensemble is exported with float32 inputs and each expert's own test views "
                         "(--uint8-input, --views and --fp16 apply to students and experts)")


def export_teacher(bundle_path: str | Path, out_dir: str | Path, dataset: str, *,
                   expert_paths: dict[str, str] | None = None, cfg: OnnxExportConfig = OnnxExportConfig()) -> dict:
    """Write ``<dataset>.teacher.onnx`` (+ ``.validation.json``) through the one export path
    (:func:`~jedi_deploy.export.onnx.export_onnx`: the chosen exporter, the export rewrites,
    simplification, the checker and the validation); returns the report."""
    check_options(cfg)
    model, meta = load_bundle(bundle_path)
    if dataset not in meta.datasets:
        raise InputError(f"no teacher for dataset {dataset!r}; this bundle has {meta.datasets}")
    i = meta.datasets.index(dataset)
    experts = resolve_experts(meta, expert_paths)
    card = teacher_card(dataset, meta, experts, cfg.output_name, cfg.opset, sha256_file(bundle_path))
    module = TeacherEnsemble([e.encoder for e in experts], model, i, [x.views for x in card.inputs]).eval()
    path = require_writable_dir(out_dir) / f"{dataset}.teacher.onnx"
    report = export_onnx(module, path, card, cfg=cfg)
    report.update(kind="teacher", name=dataset, path=str(path))
    write_json(path.with_suffix(".validation.json"), report)
    return report
