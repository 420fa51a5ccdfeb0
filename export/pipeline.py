"""``export_all``: the whole ``jedi export`` job as one library call - students (and their
initial experts), teacher ensembles, TensorRT engines with parity checks, Triton repositories.

Everything that can fail for a missing dependency or a bad option fails before the first file
is written: TensorRT and its GPU are checked, the teacher's options too, then each ONNX graph is
validated before it is renamed into place (``export.onnx``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .onnx import TOLERANCES, OnnxExportConfig
from .quantize import Int8Options


@dataclass(frozen=True)
class TrtOptions:
    """``--trt``: one engine per graph, one optimisation profile (MIN, OPT, MAX batch)."""

    batch: tuple[int, int, int] = (1, 8, 32)
    timing_cache: Path | None = None


@dataclass(frozen=True)
class Int8Request:
    """``--int8``: quantization options, and per-student calibration / held-out lists (NAME=PATH;
    key "" for a bare PATH when one student is exported)."""

    options: Int8Options = Int8Options()
    calib_lists: dict | None = None
    eval_lists: dict | None = None


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
               trt: TrtOptions | None = None, triton: TritonOptions | None = None, int8: Int8Request | None = None,
               progress: bool = False) -> list[dict]:
    """Export a bundle's students (+ experts and teachers) and the optional deploy targets.
    Returns one validation report per ONNX file; with ``trt`` each also has ``"plan"`` (the
    engine, checked against ONNX Runtime), with ``triton`` ``"triton"`` (model folders). With
    ``int8`` each student is also quantized behind the accuracy gate
    (:mod:`jedi_deploy.export.quantize`): its gate report is a further entry (``"gate"``); a
    student that fails the gate gets no INT8 file and, once everything else is written,
    :class:`~jedi_deploy.contracts.errors.QuantizationGateError` is raised with its table."""
    from jedi_deploy.contracts.bundle import read_bundle_header
    from jedi_deploy.contracts.errors import InputError, QuantizationGateError

    from .ensemble import check_options, export_teacher
    from .students import export_bundle, select_students

    if int8 is not None:  # refuse before any work: the options and where the videos come from
        if cfg.fp16:
            raise InputError("--int8 quantizes the fp32 graph; drop --fp16 (export fp16 models separately)")
        from .quantize import default_lists, per_student

        meta = read_bundle_header(bundle)
        names = [meta.expert_names[j] for j in select_students(meta, students)]
        int8 = Int8Request(int8.options, per_student(int8.calib_lists, names, "--calib-list"),
                           per_student(int8.eval_lists, names, "--eval-list"))
        for n in names:
            default_lists(meta, n, int8.options, int8.calib_lists.get(n), int8.eval_lists.get(n))

    if trt is not None:  # fail before any work when TensorRT or the GPU is missing
        from .trt import require_tensorrt

        require_tensorrt()
    if teachers:
        check_options(cfg)
    reports = export_bundle(bundle, out, students=students, expert_paths=expert_paths, with_experts=with_experts,
                            cfg=cfg, clip=clip, progress=progress)
    reports += [export_teacher(bundle, out, d, expert_paths=expert_paths, cfg=cfg) for d in teachers]
    refused = []
    if int8 is not None:
        from jedi_deploy.contracts.gate import gate_path, refusal

        from .quantize import quantize_exported

        names = [r["name"] for r in reports if r["kind"] == "student"]
        for g in quantize_exported(bundle, out, names, int8.options, calib_lists=int8.calib_lists,
                                   eval_lists=int8.eval_lists, progress=progress):
            if not g.passed:
                refused.append(g)
                continue
            reports.append({"name": Path(g.fp32_model).name.removesuffix(".student.onnx"), "kind": "student-int8",
                            "path": g.model, "gate": str(gate_path(g.model)), "gate_report": g})
    for r in reports:
        onnx_path = Path(r["path"])
        plan = None
        if trt is not None:
            from .trt import build_engine, check_engine_parity

            plan = onnx_path.with_suffix(".plan")
            build_engine(onnx_path, plan, fp16=cfg.fp16, int8=r["kind"] == "student-int8", batch=trt.batch,
                         timing_cache=trt.timing_cache)
            check_engine_parity(plan, onnx_path, output_name=cfg.output_name, batch=trt.batch,
                                tol=TOLERANCES["int8"] if r["kind"] == "student-int8" else cfg.tolerance())
            r["plan"] = str(plan)
        if triton is not None:
            from .triton import write_model_repository

            r["triton"] = [str(f) for f in write_model_repository(
                onnx_path, triton.repo, plan_path=plan, max_batch_size=triton.max_batch_size,
                instances=triton.instances, gpu=trt is not None, force=triton.force)]
    if refused:
        raise QuantizationGateError("\n\n".join(refusal(g) for g in refused)
                                    + "\n\n(everything else is written)", refused)
    return reports
