"""Export = config + convert + validate (after optimum's exporters).

``export_onnx`` converts a module to a temporary file, embeds the ``jedi`` metadata, runs
the ONNX checker with full shape inference, then compares ONNX Runtime with a PyTorch
reference on seeded random inputs at several batch sizes. Only when every check passes is
the file renamed into place; otherwise :class:`ExportValidationError` carries the figures
and nothing is left on disk.

Exporters: TorchScript-based ``torch.onnx.export(dynamo=False)`` (default: it exports every
registry entry) or the dynamo exporter (``exporter="dynamo"``, needs ``onnxscript``).
``benchmarks/export_zoo.py`` times both; no architecture has shown a difference beyond that
machine's noise (benchmarks/RESULTS.md), so there is no per-architecture pick.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from jedi_deploy.contracts.errors import ConfigError, ExportValidationError, InputError
from jedi_deploy.contracts.header import atomic_path, write_failure
from jedi_deploy.contracts.model_card import ModelCard, embed_card
from jedi_deploy.runners.base import TOLERANCES, compare, random_feeds

EXPORTERS = ("torchscript", "dynamo")


@dataclass(frozen=True)
class OnnxExportConfig:
    """Everything that shapes an exported graph and its validation (one place)."""

    input_name: str = "video"
    output_name: str = "logits"
    opset: int = 17
    exporter: str = "torchscript"
    uint8_input: bool = False
    views: int = 1
    fp16: bool = False
    simplify: bool = False
    atol: float | None = None  # None: the precision's default (TOLERANCES)
    batch_sizes: tuple[int, ...] = (8, 3, 1)
    seed: int = 0
    reference_device: str = "cpu"  # where the PyTorch reference runs during validation (--device)

    def __post_init__(self):
        if self.opset < 17:
            raise ConfigError(f"opset must be >= 17, got {self.opset}")
        if self.exporter not in EXPORTERS:
            raise ConfigError(f"exporter must be one of {EXPORTERS}, got {self.exporter!r}")
        if self.views < 1 or not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError("views and batch sizes must be >= 1")

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "fp32"

    def tolerance(self) -> dict:
        tol = dict(TOLERANCES[self.precision])
        if self.atol is not None:
            tol["atol"] = self.atol
        return tol


def validate(onnx_path: Path, reference: nn.Module, card: ModelCard, cfg: OnnxExportConfig,
             real_feeds: dict[str, dict] | None = None, what: str | None = None) -> dict:
    """ONNX Runtime (CPU) vs ``reference`` (PyTorch, on ``cfg.reference_device``) on seeded random
    feeds at every batch size and on ``real_feeds`` (e.g. a decoded clip): one
    :func:`~jedi_deploy.runners.base.compare` of two runners. Collects every failure, then raises
    one :class:`~jedi_deploy.runners.base.ToleranceError` (an ExportValidationError) carrying the report."""
    from jedi_deploy.contracts.errors import InputError
    from jedi_deploy.models.devices import resolve_device
    from jedi_deploy.runners.eager import TorchRunner
    from jedi_deploy.runners.onnxruntime import OrtRunner

    what = what or onnx_path.name
    try:
        candidate = OrtRunner(onnx_path, providers="cpu")
    except InputError as e:
        raise ExportValidationError(f"{what}: ONNX Runtime cannot load the exported graph ({e})") from None
    feeds = random_feeds(card, cfg.batch_sizes, cfg.seed) + list((real_feeds or {}).items())
    torch_ref = TorchRunner(reference, card, resolve_device(cfg.reference_device))
    report = compare(torch_ref, candidate, feeds, cfg.tolerance(), output=cfg.output_name, what=what)
    candidate.deactivate()
    report["precision"] = cfg.precision
    return report


def save_checked(model, path: Path, card: ModelCard, what: str) -> None:
    """Embed the model card, run the ONNX checker with full shape inference, save."""
    import onnx

    embed_card(model, card)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportValidationError(f"{what}: ONNX checker failed: {e}") from None
    onnx.save(model, str(path))


def _torch_export(module, dummy: tuple, path: Path, cfg: OnnxExportConfig, names: list[str], what: str) -> None:
    from .rewrites import export_friendly

    with warnings.catch_warnings(), export_friendly():
        warnings.simplefilter("ignore")
        try:
            if cfg.exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=1024)
                shapes = tuple({0: batch} for _ in names)
                if _takes_varargs(module):  # forward(*videos): one tuple argument for torch.export
                    shapes = (shapes,)
                torch.onnx.export(module, dummy, str(path), input_names=names,
                                  output_names=[cfg.output_name], opset_version=cfg.opset, dynamo=True,
                                  dynamic_shapes=shapes, external_data=False)
            else:
                torch.onnx.export(module, dummy, str(path), input_names=names,
                                  output_names=[cfg.output_name], opset_version=cfg.opset, dynamo=False,
                                  dynamic_axes={**{n: {0: "batch"} for n in names}, cfg.output_name: {0: "batch"}})
        except Exception as e:  # the exporters raise many types; name what failed and how
            why = write_failure(e)
            if why is not None:  # the disk, not the exporter
                raise InputError(f"cannot write {what}: {why}; nothing was changed there") from None
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise ExportValidationError(f"{what}: the {cfg.exporter} ONNX exporter cannot export this model "
                                        f"({type(e).__name__}: {first}); try --exporter "
                                        f"{'torchscript' if cfg.exporter == 'dynamo' else 'dynamo'}") from None


def _takes_varargs(module: nn.Module) -> bool:
    import inspect

    return any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values())


def export_onnx(module: nn.Module, out_path: str | Path, card: ModelCard, reference: nn.Module | None = None,
                cfg: OnnxExportConfig = OnnxExportConfig(), real_feeds: dict[str, dict] | None = None) -> dict:
    """Export ``module`` - one graph input per ``card.inputs`` entry (a student or expert has one,
    a teacher ensemble one per expert), each ``[batch, *sample_shape]`` of its dtype - optionally
    simplify it and convert it to fp16, embed the card, run the ONNX checker with full shape
    inference, and validate it against ``reference`` (default: ``module`` itself). Only a graph
    that passes every check is renamed to ``out_path``. Returns the validation report. The one
    export path of students, experts and teacher ensembles."""
    import onnx

    module = module.eval()
    reference = (reference or module).eval()
    out_path = Path(out_path)
    names = [s.name for s in card.inputs]
    dummy = tuple(torch.from_numpy(x) for x in card.dummy_feed(2, cfg.seed).values())
    with atomic_path(out_path, ".onnx") as tmp:
        _torch_export(module, dummy, tmp, cfg, names, out_path.name)
        model = onnx.load(str(tmp))
        if [i.name for i in model.graph.input] != names:
            raise ExportValidationError(f"{out_path.name}: the exported graph does not take its inputs "
                                        f"{names} (inputs: {[i.name for i in model.graph.input]}); "
                                        "the model's output does not depend on every input as traced")
        if cfg.simplify:
            import onnxslim

            model = onnxslim.slim(model)
        if cfg.fp16:
            from onnxconverter_common import float16

            model = float16.convert_float_to_float16(model, keep_io_types=True)
        card = replace(card, output=cfg.output_name, precision=cfg.precision, exporter=cfg.exporter,
                       opset=cfg.opset, simplified=cfg.simplify)
        save_checked(model, tmp, card, out_path.name)
        report = validate(tmp, reference, card, cfg, real_feeds, out_path.name)
        report.update(exporter=cfg.exporter, simplified=cfg.simplify, opset=cfg.opset, file_bytes=tmp.stat().st_size)
    return report
