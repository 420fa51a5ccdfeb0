"""``export_all``: the whole ``jedi export`` job as one library call - students (and their
initial experts), teacher ensembles, TensorRT engines with parity checks, Triton repositories.

Everything that can fail for a missing dependency or a bad option fails before the first file
is written: TensorRT and its GPU are checked, the teacher's options too, then each ONNX graph is
validated before it is renamed into place (``export.onnx``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .onnx import OnnxExportConfig


@dataclass(frozen=True)
class TrtOptions:
    """``--trt``: one engine per graph, one optimisation profile (MIN, OPT, MAX batch)."""

    batch: tuple[int, int, int] = (1, 8, 32)
    timing_cache: Path | None = None


@dataclass(frozen=True)
class TritonOptions:
    """``--triton REPO``: a Triton model repository beside the ONNX files."""

    repo: Path
    max_batch_size: int = 8
    instances: int = 1
    force: bool = False


def export_all(bundle: str | Path, out: str | Path, *, cfg: OnnxExportConfig = OnnxExportConfig(),
               students: list[str] | None = None, expert_paths: dict[str, str] | None = None,
               with_experts: bool = True, teachers: tuple[str, ...] = (), clip: str | Path | None = None,
               trt: TrtOptions | None = None, triton: TritonOptions | None = None,
               progress: bool = False) -> list[dict]:
    """Export a bundle's students (+ experts and teachers) and the optional deploy targets.
    Returns one validation report per ONNX file; with ``trt`` each also has ``"plan"`` (the
    engine, checked against ONNX Runtime), with ``triton`` ``"triton"`` (model folders)."""
    from .ensemble import check_options, export_teacher
    from .students import export_bundle

    if trt is not None:  # fail before any work when TensorRT or the GPU is missing
        from .trt import require_tensorrt

        require_tensorrt()
    if teachers:
        check_options(cfg)
    reports = export_bundle(bundle, out, students=students, expert_paths=expert_paths, with_experts=with_experts,
                            cfg=cfg, clip=clip, progress=progress)
    reports += [export_teacher(bundle, out, d, expert_paths=expert_paths, cfg=cfg) for d in teachers]
    for r in reports:
        onnx_path = Path(r["path"])
        plan = None
        if trt is not None:
            from .trt import build_engine, check_engine_parity

            plan = onnx_path.with_suffix(".plan")
            build_engine(onnx_path, plan, fp16=cfg.fp16, batch=trt.batch, timing_cache=trt.timing_cache)
            check_engine_parity(plan, onnx_path, output_name=cfg.output_name,
                                batch=trt.batch, tol=cfg.tolerance())
            r["plan"] = str(plan)
        if triton is not None:
            from .triton import write_model_repository

            r["triton"] = [str(f) for f in write_model_repository(
                onnx_path, triton.repo, plan_path=plan, max_batch_size=triton.max_batch_size,
                instances=triton.instances, gpu=trt is not None, force=triton.force)]
    return reports
