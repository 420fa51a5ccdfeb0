"""Evaluation in the paper's Table 2 layout: initial experts, JEDI students, JEDI teachers,
acc@1 / acc@5 / mAP per dataset; and the comparison with error bars - each student's and teacher's
acc@1 gain over its initial expert with a paired bootstrap 95% interval over videos."""
from __future__ import annotations

import torch

from jedi_deploy.contracts.errors import CacheMismatchError
from jedi_deploy.contracts.expert import ExpertCard
from jedi_deploy.contracts.metrics import (
    CEILING,
    classification_metrics,
    paired_bootstrap,
)
from jedi_deploy.train.cached import Cache

from .data import eval_set
from .jedi import JEDIModel, evaluate_model

ROWS = ("expert", "student", "teacher")


def check_bundle_matches_cache(experts: list[ExpertCard], cache: Cache) -> None:
    """Every expert of a bundle must be in the cache, built from the same checkpoint."""
    have = {e.name: e.identity() for e in cache.experts}
    for e in experts:
        if have.get(e.name) != e.identity():
            raise CacheMismatchError(
                "the cache was built for other experts than the bundle: bundle has "
                f"{[x.name + '@' + str(x.sha256)[:8] for x in experts]}, cache has "
                f"{[x.name + '@' + str(x.sha256)[:8] for x in cache.experts]}")


def evaluate(model: JEDIModel, experts: list[ExpertCard], datasets: list[str], cache: Cache, split: str = "test",
             device: str = "cpu") -> dict:
    """``{dataset: {"expert"|"student"|"teacher": {"acc1", "acc5", "mAP"}}}`` on ``split`` (the
    JEDI model runs on ``device``)."""
    from jedi_deploy.models.devices import resolve_device

    check_bundle_matches_cache(experts, cache)
    home = next(model.parameters()).device
    model.to(resolve_device(device))
    names = [e.name for e in experts]
    sets = {d: eval_set(cache, d, split, names) for d in datasets}
    table = evaluate_model(model, sets, datasets)
    gains = paired_gains(model, sets, datasets, cache, names, split)
    model.to(home)
    for d, name in zip(datasets, names):
        s = cache.split(d, split)
        table[d]["expert"] = classification_metrics(s.logits[name].numpy(), s.labels.numpy())
    return {d: {**{r: table[d][r] for r in ROWS}, "gains": gains[d]} for d in datasets}


@torch.no_grad()
def paired_gains(model: JEDIModel, sets: dict, datasets: list[str], cache: Cache, names: list[str],
                 split: str) -> dict:
    """Per dataset: the student's and the teacher's acc@1 gain over the initial expert on the same
    labeled videos, with a paired bootstrap 95% interval and a verdict ("beats" only when the
    interval excludes 0), and whether the expert is already at the ceiling."""
    device = next(model.parameters()).device
    model.eval()
    out = {}
    for i, (d, name) in enumerate(zip(datasets, names)):
        s = sets[d]
        keep = s.labels >= 0
        if not keep.any():
            continue
        students, teachers = model([e.to(device).float() for e in s.embs])
        y = s.labels[keep].numpy()
        ok = {"student": students[i].cpu().numpy()[keep.numpy()].argmax(1) == y,
              "teacher": teachers[i].cpu().numpy()[keep.numpy()].argmax(1) == y,
              "expert": cache.split(d, split).logits[name].numpy()[keep.numpy()].argmax(1) == y}
        out[d] = {r: paired_bootstrap(ok[r], ok["expert"]) for r in ("student", "teacher")}
        out[d]["expert_at_ceiling"] = bool(100 * ok["expert"].mean() >= CEILING)
    return out


def format_gains(table: dict) -> str:
    """Markdown: every dataset's student and teacher gain over the initial expert with its interval."""
    lines = ["| Dataset | student gain (acc@1 points) | 95% interval | verdict | teacher gain | 95% interval | verdict "
             "| note |", "|---|---:|---|---|---:|---|---|---|"]
    for d, rows in table.items():
        g = rows.get("gains")
        if not g:
            continue
        cells = []
        for r in ("student", "teacher"):
            lo, hi = g[r]["ci95"]
            cells += [f"{g[r]['gain']:+.2f}", f"[{lo:+.2f}, {hi:+.2f}]", g[r]["verdict"]]
        note = "expert at the ceiling (>= 99%): no room to show a gain" if g["expert_at_ceiling"] else ""
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {note} |")
    return "\n".join(lines)


def format_table(table: dict, digits: int = 2) -> str:
    """Markdown in the paper's Table 2 layout (rows: models; column groups: datasets)."""
    datasets = list(table)
    head = "| Model | " + " | ".join(f"{d} acc@1 | {d} acc@5 | {d} mAP" for d in datasets) + " |"
    sep = "|---|" + "---:|" * (3 * len(datasets))
    labels = {"expert": "Initial experts", "student": "JEDI students", "teacher": "JEDI teachers"}
    lines = [head, sep]
    for r in ROWS:
        cells = []
        for d in datasets:
            best = max(table[d][x]["acc1"] for x in ROWS)
            for m in ("acc1", "acc5", "mAP"):
                v = f"{table[d][r][m]:.{digits}f}"
                cells.append(f"**{v}**" if m == "acc1" and table[d][r][m] == best else v)
        lines.append(f"| {labels[r]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
