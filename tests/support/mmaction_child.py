"""MMAction2 1.2.0 itself, run in a child process by the upstream-parity tests (with the folder
:func:`upstream.install_mmaction` made first on ``PYTHONPATH``; never imported by the package).

For each model of the job file: build the recognizer from MMAction2's own config file (shipped in
its wheel under ``mmaction/.mim/configs``), with the job's overrides, random weights (BatchNorm
statistics randomised, the classifier scaled so its logits spread with std 2 on the first clip:
neither saturated nor uniform scores), save it as an MMAction2
checkpoint (``{"state_dict", "meta"}``, as MMAction2's runner saves them), then run MMAction2's own
test pipeline (the config's, with PyAV in place of Decord and the job's sizes) and ``test_step`` on
every clip. Writes ``<out>/<model>.pth``, ``<out>/<model>.<k>.npy`` (the pipeline's uint8 inputs)
and prints one JSON line: ``{model: [{"frame_inds": [...], "scores": [...]}, ...]}``.

The 1.2.0 wheel lacks ``mmaction/models/localizers/drn`` and its multimodal models need timm: both
are worked around here, in the test's child process, and nowhere else.
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path


def boot():
    missing = "mmaction.models.localizers.drn"  # absent from the 1.2.0 wheel; nothing here uses it
    pkg, mod = types.ModuleType(missing), types.ModuleType(missing + ".drn")
    pkg.__path__, mod.DRN = [], type("DRN", (), {})
    sys.modules[missing], sys.modules[missing + ".drn"] = pkg, mod
    import mmaction.utils.dependency as dependency

    dependency.WITH_MULTIMODAL = False  # its VindLU models import timm; not needed here
    from mmaction.utils import register_all_modules

    register_all_modules()


def configs_root() -> Path:
    import mmaction

    return Path(mmaction.__file__).parent / ".mim" / "configs"


def merge(cfg: dict, changes: dict) -> dict:
    for k, v in changes.items():
        cfg[k] = merge(dict(cfg.get(k) or {}), v) if isinstance(v, dict) and k in cfg else v
    return cfg


def build(job: dict, out: Path):
    import torch
    from mmaction.registry import MODELS
    from mmengine.config import Config

    cfg = Config.fromfile(str(configs_root() / job["config"]))
    model_cfg = merge(cfg.model.to_dict(), job.get("model", {}))
    torch.manual_seed(job.get("seed", 0))
    model = MODELS.build(model_cfg)
    model.init_weights()
    g = torch.Generator().manual_seed(job.get("seed", 0))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        fc = model.cls_head.fc_cls  # its weights: MMAction2's init, spread by calibrate()
        fc.bias.copy_(torch.randn(fc.bias.shape, generator=g) * 0.1)
    return model.eval(), cfg


def calibrate(model, batch, target: float = 2.0) -> None:
    """Scale the classifier so its logits on ``batch`` spread with std ``target`` (random
    backbones give features of any size; saturated or uniform scores would prove nothing)."""
    import torch

    seen = []
    hook = model.cls_head.fc_cls.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        model.test_step(batch)
        hook.remove()
        fc = model.cls_head.fc_cls
        scale = target / float(torch.cat(seen).std())
        fc.weight.mul_(scale)
        fc.bias.mul_(scale)


def save(model, job: dict, out: Path) -> None:
    """As MMAction2's runner saves a checkpoint: ``{"state_dict", "meta"}``."""
    import torch

    torch.save({"state_dict": model.state_dict(), "meta": {"config": job["config"]}}, out / f"{job['name']}.pth")


def pipeline(cfg, job: dict):
    from mmengine.dataset import Compose

    steps = []
    for t in job.get("test_pipeline") or cfg.test_pipeline:  # a job may give a 0.x config's pipeline
        t = dict(t)
        kind = t["type"]
        if kind == "DecordInit":
            t = {"type": "PyAVInit"}
        elif kind == "DecordDecode":
            t = {"type": "PyAVDecode"}
        t.update(job.get("pipeline", {}).get(kind, {}))
        steps.append({k: tuple(v) if isinstance(v, list) else v for k, v in t.items()})  # JSON lists: MMAction2 wants tuples
    return Compose(steps)


def main(job_file: str) -> None:
    import numpy as np
    import torch
    from mmengine.dataset import pseudo_collate

    spec = json.loads(Path(job_file).read_text())
    out = Path(spec["out"])
    boot()
    result = {}
    for job in spec["models"]:
        model, cfg = build(job, out)
        run = pipeline(cfg, job)
        rows = {}
        for k, clip in enumerate(spec["clips"]):
            if job.get("clips") is not None and k not in job["clips"]:
                continue
            data = {"filename": clip, "start_index": 0, "modality": "RGB", "label": -1}
            for t in run.transforms:
                if type(t).__name__ == "PackActionInputs":
                    inds = data["frame_inds"].tolist()
                data = t(data)
            np.save(out / f"{job['name']}.{k}.npy", data["inputs"].numpy())
            batch = pseudo_collate([data])
            if not rows:  # the first clip sets the classifier's scale; the checkpoint is saved after it
                calibrate(model, batch)
                save(model, job, out)
            with torch.no_grad():
                sample = model.test_step(batch)[0]
            rows[k] = {"frame_inds": inds, "scores": sample.pred_score.tolist()}
        if not rows:  # no clips: the checkpoint alone (the classifier as initialised)
            save(model, job, out)
        result[job["name"]] = rows
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
