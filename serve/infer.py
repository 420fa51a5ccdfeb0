"""Classify videos with an exported jedi-deploy model, without torch.

    python -m serve.infer MODEL.onnx VIDEO.mp4 [VIDEO.mp4 ...] [--topk 5] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jedi_deploy.errors import JediError

from .runtime import OnnxModel, Prediction


def infer(model_path: str | Path, videos: list[str | Path], topk: int = 5,
          threads: int | None = None) -> dict[str, list[Prediction]]:
    model = OnnxModel(model_path, threads=threads)
    return {str(v): model.classify(v, topk) for v in videos}


def format_predictions(results: dict[str, list[Prediction]], as_json: bool = False) -> str:
    if as_json:
        return "\n".join(json.dumps({"video": v, "predictions": [p.__dict__ for p in preds]})
                         for v, preds in results.items())
    lines = []
    for v, preds in results.items():
        lines.append(v)
        lines += [f"  {i + 1}. {p.label:<24} {p.score:.4f}" for i, p in enumerate(preds)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serve.infer", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="ONNX file written by `jedi export`")
    ap.add_argument("videos", nargs="+", help="video files to classify")
    ap.add_argument("--topk", type=int, default=5, help="labels to print per video (default 5)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    args = ap.parse_args(argv)
    try:
        print(format_predictions(infer(args.model, args.videos, args.topk, args.threads), args.json))
    except JediError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
