"""Hugging Face experts (--arch hf) and the generic entry's import path: the ten obstacles of
issue 18, each checked, on tiny random models saved as users save them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jedi_deploy.contracts.errors import CheckpointError, ConfigError
from jedi_deploy.contracts.preprocess import normalize_views
from jedi_deploy.models.importer import import_checkpoint, save_imported
from jedi_deploy.models.registry import load_expert

tf = pytest.importorskip("jedi_deploy.models.zoo.hf").import_transformers()

TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32)
FAMILIES = {
    "videomae": (tf.VideoMAEConfig, tf.VideoMAEForVideoClassification, dict(num_frames=4, tubelet_size=2, patch_size=8),
                 lambda: tf.VideoMAEImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})),
    "timesformer": (tf.TimesformerConfig, tf.TimesformerForVideoClassification, dict(num_frames=4, patch_size=8),
                    lambda: tf.VideoMAEImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                                      image_mean=[0.45] * 3, image_std=[0.225] * 3)),
    "vivit": (tf.VivitConfig, tf.VivitForVideoClassification, dict(num_frames=4, tubelet_size=[2, 8, 8]),
              lambda: tf.VivitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})),
}


def save_tiny(folder: Path, family: str, num_labels: int = 5, processor: bool = True):
    cfg_cls, cls, kw, proc = FAMILIES[family]
    torch.manual_seed(0)
    cfg = cfg_cls(**TINY, **kw, num_labels=num_labels, id2label={i: f"act{i}" for i in range(num_labels)},
                  label2id={f"act{i}": i for i in range(num_labels)})
    model = cls(cfg).eval()
    model.save_pretrained(folder)
    if processor:
        proc().save_pretrained(folder)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hf_expert_equals_the_model_and_reads_its_processor(family, tmp_path):
    model = save_tiny(tmp_path / family, family)
    expert, fmt = import_checkpoint(tmp_path / family, "hf", dataset="d")
    assert fmt == "transformers" and expert.categories == tuple(f"act{i}" for i in range(5))
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        want = model(pixel_values=x).logits
        torch.testing.assert_close(expert.head(expert.encoder(x)), want, rtol=1e-5, atol=1e-5)
        again = load_expert(save_imported(expert, tmp_path / "e.safetensors", fmt))  # rebuilt from the file alone
        torch.testing.assert_close(again.model(x), want, rtol=1e-5, atol=1e-5)
    pre = expert.preprocess
    assert (pre.num_frames, pre.crop, pre.layout, pre.rules) == (4, 32, "NTCHW", "transformers")
    # obstacle 10: the model's own normalisation, equal to its processor's output on real pixels
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    proc = FAMILIES[family][3]()
    want_px = proc(list(frames), do_resize=False, do_center_crop=False, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(normalize_views(frames[None], pre)[0], want_px, rtol=1e-4, atol=1e-4)


def test_hf_folder_errors_are_one_line(tmp_path):
    save_tiny(tmp_path / "m", "videomae")
    with pytest.raises(CheckpointError, match="save_pretrained folder"):
        import_checkpoint(tmp_path / "m" / "config.json", "hf", dataset="d")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        import_checkpoint(tmp_path / "empty", "hf", dataset="d")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        import_checkpoint(tmp_path / "m", "hf", dataset="d")


def test_transformers_imports_through_the_compat_step_in_a_fresh_process(tmp_path):
    """Obstacle 1: next to CPU torch + a CUDA torchvision, `import transformers` is routed through
    tv_compat; the CLI imports an HF folder in a fresh process."""
    save_tiny(tmp_path / "m", "timesformer")
    r = subprocess.run([sys.executable, "-m", "jedi_deploy", "import-expert", str(tmp_path / "m"), "--arch", "hf",
                        "--dataset", "d", "--out", str(tmp_path / "e.safetensors")], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "hf, transformers format, 5 classes" in r.stdout


# ------------------------------------------------------------------------- generic entry
FACTORY = '''
import torch
from torch import nn


class ChannelsSecond(nn.Module):
    """Wants [B, T, C, H, W] (channels second, like HF video models) and returns what `kind` says."""

    def __init__(self, kind="tensor", classes=3):
        super().__init__()
        self.kind = kind
        self.body = nn.Linear(3, 8)
        self.classifier = nn.Linear(8, classes)

    def forward(self, x):
        assert x.shape[2] == 3 and x.shape[1] == 4, f"expected [B, 4, 3, H, W], got {tuple(x.shape)}"
        y = self.classifier(torch.relu(self.body(x.mean(dim=(1, 3, 4)))))
        if self.kind == "dict":
            return {"logits": y, "extra": y * 0}
        if self.kind == "tuple":
            return (y, None)
        if self.kind == "str":
            return "not a tensor"
        return y


def build(kind="tensor", classes=3):
    return ChannelsSecond(kind, classes)
'''


def jedi(*args, cwd):
    return subprocess.run([sys.executable, "-m", "jedi_deploy", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


@pytest.fixture()
def factory_ckpt(tmp_path):
    """A factory module living only beside its checkpoint (obstacle 2: not on PYTHONPATH)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "my_models.py").write_text(FACTORY)
    sys.path.insert(0, str(src))
    try:
        import my_models

        torch.manual_seed(0)
        net = my_models.build()
        torch.save(net.state_dict(), src / "model.pth")
    finally:
        sys.path.remove(str(src))
        sys.modules.pop("my_models", None)
    return src / "model.pth", net


def test_generic_route_as_documented(factory_ckpt, tmp_path):
    """Obstacles 2-5 and 8: the factory found beside the checkpoint, the plain state dict detected,
    the head found (no `fc`), the layout honoured, from another folder and through load_expert."""
    ckpt, net = factory_ckpt
    work = tmp_path / "work"
    work.mkdir()
    out = work / "e.safetensors"
    r = jedi("import-expert", ckpt, "--arch", "generic", "--arg", "factory=my_models:build", "--dataset", "d",
             "--set", "layout=NTCHW", "--set", "num_frames=4", "--set", "crop=8", "--set", "short_side=8",
             "--out", out, cwd=work)
    assert r.returncode == 0, r.stderr
    assert "state_dict format" in r.stdout  # detected, no --format needed
    code = (f"import torch; from jedi_deploy.models.registry import load_expert; e = load_expert({str(out)!r}); "
            "print(e.arch_kwargs['head'], e.arch_kwargs['layout'], e.preprocess.layout); "
            "x = torch.randn(2, 4, 3, 8, 8); print(e.model(x).shape)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)  # another cwd
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["classifier", "NTCHW", "NTCHW", "torch.Size([2,", "3])"]
    x = torch.randn(2, 4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_expert(out).model(x), net(x))


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_generic_model_outputs_dict_and_tuple(factory_ckpt, kind, tmp_path):
    """Obstacle 7: ModelOutput / dict (logits) and tuple (first element) outputs."""
    ckpt, net = factory_ckpt
    expert, _ = import_checkpoint(ckpt, "generic", dataset="d",
                                  arch_kwargs={"factory": "my_models:build", "factory_kwargs": {"kind": kind}},
                                  preprocess={"layout": "NTCHW", "num_frames": 4, "crop": 8, "short_side": 8})
    x = torch.randn(2, 4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(expert.model(x), net(x))


def test_generic_failures_are_one_error_line(factory_ckpt, tmp_path):
    """Obstacles 5, 6, 7, 8: wrong layout, wrong frame count and an unusable output fail AT IMPORT
    with one `error:` line naming the field; a factory that cannot be found says where it looked."""
    ckpt, _ = factory_ckpt
    base = ["import-expert", ckpt, "--arch", "generic", "--arg", "factory=my_models:build", "--dataset", "d",
            "--set", "crop=8", "--set", "short_side=8", "--out", tmp_path / "e.safetensors"]
    cases = [(["--set", "num_frames=4"], "layout"),  # default NCTHW: channels land in position 1
             (["--set", "layout=NTCHW"], "num_frames=16"),  # the default 16 frames do not fit
             (["--set", "layout=NTCHW", "--set", "num_frames=4", "--arg", 'factory_kwargs={"kind": "str"}'],
              "not a tensor")]
    for extra, needle in cases:
        r = jedi(*base, *extra, cwd=tmp_path)
        lines = [x for x in r.stderr.splitlines() if x.strip() and "Warning" not in x and "import_torchvision" not in x]
        assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "e.safetensors").exists()
    r = jedi("import-expert", ckpt, "--arch", "generic", "--arg", "factory=nowhere_pkg:build", "--dataset", "d",
             "--out", tmp_path / "e.safetensors", cwd=tmp_path)
    assert r.returncode != 0 and "cannot import 'nowhere_pkg'" in r.stderr and "PYTHONPATH" in r.stderr


def test_generic_reads_the_processor_config_beside_the_checkpoint(tmp_path):
    """Obstacle 10 through the generic route: an HF model built by a factory, its processor's
    mean/std (TimeSformer's 0.45/0.225) used instead of ImageNet's."""
    model = save_tiny(tmp_path / "m", "timesformer")
    (tmp_path / "m" / "tsf.py").write_text(
        "from jedi_deploy.models.zoo.hf import build_hf_model\nimport json, pathlib\n"
        "def build():\n    return build_hf_model(json.loads((pathlib.Path(__file__).parent / 'config.json').read_text()))\n")
    torch.save(model.state_dict(), tmp_path / "m" / "weights.pth")
    expert, fmt = import_checkpoint(tmp_path / "m" / "weights.pth", "generic", dataset="d",
                                    arch_kwargs={"factory": "tsf:build"},
                                    preprocess={"num_frames": 4, "layout": "NTCHW"})
    assert fmt == "state_dict" and expert.arch_kwargs["head"] == "classifier"  # obstacles 3 and 4
    assert np.allclose(expert.preprocess.mean, [0.45 * 255] * 3) and np.allclose(expert.preprocess.std, [0.225 * 255] * 3)
    assert (expert.preprocess.short_side, expert.preprocess.crop) == (36, 32)


def test_extras_install_what_the_routes_need():
    """Obstacle 9 (and 1): onnxscript comes with the package; transformers with [hf] and [dev]."""
    from importlib.metadata import requires

    reqs = requires("jedi-deploy") or []
    assert any(r.startswith("onnxscript") and "extra" not in r for r in reqs)
    for extra in ("hf", "dev"):
        assert any(r.startswith("transformers") and f'extra == "{extra}"' in r for r in reqs), extra


def test_layout_is_validated():
    from jedi_deploy.contracts.preprocess import Preprocess

    with pytest.raises(ConfigError, match="layout"):
        Preprocess(layout="NHWC")
