"""``jedi ablate``: a named grid of JEDI scenarios on one cache, one run folder each, then a
Table-3-style markdown table (teacher / student acc@1 per dataset) and a bar plot.

Grids:
  * ``table3`` - the paper's Table 3: teacher input ∈ {predictions, base features, adjusted
    features, adjusted + predictions}; distillation data ∈ {none, single dataset, just the
    pool, all datasets}. As in the paper, the pool's own dataset (Kinetics there) is left out
    of the experts so that every row trains the same students;
  * ``variants`` - choices the paper names but does not tabulate: alternating training,
    cross-entropy teachers, MSE / hard pseudo-label distillation, CMPL;
  * ``semi`` - CMPL's protocol: 10% and 1% labeled data with soft KD and with CMPL.
Completed scenarios (same resolved config) are reused, so an interrupted ablation resumes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.config import JEDIConfig
from jedi_deploy.contracts.errors import ConfigError


@dataclass(frozen=True)
class Scenario:
    name: str
    section: str
    overrides: tuple = ()  # ((field, value), ...)


GRIDS: dict[str, tuple[Scenario, ...]] = {
    "table3": (
        Scenario("Predictions", "Input to ensembles", (("teacher_input", "predictions"),)),
        Scenario("Base Features", "Input to ensembles", (("teacher_input", "base"),)),
        Scenario("Adjusted Features", "Input to ensembles", (("teacher_input", "adjusted"),)),
        Scenario("Adjusted Features + Predictions", "Input to ensembles", (("teacher_input", "adjusted+predictions"),)),
        Scenario("No Distillation", "Distillation data", (("distill_data", "none"),)),
        Scenario("Single Dataset", "Distillation data", (("distill_data", "own"),)),
        Scenario("Just Pool", "Distillation data", (("distill_data", "pool"),)),
        Scenario("All Datasets", "Distillation data", (("distill_data", "all"),)),
    ),
    "variants": (
        Scenario("Joint (paper)", "Variants"),
        Scenario("Alternating", "Variants", (("scheme", "alternating"),)),
        Scenario("Cross-entropy teachers", "Variants", (("teacher_loss", "ce"),)),
        Scenario("MSE distillation", "Variants", (("kd_loss", "mse"),)),
        Scenario("Hard pseudo-labels", "Variants", (("kd_loss", "hard"),)),
        Scenario("CMPL", "Variants", (("kd_loss", "cmpl"),)),
    ),
    "semi": (
        Scenario("10% labels, soft KD", "Semi-supervised", (("label_fraction", 0.1),)),
        Scenario("10% labels, CMPL", "Semi-supervised", (("label_fraction", 0.1), ("kd_loss", "cmpl"))),
        Scenario("1% labels, soft KD", "Semi-supervised", (("label_fraction", 0.01),)),
        Scenario("1% labels, CMPL", "Semi-supervised", (("label_fraction", 0.01), ("kd_loss", "cmpl"), ("lam", 5.0))),
    ),
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def plan(grid: str, base: JEDIConfig, cache, pool: str | None
         ) -> tuple[list[tuple[Scenario, JEDIConfig]], list[str]]:
    """Resolve every scenario of ``grid`` against ``base`` (and the pool choice); returns the
    runnable scenarios and the names of those skipped (a pool row without a pool)."""
    if grid not in GRIDS:
        raise ConfigError(f"unknown grid {grid!r}; choose from {sorted(GRIDS)}")
    common = {}
    if pool is not None:
        if pool not in cache.splits:
            raise ConfigError(f"pool {pool!r} is not a dataset of the cache ({sorted(cache.splits)})")
        common = {"pools": [pool], "experts": [e.name for e in cache.experts if e.dataset != pool]}
    out, skipped = [], []
    for s in GRIDS[grid]:
        if dict(s.overrides).get("distill_data") == "pool" and pool is None:
            has_pool = any(d not in {e.dataset for e in cache.experts} for d in cache.splits)
            if not has_pool:
                skipped.append(s.name)
                continue  # no unlabeled pool in this cache: the row is skipped (and reported)
        name = s.name.replace("Pool", pool) if pool else s.name
        cfg = JEDIConfig.from_dict({**base.to_dict(), **common, **dict(s.overrides)})
        out.append((Scenario(name, s.section, s.overrides), cfg))
    return out, skipped


def run_ablation(cache, out_dir: str | Path, grid: str = "table3", base: JEDIConfig | None = None,
                 pool: str | None = None, progress: bool = True, echo=print, device: str = "cpu") -> dict:
    """Train every scenario into ``out_dir/<scenario>/`` on ``device`` and write the table and plot."""
    from jedi_deploy.contracts.header import write_json
    from jedi_deploy.contracts.metrics import classification_metrics
    from jedi_deploy.models.bundle import load_bundle

    from .evaluate import evaluate
    from .jedi import train_to_dir

    def gains(run: Path) -> dict:  # paired bootstrap intervals of the run's bundle, per dataset
        model, h = load_bundle(run / "jedi.safetensors")
        table = evaluate(model, h.experts, h.datasets, cache, base.eval_split, device=device)
        return {d: table[d]["gains"] for d in table}

    base = base or JEDIConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scenarios, skipped = plan(grid, base, cache, pool)
    rows, done = [], {}
    for i, (s, cfg) in enumerate(scenarios, 1):
        run = out / _slug(s.name)
        key = json.dumps(cfg.to_dict(), sort_keys=True)
        final = run / "final_eval.json"
        if key in done:  # e.g. "All Datasets" is "Adjusted Features": the paper's same run
            result = done[key]
            echo(f"[{i}/{len(scenarios)}] {s.name}: same config as {result['name']}, reused")
        elif final.exists() and (run / "config.json").exists() and \
                json.loads((run / "config.json").read_text()) == cfg.to_dict():
            result = {"name": s.name, "eval": json.loads(final.read_text()), "gains": gains(run)}
            echo(f"[{i}/{len(scenarios)}] {s.name}: already trained in {run}")
        else:
            echo(f"[{i}/{len(scenarios)}] {s.name}: training into {run}")
            r, _ = train_to_dir(cache, run, cfg, force=True, progress=progress, device=device)
            result = {"name": s.name, "eval": r.history[-1]["eval"], "gains": gains(run)}
        done.setdefault(key, result)
        rows.append({"scenario": s.name, "section": s.section, "run": str(run), "eval": result["eval"],
                     "gains": result["gains"], "last_epochs": last_epochs(run / "metrics.jsonl", LAST_EPOCHS),
                     "overrides": dict(s.overrides)})
    datasets = list(rows[0]["eval"]) if rows else []
    experts = {}
    for d in datasets:
        e = cache.expert_for_dataset(d)
        sp = cache.split(d, base.eval_split)
        experts[d] = classification_metrics(sp.logits[e.name].numpy(), sp.labels.numpy())["acc1"]
    report = {"grid": grid, "split": base.eval_split, "datasets": datasets, "initial_experts": experts,
              "rows": rows, "skipped": skipped}
    write_json(out / "results.json", report)
    md = out / f"{grid}.md"
    md.write_text(format_ablation(report) + "\n")
    plot_ablation(report, out / f"{grid}.png")
    report["table"], report["plot"] = str(md), str(out / f"{grid}.png")
    return report


#: Epochs whose test acc@1 gives the mean ± sd shown beside each run's last-epoch figure.
LAST_EPOCHS = 10


def last_epochs(log: Path, n: int = LAST_EPOCHS) -> dict:
    """``{dataset: {"student"|"teacher": {"mean", "sd", "epochs"}}}``: test acc@1 over the last ``n``
    logged epochs of a run (its ``metrics.jsonl``); empty when the log is missing."""
    if not log.is_file():
        return {}
    evals = [r["eval"] for r in map(json.loads, log.read_text().splitlines()) if r.get("eval")][-n:]
    out: dict = {}
    for d in (evals[-1] if evals else {}):
        for k in ("student", "teacher"):
            v = [e[d][k]["acc1"] for e in evals if d in e and k in e[d]]
            out.setdefault(d, {})[k] = {"mean": float(np.mean(v)), "sd": float(np.std(v)), "epochs": len(v)}
    return out


def format_ablation(report: dict) -> str:
    """Markdown in the paper's Table 3 layout. Bold marks a significant gain only - a cell whose paired
    interval against the initial expert excludes 0 (the gains table below) - never merely the largest
    number of a column, which on small evaluation sets is often noise."""
    ds = report["datasets"]
    head = "| Scenario | " + " | ".join(f"{d} Teacher | {d} Student" for d in ds) + " |"
    lines = [f"Top-1 accuracy (%) on the {report['split']!r} split; **bold** = a significant gain over the initial "
             "expert (paired 95% interval excludes 0).", "", head, "|---|" + "---:|" * (2 * len(ds)),
             "| (Initial Expert) | " + " | ".join(f"– | {report['initial_experts'][d]:.2f}" for d in ds) + " |"]
    sections: dict[str, list[dict]] = {}
    for r in report["rows"]:
        sections.setdefault(r["section"], []).append(r)
    for sec, rows in sections.items():
        lines.append(f"| *{sec}* |" + " |" * (2 * len(ds)))
        for r in rows:
            cells = []
            for d in ds:
                for k in ("teacher", "student"):
                    v = r["eval"][d][k]["acc1"]
                    beats = (r.get("gains") or {}).get(d, {}).get(k, {}).get("verdict") == "beats"
                    cells.append(f"**{v:.2f}**" if beats else f"{v:.2f}")
            lines.append(f"| {r['scenario']} | " + " | ".join(cells) + " |")
    if any(r.get("last_epochs") for r in report["rows"]):
        n = max(x["epochs"] for r in report["rows"] for d in r.get("last_epochs", {}).values() for x in d.values())
        lines += ["", f"Mean ± sd of acc@1 over each run's last {n} epochs (the table above shows the last epoch; "
                  "a difference smaller than these spreads is not a finding).", "", head,
                  "|---|" + "---:|" * (2 * len(ds))]
        for r in report["rows"]:
            le = r.get("last_epochs") or {}
            cells = [f"{le[d][k]['mean']:.2f} ± {le[d][k]['sd']:.2f}" if d in le and k in le[d] else "–"
                     for d in ds for k in ("teacher", "student")]
            lines.append(f"| {r['scenario']} | " + " | ".join(cells) + " |")
    if report.get("skipped"):
        lines += ["", f"Skipped (no unlabeled pool in the cache; pass --pool): {', '.join(report['skipped'])}."]
    if any(r.get("gains") for r in report["rows"]):
        lines += ["", "Gain over the initial expert in acc@1 points, with the paired bootstrap 95% interval over "
                  "videos; **bold** = beats the expert (the interval excludes 0), otherwise within noise (or worse).",
                  "", head, "|---|" + "---:|" * (2 * len(ds))]
        for r in report["rows"]:
            cells = []
            for d in ds:
                for k in ("teacher", "student"):
                    g = r["gains"].get(d, {}).get(k)
                    if g is None:
                        cells.append("–")
                        continue
                    text = f"{g['gain']:+.2f} [{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}]"
                    cells.append(f"**{text}**" if g["verdict"] == "beats" else text)
            lines.append(f"| {r['scenario']} | " + " | ".join(cells) + " |")
        ceiling = sorted({d for r in report["rows"] for d, g in r["gains"].items() if g.get("expert_at_ceiling")})
        if ceiling:
            lines += ["", f"Initial expert already at the ceiling (>= 99% acc@1), no gain can show: {', '.join(ceiling)}."]
    return "\n".join(lines)


def plot_ablation(report: dict, path: Path) -> Path:
    from jedi_deploy.common.plots import pyplot, save_figure

    plt = pyplot()

    ds, rows = report["datasets"], report["rows"]
    fig, axes = plt.subplots(1, len(ds), figsize=(5 * len(ds), 0.5 + 0.45 * len(rows) + 1.5), squeeze=False)
    for ax, d in zip(axes[0], ds):
        y = range(len(rows))
        ax.barh([i + 0.2 for i in y], [r["eval"][d]["teacher"]["acc1"] for r in rows], 0.4, label="teacher")
        ax.barh([i - 0.2 for i in y], [r["eval"][d]["student"]["acc1"] for r in rows], 0.4, label="student")
        ax.axvline(report["initial_experts"][d], color="k", ls="--", lw=1, label="initial expert")
        ax.set_yticks(list(y), [r["scenario"] for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("acc@1 (%)")
        ax.set_title(d)
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
