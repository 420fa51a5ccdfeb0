"""Upstream parity figures for benchmarks/RESULTS.md: runs the upstream-parity tests
(tests/media/test_resize.py: pixels; tests/app/test_upstream_scores.py: scores through `jedi
import-expert` -> `jedi export` -> `jedi infer`) with their figure files switched on, then prints
the markdown tables (per model/rule set and clip: max |p_ours - p_upstream|, max uint8 level
difference of the inputs, whether frame indices and top-1 agree).

    python benchmarks/upstream_parity.py [--out parity/]     # ~6 min on 2 cores (installs MMAction2 in a temp folder)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from jedi_deploy.runners.timing import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def score_table(figures: dict) -> str:
    clips = list(dict.fromkeys(c for rows in figures.values() for c in rows))
    lines = ["| model (upstream) | " + " | ".join(clips) + " |", "|---|" + "---|" * len(clips)]
    for model, rows in figures.items():
        cells = []
        for c in clips:
            r = rows.get(c)
            if r is None:
                cells.append("-")
                continue
            cell = f"{r['max_score_diff']:.1e}"
            if r.get("max_levels") is not None:
                cell += f" / {r['max_levels']} lv"
            if r.get("indices_equal") is False or r.get("top1_equal") is False:
                cell += " **!**"
            cells.append(cell)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pixel_table(figures: dict) -> str:
    clips = list(dict.fromkeys(c for rows in figures.values() for c in rows))
    lines = ["| upstream code | " + " | ".join(clips) + " |", "|---|" + "---|" * len(clips)]
    for what, rows in figures.items():
        lines.append(f"| {what} | " + " | ".join(f"{rows[c]['max_levels']:g} / {rows[c]['mean_levels']:g}"
                                                  if c in rows else "-" for c in clips) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("parity"), help="folder for the figure files (JSON)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pixels, scores = (args.out / "pixels.json").resolve(), (args.out / "scores.json").resolve()
    env = {**os.environ, "JEDI_PARITY_JSON": str(pixels), "JEDI_SCORES_JSON": str(scores)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/media/test_resize.py",
                        "tests/app/test_upstream_scores.py"], cwd=ROOT, env=env)
    print(f"\nMachine: {cpu_name()}, {os.cpu_count()} cores; pytest exit status {r.returncode}\n")
    if pixels.is_file():
        print("Pixels (max / mean uint8 levels):\n\n" + pixel_table(json.loads(pixels.read_text())) + "\n")
    if scores.is_file():
        print("Scores (max |p_ours - p_upstream| over the classes / max uint8 level difference of the inputs; "
              "**!** = frame indices or top-1 differ):\n\n" + score_table(json.loads(scores.read_text())))
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
