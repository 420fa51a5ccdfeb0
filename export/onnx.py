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

import numpy as np
import torch
from torch import nn

from jedi_deploy.deps import require
from jedi_deploy.errors import ConfigError, ExportValidationError
from jedi_deploy.meta import atomic_path
from jedi_deploy.model_card import ModelCard, embed_card


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


#: |onnx - torch| <= atol + rtol * max|torch| per output, and the share of inputs whose top-1
#: (and top-5 set) must agree. fp16 graphs are compared with the fp32 PyTorch reference.
TOLERANCES = {"fp32": {"atol": 1e-4, "rtol": 1e-4, "min_top1": 1.0, "min_top5": 1.0},
              "fp16": {"atol": 2e-2, "rtol": 2e-2, "min_top1": 0.9, "min_top5": 0.8},
              # a TensorRT int8 engine against ONNX Runtime running the same Q/DQ graph: both int8,
              # different kernels and rounding (accuracy itself is the --int8 gate's job)
              "int8": {"atol": 0.1, "rtol": 0.05, "min_top1": 0.9, "min_top5": 0.8}}


def _inputs(sample_shape, dtype, batch, gen) -> torch.Tensor:
    if dtype == "uint8":
        return torch.randint(0, 256, (batch, *sample_shape), generator=gen, dtype=torch.uint8)
    return torch.randn((batch, *sample_shape), generator=gen)


def compare_outputs(got: np.ndarray, want: np.ndarray, tol: dict, label: str, failures: list) -> dict:
    """Figures of one comparison; appends a message per violated tolerance to ``failures``."""
    if got.shape != want.shape:
        failures.append(f"{label}: output shape {got.shape} != PyTorch {want.shape}")
        return {"input": label, "shape_ok": False}
    diff = np.abs(got.astype(np.float64) - want)
    scale = float(np.abs(want).max()) or 1.0
    max_abs, max_rel = float(diff.max()), float(diff.max() / scale)
    top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
    k = min(5, want.shape[-1])
    top5 = float(np.mean([set(a) == set(b) for a, b in zip(np.argsort(-got, -1)[:, :k], np.argsort(-want, -1)[:, :k])]))
    if max_abs > tol["atol"] + tol["rtol"] * scale:
        failures.append(f"{label}: max abs diff {max_abs:.3g} > {tol['atol']:g} + {tol['rtol']:g} x {scale:.3g}")
    if top1 < tol["min_top1"]:
        failures.append(f"{label}: top-1 agrees on {100 * top1:.0f}% of inputs (< {100 * tol['min_top1']:.0f}%)")
    if top5 < tol["min_top5"]:
        failures.append(f"{label}: top-5 sets agree on {100 * top5:.0f}% of inputs (< {100 * tol['min_top5']:.0f}%)")
    return {"input": label, "batch": int(want.shape[0]), "max_abs_diff": max_abs, "max_rel_diff": max_rel,
            "top1_agreement": top1, "top5_agreement": top5}


def validate(onnx_path: Path, reference: nn.Module, sample_shape: tuple[int, ...], cfg: OnnxExportConfig,
             input_dtype: str = "float32", real_inputs: dict[str, np.ndarray] | None = None) -> dict:
    """ONNX Runtime (CPU) vs ``reference`` on seeded random inputs at every batch size and on
    ``real_inputs`` (e.g. a decoded clip); collects every failure, then raises one
    :class:`ExportValidationError` carrying the report."""
    ort = require("onnxruntime")
    try:
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT's own error types
        raise ExportValidationError(f"{onnx_path.name}: ONNX Runtime cannot load the exported graph ({e})") from None
    from jedi_deploy.devices import resolve_device

    gen = torch.Generator().manual_seed(cfg.seed)
    tol = cfg.tolerance()
    cases = [(f"random batch {b}", _inputs(sample_shape, input_dtype, b, gen)) for b in cfg.batch_sizes]
    cases += [(name, torch.from_numpy(np.ascontiguousarray(x))) for name, x in (real_inputs or {}).items()]
    failures, rows = [], []
    dev = resolve_device(cfg.reference_device)
    reference = reference.to(dev)
    for label, x in cases:
        with torch.no_grad():
            want = reference(x.to(dev)).double().cpu().numpy()
        try:
            got = sess.run([cfg.output_name], {cfg.input_name: x.numpy()})[0]
        except Exception as e:
            failures.append(f"{label}: ONNX Runtime failed ({str(e).splitlines()[0][:200]})")
            continue
        rows.append(compare_outputs(got, want, tol, label, failures))
    reference.cpu()
    ok_rows = [r for r in rows if "max_abs_diff" in r]
    n = sum(r["batch"] for r in ok_rows)
    report = {"max_abs_diff": max((r["max_abs_diff"] for r in ok_rows), default=None),
              "max_rel_diff": max((r["max_rel_diff"] for r in ok_rows), default=None),
              "top1_agreement": sum(r["top1_agreement"] * r["batch"] for r in ok_rows) / n if n else 0.0,
              "top5_agreement": sum(r["top5_agreement"] * r["batch"] for r in ok_rows) / n if n else 0.0,
              "num_inputs": n, "cases": rows, "tolerance": tol, "precision": cfg.precision,
              "passed": not failures, "failures": failures}
    if failures:
        raise ExportValidationError(f"{onnx_path.name}: ONNX Runtime disagrees with PyTorch: "
                                    + "; ".join(failures), report)
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


def _torch_export(module, dummy, path: Path, cfg: OnnxExportConfig, what: str) -> None:
    from .rewrites import export_friendly

    with warnings.catch_warnings(), export_friendly():
        warnings.simplefilter("ignore")
        try:
            if cfg.exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=1024)
                torch.onnx.export(module, (dummy,), str(path), input_names=[cfg.input_name],
                                  output_names=[cfg.output_name], opset_version=cfg.opset, dynamo=True,
                                  dynamic_shapes=({0: batch},), external_data=False)
            else:
                torch.onnx.export(module, (dummy,), str(path), input_names=[cfg.input_name],
                                  output_names=[cfg.output_name], opset_version=cfg.opset, dynamo=False,
                                  dynamic_axes={cfg.input_name: {0: "batch"}, cfg.output_name: {0: "batch"}})
        except Exception as e:  # the exporters raise many types; name what failed and how
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise ExportValidationError(f"{what}: the {cfg.exporter} ONNX exporter cannot export this model "
                                        f"({type(e).__name__}: {first}); try --exporter "
                                        f"{'torchscript' if cfg.exporter == 'dynamo' else 'dynamo'}") from None


def export_onnx(module: nn.Module, out_path: str | Path, sample_shape: tuple[int, ...],
                card: ModelCard, reference: nn.Module | None = None,
                cfg: OnnxExportConfig = OnnxExportConfig(), input_dtype: str = "float32",
                real_inputs: dict[str, np.ndarray] | None = None) -> dict:
    """Export ``module`` (input ``[batch, *sample_shape]`` of ``input_dtype``), optionally
    simplify it and convert it to fp16, run the ONNX checker with full shape inference, and
    validate it against ``reference`` (default: ``module`` itself). Only a graph that passes
    every check is renamed to ``out_path``. Returns the validation report."""
    import onnx

    module = module.eval()
    reference = (reference or module).eval()
    out_path = Path(out_path)
    dummy = _inputs(sample_shape, input_dtype, 2, torch.Generator().manual_seed(cfg.seed))
    with atomic_path(out_path, ".onnx") as tmp:
        _torch_export(module, dummy, tmp, cfg, out_path.name)
        model = onnx.load(str(tmp))
        if [i.name for i in model.graph.input] != [cfg.input_name]:
            raise ExportValidationError(f"{out_path.name}: the exported graph does not take its input "
                                        f"{cfg.input_name!r} (inputs: {[i.name for i in model.graph.input]}); "
                                        "the model's output does not depend on its input as traced")
        if cfg.simplify:
            import onnxslim

            model = onnxslim.slim(model)
        if cfg.fp16:
            from onnxconverter_common import float16

            model = float16.convert_float_to_float16(model, keep_io_types=True)
        card = replace(card, output=cfg.output_name, precision=cfg.precision, exporter=cfg.exporter,
                       opset=cfg.opset, simplified=cfg.simplify)
        save_checked(model, tmp, card, out_path.name)
        report = validate(tmp, reference, sample_shape, cfg, input_dtype, real_inputs)
        report.update(exporter=cfg.exporter, simplified=cfg.simplify, opset=cfg.opset, file_bytes=tmp.stat().st_size)
    return report
