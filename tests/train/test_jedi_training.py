import json
from dataclasses import replace

import pytest
import torch

from jedi_deploy.contracts.config import JEDIConfig
from jedi_deploy.contracts.errors import CacheMismatchError, ConfigError, InputError
from jedi_deploy.contracts.metrics import classification_metrics
from jedi_deploy.models.bundle import load_bundle
from jedi_deploy.train.evaluate import evaluate, format_table
from jedi_deploy.train.jedi import train_jedi, train_to_dir

FAST = dict(lr=1e-3, batch_size=32, hidden=16)


def test_students_start_as_the_initial_experts(trained, cache):
    first = trained.history[0]["eval"]
    for d in trained.datasets:
        name = cache.expert_for_dataset(d).name
        s = cache.split(d, "test")
        assert first[d]["student"] == classification_metrics(s.logits[name].numpy(), s.labels.numpy())


def test_history_logs_every_epoch_with_val_and_test_metrics(trained):
    h = trained.history
    assert [r["epoch"] for r in h] == list(range(trained.config.epochs + 1))
    assert [r["distill"] for r in h[1:]] == [e > trained.config.burn_in for e in range(1, trained.config.epochs + 1)]
    assert all(r["kd"] == 0 for r in h[1:trained.config.burn_in + 1]) and h[-1]["kd"] > 0
    for r in h:
        for split in ("val", "eval"):
            assert set(r[split]) == set(trained.datasets)
            for d in trained.datasets:
                assert set(r[split][d]["student"]) == {"acc1", "acc5", "mAP"}
                assert set(r[split][d]["teacher"]) == {"acc1", "acc5", "mAP"}
    assert trained.best_epoch is not None


def test_training_fits_the_training_data(cache):
    cfg = JEDIConfig(epochs=25, burn_in=25, lr=3e-3, batch_size=64, hidden=16)
    result = train_jedi(cache, cfg, progress=False)
    assert result.history[-1]["loss"] < 0.6 * result.history[1]["loss"]


def test_jsonl_log_and_table(cache, trained, tmp_path):
    train_jedi(cache, JEDIConfig(epochs=1, burn_in=0, lr=1e-3, hidden=8), progress=False, log_path=tmp_path / "m.jsonl")
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2
    table = evaluate(trained.model, trained.experts, trained.datasets, cache)
    md = format_table(table)
    assert md.count("\n") == 4 and "Initial experts" in md and "JEDI teachers" in md


class Stop(Exception):
    pass


def _stop_after(n):
    def hook(epoch, record):
        if epoch == n:
            raise Stop
    return hook


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(cache, tmp_path):
    cfg = JEDIConfig(epochs=6, burn_in=2, label_fraction=0.5, **FAST)
    _, straight = train_to_dir(cache, tmp_path / "a", cfg, progress=False)
    with pytest.raises(Stop):
        train_to_dir(cache, tmp_path / "b", cfg, progress=False, on_epoch=_stop_after(3))
    assert (tmp_path / "b/in_progress/checkpoint.safetensors").exists() and not (tmp_path / "b/jedi.safetensors").exists()
    with pytest.raises(InputError, match="stopped run"):
        train_to_dir(cache, tmp_path / "b", cfg, progress=False)
    with pytest.raises(ConfigError, match="lr: 0.001 -> 0.002"):
        train_to_dir(cache, tmp_path / "b", JEDIConfig(epochs=6, burn_in=2, label_fraction=0.5,
                                                         **{**FAST, "lr": 2e-3}), resume=True, progress=False)
    _, resumed = train_to_dir(cache, tmp_path / "b", cfg, resume=True, progress=False)
    a, b = load_bundle(straight)[0].state_dict(), load_bundle(resumed)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lb] == list(range(7))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert not (tmp_path / "b/in_progress").exists()
    for name in ("best.safetensors", "config.json", "final_eval.json"):
        assert (tmp_path / "b" / name).exists()
    assert load_bundle(tmp_path / "b/jedi.safetensors")[1].config.to_dict() == cfg.to_dict()


def test_resume_keeps_the_best_epoch_rule_so_refit_ends_bit_identical(cache, tmp_path):
    """Validation scores tie on small data; the best epoch is the FIRST to reach
    the best score, before and after a resume, so the refit trains for the same epoch count."""
    from jedi_deploy.train.jedi import _score

    # a learning rate too small to move any prediction: every epoch ties with epoch 0
    cfg = JEDIConfig(epochs=8, burn_in=1, refit=True, lr=1e-12, batch_size=32, hidden=16)
    straight_result, straight = train_to_dir(cache, tmp_path / "a", cfg, progress=False)
    scores = [_score(r["val"]) for r in straight_result.history]
    assert len(set(scores)) == 1 and straight_result.best_epoch == 0  # the case: tied epochs
    with pytest.raises(Stop):
        train_to_dir(cache, tmp_path / "b", cfg, progress=False, on_epoch=_stop_after(5))
    resumed_result, resumed = train_to_dir(cache, tmp_path / "b", cfg, resume=True, progress=False)
    ha, hb = load_bundle(straight)[1], load_bundle(resumed)[1]
    assert ha.extra["refit"] == hb.extra["refit"] and ha.extra["best_epoch"] == hb.extra["best_epoch"]
    assert resumed_result.best_epoch == straight_result.best_epoch
    a, b = load_bundle(straight)[0].state_dict(), load_bundle(resumed)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    best_a, best_b = (load_bundle(tmp_path / x / "best.safetensors") for x in ("a", "b"))
    assert best_a[1].extra["epoch"] == best_b[1].extra["epoch"] == ha.extra["best_epoch"]
    assert all(torch.equal(best_a[0].state_dict()[k], best_b[0].state_dict()[k]) for k in a)


def test_a_failed_run_leaves_the_earlier_run_untouched(cache, tmp_path):
    cfg = JEDIConfig(epochs=2, burn_in=0, **FAST)
    _, bundle = train_to_dir(cache, tmp_path, cfg, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(InputError, match="already exists"):
        train_to_dir(cache, tmp_path, cfg, progress=False)
    with pytest.raises(Stop):
        train_to_dir(cache, tmp_path, JEDIConfig(epochs=3, **FAST), force=True, progress=False,
                     on_epoch=_stop_after(1))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_label_fraction_cmpl_and_alternating_run(cache):
    cfg = JEDIConfig(epochs=4, burn_in=1, kd_loss="cmpl", tau=0.5, label_fraction=0.1, scheme="alternating",
                     alternate_every=1, **FAST)
    r = train_jedi(cache, cfg, progress=False)
    assert [x["phase"] for x in r.history[1:]] == ["teachers", "students", "teachers", "students"]
    assert r.history[1]["ce"] == 0 and r.history[2]["teacher"] == 0
    assert r.history[4]["kd"] > 0  # CMPL pseudo-labels fired in a student phase after burn-in
    assert all(n["labeled"] <= n["train"] for n in r.data.values())
    assert sum(n["labeled"] for n in r.data.values()) < 0.5 * sum(n["train"] for n in r.data.values())


def test_just_kinetics_scenario_uses_a_pool_without_its_expert(cache):
    pool = cache.experts[0].dataset
    others = [e.name for e in cache.experts[1:]]
    cfg = JEDIConfig(epochs=2, burn_in=0, distill_data="pool", experts=others, **FAST)
    r = train_jedi(cache, cfg, progress=False)
    assert r.datasets == [e.dataset for e in cache.experts[1:]]
    assert r.data[pool]["pool"] == len(cache.split(pool, "train"))
    assert r.history[-1]["kd"] > 0 and len(r.model.students) == 2
    with pytest.raises(ConfigError, match="needs an unlabeled pool"):
        train_jedi(cache, JEDIConfig(epochs=1, distill_data="pool"), progress=False)


@pytest.mark.parametrize("mode", ["base", "predictions", "adjusted+predictions"])
def test_teacher_inputs_train_and_export_shape(cache, mode, tmp_path):
    r = train_jedi(cache, JEDIConfig(epochs=2, burn_in=0, teacher_input=mode, **FAST), progress=False)
    assert r.history[-1]["kd"] > 0
    if mode == "base":  # teachers see the frozen features: the adjustment modules get no teacher gradient
        assert r.model.teachers[0][1].in_features == sum(r.model.dims)


def _poke(cache, fn):
    d = cache.experts[0].dataset
    split = cache.splits[d]["train"]
    saved = (split.labels.clone(), {k: v.clone() for k, v in split.emb.items()})
    try:
        fn(split)
        train_jedi(cache, JEDIConfig(epochs=1), progress=False)
    finally:
        split.labels = saved[0]
        split.emb.update(saved[1])


def test_bad_cache_contents_name_dataset_and_sample(cache):
    d = cache.experts[0].dataset
    name = cache.experts[0].name

    def bad_label(s):
        s.labels[3] = 99
    with pytest.raises(InputError, match=rf"dataset '{d}' split 'train' sample 3 \(videos/train/.*\): label 99 outside"):
        _poke(cache, bad_label)

    def nan(s):
        s.emb[name] = s.emb[name].clone()
        s.emb[name][5, 0] = float("nan")
    with pytest.raises(InputError, match=rf"sample 5 .*expert '{name}' embedding has NaN/Inf"):
        _poke(cache, nan)

    def wrong_dim(s):
        s.emb[name] = s.emb[name][:, :-1]
    with pytest.raises(CacheMismatchError, match="expected \\[N, "):
        _poke(cache, wrong_dim)

    def empty(s):
        s.labels = s.labels[:0]
        for k in s.emb:
            s.emb[k] = s.emb[k][:0]
    with pytest.raises(InputError, match=rf"dataset '{d}' split 'train' is empty"):
        _poke(cache, empty)
    with pytest.raises(ConfigError, match="not in the cache"):
        train_jedi(cache, JEDIConfig(epochs=1, experts=["nobody"]), progress=False)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        JEDIConfig(lr=0)
    with pytest.raises(ConfigError, match="unknown JEDI config fields"):
        JEDIConfig.from_dict({"lr": 1, "learning_rate": 2})


def test_eval_refuses_a_cache_of_other_experts(trained, cache):
    other = [replace(e, sha256="f" * 64) for e in trained.experts]
    with pytest.raises(CacheMismatchError, match="other experts"):
        evaluate(trained.model, other, trained.datasets, cache)


def test_bf16_autocast_and_sgd_run(cache):
    r = train_jedi(cache, JEDIConfig(epochs=2, burn_in=0, precision="bf16", optimizer="sgd", **FAST), progress=False)
    assert r.history[-1]["kd"] > 0 and all(torch.isfinite(p).all() for p in r.model.parameters())


def test_a_run_stopped_before_its_first_checkpoint_starts_again(cache, tmp_path):
    """Killed (or refused a write) before the first checkpoint: --resume starts it again instead of
    'nothing to resume', and so does a plain rerun (there is nothing to lose)."""
    cfg = JEDIConfig(epochs=2, burn_in=1, **FAST)
    _, straight = train_to_dir(cache, tmp_path / "a", cfg, progress=False)
    for resume in (True, False):
        out = tmp_path / f"b{resume}"
        (out / "in_progress").mkdir(parents=True)
        (out / "in_progress" / "metrics.jsonl").write_text("")
        _, again = train_to_dir(cache, out, cfg, resume=resume, progress=False)
        a, b = load_bundle(straight)[0].state_dict(), load_bundle(again)[0].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match="nothing to resume"):
        train_to_dir(cache, tmp_path / "never", cfg, resume=True, progress=False)


def test_a_validation_split_the_experts_have_seen_is_warned_about(cache, tmp_path, monkeypatch):
    """The initial experts' acc@1 on the validation split (their own heads on their cached embeddings)
    is in the first log record; at or above SEEN_VALIDATION_ACC1 a warning names the dataset in the
    log, the result and the bundle. Checked both ways against an independent computation."""
    from jedi_deploy.contracts.bundle import read_bundle_header
    from jedi_deploy.train import jedi as jedi_mod
    from jedi_deploy.train.data import build_train_data

    cfg = JEDIConfig(epochs=1, burn_in=1, **FAST)
    data = build_train_data(cache, cfg)
    want = {}
    for j, (e, d) in enumerate(zip(data.experts, data.datasets)):
        v, head = data.val[d], cache.heads[e.name]
        want[d] = round(float(100 * ((v.embs[j] @ head["weight"].T + head["bias"]).argmax(1) == v.labels).float().mean()), 2)
    for threshold in (101.0, min(want.values())):  # never seen / the constructed case: at the lowest expert's score
        monkeypatch.setattr(jedi_mod, "SEEN_VALIDATION_ACC1", threshold)
        out = tmp_path / f"t{threshold}"
        result, bundle = train_to_dir(cache, out, cfg, progress=False)
        first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert first["expert_val_acc1"] == want
        flagged = sorted(d for d, a in want.items() if a >= threshold)
        assert sorted(w.split("'")[1] for w in result.warnings) == flagged
        assert first.get("warnings", []) == result.warnings
        assert read_bundle_header(bundle).extra.get("warnings", []) == result.warnings
        assert all("validation" in w and "--holdout" in w for w in result.warnings)
