"""The paper-faithfulness options, on hand-computed cases: the hinge form, the teachers' outputs
the students distil from (with or without the teachers' dropout), and the final refit on the whole
training set; plus training on an explicit device and the cache's adaptive sub-batches."""
import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from jedi_deploy.contracts.config import JEDIConfig
from jedi_deploy.contracts.errors import ConfigError, InputError
from jedi_deploy.train.losses import hinge_loss, jedi_loss


def test_hinge_forms_by_hand():
    logits = torch.tensor([[1.0, 1.5, 0.2], [3.0, 0.0, 2.5]])
    y = torch.tensor([0, 0])
    # sample 0: margins 1 - 1 + 1.5 = 1.5 and 1 - 1 + 0.2 = 0.2; sample 1: 0 and 1 - 3 + 2.5 = 0.5
    assert hinge_loss(logits, y, "sum").item() == pytest.approx(1.5 + 0.2 + 0.5)
    assert hinge_loss(logits, y, "mean").item() == pytest.approx((1.5 + 0.2) / 3 + 0.5 / 3)
    assert hinge_loss(logits, y, "crammer_singer").item() == pytest.approx(1.5 + 0.5)
    assert hinge_loss(logits, y, "mean").item() == pytest.approx(F.multi_margin_loss(logits, y, reduction="sum").item())
    with pytest.raises(ConfigError, match="hinge_form must be one of"):
        JEDIConfig(hinge_form="max")


def test_the_hinge_form_reaches_the_loss():
    s = [torch.zeros(2, 3)]
    t = [torch.tensor([[1.0, 1.5, 0.2], [3.0, 0.0, 2.5]])]
    d, y, w = torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.ones(2, 1)
    for form, want in (("sum", 2.2), ("mean", 2.2 / 3), ("crammer_singer", 2.0)):
        cfg = JEDIConfig(alpha=0.0, beta=1.0, gamma=0.0, hinge_form=form)
        loss, parts = jedi_loss(s, t, d, y, w, cfg, distill=False)
        assert loss.item() == pytest.approx(want / 2) and parts["teacher"] == pytest.approx(want / 2)


def test_kd_targets_are_the_ones_given():
    """With alpha = beta = 0 the loss is gamma x the soft cross-entropy of the students to the
    given targets' softmax - not to the (dropout) teacher logits."""
    torch.manual_seed(0)
    s, t, targets = [torch.randn(4, 5)], [torch.randn(4, 5)], [torch.randn(4, 5)]
    d, y, w = torch.zeros(4, dtype=torch.long), torch.full((4,), -1), torch.ones(2, 1)
    cfg = JEDIConfig(alpha=0.0, beta=0.0, gamma=0.4)
    loss, _ = jedi_loss(s, t, d, y, w, cfg, distill=True, kd_targets=targets)
    want = -(F.softmax(targets[0], 1) * F.log_softmax(s[0], 1)).sum(1).mean() * 0.4
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    plain, _ = jedi_loss(s, t, d, y, w, cfg, distill=True)
    assert plain.item() != pytest.approx(loss.item())


def test_kd_targets_eval_distils_from_teachers_without_dropout(cache):
    from jedi_deploy.train.data import build_train_data
    from jedi_deploy.train.engine import Rng
    from jedi_deploy.train.jedi import build_model, build_optimizer, train_step
    from jedi_deploy.train.losses import distillation_weights

    cfg = JEDIConfig(epochs=1, burn_in=0, batch_size=16, hidden=16, kd_targets="eval", alpha=0.0, beta=0.0, lr=1e-3)
    data = build_train_data(cache, cfg)
    model = build_model(data, cache, cfg)
    assert max(model.teacher_p) > 0  # the teachers do have input dropout
    idx = torch.arange(16)
    embs = [e[idx] for e in data.embs]
    with torch.no_grad():
        model.eval()
        students, teachers = model(embs)  # adjustment W2 = 0: students are the experts, dropout or not
        model.train()
    w = distillation_weights(data.sizes, cfg)
    want, _ = jedi_loss(students, teachers, data.dataset[idx], data.labels[idx], w, cfg, True, "joint", teachers)
    parts = train_step(model, build_optimizer(model, cfg), embs, data.dataset[idx], data.labels[idx], w, cfg, Rng(0),
                       distill=True)
    assert parts["loss"] == pytest.approx(want.item(), rel=1e-5)


def test_refit_trains_on_the_whole_training_set_for_the_picked_epoch_count(cache, tmp_path):
    from jedi_deploy.contracts.bundle import read_bundle_header
    from jedi_deploy.train.jedi import train_to_dir

    cfg = JEDIConfig(epochs=4, burn_in=1, lr=1e-3, batch_size=32, hidden=16, refit=True)
    result, bundle = train_to_dir(cache, tmp_path / "run", cfg, progress=False, device="cpu")
    h = read_bundle_header(bundle)
    picked = h.extra["refit"]["validation_run"]["best_epoch"]
    assert h.extra["refit"]["epochs"] == max(1, picked if picked is not None else cfg.epochs)
    summary = h.extra["data"]
    assert all(v.get("val", 0) == 0 for v in summary.values() if "train" in v)  # no held-out samples
    plain = JEDIConfig(epochs=4, burn_in=1, lr=1e-3, batch_size=32, hidden=16, refit=False)
    _, b2 = train_to_dir(cache, tmp_path / "plain", plain, progress=False)
    assert all(v["val"] > 0 for v in read_bundle_header(b2).extra["data"].values() if "train" in v)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["refit"] is True


def test_training_on_an_explicit_device_with_low_precision_storage(cache):
    from jedi_deploy.train.jedi import train_jedi

    cfg = JEDIConfig(epochs=2, burn_in=1, lr=1e-3, batch_size=32, hidden=16)
    a = train_jedi(cache, cfg, progress=False, device="cpu")
    b = train_jedi(cache, replace(cfg, embedding_dtype="bfloat16"), progress=False, device="cpu")
    assert next(a.model.parameters()).device.type == "cpu"
    for x, y in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(x, y, atol=5e-3)  # bf16 storage: close, not equal
    assert a.history[-1]["eval"].keys() == b.history[-1]["eval"].keys()


def test_cache_sub_batches_halve_on_out_of_memory(experts, test_video):
    from jedi_deploy.media.decode import load_views
    from jedi_deploy.train.cache import encode_adaptive, encode_views

    ex = experts[0]
    views = [torch.from_numpy(load_views(test_video, ex.preprocess))] * 6
    real = ex.encoder.forward
    calls = []

    def small_device(x):  # a device that holds at most 2 videos' views at once
        calls.append(len(x))
        if len(x) > 2 * views[0].shape[0]:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(x)

    want_emb, want_logits = encode_views(ex, views)
    ex.encoder.forward = small_device
    try:
        emb, logits, fits = encode_adaptive(ex, views, "fp32", 8)
        assert fits == 2 and torch.allclose(emb, want_emb, atol=1e-5) and torch.allclose(logits, want_logits, atol=1e-5)
        ex.encoder.forward = lambda x: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated"))
        with pytest.raises(InputError, match=r"clip\.mp4: its 1 views do not fit"):
            encode_adaptive(ex, views, "fp32", 4, where=lambda i: "clip.mp4")
    finally:
        del ex.encoder.forward


def test_bf16_cache_is_close_to_fp32(experts, datasets, tmp_path):
    from jedi_deploy.contracts.cache import read_cache_header
    from jedi_deploy.train.cache import build_cache
    from jedi_deploy.train.cached import load_cache

    ucf = [d for d in datasets if d.name == "ucf-mini"]
    ex = [e for e in experts if e.dataset == "ucf-mini"]
    build_cache(ex, ucf, tmp_path / "fp32", splits=("test",), progress=False, workers=0, device="cpu")
    build_cache(ex, ucf, tmp_path / "bf16", splits=("test",), progress=False, workers=0, device="cpu",
                precision="bf16", dtype="bfloat16")
    a, b = (load_cache(tmp_path / k).split("ucf-mini", "test") for k in ("fp32", "bf16"))
    name = ex[0].name
    scale = a.emb[name].abs().max()
    assert (a.emb[name] - b.emb[name]).abs().max() / scale < 0.05
    assert (a.logits[name].argmax(1) == b.logits[name].argmax(1)).float().mean() >= 0.8
    assert read_cache_header(tmp_path / "bf16" / "ucf-mini" / "test.safetensors").dtype == "bfloat16"
