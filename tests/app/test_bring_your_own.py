"""Experts users already hold, through the whole pipeline, as the README's "Bring your own experts"
section tells them: real `jedi` subprocesses on tiny random models saved as their libraries save them."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

hf = pytest.importorskip("jedi_deploy.models.zoo.hf")
README = Path(__file__).parents[2] / "README.md"


def jedi(*args, cwd, timeout=600):
    r = subprocess.run([sys.executable, "-m", "jedi_deploy", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=timeout)
    assert r.returncode == 0, f"jedi {' '.join(map(str, args))}\n{r.stderr[-3000:]}"
    return r


def tiny_hf(folder: Path, family: str, num_labels: int):
    tf = hf.import_transformers()
    tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                num_labels=num_labels)
    cfg, cls, proc = {
        "videomae": (tf.VideoMAEConfig(**tiny, num_frames=4, tubelet_size=2, patch_size=8),
                     tf.VideoMAEForVideoClassification, tf.VideoMAEImageProcessor),
        "timesformer": (tf.TimesformerConfig(**tiny, num_frames=4, patch_size=8), tf.TimesformerForVideoClassification,
                        tf.VideoMAEImageProcessor),
        "vivit": (tf.VivitConfig(**tiny, num_frames=4, tubelet_size=[2, 8, 8]), tf.VivitForVideoClassification,
                  tf.VivitImageProcessor),
        "vjepa2": (tf.VJEPA2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, crop_size=32,
                                   frames_per_clip=4, patch_size=8, pred_hidden_size=16, pred_num_hidden_layers=1,
                                   pred_num_attention_heads=2, num_pooler_layers=1, num_labels=num_labels),
                   tf.VJEPA2ForVideoClassification, tf.VJEPA2VideoProcessor)}[family]
    torch.manual_seed(0)
    cls(cfg).eval().save_pretrained(folder)
    proc(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)


def mmaction_vit_checkpoint(site: Path, out: Path, num_classes: int) -> Path:
    """A tiny VideoMAE V2 ViT built by MMAction2 1.2.0 itself from its own config, saved as an MMAction2
    checkpoint (support.mmaction_child)."""
    from support.upstream import run_mmaction

    out.mkdir()
    run_mmaction(site, out, [], [{
        "name": "vit", "config": "recognition/videomaev2/vit-small-p16_videomaev2-vit-g-dist-k710-pre_16x4x1_kinetics-400.py",
        "model": {"backbone": {"img_size": 32, "patch_size": 8, "embed_dims": 32, "depth": 1, "num_heads": 2,
                               "num_frames": 4},
                  "cls_head": {"num_classes": num_classes, "in_channels": 32}}}])
    return out / "vit.pth"


@pytest.mark.slow
def test_experts_users_hold_through_the_pipeline(data_root, mmaction_site, tmp_path):
    """Tiny VideoMAE, TimeSformer, ViViT and V-JEPA 2 (transformers), a VideoMAE V2 ViT built by
    MMAction2 and a torchvision R3D-18: import -> cache -> train -> export (parity) -> jedi infer,
    with every student."""
    from jedi_deploy.models.zoo.torchvision import torchvision_video_model

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    routes = {"videomae": "kinetics-mini", "timesformer": "ucf-mini", "vivit": "hmdb-mini", "r3d": "hmdb-copy",
              "vjepa2": "kinetics-copy", "vit": "ucf-copy"}
    for copy in ("hmdb", "kinetics", "ucf"):  # a dataset of its own for each further expert
        shutil.copytree(data / f"{copy}-mini", data / f"{copy}-copy")
    classes = {ds: len((data / ds / "classes.txt").read_text().split()) for ds in routes.values()}
    experts = []
    for family in ("videomae", "timesformer", "vivit", "vjepa2"):
        ds = routes[family]
        tiny_hf(tmp_path / family, family, classes[ds])
        jedi("import-expert", tmp_path / family, "--arch", "hf", "--dataset", ds, "--classes",
             data / ds / "classes.txt", "--out", tmp_path / f"{family}.safetensors", cwd=tmp_path)
        experts.append(tmp_path / f"{family}.safetensors")
    torch.save(torchvision_video_model("r3d_18", classes["hmdb-copy"]).state_dict(), tmp_path / "r3d.pth")
    jedi("import-expert", tmp_path / "r3d.pth", "--arch", "r3d_18", "--dataset", "hmdb-copy", "--classes",
         data / "hmdb-copy" / "classes.txt", "--set", "resize=[0,0]", "--set", "short_side=32", "--set", "crop=32",
         "--set", "num_frames=4", "--out", tmp_path / "r3d.safetensors", cwd=tmp_path)
    experts.append(tmp_path / "r3d.safetensors")
    vit = mmaction_vit_checkpoint(mmaction_site, tmp_path / "mm", classes["ucf-copy"])
    jedi("import-expert", vit, "--arch", "mmaction_vit", "--arg", "img_size=32", "--arg", "num_heads=2", "--dataset",
         "ucf-copy", "--classes", data / "ucf-copy" / "classes.txt", "--out", tmp_path / "vit.safetensors", cwd=tmp_path)
    experts.append(tmp_path / "vit.safetensors")
    jedi("cache", "--data", data, *[x for e in experts for x in ("--expert", e)], "--out", tmp_path / "cache",
         cwd=tmp_path)
    jedi("train", "--cache", tmp_path / "cache", "--out", tmp_path / "run", "--epochs", 3, "--burn-in", 1, "--lr", 1e-3,
         "--batch-size", 32, cwd=tmp_path)
    jedi("export", "--bundle", tmp_path / "run" / "jedi.safetensors", "--out", tmp_path / "onnx", cwd=tmp_path)
    for name, ds in routes.items():
        for kind in ("student", "expert"):
            report = json.loads((tmp_path / "onnx" / f"{name}.{kind}.validation.json").read_text())
            assert report["passed"], (name, kind, report)
        r = jedi("infer", tmp_path / "onnx" / f"{name}.student.onnx", data / ds / "test.txt", "--out",
                 tmp_path / f"{name}.jsonl", cwd=tmp_path)
        rows = [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == len((data / ds / "test.txt").read_text().splitlines()) and "acc@1" in r.stdout + r.stderr


def readme_commands() -> list[str]:
    text = README.read_text()
    section = text.split("## Bring your own experts", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("jedi import-expert")]


@pytest.mark.slow
def test_readme_bring_your_own_commands_run(tmp_path):
    """Each route of the README section, run exactly as written, on files of the names it uses."""
    from jedi_deploy.models.tv_compat import import_torchvision
    from jedi_deploy.models.zoo.torchvision import torchvision_video_model
    from support.checkpoints import _mmaction_resnet_keys

    tv = import_torchvision()
    cmds = readme_commands()
    assert len(cmds) == 4 and {re.search(r"--arch (\S+)", c).group(1) for c in cmds} == {"r3d_18", "tsm_r50", "hf",
                                                                                          "generic"}
    (tmp_path / "k400.txt").write_text("\n".join(f"class_{i}" for i in range(400)) + "\n")
    torch.save(torchvision_video_model("r3d_18", 400).state_dict(), tmp_path / "r3d_18-b3b3357e.pth")
    torch.save({"state_dict": _mmaction_resnet_keys(tv.models.resnet50(num_classes=400).state_dict(), shift=True)},
               tmp_path / "tsm_k400.pth")
    tiny_hf(tmp_path / "videomae-base-finetuned-kinetics", "videomae", 400)
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n\ndef build(num_classes=400):\n"
        "    return nn.Sequential(nn.Conv3d(3, 8, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, num_classes))\n")
    import importlib

    sys.path.insert(0, str(tmp_path))
    try:
        torch.save(importlib.import_module("my_models").build().state_dict(), tmp_path / "my_model.pth")
    finally:
        sys.path.pop(0)
        sys.modules.pop("my_models", None)
    for cmd in cmds:
        args = shlex.split(cmd)[1:]
        jedi(*args, cwd=tmp_path)
        out = tmp_path / args[args.index("--out") + 1]
        assert out.is_file(), cmd
