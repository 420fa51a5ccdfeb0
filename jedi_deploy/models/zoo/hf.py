"""Hugging Face video classifiers as experts (``jedi import-expert DIR --arch hf``).

A local ``save_pretrained`` folder (``config.json``, ``model.safetensors`` or ``pytorch_model.bin``,
optionally sharded, and the processor's ``preprocessor_config.json`` /
``video_preprocessor_config.json``) becomes an expert: encoder = the model with its classifier
replaced by ``Identity`` (its output ``logits`` is then the pooled feature the classifier read),
head = the classifier, so ``head(encoder(x))`` equals the model's logits. Any
``*ForVideoClassification`` whose classifier is one linear layer works (VideoMAE, TimeSformer,
ViViT, V-JEPA 2 ... ); they all take ``[B, T, 3, H, W]`` as their first argument (``pixel_values``,
V-JEPA 2's ``pixel_values_videos``).

The model's ``config.json`` (without its label maps) is stored in the expert file, so the expert
is rebuilt from the file alone. Nothing is ever downloaded (``local_files_only``). ``transformers``
is imported through :mod:`jedi_deploy.models.tv_compat` (it imports torchvision).

Preprocessing comes from the processor config: resize (``shortest_edge`` or height/width),
centre crop, rescale (+ ViViT's ``offset``) and normalisation folded into our mean/std in [0, 255]
units, ``num_frames`` (processor, else the model config); frames are placed as MMAction2's test
mode does (one centred clip), ``frame_interval`` from the processor when it says, else the family's
published test protocol (:data:`FRAME_INTERVAL`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from jedi_deploy.contracts.errors import CheckpointError, ConfigError
from jedi_deploy.contracts.preprocess import RESAMPLE, Preprocess

#: Frames apart in the published Kinetics test protocol of each family, used when the processor
#: does not say (VideoMAE 16x4, TimeSformer 8x32, ViViT 32x2).
#: V-JEPA 2's video-classification evals sample ``frames_per_clip`` frames ``frame_step`` 2 apart.
FRAME_INTERVAL = {"videomae": 4, "timesformer": 32, "vivit": 2, "vjepa2": 2}
PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")
#: Config keys not kept in the expert file: labels live in its categories; the rest is provenance.
DROPPED_KEYS = ("id2label", "label2id", "_name_or_path", "transformers_version", "torch_dtype", "dtype",
                "_attn_implementation_autoset")


def import_transformers():
    """``import transformers`` after the torchvision compatibility step; a clear error if missing."""
    from jedi_deploy.models.tv_compat import import_torchvision

    try:
        import_torchvision()
    except ConfigError:
        pass  # transformers works without torchvision
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
    try:
        import transformers
    except ImportError as e:
        raise ConfigError(f"the hf architecture needs transformers: pip install 'jedi-deploy[hf]' ({e})") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _model_class(config: dict):
    tf = import_transformers()
    names = [a for a in config.get("architectures") or [] if a.endswith("ForVideoClassification")]
    if names and hasattr(tf, names[0]):
        return getattr(tf, names[0])
    if config.get("architectures"):
        raise ConfigError(f"hf: {config['architectures']} is not a *ForVideoClassification model")
    return tf.AutoModelForVideoClassification


def build_hf_model(config: dict):
    """A randomly initialised ``*ForVideoClassification`` from a config dict (eager attention, which
    every ONNX exporter handles)."""
    tf = import_transformers()
    if "model_type" not in config:
        raise ConfigError("hf: the stored config has no model_type")
    rest = {k: v for k, v in config.items() if k != "model_type"}
    try:
        cfg = tf.AutoConfig.for_model(config["model_type"], **rest)
    except (ValueError, KeyError) as e:
        raise ConfigError(f"hf: transformers {tf.__version__} does not know model_type "
                          f"{config['model_type']!r} ({e})") from None
    cls = _model_class(config)
    if cls is tf.AutoModelForVideoClassification:
        return cls.from_config(cfg, attn_implementation="eager")
    return cls._from_config(cfg, attn_implementation="eager")


def build_hf_encoder(config: dict | None = None, head: str = "classifier"):
    from jedi_deploy.models.zoo.common import HeadlessEncoder

    if not config:
        raise ConfigError("hf: arch argument 'config' (the model's config.json) is required")
    return HeadlessEncoder(build_hf_model(config), head, "NTCHW")


def stored_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in DROPPED_KEYS}


def read_folder(folder: str | Path):
    """(model, its config dict, processor dict or None) of a local ``save_pretrained`` folder."""
    d = Path(folder)
    if not d.is_dir():
        raise CheckpointError(f"{d}: --arch hf reads a save_pretrained folder (config.json + weights), not a file")
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{d}: no config.json; save the model with save_pretrained(folder)")
    try:
        config = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    weights = [p.name for p in d.iterdir() if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")]
    if not weights:
        raise CheckpointError(f"{d}: no weights (model.safetensors or pytorch_model.bin) beside config.json")
    cls = _model_class(config)
    try:
        model = cls.from_pretrained(str(d), local_files_only=True, attn_implementation="eager")
    except Exception as e:  # transformers raises many kinds; name the folder and the first line
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{d}: transformers cannot load this folder ({type(e).__name__}: {first})") from None
    return model.eval(), model.config.to_dict(), read_processor(d)


def read_processor(folder: Path) -> dict | None:
    """The processor config saved beside a model (video processor first), or None."""
    for name in PROCESSOR_FILES:
        if (folder / name).is_file():
            try:
                return json.loads((folder / name).read_text())
            except ValueError as e:
                raise CheckpointError(f"{folder / name}: not valid JSON ({e})") from None
    return None


def _size(value, where: str, field: str) -> tuple[int, int] | int:
    """A processor size dict -> int (shortest edge) or (height, width)."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
    raise ConfigError(f"{where}: {field} {value!r} is not a shortest_edge or height/width size")


def preprocess_fields(processor: dict, where: str) -> dict:
    """The :class:`Preprocess` fields a processor config fixes: resize (and its Pillow ``resample``), crop,
    mean/std in [0, 255] units (``((x * rescale + offset) - mean) / std`` folded into ``(x - mean') / std'``), and the
    frame count / interval when it says."""
    p = processor
    out: dict = {"rules": "transformers"}
    if p.get("do_resize", True) and "size" in p:
        size = _size(p["size"], where, "size")
        out.update(short_side=size, resize=(0, 0)) if isinstance(size, int) else out.update(short_side=0, resize=size)
    if p.get("do_center_crop", True) and "crop_size" in p:
        c = _size(p["crop_size"], where, "crop_size")
        if isinstance(c, int) or c[0] != c[1]:
            raise ConfigError(f"{where}: crop_size {p['crop_size']} is not square; jedi-deploy crops squares")
        out["crop"] = c[0]
    elif isinstance(out.get("resize"), tuple) and any(out["resize"]):
        h, w = out["resize"]
        if h != w:
            raise ConfigError(f"{where}: resize to {h}x{w} without a centre crop is not square")
        out["crop"] = h
    scale = float(p.get("rescale_factor", 1 / 255)) if p.get("do_rescale", True) else 1.0
    offset = -1.0 if p.get("offset") else 0.0
    norm = p.get("do_normalize", True)
    mean = p.get("image_mean", (0.485, 0.456, 0.406)) if norm else 0.0
    std = p.get("image_std", (0.229, 0.224, 0.225)) if norm else 1.0
    mean = (mean,) * 3 if isinstance(mean, (int, float)) else mean
    std = (std,) * 3 if isinstance(std, (int, float)) else std
    out["mean"] = tuple((float(m) - offset) / scale for m in mean)
    out["std"] = tuple(float(s) / scale for s in std)
    if p.get("resample") is not None:  # the processor's Pillow filter (transformers' PILImageResampling code)
        code = p["resample"]
        if isinstance(code, int) and 0 <= code < len(RESAMPLE):
            out["resample"] = RESAMPLE[code]
        elif str(code).lower() in RESAMPLE:
            out["resample"] = str(code).lower()
        else:
            raise ConfigError(f"{where}: resample {code!r} is not a Pillow filter (0-5)")
    if p.get("num_frames"):
        out["num_frames"] = int(p["num_frames"])
    rate = p.get("frame_sample_rate") or p.get("sampling_rate")
    if rate:
        out["frame_interval"] = int(rate)
    return out


def preprocess_for(config: dict, processor: dict | None, where: str) -> Preprocess:
    """The expert's preprocessing: the processor's fields on top of the model's frame count, image size
    and the family's frame interval."""
    image = config.get("image_size") or config.get("crop_size")  # V-JEPA 2 names them crop_size, frames_per_clip
    image = image if isinstance(image, int) else 224
    base = dict(num_frames=int(config.get("num_frames") or config.get("frames_per_clip") or 16), sampling="clip",
                frame_interval=FRAME_INTERVAL.get(config.get("model_type", ""), 1), short_side=image, crop=image,
                layout="NTCHW", rules="transformers")
    return Preprocess(**{**base, **(preprocess_fields(processor, where) if processor else {})})


def categories_from_config(config: dict, num_classes: int) -> tuple[str, ...] | None:
    """The model's own label names, when its config has real ones (not LABEL_0 ...)."""
    labels = {str(k): v for k, v in (config.get("id2label") or {}).items()}
    if any(str(i) not in labels for i in range(num_classes)):
        return None
    names = [str(labels[str(i)]) for i in range(num_classes)]
    if all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return tuple(names)
