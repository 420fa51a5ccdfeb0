"""Evaluation in the paper's Table 2 layout: initial experts, JEDI students, JEDI teachers,
acc@1 / acc@5 / mAP per dataset."""
from __future__ import annotations

from jedi_deploy.errors import CacheMismatchError
from jedi_deploy.metrics import classification_metrics

from jedi_deploy.cache_format import EXPERT_IDENTITY, Cache
from .data import eval_set
from .jedi import JEDIModel, evaluate_model

ROWS = ("expert", "student", "teacher")


def check_bundle_matches_cache(experts: list[dict], cache: Cache) -> None:
    """Every expert of a bundle must be in the cache, built from the same checkpoint."""
    have = {e["name"]: {k: e.get(k) for k in EXPERT_IDENTITY} for e in cache.experts}
    for e in experts:
        if have.get(e["name"]) != {k: e.get(k) for k in EXPERT_IDENTITY}:
            raise CacheMismatchError(
                "the cache was built for other experts than the bundle: bundle has "
                f"{[x['name'] + '@' + str(x['sha256'])[:8] for x in experts]}, cache has "
                f"{[x['name'] + '@' + str(x['sha256'])[:8] for x in cache.experts]}")


def evaluate(model: JEDIModel, experts: list[dict], datasets: list[str], cache: Cache, split: str = "test",
             device: str = "cpu") -> dict:
    """``{dataset: {"expert"|"student"|"teacher": {"acc1", "acc5", "mAP"}}}`` on ``split`` (the
    JEDI model runs on ``device``)."""
    from jedi_deploy.devices import resolve_device

    check_bundle_matches_cache(experts, cache)
    home = next(model.parameters()).device
    model.to(resolve_device(device))
    names = [e["name"] for e in experts]
    sets = {d: eval_set(cache, d, split, names) for d in datasets}
    table = evaluate_model(model, sets, datasets)
    model.to(home)
    for d, name in zip(datasets, names):
        s = cache.split(d, split)
        table[d]["expert"] = classification_metrics(s.logits[name].numpy(), s.labels.numpy())
    return {d: {r: table[d][r] for r in ROWS} for d in datasets}


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
