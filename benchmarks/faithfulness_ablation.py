"""The paper-faithfulness options of issue 16, ablated on one cache (default: the demo's), in ONE run:
the hinge form (mean / sum / crammer_singer), the KD targets (teachers with / without dropout) and
the final refit on the whole training set, each against today's defaults, over several seeds.

    python benchmarks/faithfulness_ablation.py CACHE [--seeds 0 1 2] [--epochs 150] [--burn-in 15] [--lr 1e-3]

Prints a markdown table of test acc@1 (mean ± sd over seeds) of every dataset's student and
teacher; the last line is one JSON object with the per-variant means.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.config import JEDIConfig
from jedi_deploy.train.cached import load_cache
from jedi_deploy.train.jedi import refit, train_jedi

VARIANTS = {"defaults (mean hinge, KD with dropout)": {}, "hinge sum": {"hinge_form": "sum"},
            "hinge crammer_singer": {"hinge_form": "crammer_singer"}, "KD targets without dropout": {"kd_targets": "eval"},
            "refit on the whole training set": {"refit": True}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--burn-in", type=int, default=15)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="run only these (default: all)")
    args = ap.parse_args()
    cache = load_cache(args.cache)
    base = JEDIConfig(epochs=args.epochs, burn_in=args.burn_in, lr=args.lr, batch_size=args.batch_size)
    rows, picked = {}, {}
    for name, change in VARIANTS.items():
        if args.variants and name not in args.variants:
            continue
        runs = []
        for seed in args.seeds:
            cfg = replace(base, seed=seed, **change)
            result = train_jedi(cache, cfg, progress=False)
            if cfg.refit:
                picked.setdefault(name, []).append(result.best_epoch)
                result = refit(cache, cfg, result)
            runs.append(result.history[-1]["eval"])
        rows[name] = {d: {r: (float(np.mean([x[d][r]["acc1"] for x in runs])), float(np.std([x[d][r]["acc1"]
                                                                                              for x in runs])))
                          for r in ("student", "teacher")} for d in runs[0]}
        print(f"{name}: done", file=sys.stderr, flush=True)
    datasets = list(next(iter(rows.values())))
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}; seeds {args.seeds}; "
          f"{args.epochs} epochs, burn-in {args.burn_in}, lr {args.lr}, batch {args.batch_size}\n")
    print("| variant | " + " | ".join(f"{d} student | {d} teacher" for d in datasets) + " |")
    print("|---|" + "---:|" * (2 * len(datasets)))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[d]['student'][0]:.1f} ± {r[d]['student'][1]:.1f} | "
                                          f"{r[d]['teacher'][0]:.1f} ± {r[d]['teacher'][1]:.1f}" for d in datasets)
              + " |")
    for name, epochs in picked.items():
        print(f"\n{name}: epoch counts picked by validation, per seed: {epochs}")
    print(json.dumps({name: {d: {k: round(v[0], 2) for k, v in r[d].items()} for d in datasets}
                      for name, r in rows.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
