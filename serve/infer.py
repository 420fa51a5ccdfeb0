"""Classify videos with an exported jedi-deploy model, without torch.

    python -m jedi_deploy.serve.infer MODEL.onnx INPUT [INPUT ...] [--out preds.jsonl|preds.csv] [--topk 5]

An INPUT is a video file, a folder (searched recursively for video files) or a manifest: an
MMAction2-style ``.txt`` list (``path [label]`` per line) or a ``.csv`` with a ``path`` column
(and optionally ``label``), paths relative to the manifest's folder. Videos are decoded in
worker threads and run ``--batch-size`` at a time; a video that cannot be read gets an
``error`` record and the exit status is 1 once all others are done (``--strict``: stop at the
first). With labels, accuracy is reported.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.errors import InputError, VideoDecodeError
from jedi_deploy.contracts.metrics import label_ranks
from jedi_deploy.media.datasets import Item, collect_inputs

from .runtime import OnnxModel, Prediction

FORMATS = ("jsonl", "csv", "text")


def classify_items(model: OnnxModel, items: list[Item], *, topk: int = 5, batch_size: int = 8, workers: int = 2,
                   strict: bool = False, progress: bool = False) -> Iterator[dict]:
    """One record per item, in input order: ``{"video", "predictions", ["label"]}`` or
    ``{"video", "error"}``. Decoding runs ``workers`` videos ahead in threads; the model runs
    ``batch_size`` videos per call."""
    from tqdm import tqdm

    if batch_size < 1 or workers < 1:
        raise InputError(f"batch size and workers must be >= 1, got {batch_size} and {workers}")

    def prepare(item: Item):
        try:
            if item.error:
                raise VideoDecodeError(item.error)
            return model.prepare_video(item.path)
        except VideoDecodeError as e:
            if strict:
                raise
            return e

    bar = tqdm(total=len(items), unit="video", disable=not progress, desc="classifying")
    failed = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        window = max(2 * batch_size, workers)
        futures = [pool.submit(prepare, it) for it in items[:window]]
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            decoded = [f.result() for f in futures[:len(chunk)]]
            futures = futures[len(chunk):]
            nxt = start + window
            futures += [pool.submit(prepare, it) for it in items[nxt:nxt + len(chunk)]]
            good = [x.feed for x in decoded if not isinstance(x, Exception)]
            probs = iter(model.run_many(good)) if good else iter(())
            for item, x in zip(chunk, decoded):
                rec: dict = {"video": str(item.path)}
                if item.label is not None:
                    rec["label"] = item.label
                if isinstance(x, Exception):
                    rec["error"] = str(x)
                    failed += 1
                else:
                    p = next(probs)
                    rec["predictions"] = [q.__dict__ for q in model.top(p, topk)]
                    if x.warning:  # truncated or corrupt: sampled from the frames before the first error
                        rec["warning"] = x.warning
                    if item.label is not None:
                        rec["rank"] = int(label_ranks(p[None], [item.label])[0])
                yield rec
            bar.update(len(chunk))
            bar.set_postfix(failed=failed)
    bar.close()


def summarize(records: list[dict]) -> dict:
    """Counts, and acc@1/acc@5 over the videos that have a label and were read."""
    ranked = [r["rank"] for r in records if "rank" in r]
    errors = [r["error"] for r in records if "error" in r]
    out = {"videos": len(records), "failed": len(errors)}
    if errors:
        out["first_error"] = errors[0]
    partial = sum("warning" in r for r in records)
    if partial:  # truncated or corrupt files, predicted from the frames before the first error
        out["partial"] = partial
    if ranked:
        ranks = np.asarray(ranked)
        out.update(labeled=len(ranked), acc1=float((ranks <= 1).mean()), acc5=float((ranks <= 5).mean()))
    return out


def format_records(records: list[dict], fmt: str = "text") -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["video", "label", "top1", "top1_score", "topk_labels", "topk_scores", "error", "warning"])
        for r in records:
            preds = r.get("predictions", [])
            w.writerow([r["video"], r.get("label", ""), preds[0]["label"] if preds else "",
                        f"{preds[0]['score']:.6f}" if preds else "", ";".join(p["label"] for p in preds),
                        ";".join(f"{p['score']:.6f}" for p in preds), r.get("error", ""), r.get("warning", "")])
        return buf.getvalue()
    if fmt != "text":
        raise InputError(f"output format must be one of {FORMATS}, got {fmt!r}")
    lines = []
    for r in records:
        lines.append(r["video"])
        if "error" in r:
            lines.append(f"  error: {r['error']}")
        if "warning" in r:
            lines.append(f"  warning: {r['warning']}")
        lines += [f"  {i + 1}. {p['label']:<24} {p['score']:.4f}" for i, p in enumerate(r.get("predictions", []))]
    return "\n".join(lines) + "\n"


def output_format(out: Path | None, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise InputError(f"output format must be one of {FORMATS}, got {fmt!r}")
        return fmt
    if out is None:
        return "text"
    suffix = out.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "json", "ndjson"):
        return "jsonl"
    if suffix == "csv":
        return "csv"
    raise InputError(f"{out}: cannot tell the output format from the suffix; use .jsonl or .csv, or --format")


def run_infer(model_path: str | Path, inputs: list[str | Path], *, out: Path | None = None, fmt: str | None = None,
              topk: int = 5, batch_size: int = 8, workers: int = 2, strict: bool = False,
              providers: str | None = None, threads: int | None = None, runtime: str = "ort",
              progress: bool = False) -> tuple[str, dict]:
    """Classify every input; write the records to ``out`` (atomically) or return them as text.
    Returns ``(text for stdout, summary)``; the summary's ``runtime`` says what ran the model
    (for ``runtime="auto"``: the probe's pick, timings and skipped runtimes)."""
    if topk < 1:
        raise InputError(f"topk must be >= 1 label per video, got {topk}")
    from jedi_deploy.contracts.header import atomic_path, require_writable_dir

    fmt = output_format(out, fmt)
    if out is not None:
        require_writable_dir(Path(out).parent)
    items = collect_inputs(inputs)
    model = OnnxModel(model_path, providers=providers, threads=threads, runtime=runtime)
    records = list(classify_items(model, items, topk=topk, batch_size=batch_size, workers=workers, strict=strict,
                                  progress=progress))
    text = format_records(records, fmt)
    summary = {**summarize(records), "runtime": model.runtime_info}
    if out is None:
        return text, summary
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text)
    return "", summary


def infer(model_path: str | Path, videos: list[str | Path], topk: int = 5,
          threads: int | None = None) -> dict[str, list[Prediction]]:
    """``{video: [Prediction, ...]}`` for a few video files (raises on an unreadable one)."""
    model = OnnxModel(model_path, threads=threads)
    return {str(v): model.classify(v, topk) for v in videos}


def format_summary(summary: dict) -> str:
    text = f"{summary['videos']} video(s)"
    if summary["failed"]:
        text += f", {summary['failed']} unreadable (see their 'error' records)"
    if summary.get("partial"):
        text += f", {summary['partial']} truncated or corrupt (predicted from the frames before the error; " \
                "see their 'warning')"
    if "acc1" in summary:
        text += f"; {summary['labeled']} labeled: acc@1 {summary['acc1']:.4f}, acc@5 {summary['acc5']:.4f}"
    return text


if __name__ == "__main__":  # python -m jedi_deploy.serve.infer: the `jedi infer` command, without torch
    from jedi_deploy.serve.cli import infer as command

    command.main(prog_name="python -m jedi_deploy.serve.infer")
