"""Export = config + convert + validate (after optimum's exporters).

``export_onnx`` converts a module to a temporary file, embeds the ``jedi`` metadata, runs
the ONNX checker with full shape inference, then compares ONNX Runtime with a PyTorch
reference on seeded random inputs at several batch sizes. Only when every check passes is
the file renamed into place; otherwise :class:`ExportValidationError` carries the figures
and nothing is left on disk.

Exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)``. With torch 2.13 the
dynamo exporter failed on our dynamic batch axis and took ~10x longer for these graphs;
the choice is revisited per architecture when the zoo grows.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jedi_deploy.deps import require
from jedi_deploy.errors import ExportValidationError, InputError
from jedi_deploy.meta import FORMAT_VERSION, METADATA_KEY, atomic_path


@dataclass(frozen=True)
class OnnxExportConfig:
    """The I/O contract and tolerance of an exported model."""

    input_name: str = "video"
    output_name: str = "logits"
    opset: int = 17
    atol: float = 1e-4
    batch_sizes: tuple[int, ...] = (8, 3, 1)
    seed: int = 0


def validate(onnx_path: Path, reference: nn.Module, sample_shape: tuple[int, ...],
             cfg: OnnxExportConfig) -> dict:
    """Compare ONNX Runtime (CPU) with ``reference`` on random inputs; collect every failure."""
    ort = require("onnxruntime")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(cfg.seed)
    max_abs, agree, total, failures = 0.0, 0, 0, []
    for b in cfg.batch_sizes:
        x = torch.randn((b, *sample_shape), generator=gen)
        with torch.no_grad():
            want = reference(x).numpy()
        got = sess.run([cfg.output_name], {cfg.input_name: x.numpy()})[0]
        if got.shape != want.shape:
            failures.append(f"batch {b}: output shape {got.shape} != PyTorch {want.shape}")
            continue
        diff = float(np.abs(got - want).max())
        max_abs = max(max_abs, diff)
        same = int((got.argmax(1) == want.argmax(1)).sum())
        agree, total = agree + same, total + b
        if diff > cfg.atol:
            failures.append(f"batch {b}: max abs diff {diff:.3g} > atol {cfg.atol:g}")
        if same != b:
            failures.append(f"batch {b}: top-1 agrees on {same}/{b} inputs")
    report = {"max_abs_diff": max_abs, "top1_agreement": agree / total if total else 0.0,
              "num_inputs": total, "batch_sizes": list(cfg.batch_sizes), "atol": cfg.atol,
              "passed": not failures, "failures": failures}
    if failures:
        raise ExportValidationError(f"{onnx_path.name}: ONNX Runtime disagrees with PyTorch: "
                                    + "; ".join(failures), report)
    return report


def export_onnx(module: nn.Module, out_path: str | Path, sample_shape: tuple[int, ...],
                metadata: dict, reference: nn.Module | None = None,
                cfg: OnnxExportConfig = OnnxExportConfig()) -> dict:
    """Export ``module`` (input ``[batch, *sample_shape]``) and validate it against
    ``reference`` (default: ``module`` itself). Returns the validation report."""
    import onnx

    module = module.eval()
    reference = (reference or module).eval()
    out_path = Path(out_path)
    dummy = torch.zeros((2, *sample_shape))
    with atomic_path(out_path, ".onnx") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (dummy,), str(tmp), input_names=[cfg.input_name],
                              output_names=[cfg.output_name], opset_version=cfg.opset, dynamo=False,
                              dynamic_axes={cfg.input_name: {0: "batch"}, cfg.output_name: {0: "batch"}})
        model = onnx.load(str(tmp))
        meta = {"format_version": FORMAT_VERSION, "input": cfg.input_name, "output": cfg.output_name,
                **metadata}
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportValidationError(f"{out_path.name}: ONNX checker failed: {e}") from None
        onnx.save(model, str(tmp))
        report = validate(tmp, reference, sample_shape, cfg)
    return report


def require_writable_dir(path: str | Path) -> Path:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {p}: {e.strerror or e}") from None
    return p
