"""The ``jedi`` command line. It only parses arguments and calls library functions; stage
packages are imported inside each command so ``jedi infer``/``jedi bench`` never load torch.
``infer`` and ``serve`` are defined in ``jedi_deploy.serve.cli`` (shared with the torch-free
``python -m jedi_deploy.serve.*`` entry points).

One module because it is the command table: each command only parses and calls one library function.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from jedi_deploy.common.cli import CONTEXT, EXISTING, JediGroup
from jedi_deploy.common.cli import progress as _progress
from jedi_deploy.contracts.config import (
    DISTILL_DATA,
    KD_LOSSES,
    TEACHER_INPUTS,
    JEDIConfig,
)
from jedi_deploy.models.devices import DEVICE_HELP

from .. import __version__
from ..export.quantize import METHODS as INT8_METHODS
from ..export.quantize import Int8Options
from ..serve.cli import infer, serve
from ..train.ablate import GRIDS  # the grid table itself (numpy and the config only: no torch)

device_option = click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)


def _optional_names(values: tuple[str, ...]) -> dict[str, str]:
    """``[NAME=]PATH`` values: ``{NAME: PATH}``, a bare PATH under the key "" (the only student)."""
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        out[name if sep else ""] = path if sep else v
    return out


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"expected NAME=PATH, got {v!r}", param_hint=option)
        out[name] = path
    return out


@click.group(cls=JediGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="jedi-deploy")
def cli():
    """jedi-deploy: JEDI (Joint Expert Distillation) from paper to production.

    \b
    Stages and the files between them:
      archs     -> the expert registry: architectures, checkpoint formats, upstream presets
      synth     -> DATA/<dataset>/{classes.txt, train.txt, test.txt, videos/}
      pretrain  -> EXPERT.safetensors            (one expert per dataset)
      import-expert -> EXPERT.safetensors        (a torchvision / MMAction2 / Hugging Face / state-dict checkpoint)
      cache     -> CACHE/<dataset>/<split>.safetensors
      train     -> RUN/jedi.safetensors + RUN/metrics.jsonl
      ablate    -> OUT/<scenario>/ runs + OUT/table3.md + plot   (the paper's Table 3)
      analyze   -> cka: OUT/cka.{md,png}                          (representation similarity)
      eval      -> Table-2 accuracies (markdown / JSON)
      export    -> OUT/<name>.student.onnx, OUT/<name>.expert.onnx, OUT/<dataset>.teacher.onnx
      infer     -> top-k labels of videos, folders, manifests -> JSONL/CSV (ONNX Runtime, no torch)
      serve     -> HTTP service with micro-batching and Prometheus metrics (no torch)
      bench     -> student vs initial-expert latency on every available runtime
      demo      -> all of the above on the built-in synthetic benchmark
    """


@cli.command()
def archs():
    """List the expert architectures in the registry, with each one's named upstream test protocols
    (--preset of `jedi import-expert`) and the resize kernel each uses."""
    import jedi_deploy.models.zoo  # noqa: F401 - registers the real architectures (the demo's are built in)
    from jedi_deploy.media.resize import resize_kernel
    from jedi_deploy.models.archs import ARCHS

    for name, e in sorted(ARCHS.items()):
        p = e.preprocess
        formats = ",".join(f for f in e.formats if f != "jedi-safetensors") or "-"
        click.echo(f"{name:<12} {e.family:<17} {p.num_frames:>2} frames ({p.sampling}), crop {p.crop:<3}  "
                   f"reads: {formats:<22} {e.description}")
        for preset, spec in e.presets.items():
            sets = "".join(f"; sets --arg {k}={v}" for k, v in spec.arch_kwargs.items())
            click.echo(f"{'':<14}--preset {preset}: {spec.upstream}{sets}; resize: {resize_kernel(spec.preprocess)} "
                       f"({spec.deviations})")


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write the datasets into.")
@click.option("--seed", default=0, show_default=True, help="Everything is a function of this seed.")
@click.option("--quick", is_flag=True, help="Smaller datasets (same 10x size ratio), for tests.")
def synth(out, seed, quick):
    """Write the built-in synthetic multi-dataset video benchmark (mp4 + MMAction2 lists)."""
    from jedi_deploy.media.synthetic import generate_benchmark

    for root in generate_benchmark(out, seed=seed, quick=quick, progress=_progress()):
        click.echo(str(root))


@cli.command()
@click.argument("dataset", type=EXISTING)
@click.option("--arch", required=True, help="Registry architecture (see `jedi archs`).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint to write (.safetensors).")
@click.option("--epochs", default=30, show_default=True, help="Training epochs of the expert.")
@click.option("--lr", default=3e-3, show_default=True, help="Learning rate (AdamW).")
@click.option("--seed", default=0, show_default=True, help="Seed of the initialisation and the shuffling.")
@click.option("--holdout", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Hold this share of every class of the training list out of pretraining (listed in "
                   "<out stem>.holdout.txt and the checkpoint): `jedi train` then validates on these videos, which "
                   "the expert never saw, instead of on videos it has memorised.")
@device_option
def pretrain(dataset, arch, out, epochs, lr, seed, holdout, device):
    """Train an initial expert on DATASET's training split (a folder with classes.txt)."""
    from jedi_deploy.media.datasets import load_dataset
    from jedi_deploy.models.archs import get_arch
    from jedi_deploy.train.pretrain import pretrain_expert

    get_arch(arch)
    path = pretrain_expert(load_dataset(dataset), arch, out, epochs=epochs, lr=lr, seed=seed, progress=_progress(),
                           device=device, holdout=holdout)
    click.echo(f"wrote {path}" + (f" (held out: {path.with_suffix('.holdout.txt')})" if holdout else ""))


@cli.command()
@click.option("--data", type=EXISTING, required=True,
              help="A dataset folder, or a folder of dataset folders (each with classes.txt).")
@click.option("--expert", "experts", type=EXISTING, multiple=True, required=True,
              help="Expert checkpoint; repeat once per expert.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Cache folder.")
@click.option("--split", "splits", multiple=True, help="Splits to cache (default: every list file).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True,
              help="How embeddings and logits are stored.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Encoders run under fp16/bf16 autocast: for GPUs (faster, half the memory). On a CPU without "
                   "native bf16 (e.g. AVX2 only) 3D convolutions run ~250x slower; see benchmarks/RESULTS.md.")
@device_option
@click.option("--batch-size", default=16, show_default=True, help="Videos per encoder call.")
@click.option("--workers", type=int, default=None,
              help="Decoding processes (default: one per spare core, at least 1; 0 = decode in-process).")
@click.option("--chunk-size", default=256, show_default=True,
              help="Videos per resumable chunk (written atomically under OUT/.parts).")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable video instead of skipping it.")
def cache(data, experts, out, splits, dtype, precision, device, batch_size, workers, chunk_size, strict):
    """Cache every expert's frozen-encoder embeddings and logits over every dataset's videos.

    Decoding runs in worker processes while the encoders run; finished chunks and shards are
    kept, so rerunning the same command after a crash resumes. Unreadable videos are skipped
    and listed in OUT/failures.jsonl (--strict stops instead). For several processes or nodes,
    launch the same command with torchrun (e.g. `torchrun --nproc-per-node 2 -m jedi_deploy
    cache ...`); ranks share OUT and rank 0 joins the result."""
    from jedi_deploy.media.datasets import discover_datasets
    from jedi_deploy.models.registry import load_expert
    from jedi_deploy.train.cache import build_cache

    summary = build_cache([load_expert(p) for p in experts], discover_datasets(data), out,
                         splits=tuple(splits) or None, batch_size=batch_size, dtype=dtype, progress=_progress(),
                         workers=workers, chunk_size=chunk_size, strict=strict, device=device, precision=precision,
                         log=lambda m: click.echo(m, err=True))
    for line in summary.lines():
        click.echo(line)
    for line in summary.warnings():
        click.echo(line, err=True)


@cli.command("import-expert")
@click.argument("checkpoint", type=EXISTING)
@click.option("--arch", required=True, help="Registry architecture (see `jedi archs`).")
@click.option("--dataset", required=True, help="Name of the dataset the expert was trained on.")
@click.option("--classes", type=EXISTING, help="Class-name file (one per line, in label order).")
@click.option("--name", help="Expert name (default: the checkpoint's file name).")
@click.option("--format", "fmt", type=click.Choice(["torchvision", "mmaction2", "state_dict"]),
              help="Checkpoint format (default: detected from the key names).")
@click.option("--preset", help="The upstream test protocol to reproduce, named after its config or weights "
                               "(listed by `jedi archs`), e.g. R3D_18_Weights.KINETICS400_V1.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Preprocessing field override, e.g. --set num_frames=16 --set crops=3.")
@click.option("--arg", "arch_args", multiple=True, metavar="KEY=VALUE",
              help="Architecture argument (generic: factory=pkg.mod:fn, head=ATTR (found if omitted), "
                   "layout=NCTHW|NTCHW; hf: head=ATTR).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Expert file to write (.safetensors).")
def import_expert(checkpoint, arch, dataset, classes, name, fmt, preset, overrides, arch_args, out):
    """Convert a torchvision / MMAction2 / plain state-dict CHECKPOINT (or a Hugging Face
    save_pretrained folder, --arch hf) into a jedi expert, checked by one forward pass.

    .pth files are read with torch.load(weights_only=True). The result is a self-describing
    safetensors file (architecture, classes, preprocessing, source sha256) for `jedi cache`."""
    from jedi_deploy.media.datasets import read_classes
    from jedi_deploy.models.importer import (
        import_checkpoint,
        parse_key_value,
        save_imported,
    )

    cats = read_classes(classes) if classes else None
    pre = dict(parse_key_value(o) for o in overrides)
    kwargs = dict(parse_key_value(o) for o in arch_args)
    expert, used = import_checkpoint(checkpoint, arch, dataset=dataset, name=name, categories=cats, fmt=fmt,
                                     arch_kwargs=kwargs, preset=preset, preprocess=pre)
    path = save_imported(expert, out, used)
    click.echo(f"wrote {path} ({arch}, {used} format, {expert.num_classes} classes, {expert.embed_dim}-d)")


def _config_options(f):
    """Options shared by `jedi train` and `jedi ablate`: a config file, the common knobs as
    flags, and KEY=VALUE for every other field (docs/ARCHITECTURE.md, "Training")."""
    d = JEDIConfig()
    opts = [
        click.option("--config", "config_file", type=EXISTING,
                     help="TOML or JSON file of JEDIConfig fields (flags and --set override it)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override any config field, e.g. --set kd_loss=cmpl --set pools='[\"k400\"]'."),
        click.option("--epochs", type=int, help=f"[{d.epochs}] Training epochs."),
        click.option("--burn-in", type=int, help=f"[{d.burn_in}] Epochs before the distillation terms switch on."),
        click.option("--lr", type=float, help=f"[{d.lr:g}] Learning rate."),
        click.option("--batch-size", type=int, help=f"[{d.batch_size}] Batch size (samples of all datasets mixed)."),
        click.option("--hidden", type=int, help=f"[{d.hidden}] Adjustment module hidden size."),
        click.option("--seed", type=int, help=f"[{d.seed}] Seed of init, splits, shuffling and dropout."),
        click.option("--teacher-input", type=click.Choice(TEACHER_INPUTS),
                     help=f"[{d.teacher_input}] What the teachers see."),
        click.option("--distill-data", type=click.Choice(DISTILL_DATA),
                     help=f"[{d.distill_data}] Which samples are distilled."),
        click.option("--kd-loss", type=click.Choice(KD_LOSSES),
                     help=f"[{d.kd_loss}] Distillation loss (cmpl = CMPL mode)."),
        click.option("--label-fraction", type=float,
                     help=f"[{d.label_fraction}] Class-balanced labeled fraction per dataset."),
        click.option("--val-fraction", type=float,
                     help=f"[{d.val_fraction}] Held out of each training set for validation."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _resolve(config_file, sets, **flags):
    from jedi_deploy.contracts.config import resolve_config

    return resolve_config(config_file, flags, sets)


@cli.command()
@click.option("--cache", "cache_dir", type=EXISTING, required=True, help="Cache folder from `jedi cache`.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Run folder: jedi.safetensors (last), best.safetensors, metrics.jsonl, config.json.")
@_config_options
@click.option("--resume", is_flag=True, help="Continue the stopped run in --out (same config).")
@click.option("--force", is_flag=True, help="Replace an existing run (or stopped run) in --out.")
@device_option
def train(cache_dir, out, resume, force, device, config_file, sets, **flags):
    """Train JEDI (adjustment modules, students, teachers) on a cache. Defaults are the paper's;
    every knob is a config field (file, flags, --set KEY=VALUE). The resolved config is saved in
    the bundle. A stopped run continues with --resume and ends with the same weights."""
    cfg = _resolve(config_file, sets, **flags)
    from jedi_deploy.train.cached import load_cache
    from jedi_deploy.train.jedi import train_to_dir

    result, bundle = train_to_dir(load_cache(cache_dir), out, cfg, force=force, resume=resume,
                                  progress=_progress(), device=device)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"wrote {bundle}" + (f" (best validation epoch {result.best_epoch}: {out / 'best.safetensors'})"
                                    if result.best_epoch is not None else ""))
    for d, r in result.history[-1]["eval"].items():
        click.echo(f"  {d}: student acc@1 {r['student']['acc1']:.2f}, teacher acc@1 {r['teacher']['acc1']:.2f}")


@cli.command()
@click.option("--cache", "cache_dir", type=EXISTING, required=True, help="Cache folder from `jedi cache`.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for one run per scenario, <grid>.md, <grid>.png and results.json.")
@click.option("--grid", type=click.Choice(sorted(GRIDS)), default="table3", show_default=True,
              help="table3 = the paper's Table 3; variants = losses/schemes; semi = CMPL label fractions.")
@click.option("--pool", help="Dataset used as the unlabeled pool (the paper's 'Just Kinetics'); its expert is "
                             "left out of every scenario, as the paper leaves Kinetics out of Table 3.")
@_config_options
@device_option
def ablate(cache_dir, out, grid, pool, device, config_file, sets, **flags):
    """Run a named grid of JEDI scenarios on one cache and write a Table-3-style table and plot.
    Finished scenarios are reused, so an interrupted ablation resumes."""
    base = _resolve(config_file, sets, **flags)
    from jedi_deploy.train.ablate import format_ablation, run_ablation
    from jedi_deploy.train.cached import load_cache

    report = run_ablation(load_cache(cache_dir), out, grid, base, pool=pool, progress=_progress(), echo=click.echo,
                          device=device)
    click.echo("\n" + format_ablation(report))
    click.echo(f"\ntable: {report['table']}\nplot: {report['plot']}")


@cli.group()
def analyze():
    """Analyses of a cache and of trained models."""


@analyze.command()
@click.option("--cache", "cache_dir", type=EXISTING, required=True, help="Cache folder from `jedi cache`.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for cka.md/.json/.png.")
@click.option("--bundle", type=EXISTING, help="Also compare the students' adjusted embeddings of this bundle.")
@click.option("--split", default="test", show_default=True, help="Samples: this split of every dataset.")
@click.option("--max-samples", default=20000, show_default=True, help="Random subset for large caches.")
@device_option
def cka(cache_dir, out, bundle, split, max_samples, device):
    """Linear CKA between every pair of experts' embeddings on the same samples: heatmap + table."""
    from jedi_deploy.train.cached import load_cache
    from jedi_deploy.train.cka import cka_matrix, collect_features, write_cka_report

    names, m = cka_matrix(collect_features(load_cache(cache_dir), split, bundle, max_samples, device))
    paths = write_cka_report(names, m, out, f"Linear CKA ({split} split)")
    click.echo(paths["table"].read_text())
    click.echo(f"heatmap: {paths['heatmap']}")


@cli.command(name="eval")
@click.option("--bundle", type=EXISTING, required=True, help="jedi.safetensors from `jedi train`.")
@click.option("--cache", "cache_dir", type=EXISTING, required=True, help="Cache built by the same experts.")
@click.option("--split", default="test", show_default=True, help="The cached split to evaluate on.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a markdown table.")
@device_option
def evaluate_cmd(bundle, cache_dir, split, as_json, device):
    """acc@1 / acc@5 / mAP of initial experts, JEDI students and teachers (paper's Table 2)."""
    from jedi_deploy.models.bundle import load_bundle
    from jedi_deploy.train.cached import load_cache
    from jedi_deploy.train.evaluate import evaluate, format_gains, format_table

    model, meta = load_bundle(bundle)
    table = evaluate(model, meta.experts, meta.datasets, load_cache(cache_dir), split, device=device)
    click.echo(json.dumps(table, indent=2) if as_json else format_table(table) + "\n\n" + format_gains(table))


@cli.command()
@click.option("--bundle", type=EXISTING, help="jedi.safetensors from `jedi train` (without it: --expert PATH).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the ONNX files.")
@click.option("--student", "students", multiple=True, help="Export only this student (repeatable).")
@click.option("--expert", "expert_paths", multiple=True, metavar="[NAME=]PATH",
              help="With --bundle: NAME=PATH uses this checkpoint for expert NAME instead of the path recorded in "
                   "the bundle. Without --bundle: PATH is an expert checkpoint (from `jedi import-expert` or "
                   "`jedi pretrain`) exported alone as <name>.expert.onnx, validated, servable (repeatable).")
@click.option("--no-experts", is_flag=True, help="Skip exporting the initial experts (the bench baseline).")
@click.option("--teacher", "teachers", multiple=True, metavar="DATASET",
              help="Also export DATASET's teacher ensemble (all encoders + adjustments + that teacher).")
@click.option("--clip", type=EXISTING, help="A video to validate on as well (decoded like at inference).")
@click.option("--uint8-input", is_flag=True, help="Input = decoded uint8 frames [B,T,H,W,3]; normalise in-graph.")
@click.option("--views", default=1, show_default=True, help="Average N views per video inside the graph.")
@click.option("--fp16", is_flag=True, help="fp16 weights and activations (fp32 inputs/outputs).")
@click.option("--simplify", is_flag=True, help="Simplify the graph with onnxslim (parity re-checked).")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True,
              help="torch.onnx exporter (dynamo needs onnxscript; TorchScript exports every registry entry).")
@click.option("--atol", type=float, default=None, help="Max abs logit difference vs PyTorch "
              "(default: 1e-4 fp32, 2e-2 fp16, plus a relative term).")
@click.option("--opset", default=17, show_default=True)
@click.option("--trt", is_flag=True, help="Also build a TensorRT engine per graph (needs tensorrt + a GPU; unverified).")
@click.option("--trt-batch", default="1,8,32", show_default=True, help="TensorRT profile MIN,OPT,MAX batch.")
@click.option("--trt-timing-cache", type=click.Path(path_type=Path), help="Timing cache file (read and updated).")
@click.option("--triton", type=click.Path(path_type=Path), help="Also write a Triton model repository here.")
@click.option("--triton-max-batch", default=8, show_default=True)
@click.option("--triton-instances", default=1, show_default=True)
@click.option("--force", is_flag=True, help="Replace existing Triton model folders.")
@click.option("--device", default="cpu", show_default=True,
              help="Where the PyTorch reference runs during validation: cpu, auto, cuda or cuda:N (graphs are traced "
                   "on the CPU; ONNX Runtime validates on the CPU).")
@click.option("--int8", is_flag=True, help="Also write <name>.student.int8.onnx: static INT8 quantization (ONNX Runtime "
              "QDQ, per-channel weights) calibrated on real decoded videos, behind an accuracy gate.")
@click.option("--calib-method", type=click.Choice(list(INT8_METHODS)), default=Int8Options.method, show_default=True,
              help="How activation ranges are calibrated.")
@click.option("--calib-videos", default=Int8Options.calib_videos, show_default=True,
              help="Calibration videos: a class-balanced sample of the student's training videos (from the "
                   "bundle's cache).")
@click.option("--calib-list", "calib_lists", multiple=True, metavar="[NAME=]LIST",
              help="Calibrate on these videos instead (a .txt/.csv list or a folder); NAME= picks the student.")
@click.option("--eval-list", "eval_lists", multiple=True, metavar="[NAME=]LIST",
              help="Labelled held-out videos for the gate (default: the dataset's test split from the cache).")
@click.option("--max-drop", default=Int8Options.max_drop, show_default=True,
              help="Largest acc@1 loss (points) the INT8 model may have against fp32.")
@click.option("--float-budget", default=Int8Options.float_budget, show_default=True,
              help="Most nodes the gate may keep in float (the most sensitive first) to pass.")
@click.option("--int8-activations", type=click.Choice(["uint8", "int8"]), default=Int8Options.activations,
              show_default=True, help="Activation type (uint8: ONNX Runtime's advice for x86 CPUs; int8: for "
                                      "TensorRT).")
@click.option("--int8-keep-slower", is_flag=True, help="Write the INT8 student even when it runs slower than its "
              "fp32 student here (by default the gate times both on ONNX Runtime's CPU provider and keeps fp32 "
              "when INT8 is slower, as tiny models often are).")
def export(bundle, out, **o):
    """Fuse encoder + adjustment + head into one ONNX graph per student (and export each
    initial expert the same way), validated with ONNX Runtime against PyTorch before it is
    written: a failed check writes nothing and exits 1. Optionally INT8 students, TensorRT
    engines and a Triton model repository.

    Without --bundle, `--expert EXPERT.safetensors` exports that expert alone (<name>.expert.onnx,
    card and validation), so an imported checkpoint can be served, benched and checked against
    its upstream before any training.

    With --int8, each student is quantized and evaluated against its fp32 model on labelled
    held-out videos (acc@1, acc@5, top-1 agreement, paired bootstrap 95% interval). If acc@1
    drops by more than --max-drop, the nodes reading the noisiest activations are kept in float
    (up to --float-budget); if it still fails, no INT8 file is written for that student, the
    table is printed and the exit status is 3. A student that passes is then timed against its
    fp32 model (ONNX Runtime CPU): when INT8 is slower, fp32 is kept and no INT8 file is written
    (--int8-keep-slower writes it anyway). The report, speed verdict included, is saved as
    <name>.student.int8.gate.json and shown by `jedi bench` and the demo's report.
    """
    from jedi_deploy.export.onnx import OnnxExportConfig
    from jedi_deploy.export.pipeline import ExportOptions, Int8Request, TritonOptions, TrtOptions, export_all
    from jedi_deploy.export.trt import parse_profile

    cfg = OnnxExportConfig(atol=o["atol"], opset=o["opset"], exporter=o["exporter"], uint8_input=o["uint8_input"],
                           views=o["views"], fp16=o["fp16"], simplify=o["simplify"], reference_device=o["device"])
    int8 = Int8Request(Int8Options(method=o["calib_method"], calib_videos=o["calib_videos"], max_drop=o["max_drop"],
                                   float_budget=o["float_budget"], activations=o["int8_activations"],
                                   keep_slower=o["int8_keep_slower"]),
                       _optional_names(o["calib_lists"]), _optional_names(o["eval_lists"])) if o["int8"] else None
    opts = ExportOptions(
        cfg, tuple(o["students"]), _pairs(o["expert_paths"], "--expert") if bundle else {}, not o["no_experts"],
        tuple(o["teachers"]),
        o["clip"], TrtOptions(parse_profile(o["trt_batch"]), o["trt_timing_cache"]) if o["trt"] else None,
        TritonOptions(o["triton"], o["triton_max_batch"], o["triton_instances"], o["force"]) if o["triton"] else None,
        int8)
    if bundle is None:  # bare experts: --expert PATH
        from jedi_deploy.export.pipeline import export_experts

        results = export_experts(list(o["expert_paths"]), out, opts, progress=_progress())
    else:
        results = export_all(bundle, out, opts, progress=_progress())
    for result in results:
        for line in result.lines():
            click.echo(line)


cli.add_command(infer)
cli.add_command(serve)


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected integers >= 1, got {text!r}", param_hint=option)
    return values


@cli.command()
@click.argument("model_dir", type=EXISTING)
@click.option("--bundle", type=EXISTING, help="The bundle MODEL_DIR was exported from: adds the torch eager "
              "runtimes (the same graphs in PyTorch) and the ORT-vs-torch speedup.")
@click.option("--expert", "experts", multiple=True, metavar="NAME=PATH",
              help="Expert checkpoint for --bundle if it moved (repeatable).")
@click.option("--runtimes", default="auto", show_default=True,
              help="Comma list of ort-cpu, ort-cuda, ort-tensorrt, openvino-cpu, openvino-bf16-cpu, torch-cpu, "
                   "torch-cuda, tensorrt; auto = every ONNX Runtime provider available, OpenVINO (f32) if installed, "
                   "plus torch-cpu/cuda with --bundle. Each row says the precision it ran in (openvino-bf16-cpu: "
                   "bfloat16 where the CPU has it). An <name>.student.int8.onnx beside a student is timed too "
                   "(ONNX runtimes).")
@click.option("--batch-sizes", default="1,8", show_default=True, help="Comma list of batch sizes.")
@click.option("--runs", default=200, show_default=True, help="Timed rounds per block (student, expert and the A/A "
              "copy each run once per round, in balanced orders).")
@click.option("--warmup", default=20, show_default=True, help="Untimed rounds before each block.")
@click.option("--threads", default=1, show_default=True, help="Intra-op threads of every runtime.")
@click.option("--out", type=click.Path(path_type=Path), help="Write bench.json, bench.md and bench.png here.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the figures as JSON here.")
def bench(model_dir, bundle, experts, runtimes, batch_sizes, runs, warmup, threads, out, json_out):
    """Latency of each <name>.student.onnx vs its <name>.expert.onnx in MODEL_DIR (and of each
    <dataset>.teacher.onnx vs that dataset's student: the teacher's cost of all n experts).

    Median/p90/p99 latency, throughput, the student/expert ratio and an A/A control (the
    expert against a second copy of itself: the noise floor of the ratio), on every runtime
    and batch size; on ONNX Runtime CPU also the profiled ratio (the student's time in the
    fold's nodes, from ORT's profiler, far less sensitive to machine noise). Runtime threads do
    not spin between runs (OMP_WAIT_POLICY=PASSIVE, ORT allow_spinning=0).
    """
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/ORT start their thread pools
    from jedi_deploy.contracts.header import write_json
    from jedi_deploy.serve.bench import (
        bench_models,
        discover_pairs,
        discover_teachers,
        format_bench,
        write_bench,
    )

    from .bench import resolve_runtimes

    wanted = None if runtimes == "auto" else [r.strip() for r in runtimes.split(",") if r.strip()]
    rts = resolve_runtimes(wanted, threads=threads, bundle=bundle, expert_paths=_pairs(experts, "--expert"))
    report = bench_models(discover_pairs(model_dir), rts, batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
                          runs=runs, warmup=warmup, progress=_progress(), teachers=discover_teachers(model_dir))
    click.echo(format_bench(report))
    if out:
        for path in write_bench(report, out):
            click.echo(f"wrote {path}", err=True)
    if json_out:
        write_json(json_out, report)


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Run folder (must not exist or be empty, unless --force).")
@click.option("--quick", is_flag=True, help="Small data and few epochs (about a minute; used by the tests).")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic data, the experts and JEDI.")
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
