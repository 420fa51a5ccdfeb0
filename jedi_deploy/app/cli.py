"""The ``jedi`` command line. It only parses arguments and calls library functions; stage
packages are imported inside each command so ``jedi infer``/``jedi bench`` never load torch."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .. import __version__
from ..errors import JediError

EXISTING = click.Path(exists=True, path_type=Path)


class JediGroup(click.Group):
    """Turns :class:`JediError` into ``error: <message>`` and a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except JediError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def _progress() -> bool:
    return sys.stderr.isatty()


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"expected NAME=PATH, got {v!r}", param_hint=option)
        out[name] = path
    return out


@click.group(cls=JediGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="jedi-deploy")
def cli():
    """jedi-deploy: JEDI (Joint Expert Distillation) from paper to production.

    \b
    Stages and the files between them:
      synth     -> DATA/<dataset>/{classes.txt, train.txt, test.txt, videos/}
      pretrain  -> EXPERT.safetensors            (one expert per dataset)
      cache     -> CACHE/<dataset>/<split>.safetensors
      train     -> RUN/jedi.safetensors + RUN/metrics.jsonl
      eval      -> Table-2 accuracies (markdown / JSON)
      export    -> OUT/<name>.student.onnx, OUT/<name>.expert.onnx (+ .validation.json)
      infer     -> top-k labels of videos (ONNX Runtime, no torch)
      bench     -> student vs initial-expert latency
      demo      -> all of the above on the built-in synthetic benchmark
    """


@cli.command()
def archs():
    """List the expert architectures in the registry."""
    from ..registry import ARCHS

    for name, e in sorted(ARCHS.items()):
        p = e.preprocess
        click.echo(f"{name:<12} {e.family:<11} {p.num_frames} frames ({p.sampling}), crop {p.crop}  "
                   f"{e.description}")


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write the datasets into.")
@click.option("--seed", default=0, show_default=True, help="Everything is a function of this seed.")
@click.option("--quick", is_flag=True, help="Smaller datasets (same 10x size ratio), for tests.")
def synth(out, seed, quick):
    """Write the built-in synthetic multi-dataset video benchmark (mp4 + MMAction2 lists)."""
    from ..synthetic import generate_benchmark

    for root in generate_benchmark(out, seed=seed, quick=quick, progress=_progress()):
        click.echo(str(root))


@cli.command()
@click.argument("dataset", type=EXISTING)
@click.option("--arch", required=True, help="Registry architecture (see `jedi archs`).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint to write (.safetensors).")
@click.option("--epochs", default=30, show_default=True)
@click.option("--lr", default=3e-3, show_default=True)
@click.option("--seed", default=0, show_default=True)
def pretrain(dataset, arch, out, epochs, lr, seed):
    """Train an initial expert on DATASET's training split (a folder with classes.txt)."""
    from train.pretrain import pretrain_expert

    from ..datasets import load_dataset
    from ..registry import get_arch

    get_arch(arch)
    path = pretrain_expert(load_dataset(dataset), arch, out, epochs=epochs, lr=lr, seed=seed, progress=_progress())
    click.echo(f"wrote {path}")


@cli.command()
@click.option("--data", type=EXISTING, required=True,
              help="A dataset folder, or a folder of dataset folders (each with classes.txt).")
@click.option("--expert", "experts", type=EXISTING, multiple=True, required=True,
              help="Expert checkpoint; repeat once per expert.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Cache folder.")
@click.option("--split", "splits", multiple=True, help="Splits to cache (default: every list file).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
def cache(data, experts, out, splits, dtype, batch_size):
    """Cache every expert's frozen-encoder embeddings and logits over every dataset's videos.

    Existing shards built by the same experts are kept, so an interrupted run resumes."""
    from train.cache import build_cache

    from ..datasets import discover_datasets
    from ..registry import load_expert

    shards = build_cache([load_expert(p) for p in experts], discover_datasets(data), out,
                         splits=tuple(splits) or None, batch_size=batch_size, dtype=dtype, progress=_progress())
    for s in shards:
        click.echo(str(s))


@cli.command()
@click.option("--cache", "cache_dir", type=EXISTING, required=True, help="Cache folder from `jedi cache`.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Run folder: jedi.safetensors and metrics.jsonl land here.")
@click.option("--epochs", default=500, show_default=True)
@click.option("--burn-in", default=25, show_default=True, help="Epochs before the KD terms switch on.")
@click.option("--lr", default=1e-5, show_default=True)
@click.option("--weight-decay", default=3e-3, show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--alpha", default=1.0, show_default=True, help="Weight of the students' CE.")
@click.option("--beta", default=1.0, show_default=True, help="Weight of the teachers' hinge loss.")
@click.option("--gamma", default=0.4, show_default=True, help="Weight of the KD terms.")
@click.option("--k", default=10.0, show_default=True, help="Teacher dropout rule p_i = max(0, 1 - k*C_i/D).")
@click.option("--temperature", default=1.0, show_default=True, help="KD temperature T.")
@click.option("--hidden", default=256, show_default=True, help="Adjustment module hidden size.")
@click.option("--adjust-dropout", default=0.75, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing RUN/jedi.safetensors.")
def train(cache_dir, out, force, **kw):
    """Train JEDI (adjustment modules, students, teachers) on a cache. Defaults are the paper's."""
    from train.cache import load_cache
    from train.jedi import train_to_dir

    from ..jedi_model import JEDIConfig

    cfg = JEDIConfig(**kw)
    result, bundle = train_to_dir(load_cache(cache_dir), out, cfg, force=force, progress=_progress(),
                                  extra={"cache": str(Path(cache_dir).resolve())})
    click.echo(f"wrote {bundle}")
    for d, r in result.history[-1]["eval"].items():
        click.echo(f"  {d}: student acc@1 {r['student']['acc1']:.2f}, teacher acc@1 {r['teacher']['acc1']:.2f}")


@cli.command(name="eval")
@click.option("--bundle", type=EXISTING, required=True, help="jedi.safetensors from `jedi train`.")
@click.option("--cache", "cache_dir", type=EXISTING, required=True, help="Cache built by the same experts.")
@click.option("--split", default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a markdown table.")
def evaluate_cmd(bundle, cache_dir, split, as_json):
    """acc@1 / acc@5 / mAP of initial experts, JEDI students and teachers (paper's Table 2)."""
    from train.cache import load_cache
    from train.evaluate import evaluate, format_table

    from ..bundle import load_bundle

    model, meta = load_bundle(bundle)
    table = evaluate(model, meta, load_cache(cache_dir), split)
    click.echo(json.dumps(table, indent=2) if as_json else format_table(table))


@cli.command()
@click.option("--bundle", type=EXISTING, required=True, help="jedi.safetensors from `jedi train`.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the ONNX files.")
@click.option("--student", "students", multiple=True, help="Export only this student (repeatable).")
@click.option("--expert", "expert_paths", multiple=True, metavar="NAME=PATH",
              help="Use this checkpoint for expert NAME instead of the path recorded in the bundle.")
@click.option("--no-experts", is_flag=True, help="Skip exporting the initial experts (the bench baseline).")
@click.option("--atol", default=1e-4, show_default=True, help="Max abs logit difference allowed vs PyTorch.")
@click.option("--opset", default=17, show_default=True)
def export(bundle, out, students, expert_paths, no_experts, atol, opset):
    """Fuse encoder + adjustment + head into one ONNX graph per student, validated with ONNX
    Runtime against PyTorch before it is written (a failed check writes nothing, exits 1)."""
    from export.onnx import OnnxExportConfig
    from export.students import export_bundle

    reports = export_bundle(bundle, out, students=list(students) or None,
                            expert_paths=_pairs(expert_paths, "--expert"), with_experts=not no_experts,
                            cfg=OnnxExportConfig(atol=atol, opset=opset), progress=_progress())
    for r in reports:
        click.echo(f"{r['path']}: max abs diff {r['max_abs_diff']:.2e}, top-1 agreement "
                   f"{100 * r['top1_agreement']:.0f}% on {r['num_inputs']} inputs")


@cli.command()
@click.argument("model", type=EXISTING)
@click.argument("videos", type=EXISTING, nargs=-1, required=True)
@click.option("--topk", default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per video.")
def infer(model, videos, topk, as_json):
    """Classify VIDEOS with an exported MODEL (ONNX Runtime; same as `python -m serve.infer`)."""
    from serve.infer import format_predictions, infer as run_infer

    click.echo(format_predictions(run_infer(model, list(videos), topk), as_json))


@cli.command()
@click.argument("model_dir", type=EXISTING)
@click.option("--batch-size", default=1, show_default=True)
@click.option("--runs", default=200, show_default=True, help="Timed runs per model (interleaved).")
@click.option("--warmup", default=20, show_default=True)
@click.option("--threads", default=1, show_default=True, help="ONNX Runtime intra-op threads.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the figures as JSON.")
def bench(model_dir, batch_size, runs, warmup, threads, json_out):
    """Latency of each <name>.student.onnx vs its <name>.expert.onnx in MODEL_DIR."""
    from serve.bench import bench_dir, format_bench

    from ..meta import write_json

    report = bench_dir(model_dir, batch_size=batch_size, runs=runs, warmup=warmup, threads=threads)
    click.echo(format_bench(report))
    if json_out:
        write_json(json_out, report)


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Run folder (must not exist or be empty, unless --force).")
@click.option("--quick", is_flag=True, help="Small data and few epochs (about a minute; used by the tests).")
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True,
              help="Replace the outputs of an earlier demo in --out (other files there are kept).")
def demo(out, quick, seed, force):
    """Run the whole pipeline on the built-in synthetic benchmark and write report.md."""
    from .demo import RUN_LAYOUT, DemoSettings, run_demo

    report = run_demo(out, DemoSettings.preset(quick, seed), force=force, progress=_progress(), echo=click.echo)
    click.echo(f"\nreport: {report}")
    for name, what in RUN_LAYOUT.items():
        click.echo(f"  {out / name}: {what}")


def main():
    cli(prog_name="jedi")


if __name__ == "__main__":
    main()
