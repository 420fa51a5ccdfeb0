"""`jedi train` configuration, `jedi ablate` and `jedi analyze cka` as a user runs them."""
import json

import pytest

from jedi_deploy.models.bundle import load_bundle
from support.cli import assert_clean_error, jedi

QUICK = ["--epochs", "3", "--burn-in", "1", "--lr", "1e-3", "--hidden", "16", "--batch-size", "32"]


def test_train_config_file_flags_and_set_are_layered_into_the_bundle(cache_dir, tmp_path):
    cfg = tmp_path / "jedi.toml"
    cfg.write_text('kd_loss = "hard"\ntau = 0.6\nepochs = 7\nlr = 0.01\n')
    out = jedi("train", "--cache", cache_dir, "--out", tmp_path / "run", "--config", cfg,
               "--epochs", "2", "--set", "lr=0.002", "--set", "weights=[[1,0,0],[0,1,0],[0,0,1]]", "--hidden", "8")
    assert out.returncode == 0, out.stderr
    meta = load_bundle(tmp_path / "run/jedi.safetensors")[1]
    c = meta.config.to_dict()
    assert (c["kd_loss"], c["tau"], c["epochs"], c["lr"], c["hidden"]) == ("hard", 0.6, 2, 0.002, 8)
    assert c["weights"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert json.loads((tmp_path / "run/config.json").read_text()) == c
    assert len((tmp_path / "run/metrics.jsonl").read_text().splitlines()) == 3


def test_train_config_errors_are_one_line(cache_dir, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rate = 1\n")
    assert_clean_error(jedi("train", "--cache", cache_dir, "--out", tmp_path / "r", "--config", bad),
                       "error:", "unknown fields ['learning_rate']")
    assert_clean_error(jedi("train", "--cache", cache_dir, "--out", tmp_path / "r", "--set", "kd_loss=fuzzy"),
                       "error:", "kd_loss must be one of")
    assert_clean_error(jedi("train", "--cache", cache_dir, "--out", tmp_path / "r", "--set", "nope=1"),
                       "error:", "bad override 'nope=1'")
    assert_clean_error(jedi("train", "--cache", cache_dir, "--out", tmp_path / "r", "--resume"),
                       "error:", "nothing to resume")
    assert not (tmp_path / "r" / "jedi.safetensors").exists()


def test_ablate_writes_the_table3_grid(cache_dir, tmp_path):
    out = jedi("ablate", "--cache", cache_dir, "--out", tmp_path, "--pool", "kinetics-mini", *QUICK, timeout=600)
    assert out.returncode == 0, out.stderr
    table = (tmp_path / "table3.md").read_text()
    for row in ("(Initial Expert)", "Predictions", "Base Features", "Adjusted Features",
                "Adjusted Features + Predictions", "No Distillation", "Single Dataset", "Just kinetics-mini",
                "All Datasets"):
        assert f"| {row} |" in table
    assert "ucf-mini Teacher" in table and "kinetics-mini Teacher" not in table  # the pool has no expert row
    # + the gains with intervals, + the last epochs' mean ± sd, read from each run's metrics.jsonl
    assert "paired bootstrap 95% interval" in table and table.count("| Adjusted Features | ") == 3
    results = json.loads((tmp_path / "results.json").read_text())
    row = next(r for r in results["rows"] if r["scenario"] == "Adjusted Features")
    log = [json.loads(x).get("eval") for x in (tmp_path / "adjusted_features" / "metrics.jsonl").read_text().splitlines()]
    want = [e["ucf-mini"]["student"]["acc1"] for e in log if e][-10:]
    got = row["last_epochs"]["ucf-mini"]["student"]
    assert got["epochs"] == len(want) and got["mean"] == pytest.approx(sum(want) / len(want))
    assert f"{got['mean']:.2f} ± {got['sd']:.2f}" in table
    assert (tmp_path / "table3.png").read_bytes()[:4] == b"\x89PNG"
    assert "same config as Adjusted Features, reused" in out.stdout
    again = jedi("ablate", "--cache", cache_dir, "--out", tmp_path, "--pool", "kinetics-mini", *QUICK)
    assert again.stdout.count("already trained") == 7  # every distinct scenario reused on a rerun


def test_analyze_cka(cache_dir, tmp_path):
    out = jedi("analyze", "cka", "--cache", cache_dir, "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "cka.png").exists() and "| ucf-mini |" in (tmp_path / "cka.md").read_text()
