"""Comparisons with error bars: the paired bootstrap of an acc@1 gain, its verdict, and the report's
sentences - "beats" only when the 95% interval excludes 0."""
import numpy as np
import pytest

from jedi_deploy.app.report import verdicts
from jedi_deploy.contracts.metrics import paired_bootstrap, verdict


def test_paired_bootstrap_on_constructed_cases():
    base = np.array([True] * 24 + [False] * 24)
    same = paired_bootstrap(base, base)
    assert same["gain"] == 0 and same["ci95"] == [0.0, 0.0] and same["verdict"] == "within noise"
    one_more = base.copy()
    one_more[30] = True  # one of 48 videos: +2.08 points, an interval that includes 0
    r = paired_bootstrap(one_more, base)
    assert r["gain"] == pytest.approx(100 / 48) and r["ci95"][0] <= 0 < r["ci95"][1] and r["verdict"] == "within noise"
    many = base.copy()
    many[24:44] = True  # 20 of 48 videos fixed, none broken
    r = paired_bootstrap(many, base)
    assert r["ci95"][0] > 0 and r["verdict"] == "beats" and r["videos"] == 48
    assert paired_bootstrap(base, many)["verdict"] == "worse"
    assert paired_bootstrap(one_more, base) == paired_bootstrap(one_more, base)  # seeded
    assert verdict(0.1, 2.0) == "beats" and verdict(-0.1, 2.0) == "within noise" and verdict(-2.0, -0.1) == "worse"
    with pytest.raises(ValueError):
        paired_bootstrap(base, base[:10])


def test_report_says_within_noise_when_the_interval_includes_zero():
    base = np.array([True] * 24 + [False] * 24)
    one_more = base.copy()
    one_more[30] = True
    g = {"student": paired_bootstrap(one_more, base), "teacher": paired_bootstrap(base, base),
         "expert_at_ceiling": False}
    table = {"d": {"expert": {"acc1": 50.0}, "student": {"acc1": 52.08}, "teacher": {"acc1": 50.0}, "gains": g}}
    history = [{"epoch": e, "eval": {"d": {"student": {"acc1": 50.0 + e % 3}, "teacher": {"acc1": 50.0}}}}
               for e in range(20)]
    [line] = verdicts(table, history)
    assert "the student is within noise of its initial expert" in line and "beats" not in line
    assert "last 10 epochs" in line and "±" in line
    ceiling = {"d": {**table["d"], "gains": {**g, "expert_at_ceiling": True}}}
    assert "already at the ceiling" in verdicts(ceiling)[0]


def test_eval_reports_paired_intervals(trained, cache):
    from jedi_deploy.train.evaluate import evaluate, format_gains

    table = evaluate(trained.model, trained.experts, trained.datasets, cache)
    for d, rows in table.items():
        g = rows["gains"]
        for r in ("student", "teacher"):
            assert g[r]["gain"] == pytest.approx(rows[r]["acc1"] - rows["expert"]["acc1"], abs=1e-6)
            assert g[r]["ci95"][0] <= g[r]["gain"] <= g[r]["ci95"][1]
        assert g["expert_at_ceiling"] == (rows["expert"]["acc1"] >= 99)
    md = format_gains(table)
    assert md.count("\n") == 1 + len(table) and "95% interval" in md
