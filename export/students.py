"""Export every JEDI student of a bundle (and its initial expert, the latency baseline)."""
from __future__ import annotations

from pathlib import Path

from jedi_deploy.bundle import load_bundle
from jedi_deploy.errors import InputError
from jedi_deploy.meta import sha256_file, write_json
from jedi_deploy.registry import Expert, load_expert

from .fuse import ExpertGraph, FusedStudent, StudentReference
from .onnx import OnnxExportConfig, export_onnx, require_writable_dir


def resolve_experts(meta: dict, overrides: dict[str, str] | None = None) -> list[Expert]:
    """Load the bundle's expert checkpoints (recorded paths, or ``overrides[name]``),
    refusing any whose sha256 differs from the one the bundle was trained on."""
    overrides = dict(overrides or {})
    names = [e["name"] for e in meta["experts"]]
    unknown = set(overrides) - set(names)
    if unknown:
        raise InputError(f"--expert names {sorted(unknown)} are not in the bundle; it has {names}")
    experts = []
    for e in meta["experts"]:
        path = overrides.get(e["name"]) or e.get("checkpoint")
        if not path:
            raise InputError(f"bundle records no checkpoint for expert {e['name']!r}; pass --expert {e['name']}=PATH")
        if not Path(path).is_file():
            raise InputError(f"checkpoint of expert {e['name']!r} not found: {path} "
                             f"(pass --expert {e['name']}=PATH if it moved)")
        experts.append(load_expert(path, expected_sha256=e.get("sha256")))
    return experts


def select_students(meta: dict, wanted: list[str] | None) -> list[int]:
    names = [e["name"] for e in meta["experts"]]
    if not wanted:
        return list(range(len(names)))
    missing = [w for w in wanted if w not in names]
    if missing:
        raise InputError(f"unknown student {missing[0]!r}; this bundle has students {names}")
    return [names.index(w) for w in wanted]


def _model_meta(kind: str, expert: Expert, **extra) -> dict:
    return {"kind": kind, "name": expert.name, "dataset": expert.dataset, "arch": expert.arch,
            "categories": list(expert.categories), "preprocess": expert.preprocess.to_dict(),
            "expert_sha256": expert.sha256, **extra}


def export_bundle(bundle_path: str | Path, out_dir: str | Path, *, students: list[str] | None = None,
                  expert_paths: dict[str, str] | None = None, with_experts: bool = True,
                  cfg: OnnxExportConfig = OnnxExportConfig(), progress: bool = True) -> list[dict]:
    """Write ``<name>.student.onnx`` (and ``<name>.expert.onnx``) per selected student, each
    with a ``.validation.json`` report. Returns the reports."""
    from tqdm.auto import tqdm
    model, meta = load_bundle(bundle_path)
    chosen = select_students(meta, students)
    out_dir = require_writable_dir(out_dir)
    experts = resolve_experts(meta, expert_paths)
    bundle_sha = sha256_file(bundle_path)
    jobs = [(j, "student") for j in chosen] + ([(j, "expert") for j in chosen] if with_experts else [])
    reports = []
    for j, kind in tqdm(jobs, desc="exporting ONNX", unit="model", disable=not progress):
        ex = experts[j]
        shape = ex.preprocess.input_shape()
        if kind == "student":
            ref = StudentReference(ex.encoder, model.adjust[j], model.students[j]).eval()
            module = FusedStudent(ex.encoder, model.adjust[j], model.students[j]).eval()
            meta_extra = _model_meta("student", ex, bundle_sha256=bundle_sha)
        else:
            module = ref = ExpertGraph(ex.encoder, ex.head).eval()
            meta_extra = _model_meta("expert", ex)
        path = out_dir / f"{ex.name}.{kind}.onnx"
        report = export_onnx(module, path, shape, meta_extra, reference=ref, cfg=cfg)
        report.update(name=ex.name, kind=kind, path=str(path))
        write_json(path.with_suffix(".validation.json"), report)
        reports.append(report)
    return reports
