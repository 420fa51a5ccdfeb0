"""Which final model should `jedi train` give: the validation protocols on the demo, over seeds, in ONE run.

    python benchmarks/validation_protocol.py [--seeds 0 1 2] [--full]

Per seed, the demo's pipeline (synthetic benchmark, experts pretrained with a 15% holdout, cache)
and then JEDI trained once with validation on the held-out videos, giving three candidate final
models from the same run, and once more for the paper's protocol:

* ``last``: the last epoch, trained on the 85% (the bundle `jedi train` writes without refit);
* ``best``: the epoch with the best validation acc@1 (``best.safetensors``);
* ``refit``: the paper's protocol - the epoch count validation picked, trained again from the same
  initialisation on the whole training set (``refit = true``).

Every candidate's students are scored on each dataset's test split; the test videos of every seed
and dataset are pooled (paired: the same videos for every candidate) and the acc@1 difference of
``refit`` and ``best`` against ``last`` gets a paired bootstrap 95% interval. Prints a markdown
table; the last line is one JSON object. (``--full``: the demo's full sizes, not ``--quick``.)
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from jedi_deploy.runners.timing import cpu_name


def correct(model, cache, datasets, names, split="test") -> dict[str, np.ndarray]:
    """Per dataset: whether each labelled test video's student top-1 is right."""
    model.eval()
    out = {}
    with torch.no_grad():
        for i, (d, n) in enumerate(zip(datasets, names)):
            s = cache.split(d, split)
            students, _ = model([s.emb[x].float() for x in names])
            keep = (s.labels >= 0).numpy()
            out[d] = students[i].numpy()[keep].argmax(1) == s.labels.numpy()[keep]
    return out


def run_seed(seed: int, quick: bool, work: Path) -> dict:
    from dataclasses import replace

    from jedi_deploy.app.demo import HOLDOUT, DemoSettings
    from jedi_deploy.contracts.config import JEDIConfig
    from jedi_deploy.media.datasets import discover_datasets
    from jedi_deploy.media.synthetic import benchmark_specs, generate_benchmark
    from jedi_deploy.models.bundle import load_bundle
    from jedi_deploy.models.registry import load_expert
    from jedi_deploy.train.cache import build_cache
    from jedi_deploy.train.cached import load_cache
    from jedi_deploy.train.jedi import train_to_dir
    from jedi_deploy.train.pretrain import pretrain_expert

    st = DemoSettings.preset(quick, seed)
    generate_benchmark(work / "data", seed=seed, quick=quick, progress=False)
    datasets = {d.name: d for d in discover_datasets(work / "data")}
    ckpts = [pretrain_expert(datasets[s.name], s.arch, work / "experts" / f"{s.name}.safetensors",
                             epochs=st.pretrain_epochs, seed=seed, progress=False, holdout=HOLDOUT)
             for s in benchmark_specs(quick)]
    build_cache([load_expert(p) for p in ckpts], list(datasets.values()), work / "cache", progress=False)
    cache = load_cache(work / "cache")
    cfg = JEDIConfig(epochs=st.jedi_epochs, burn_in=st.burn_in, lr=st.lr, batch_size=st.batch_size, seed=seed)
    result, bundle = train_to_dir(cache, work / "val", cfg, progress=False)
    _, refit_bundle = train_to_dir(cache, work / "refit", replace(cfg, refit=True), progress=False)
    names, ds = [e.name for e in result.experts], result.datasets
    out = {"best_epoch": result.best_epoch, "warnings": result.warnings, "data": result.data}
    for label, path in (("last", bundle), ("best", work / "val" / "best.safetensors"), ("refit", refit_bundle)):
        out[label] = {d: v.tolist() for d, v in correct(load_bundle(path)[0], cache, ds, names).items()}
    return out


def main() -> None:
    from jedi_deploy.contracts.metrics import paired_bootstrap

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--full", action="store_true", help="the demo's full sizes (default: --quick)")
    args = ap.parse_args()
    runs = {}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="protocol-") as tmp:
            runs[seed] = run_seed(seed, not args.full, Path(tmp))
    datasets = sorted(runs[args.seeds[0]]["last"])
    pooled = {k: np.concatenate([np.asarray(runs[s][k][d], bool) for s in args.seeds for d in datasets])
              for k in ("last", "best", "refit")}
    table = ["| final model | acc@1 (pooled test videos) | vs last: gain [95% CI] | per seed x dataset acc@1 |",
             "|---|---:|---|---|"]
    res = {"cpu": cpu_name(), "seeds": args.seeds, "quick": not args.full, "videos": int(len(pooled["last"])),
           "best_epochs": {s: runs[s]["best_epoch"] for s in args.seeds}}
    for k in ("last", "best", "refit"):
        acc = 100 * pooled[k].mean()
        cells = ", ".join(f"{100 * np.mean(runs[s][k][d]):.1f}" for s in args.seeds for d in datasets)
        if k == "last":
            table.append(f"| {k} | {acc:.2f} | - | {cells} |")
            res[k] = {"acc1": round(float(acc), 2)}
            continue
        g = paired_bootstrap(pooled[k], pooled["last"])
        table.append(f"| {k} | {acc:.2f} | {g['gain']:+.2f} [{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}] ({g['verdict']}) "
                     f"| {cells} |")
        res[k] = {"acc1": round(float(acc), 2), "vs_last": g}
    g = paired_bootstrap(pooled["refit"], pooled["best"])
    res["refit_vs_best"] = g
    print(f"CPU: {res['cpu']}; seeds {args.seeds}; {'quick' if res['quick'] else 'full'} demo; datasets {datasets}\n")
    print("\n".join(table))
    print(f"\nrefit vs best: {g['gain']:+.2f} [{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}] ({g['verdict']})")
    print("best epochs:", res["best_epochs"], "; warnings:", {s: runs[s]["warnings"] for s in args.seeds})
    print(json.dumps(res))


if __name__ == "__main__":
    main()
