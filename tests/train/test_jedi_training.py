import pytest

from jedi_deploy.errors import CacheMismatchError, ConfigError, InputError
from jedi_deploy.jedi_model import JEDIConfig
from train.evaluate import evaluate, format_table
from train.jedi import train_jedi


def test_students_start_as_the_initial_experts(trained, cache):
    first = trained.history[0]["eval"]
    for d in trained.datasets:
        name = cache.expert_for_dataset(d)["name"]
        s = cache.split(d, "test")
        from jedi_deploy.metrics import classification_metrics

        assert first[d]["student"] == classification_metrics(s.logits[name].numpy(), s.labels.numpy())


def test_history_logs_every_epoch_and_kd_after_burn_in(trained):
    h = trained.history
    assert [r["epoch"] for r in h] == list(range(trained.config.epochs + 1))
    assert [r["distill"] for r in h[1:]] == [e > trained.config.burn_in for e in range(1, trained.config.epochs + 1)]
    assert all(r["kd"] == 0 for r in h[1:trained.config.burn_in + 1]) and h[-1]["kd"] > 0


def test_training_fits_the_training_data(cache):
    cfg = JEDIConfig(epochs=25, burn_in=25, lr=3e-3, batch_size=64, hidden=16)
    result = train_jedi(cache, cfg, progress=False)
    assert result.history[-1]["loss"] < 0.6 * result.history[1]["loss"]


def test_jsonl_log_and_table(cache, trained, tmp_path):
    train_jedi(cache, JEDIConfig(epochs=1, burn_in=0, lr=1e-3, hidden=8), progress=False, log_path=tmp_path / "m.jsonl")
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2
    table = evaluate(trained.model, {"experts": trained.experts, "datasets": trained.datasets}, cache)
    md = format_table(table)
    assert md.count("\n") == 4 and "Initial experts" in md and "JEDI teachers" in md


def test_bad_cache_contents_are_clear_errors(cache):
    d = cache.experts[0]["dataset"]
    split = cache.splits[d]["train"]
    saved = split.labels.clone()
    try:
        split.labels[0] = 99
        with pytest.raises(InputError, match="label 99 outside"):
            train_jedi(cache, JEDIConfig(epochs=1), progress=False)
    finally:
        split.labels.copy_(saved)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        JEDIConfig(lr=0)
    with pytest.raises(ConfigError, match="unknown JEDI config fields"):
        JEDIConfig.from_dict({"lr": 1, "learning_rate": 2})


def test_eval_refuses_a_cache_of_other_experts(trained, cache):
    other = [dict(e, sha256="f" * 64) for e in trained.experts]
    with pytest.raises(CacheMismatchError, match="other experts"):
        evaluate(trained.model, {"experts": other, "datasets": trained.datasets}, cache)
