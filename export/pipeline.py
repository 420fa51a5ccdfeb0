"""``export_all``: the whole ``jedi export`` job as one library call - students (and their
initial experts), teacher ensembles, TensorRT engines with parity checks, Triton repositories.

Everything that can fail for a missing dependency or a bad option fails before the first file
is written: TensorRT and its GPU are checked, the teacher's options too, then each ONNX graph is
validated before it is renamed into place (``export.onnx``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from jedi_deploy.contracts.errors import InputError, QuantizationGateError
from jedi_deploy.contracts.gate import GateReport

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


@dataclass(frozen=True)
class ExportOptions:
    """Everything ``jedi export`` can be told, grouped: the graph and its validation (``cfg``), what
    to export and the optional deploy targets."""

    cfg: OnnxExportConfig = OnnxExportConfig()
    students: tuple[str, ...] = ()  # empty: every student
    expert_paths: dict | None = None  # NAME -> checkpoint, instead of the path the bundle records
    with_experts: bool = True
    teachers: tuple[str, ...] = ()
    clip: Path | None = None  # a video to validate on as well
    trt: TrtOptions | None = None
    triton: TritonOptions | None = None
    int8: Int8Request | None = None


@dataclass
class ExportResult:
    """One file ``jedi export`` wrote, with what was checked: ``validation`` (an ONNX graph against
    PyTorch), ``gate`` (an INT8 student's accuracy gate), ``plan`` (its TensorRT engine, checked
    against ONNX Runtime), ``triton`` (its Triton model folders)."""

    kind: str  # student | expert | teacher | student-int8
    name: str
    path: Path
    validation: dict | None = None
    gate: GateReport | None = None
    gate_path: Path | None = None
    plan: Path | None = None
    triton: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What the CLI prints for this file."""
        if self.gate is not None:
            from jedi_deploy.contracts.gate import speed_verdict

            g, ev = self.gate.final, self.gate.evaluation
            what = self.path if self.kind == "student-int8" else self.gate.model
            out = [f"{what}: INT8 gate passed: acc@1 {ev['acc1']:.2f} -> {g.acc1:.2f} (int8 - fp32 95% CI "
                   f"[{g.ci95[0]:+.2f}, {g.ci95[1]:+.2f}] on {ev['videos']} videos), top-1 agreement "
                   f"{g.agreement:.1f}%, {len(g.float_nodes)} node(s) kept float; report {self.gate_path}"]
            if self.gate.speed:
                out.append(f"  {speed_verdict(self.gate)}")
        else:
            v = self.validation
            out = [f"{self.path}: max abs diff {v['max_abs_diff']:.2e}"
                   + (f", top-1 agreement {100 * v['top1_agreement']:.0f}% on {v['num_inputs']} inputs"
                      if "top1_agreement" in v else "")]
        if self.plan is not None:
            out.append(f"{self.plan}: TensorRT engine matches ONNX Runtime")
        out += [f"{folder}: Triton model (config.pbtxt checked against Triton's schema)" for folder in self.triton]
        return out


def export_all(bundle: str | Path, out: str | Path, opts: ExportOptions = ExportOptions(), *,
               progress: bool = False) -> list[ExportResult]:
    """Export a bundle's students (+ experts and teachers) and the optional deploy targets (``opts``).
    Returns one :class:`ExportResult` per file. With ``opts.int8`` each student is also quantized
    behind the accuracy gate (:mod:`jedi_deploy.export.quantize`); a student that fails the gate
    gets no INT8 file and, once everything else is written,
    :class:`~jedi_deploy.contracts.errors.QuantizationGateError` is raised with its table."""
    from jedi_deploy.contracts.bundle import read_bundle_header
    from jedi_deploy.contracts.gate import refusal
    from jedi_deploy.contracts.header import require_writable_dir

    from .ensemble import check_options
    from .students import select_students

    cfg, students, int8, trt, triton = opts.cfg, list(opts.students) or None, opts.int8, opts.trt, opts.triton
    meta = read_bundle_header(bundle)
    chosen = [meta.expert_names[j] for j in select_students(meta, students)]
    unknown = [d for d in opts.teachers if d not in meta.datasets]
    if unknown:  # refuse before any work: every target is named by the bundle
        raise InputError(f"no teacher for dataset {unknown[0]!r}; this bundle has {meta.datasets}")
    if int8 is not None:  # the options and where the videos come from
        if cfg.fp16:
            raise InputError("--int8 quantizes the fp32 graph; drop --fp16 (export fp16 models separately)")
        from .quantize import default_lists, per_student

        int8 = Int8Request(int8.options, per_student(int8.calib_lists, chosen, "--calib-list"),
                           per_student(int8.eval_lists, chosen, "--eval-list"))
        for n in chosen:
            default_lists(meta, n, int8.options, int8.calib_lists.get(n), int8.eval_lists.get(n))
    if trt is not None:  # fail before any work when TensorRT or the GPU is missing
        from .trt import require_tensorrt

        require_tensorrt()
    if opts.teachers:
        check_options(cfg)
    out = require_writable_dir(out)
    targets = planned_files(chosen, opts)
    for name in targets:  # a folder (or anything not a file) where a file is to go
        if (out / name).exists() and not (out / name).is_file():
            raise InputError(f"{out / name} is in the way: a {'folder' if (out / name).is_dir() else 'non-file'} "
                             "where jedi export writes a file; move it or choose another --out")
    remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        results, refused = _export_into(bundle, staging, opts, cfg, students, int8, trt, triton, progress)
        commit_staged(staging, out, results)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if refused:
        raise QuantizationGateError("\n\n".join(refusal(g) for g in refused)
                                    + "\n\n(everything else is written)", refused)
    return results


#: Staging folders of an export in progress (``<out>/.jedi-export-*``): everything is written there,
#: validated, then moved into place; a killed export leaves one behind, which the next removes.
STAGING_PREFIX = ".jedi-export-"


def planned_files(names: list[str], opts: ExportOptions) -> list[str]:
    """The file names an export of students ``names`` (with ``opts``) writes into its folder."""
    stems = [f"{n}.student" for n in names] + ([f"{n}.expert" for n in names] if opts.with_experts else [])
    stems += [f"{d}.teacher" for d in opts.teachers]
    files = [f"{s}{ext}" for s in stems for ext in (".onnx", ".validation.json", *((".plan",) if opts.trt else ()))]
    if opts.int8 is not None:
        files += [f"{n}.student.int8{ext}" for n in names for ext in (".onnx", ".gate.json",
                                                                          *((".plan",) if opts.trt else ()))]
    return files


def remove_stale_staging(out: Path) -> None:
    """Staging folders an earlier export left when it was killed (one export per folder at a time)."""
    for stale in out.glob(STAGING_PREFIX + "*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def commit_staged(staging: Path, out: Path, results: list[ExportResult]) -> None:
    """Move every staged file into ``out`` (each an atomic rename on one file system) and point the
    results at their final paths. Only runs once everything was written and validated."""
    for f in sorted(staging.iterdir()):
        if f.is_file():
            try:
                os.replace(f, out / f.name)
            except OSError as e:
                raise InputError(f"cannot move {f.name} into {out}: {e.strerror or e}") from None
    for r in results:
        for attr in ("path", "gate_path", "plan"):
            value = getattr(r, attr)
            if value is not None:
                setattr(r, attr, out / Path(value).name)


def _export_into(bundle, staging: Path, opts: ExportOptions, cfg, students, int8, trt, triton, progress):
    from .ensemble import export_teacher
    from .students import export_bundle

    reports = export_bundle(bundle, staging, students=students, expert_paths=opts.expert_paths,
                            with_experts=opts.with_experts, cfg=cfg, clip=opts.clip, progress=progress)
    reports += [export_teacher(bundle, staging, d, expert_paths=opts.expert_paths, cfg=cfg) for d in opts.teachers]
    results = [ExportResult(r["kind"], r["name"], Path(r["path"]), validation=r) for r in reports]
    refused = []
    if int8 is not None:
        from jedi_deploy.contracts.gate import gate_path

        from .quantize import quantize_exported

        names = [r.name for r in results if r.kind == "student"]
        for g in quantize_exported(bundle, staging, names, int8.options, calib_lists=int8.calib_lists,
                                   eval_lists=int8.eval_lists, progress=progress):
            if not g.passed:
                refused.append(g)
                continue
            model = staging / Path(g.model).name
            name = Path(g.fp32_model).name.removesuffix(".student.onnx")
            if g.kept == "fp32":  # passed the accuracy gate but slower than fp32: only the decision is written
                results.append(ExportResult("student-int8-slower", name, gate_path(model), gate=g,
                                            gate_path=gate_path(model)))
                continue
            results.append(ExportResult("student-int8", name, model, gate=g, gate_path=gate_path(model)))
    _deploy_targets(results, cfg, trt, triton)
    return results, refused


def _deploy_targets(results: list[ExportResult], cfg, trt, triton) -> None:
    """TensorRT engines (checked against ONNX Runtime) and Triton model folders for written graphs."""
    for r in results:
        if r.kind == "student-int8-slower":
            continue
        if trt is not None:
            from .trt import build_engine, check_engine_parity

            r.plan = r.path.with_suffix(".plan")
            build_engine(r.path, r.plan, fp16=cfg.fp16, int8=r.kind == "student-int8", batch=trt.batch,
                         timing_cache=trt.timing_cache)
            check_engine_parity(r.plan, r.path, output_name=cfg.output_name, batch=trt.batch,
                                tol=TOLERANCES["int8"] if r.kind == "student-int8" else cfg.tolerance())
        if triton is not None:
            from .triton import write_model_repository

            r.triton = list(write_model_repository(r.path, triton.repo, plan_path=r.plan,
                                                   max_batch_size=triton.max_batch_size, instances=triton.instances,
                                                   gpu=trt is not None, force=triton.force))


def export_experts(paths: list[str | Path], out: str | Path, opts: ExportOptions = ExportOptions(), *,
                   progress: bool = False) -> list[ExportResult]:
    """``jedi export --expert EXPERT.safetensors --out DIR`` without a bundle: each imported (or
    pretrained) expert as ``<name>.expert.onnx`` with its card and ``.validation.json``, through the
    same export path, validation and all-or-nothing staging as a bundle's - so a checkpoint can be
    served, benched and checked against its upstream before any training."""
    from jedi_deploy.contracts.header import require_writable_dir
    from jedi_deploy.models.registry import load_expert

    from .fuse import ExpertGraph
    from .students import export_model

    needs_bundle = [flag for flag, given in (("--student", opts.students), ("--teacher", opts.teachers),
                                             ("--int8", opts.int8 is not None), ("--no-experts", not opts.with_experts))
                    if given]
    if needs_bundle:
        raise InputError(f"{', '.join(needs_bundle)} need --bundle (students, teachers and INT8 students come from a "
                         "trained bundle); --expert PATH alone exports bare experts")
    if not paths:
        raise InputError("nothing to export: give --bundle (students) or --expert EXPERT.safetensors (a bare expert)")
    for p in paths:
        if not Path(p).is_file():
            raise InputError(f"expert checkpoint not found: {p}")
    if opts.trt is not None:
        from .trt import require_tensorrt

        require_tensorrt()
    experts = [load_expert(p) for p in paths]
    names = [e.name for e in experts]
    if len(set(names)) != len(names):
        raise InputError(f"two experts are named {sorted(n for n in names if names.count(n) > 1)[0]!r}; export them "
                         "into separate folders")
    out = require_writable_dir(out)
    for n in names:
        for name in (f"{n}.expert.onnx", f"{n}.expert.validation.json"):
            if (out / name).exists() and not (out / name).is_file():
                raise InputError(f"{out / name} is in the way: a folder where jedi export writes a file")
    remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        results = []
        for e in experts:
            graph = ExpertGraph(e.encoder, e.head).eval()
            r = export_model(graph, graph, e, staging / f"{e.name}.expert.onnx", "expert", opts.cfg, opts.clip)
            results.append(ExportResult("expert", e.name, Path(r["path"]), validation=r))
        _deploy_targets(results, opts.cfg, opts.trt, opts.triton)
        commit_staged(staging, out, results)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return results
