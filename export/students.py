"""Export every JEDI student of a bundle (and its initial expert, the latency baseline)."""
from __future__ import annotations

from pathlib import Path

from jedi_deploy.contracts.bundle import BundleHeader
from jedi_deploy.contracts.errors import ExportValidationError, InputError
from jedi_deploy.contracts.header import require_writable_dir, sha256_file, write_json
from jedi_deploy.contracts.model_card import InputSpec, ModelCard, input_layout
from jedi_deploy.models.bundle import load_bundle
from jedi_deploy.models.registry import Expert, load_expert

from .fuse import ExpertGraph, FusedStudent, StudentReference
from .graph import GraphWrapper, input_spec
from .onnx import OnnxExportConfig, export_onnx


def resolve_experts(meta: BundleHeader, overrides: dict[str, str] | None = None) -> list[Expert]:
    """Load the bundle's expert checkpoints (recorded paths, or ``overrides[name]``),
    refusing any whose sha256 differs from the one the bundle was trained on."""
    overrides = dict(overrides or {})
    names = meta.expert_names
    unknown = set(overrides) - set(names)
    if unknown:
        raise InputError(f"--expert names {sorted(unknown)} are not in the bundle; it has {names}")
    experts = []
    for e in meta.experts:
        path = overrides.get(e.name) or e.checkpoint
        if not path:
            raise InputError(f"bundle records no checkpoint for expert {e.name!r}; pass --expert {e.name}=PATH")
        if not Path(path).is_file():
            raise InputError(f"checkpoint of expert {e.name!r} not found: {path} "
                             f"(pass --expert {e.name}=PATH if it moved)")
        experts.append(load_expert(path, expected_sha256=e.sha256))
    return experts


def select_students(meta: BundleHeader, wanted: list[str] | None) -> list[int]:
    names = meta.expert_names
    if not wanted:
        return list(range(len(names)))
    missing = [w for w in wanted if w not in names]
    if missing:
        raise InputError(f"unknown student {missing[0]!r}; this bundle has students {names}")
    return [names.index(w) for w in wanted]


def model_card(kind: str, expert: Expert, cfg: OnnxExportConfig, bundle_sha256: str | None = None) -> ModelCard:
    """The card of a student or expert graph: one input, fed as ``cfg`` exports it."""
    pre = expert.preprocess
    shape, dtype = input_spec(pre, uint8_input=cfg.uint8_input, views=cfg.views)
    spec = InputSpec(cfg.input_name, dtype, ("batch", *shape), input_layout(cfg.uint8_input, cfg.views), pre,
                     views=cfg.views, expert=expert.name, expert_sha256=expert.sha256)
    return ModelCard(kind=kind, name=expert.name, dataset=expert.dataset, arch=expert.arch,
                     categories=tuple(expert.categories), inputs=(spec,), output=cfg.output_name,
                     average=pre.average, bundle_sha256=bundle_sha256)


def real_clip_feed(video: str | Path, card: ModelCard) -> dict:
    """One decoded video fed as the graph takes it (:meth:`ModelCard.feed_from_clips`): a
    validation case on real frames."""
    from jedi_deploy.media.decode import video_feed

    return video_feed(card, video)[0]


#: Input values the random validation batches may hold in all: four 16-frame 224-px clips. Past it (TSN's
#: 250-view test protocol, Swin's 32 frames) the batches are 2 and 1 (batching and the dynamic axis are
#: still checked) instead of minutes of CPU time per export.
VALIDATION_VALUES = 4 * 16 * 3 * 224 * 224
SMALL_BATCHES = (2, 1)


def validation_budget(cfg: OnnxExportConfig, pre) -> OnnxExportConfig:
    """``cfg`` with the random validation batches (8, 3, 1) cut to (2, 1) when one input is too large
    for all of them within :data:`VALIDATION_VALUES`; batch sizes the user chose are kept."""
    from dataclasses import replace

    per_item = pre.num_frames * cfg.views * 3 * pre.crop * pre.crop
    if cfg.batch_sizes == OnnxExportConfig.batch_sizes and per_item * sum(cfg.batch_sizes) > VALIDATION_VALUES:
        return replace(cfg, batch_sizes=SMALL_BATCHES)
    return cfg


def export_model(module, reference, expert: Expert, path: Path, kind: str, cfg: OnnxExportConfig,
                 clip: str | Path | None = None, bundle_sha256: str | None = None) -> dict:
    """Wrap (uint8 input, views) and export one graph for ``expert``'s input, validated
    against ``reference`` on random inputs and, given ``clip``, on that decoded video; the
    report is also written next to the model as ``<stem>.validation.json``."""
    from dataclasses import replace

    from jedi_deploy.models.archs import ARCHS

    pre = expert.preprocess
    if pre.average == "feature" and pre.views > 1 and cfg.views != pre.views:
        cfg = replace(cfg, views=pre.views)  # consensus over every view needs them all in one graph
    cfg = validation_budget(cfg, pre)
    wrap = dict(uint8_input=cfg.uint8_input, views=cfg.views, average=pre.average)
    card = model_card(kind, expert, cfg, bundle_sha256)
    real = {f"decoded clip {Path(clip).name}": real_clip_feed(clip, card)} if clip else None
    try:
        report = export_onnx(GraphWrapper(module, pre, **wrap), path, card,
                             reference=GraphWrapper(reference, pre, **wrap), cfg=cfg, real_feeds=real)
    except ExportValidationError as e:
        if "cannot export" in str(e):
            raise ExportValidationError(f"architecture {expert.arch!r}: {e} (exported and validated here: "
                                        f"{sorted(ARCHS)})", e.report) from None
        raise
    report.update(name=expert.name, kind=kind, path=str(path))
    write_json(path.with_suffix(".validation.json"), report)
    return report


def export_student_and_expert(expert: Expert, adjust, head, out_dir: Path, cfg: OnnxExportConfig, *,
                              clip=None, with_expert: bool = True, bundle_sha256: str | None = None) -> list[dict]:
    """``<name>.student.onnx`` (encoder + adjustment folded into the head) and, optionally,
    ``<name>.expert.onnx`` (the initial expert, the latency baseline)."""
    reports = [export_model(FusedStudent(expert.encoder, adjust, head).eval(),
                            StudentReference(expert.encoder, adjust, head).eval(), expert,
                            out_dir / f"{expert.name}.student.onnx", "student", cfg, clip, bundle_sha256)]
    if with_expert:
        graph = ExpertGraph(expert.encoder, expert.head).eval()
        reports.append(export_model(graph, graph, expert, out_dir / f"{expert.name}.expert.onnx", "expert", cfg,
                                    clip))
    return reports


def export_bundle(bundle_path: str | Path, out_dir: str | Path, *, students: list[str] | None = None,
                  expert_paths: dict[str, str] | None = None, with_experts: bool = True,
                  cfg: OnnxExportConfig = OnnxExportConfig(), clip: str | Path | None = None,
                  progress: bool = True) -> list[dict]:
    """Write ``<name>.student.onnx`` (and ``<name>.expert.onnx``) per selected student, each
    with a ``.validation.json`` report. Returns the reports."""
    from tqdm.auto import tqdm

    model, meta = load_bundle(bundle_path)
    chosen = select_students(meta, students)
    out_dir = require_writable_dir(out_dir)
    experts = resolve_experts(meta, expert_paths)
    bundle_sha = sha256_file(bundle_path)
    reports = []
    for j in tqdm(chosen, desc="exporting ONNX", unit="student", disable=not progress):
        reports += export_student_and_expert(experts[j], model.adjust[j], model.students[j], out_dir, cfg,
                                             clip=clip, with_expert=with_experts, bundle_sha256=bundle_sha)
    return reports
