"""The ablation table bolds a significant gain only, never merely the largest number."""
from jedi_deploy.train.ablate import format_ablation


def row(scenario, acc, gain, ci, verdict):
    cell = {"teacher": {"acc1": acc}, "student": {"acc1": acc}}
    g = {"gain": gain, "ci95": ci, "verdict": verdict}
    return {"section": "losses", "scenario": scenario, "eval": {"ucf": cell},
            "gains": {"ucf": {"teacher": g, "student": g}}}


def test_bold_marks_significant_gains_not_the_largest_number():
    report = {"datasets": ["ucf"], "split": "test", "initial_experts": {"ucf": 60.0},
              "rows": [row("a", 71.0, 11.0, [4.0, 18.0], "beats"),
                       row("b", 74.0, 14.0, [-2.0, 30.0], "within noise")]}  # larger, but not significant
    table = format_ablation(report).split("\n")
    a = next(x for x in table if x.startswith("| a |"))
    b = next(x for x in table if x.startswith("| b |"))
    assert "**71.00**" in a and "**" not in b.replace("**+14", "")
    assert "74.00" in b and "**74.00**" not in b
