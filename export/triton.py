"""A Triton Inference Server model repository for an exported graph.

``write_model_repository`` lays out ``REPO/<name>/config.pbtxt`` + ``REPO/<name>/1/model.onnx``
(platform ``onnxruntime_onnx``) and, given a TensorRT plan, ``REPO/<name>_trt/`` with
``1/model.plan`` (platform ``tensorrt_plan``); ``labels.txt`` makes Triton's classification
extension return class names. Inputs/outputs (names, dtypes, dims without the batch axis) come
from the ONNX graph itself. Every ``config.pbtxt`` is parsed back with Triton's own
model-config protobuf schema (``model_config_pb2`` shipped by ``tritonclient``) before the
model folder is moved into place, so a config Triton would reject is never written.
"""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from jedi_deploy.contracts.errors import (
    ExportValidationError,
    InputError,
    MissingDependencyError,
)
from jedi_deploy.contracts.model_card import ModelCard

ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32",
                  7: "TYPE_INT64", 11: "TYPE_FP64"}


def model_config_schema():
    """Triton's ``model_config_pb2`` module, loaded from the tritonclient package without
    importing its gRPC client (which needs grpcio)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("--triton checks config.pbtxt with Triton's schema: pip install tritonclient")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        raise MissingDependencyError(f"this tritonclient has no {path.name}; pip install -U tritonclient")
    mod_spec = importlib.util.spec_from_file_location("jedi_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def parse_config(text: str):
    """``config.pbtxt`` text -> Triton ``ModelConfig`` message (raises on anything Triton would)."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_schema().ModelConfig())


def _io(onnx_path: Path):
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)

    def spec(v):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if t.elem_type not in ONNX_TO_TRITON:
            raise ExportValidationError(f"{onnx_path.name}: tensor {v.name!r} has an ONNX type ({t.elem_type}) "
                                        "Triton's config has no name for here")
        return v.name, ONNX_TO_TRITON[t.elem_type], dims

    init = {i.name for i in model.graph.initializer}
    card = ModelCard.from_props({p.key: p.value for p in model.metadata_props}, str(onnx_path))
    return ([spec(v) for v in model.graph.input if v.name not in init], [spec(v) for v in model.graph.output],
            list(card.categories) or None)


def config_text(name: str, platform: str, inputs, outputs, *, max_batch_size: int, instances: int,
                kind: str, max_queue_delay_us: int, labels: bool) -> str:
    def tensors(items, label_file=False):
        parts = []
        for n, dtype, dims in items:
            if dims and dims[0] in (-1, 0):
                dims = dims[1:]  # the batch axis; Triton adds it back (max_batch_size > 0)
            extra = ' label_filename: "labels.txt"' if label_file else ""
            parts.append(f'  {{ name: "{n}" data_type: {dtype} dims: [ {", ".join(str(d) for d in dims)} ]{extra} }}')
        return ",\n".join(parts)

    preferred = [b for b in (1, 2, 4, 8, 16, 32, 64) if b <= max_batch_size]
    return (f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch_size}\n'
            f"input [\n{tensors(inputs)}\n]\noutput [\n{tensors(outputs, labels)}\n]\n"
            f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
            f"  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
            f"instance_group [ {{ count: {instances} kind: {kind} }} ]\n")


def write_model_repository(onnx_path: str | Path, repo: str | Path, *, name: str | None = None,
                           plan_path: str | Path | None = None, categories: list[str] | None = None,
                           max_batch_size: int = 8, instances: int = 1, gpu: bool = False,
                           max_queue_delay_us: int = 2000, force: bool = False) -> list[Path]:
    """Write the model folder(s); returns their paths. Existing folders are kept unless ``force``."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"ONNX model not found: {onnx_path}")
    if max_batch_size < 1 or instances < 1:
        raise InputError("max_batch_size and instances must be >= 1")
    repo = Path(repo)
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create Triton repository {repo}: {e.strerror or e}") from None
    name = name or onnx_path.name.removesuffix(".onnx").replace(".", "_")
    inputs, outputs, recorded = _io(onnx_path)
    categories = categories or recorded  # the jedi metadata's class names by default
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    jobs = [(name, "onnxruntime_onnx", onnx_path, "model.onnx", kind)]
    if plan_path:
        jobs.append((f"{name}_trt", "tensorrt_plan", Path(plan_path), "model.plan", "KIND_GPU"))
    written = []
    for model_name, platform, src, filename, k in jobs:
        final = repo / model_name
        if final.exists() and not force:
            raise InputError(f"{final} already exists; pass --force to replace it")
        text = config_text(model_name, platform, inputs, outputs, max_batch_size=max_batch_size,
                           instances=instances, kind=k, max_queue_delay_us=max_queue_delay_us,
                           labels=bool(categories))
        try:
            parse_config(text)
        except Exception as e:
            raise ExportValidationError(f"{model_name}/config.pbtxt does not parse with Triton's schema: {e}") from None
        tmp = Path(tempfile.mkdtemp(prefix=f".{model_name}.", dir=repo))
        try:
            (tmp / "1").mkdir()
            shutil.copyfile(src, tmp / "1" / filename)
            (tmp / "config.pbtxt").write_text(text)
            if categories:
                (tmp / "labels.txt").write_text("".join(c + "\n" for c in categories))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        written.append(final)
    return written
