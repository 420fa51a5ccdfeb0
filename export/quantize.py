"""INT8 students behind an accuracy gate (``jedi export --int8``).

ONNX Runtime static post-training quantization (QDQ format, per-channel int8 weights),
calibrated on real decoded videos fed exactly as the fp32 model's card says (the same
:func:`jedi_deploy.media.decode.video_feed` that serving uses): by default a class-balanced sample of the
student's training videos, found through the bundle's cache; else ``--calib-list``.

The gate evaluates the fp32 and the int8 model on labelled held-out videos (by default the
dataset's test split from the cache; else ``--eval-list``): acc@1, acc@5, top-1 agreement and
the paired acc@1 difference with a bootstrap 95% interval. When acc@1 drops by more than
``max_drop`` points, ONNX Runtime's QDQ debugger measures every quantized activation's error
(signal-to-quantization-noise ratio between its float value and its int8 round trip) on a few
calibration inputs; the nodes reading the noisiest activations are kept in float - 1, 2, 4 ...
up to ``float_budget`` of them - each candidate re-quantized from the same cached calibration
ranges and re-evaluated. If none passes, nothing is written and
:class:`~jedi_deploy.contracts.errors.QuantizationGateError` carries the table.

A passed model is then timed against its fp32 model (:func:`time_int8`, ONNX Runtime's CPU
provider): when it is slower, fp32 is kept and only the report records the decision
(``keep_slower`` writes it anyway). Written on success: ``<name>.student.int8.onnx`` (card:
precision ``int8``, the calibration facts under ``extra["quantization"]``) and its report
``<name>.student.int8.gate.json`` (:mod:`jedi_deploy.contracts.gate`). The fp32 file is never
touched.

One module because calibration, the gate and the sensitive-node search are one loop over the same
decoded videos and calibration ranges.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.deps import require
from jedi_deploy.contracts.errors import InputError, JediError, QuantizationGateError
from jedi_deploy.contracts.gate import (
    Attempt,
    GateReport,
    gate_path,
    int8_path,
    refusal,
    write_gate_report,
)
from jedi_deploy.media.decode import video_feed
from jedi_deploy.runners.base import video_probs as batch_probs
from jedi_deploy.runners.onnxruntime import OrtRunner

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
ACTIVATIONS = {"uint8": "QUInt8", "int8": "QInt8"}


@dataclass(frozen=True)
class Int8Options:
    """How ``--int8`` quantizes and gates. ``reduce_range`` None: on when the exporting CPU lacks
    VNNI (ONNX Runtime's advice against int16 accumulator saturation there)."""

    method: str = "minmax"
    calib_videos: int = 32
    max_drop: float = 1.0
    float_budget: int = 8
    activations: str = "uint8"
    per_channel: bool = True
    reduce_range: bool | None = None
    eval_videos: int | None = None  # None: every held-out video
    sensitivity_inputs: int = 4
    seed: int = 0
    speed_runs: int = 40  # interleaved rounds timing the passed INT8 model against fp32 (0: not timed)
    keep_slower: bool = False  # write the INT8 model even when it is slower than fp32 here

    def resolved_reduce_range(self) -> bool:
        return (not has_vnni()) if self.reduce_range is None else self.reduce_range

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"calibration method {self.method!r}: choose from {', '.join(METHODS)}")
        if self.activations not in ACTIVATIONS:
            raise InputError(f"activation type {self.activations!r}: choose from {', '.join(ACTIVATIONS)}")
        if self.calib_videos < 1 or self.float_budget < 0 or (self.eval_videos is not None and self.eval_videos < 1):
            raise InputError("need calib videos >= 1, float budget >= 0 and eval videos >= 1")


@dataclass(frozen=True)
class VideoList:
    """Videos with labels (None: unlabelled) and where the list came from, for the report."""

    paths: list[Path]
    labels: list[int | None]
    source: str


def has_vnni() -> bool:
    """Whether this x86 CPU has a VNNI dot-product instruction (Linux ``/proc/cpuinfo``)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def balanced_sample(labels: list[int | None], n: int, seed: int = 0) -> list[int]:
    """Indices of ``n`` items, round-robin over the classes (each class shuffled with ``seed``),
    so every class is calibrated on before any class gets a second video."""
    rng = np.random.default_rng(seed)
    groups: dict = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    queues = [list(rng.permutation(g)) for _, g in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
    out = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(int(q.pop(0)))
    return sorted(out)


#: Decoded feeds kept in memory per list; past this a list is decoded again on each pass
#: (a held-out list of thousands of multi-view videos does not fit).
FEED_MEMORY_BYTES = 2 << 30


class DecodedList:
    """The readable videos of a list as ``model`` feeds them (its card's preprocessing), their
    labels, and the unreadable ones (``skipped``: ``{"path", "error"}``). Iterating yields the
    feeds in order: from memory when they fit in ``budget`` bytes, else decoded again."""

    def __init__(self, model, videos: VideoList, what: str, progress: bool = False, budget: int = FEED_MEMORY_BYTES):
        from tqdm.auto import tqdm

        self.model, self.what = model, what
        self.paths: list[Path] = []
        self.labels: list[int | None] = []
        self.skipped: list[dict] = []
        self._feeds: list[dict] | None = []
        size = 0
        for path, label in tqdm(list(zip(videos.paths, videos.labels)), desc=f"decoding {what} videos",
                                unit="video", disable=not progress, leave=False):
            try:
                feed = model.prepare(path)
            except JediError as e:
                self.skipped.append({"path": str(path), "error": str(e)})
                continue
            self.paths.append(Path(path))
            self.labels.append(label)
            if self._feeds is not None:
                size += sum(x.nbytes for x in feed.values())
                if size <= budget:
                    self._feeds.append(feed)
                else:  # too big to keep: every pass decodes again
                    self._feeds = None
        if not self.paths:
            first = self.skipped[0]["error"] if self.skipped else "the list is empty"
            raise InputError(f"no readable {what} video ({len(self.skipped)} unreadable; first: {first})")

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        if self._feeds is not None:
            return iter(self._feeds)
        return (self.model.prepare(p) for p in self.paths)

    def subset(self, keep: list[int]) -> "DecodedList":
        out = object.__new__(DecodedList)
        out.model, out.what, out.skipped = self.model, self.what, self.skipped
        out.paths, out.labels = [self.paths[i] for i in keep], [self.labels[i] for i in keep]
        out._feeds = None if self._feeds is None else [self._feeds[i] for i in keep]
        return out

    def head(self, n: int) -> list[dict]:
        return [f for f, _ in zip(self, range(n))]


class _Reader:
    """ONNX Runtime's CalibrationDataReader over decoded feeds (one video per call), with the
    ``__len__`` / ``set_range`` that its strided calibration reads windows through."""

    def __init__(self, feeds):
        self.feeds = feeds
        self.rewind()

    def __len__(self) -> int:
        return len(self.feeds)

    def rewind(self):
        self._it, self._pos, self._stop = iter(self.feeds), 0, None

    def set_range(self, start_index: int, end_index: int):
        if start_index < self._pos:
            self.rewind()
        while self._pos < start_index:
            next(self._it)
            self._pos += 1
        self._stop = end_index

    def get_next(self):
        if self._stop is not None and self._pos >= self._stop:
            return None
        feed = next(self._it, None)
        self._pos += feed is not None
        return feed

    def __iter__(self):
        self.rewind()
        return iter(lambda: self.get_next(), None)


class Graph:
    """A graph as the gate feeds it: its ONNX Runtime runner (CPU) and card; ``prepare(video)``
    is the video's feed as serving makes it."""

    def __init__(self, path: Path):
        self.runner = OrtRunner(path, providers="cpu")
        self.card = self.runner.card

    def prepare(self, video: str | Path) -> dict:
        return video_feed(self.card, video)[0]


def video_probs(path: Path, feeds, batch: int = 8) -> np.ndarray:
    """``[N, C]`` class probabilities of each decoded video under the model at ``path`` (ORT CPU);
    ``feeds`` is any iterable of feeds (a :class:`DecodedList` list streams)."""
    runner = OrtRunner(path, providers="cpu")
    probs, pending = [], []
    for feed in feeds:
        pending.append(feed)
        if len(pending) == batch:
            probs += batch_probs(runner, pending)
            pending = []
    if pending:
        probs += batch_probs(runner, pending)
    return np.stack(probs)


def compare(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray, float_nodes: list[str], max_drop: float) -> Attempt:
    from jedi_deploy.contracts.metrics import paired_bootstrap, topk_accuracy

    ok8, ok32 = int8.argmax(1) == labels, fp32.argmax(1) == labels
    diff = paired_bootstrap(ok8, ok32)
    acc1, acc32 = 100 * ok8.mean(), 100 * ok32.mean()
    return Attempt(float_nodes=list(float_nodes), acc1=float(acc1), acc5=100 * topk_accuracy(int8, labels, 5),
                   agreement=float(100 * (int8.argmax(1) == fp32.argmax(1)).mean()), drop=float(acc32 - acc1),
                   ci95=diff["ci95"], passed=bool(acc32 - acc1 <= max_drop + 1e-9))


def prepare_float(fp32: Path, out: Path) -> Path:
    """ONNX Runtime's pre-processing for quantization (shape inference, constant folding);
    the unprocessed graph when it fails (quantization still works, with fewer fusions)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet_root_logger():
            quant_pre_process(str(fp32), str(out), skip_symbolic_shape=False)
        return out
    except Exception:  # noqa: BLE001 - ORT's optimiser raises anything; the plain graph is a fine input
        return fp32


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantizer logs advice through the root logger (e.g. one line per
    non-constant Gemm bias, repeated per attempt); the report says what matters."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_once(float_path: Path, out: Path, feeds, opts: Int8Options, exclude: list[str],
                  ranges: Path) -> Path:
    """One static QDQ quantization; calibration ranges are computed once into ``ranges`` and reused."""
    q = require("onnxruntime.quantization")
    reduce_range = opts.resolved_reduce_range()
    with _quiet_root_logger():
        q.quantize_static(str(float_path), str(out), None if ranges.is_file() else _Reader(feeds),
                          quant_format=q.QuantFormat.QDQ, per_channel=opts.per_channel, reduce_range=reduce_range,
                          activation_type=getattr(q.QuantType, ACTIVATIONS[opts.activations]),
                          weight_type=q.QuantType.QInt8, nodes_to_exclude=list(exclude),
                          calibrate_method=getattr(q.CalibrationMethod, METHODS[opts.method]),
                          calibration_cache_path=str(ranges),
                          # calibrate one video at a time, merging ranges (histograms) as it goes: the
                          # calibrator keeps every intermediate tensor of the inputs it holds (tens of
                          # GB over a few Video Swin-B inputs). (CalibMaxIntermediateOutputs would
                          # drop data: ORT 1.32's min-max calibrator clears it without merging.)
                          extra_options={"CalibStridedMinMax": 1})
    return out


def centered_sqnr(before: np.ndarray, after: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB, the signal being the tensor's variation about
    its mean: a tensor with a large offset and small informative variations (which int8 erases,
    because its range must include 0) scores low, as it should, where plain SQNR scores high."""
    noise = float(np.mean((before - after) ** 2))
    signal = float(np.var(before))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-30) / noise))


def sensitive_nodes(float_path: Path, int8: Path, feeds: list[dict], work: Path) -> list[dict]:
    """Quantized nodes, noisiest first: for every activation with a Q/DQ round trip in ``int8``, its
    :func:`centered_sqnr` between the values before and after the round trip (collected with ONNX
    Runtime's ``qdq_loss_debug`` on ``feeds``); a node's score is the lowest among its inputs.
    ``[{"node", "tensor", "sqnr_db"}]``."""
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    aug_q = work / "int8.aug.onnx"
    dbg.modify_model_output_intermediate_tensors(str(int8), str(aug_q))
    matching = dbg.create_activation_matching(dbg.collect_activations(str(aug_q), _Reader(feeds)))
    graph = onnx.load(str(float_path), load_external_data=False).graph
    fused = fused_relus(graph, onnx.load(str(int8), load_external_data=False).graph)
    errors = {}
    for t, m in matching.items():
        before = np.concatenate([np.ravel(a) for a in m["pre_qdq"]])
        if t in fused:  # the quantizer folded this Relu into the Q/DQ range: its clamp is the model, not noise
            before = np.maximum(before, 0)
        errors[t] = centered_sqnr(before, np.concatenate([np.ravel(a) for a in m["post_qdq"]]))
    worst: dict[str, tuple[float, str]] = {}
    for node in graph.node:
        for t in node.input:
            if t in errors and (node.name not in worst or errors[t] < worst[node.name][0]):
                worst[node.name] = (errors[t], t)
    ranked = sorted(worst.items(), key=lambda kv: kv[1][0])
    return [{"node": n, "tensor": t, "sqnr_db": round(s, 2)} for n, (s, t) in ranked]


def time_int8(fp32: Path, int8: Path, feed: dict, runs: int) -> dict:
    """The INT8 model against its fp32 model on ONNX Runtime's CPU provider (the runtime ``jedi infer``
    and ``jedi serve`` use by default): one video's feed, interleaved rounds in balanced orders."""
    from jedi_deploy.runners.onnxruntime import OrtRunner
    from jedi_deploy.runners.timing import stats, time_block

    with OrtRunner(fp32, providers="cpu") as r32, OrtRunner(int8, providers="cpu") as r8:
        batch = len(next(iter(feed.values())))
        st = {k: stats(v, batch) for k, v in time_block({"fp32": lambda: r32.infer(feed), "int8": lambda: r8.infer(feed)},
                                                        warmup=5, runs=runs).items()}
    return {"runtime": "ort-cpu", "batch": batch, "runs": runs, "fp32_ms": st["fp32"]["median_ms"],
            "int8_ms": st["int8"]["median_ms"], "speedup": st["fp32"]["median_ms"] / st["int8"]["median_ms"]}


def fused_relus(float_graph, int8_graph) -> set[str]:
    """Outputs of the float graph's Relu nodes that the quantized graph no longer computes with a Relu:
    ONNX Runtime's quantizer folds a Relu into the preceding node's Q/DQ (a [0, max] range), so the
    debugger's value "before the round trip" there is the pre-Relu tensor, and its negatives, clamped
    by design, would read as quantization noise."""
    relu_out = {o for n in float_graph.node if n.op_type == "Relu" for o in n.output}
    still = {o for n in int8_graph.node if n.op_type == "Relu" for o in n.output}
    return relu_out - still


def _budget_steps(budget: int, available: int) -> list[int]:
    steps, k = [], 1
    cap = min(budget, available)
    while k < cap:
        steps.append(k)
        k *= 2
    return steps + [cap] if cap else steps


def quantize_student(fp32: str | Path, calib: VideoList, evaluation: VideoList, opts: Int8Options = Int8Options(),
                     *, progress: bool = False) -> GateReport:
    """Quantize ``fp32`` behind the accuracy gate (module docstring). Returns the passed report
    (files written) or raises :class:`QuantizationGateError` (nothing written)."""
    import onnx

    from jedi_deploy.contracts.header import atomic_path
    from jedi_deploy.contracts.metrics import topk_accuracy
    from jedi_deploy.contracts.model_card import embed_card
    t0 = time.perf_counter()
    fp32 = Path(fp32)
    model = Graph(fp32)
    if model.card.precision != "fp32":
        raise InputError(f"{fp32}: --int8 quantizes an fp32 export, this one is {model.card.precision}; "
                         "export without --fp16")
    if any(lab is None for lab in evaluation.labels):
        raise InputError(f"{evaluation.source}: the accuracy gate needs a label for every held-out video")
    out = int8_path(fp32)
    cal = DecodedList(model, calib, "calibration", progress)
    ev = DecodedList(model, evaluation, "held-out", progress)
    if opts.eval_videos is not None:
        ev = ev.subset(balanced_sample(ev.labels, opts.eval_videos, opts.seed))
    labels = np.asarray(ev.labels)
    reduce_range = opts.resolved_reduce_range()
    calibration = {"method": opts.method, "videos": len(cal), "source": calib.source,
                   "skipped": len(cal.skipped), "activations": opts.activations, "weights": "int8",
                   "per_channel": opts.per_channel, "reduce_range": reduce_range, "format": "QDQ",
                   "onnxruntime": require("onnxruntime").__version__}
    with tempfile.TemporaryDirectory(prefix=".jedi-int8-", dir=fp32.parent) as tmp:
        work = Path(tmp)
        float_path = prepare_float(fp32, work / "float.onnx")
        p32 = video_probs(fp32, ev)
        evaluation_info = {"source": evaluation.source, "videos": len(ev), "skipped": len(ev.skipped),
                           "acc1": float(100 * (p32.argmax(1) == labels).mean()),
                           "acc5": 100 * topk_accuracy(p32, labels, 5)}
        # file names, not paths: the report sits beside both files wherever they are moved
        report = GateReport(out.name, fp32.name, opts.max_drop, opts.float_budget, calibration, evaluation_info)
        ranges, candidate = work / "ranges.json", work / "int8.onnx"
        quantize_once(float_path, candidate, cal, opts, [], ranges)
        report.attempts.append(compare(p32, video_probs(candidate, ev), labels, [], opts.max_drop))
        if not report.attempts[-1].passed and opts.float_budget:
            ranked = sensitive_nodes(float_path, candidate, cal.head(opts.sensitivity_inputs), work)
            report.calibration["sensitive_nodes"] = ranked[:opts.float_budget]
            for k in _budget_steps(opts.float_budget, len(ranked) - 1):  # never all: that is the fp32 model
                keep_float = [r["node"] for r in ranked[:k]]
                quantize_once(float_path, candidate, cal, opts, keep_float, ranges)
                report.attempts.append(compare(p32, video_probs(candidate, ev), labels, keep_float,
                                               opts.max_drop))
                if report.attempts[-1].passed:
                    break
        report.passed = report.attempts[-1].passed
        if not report.passed:
            report.seconds = time.perf_counter() - t0
            raise QuantizationGateError(refusal(report), [report])
        if opts.speed_runs:
            report.speed = time_int8(fp32, candidate, ev.head(1)[0], opts.speed_runs)
            report.speed["kept"] = "int8" if report.speed["speedup"] >= 1.0 or opts.keep_slower else "fp32"
        report.seconds = time.perf_counter() - t0
        if report.kept == "fp32":  # it would cost more than it saves: only the decision is written
            write_gate_report(report, gate_path(out))
            return report
        final = onnx.load(str(candidate))
        facts = {**calibration, "float_nodes": report.final.float_nodes, "gate": gate_path(out).name,
                 "max_drop": opts.max_drop, "acc1_drop": report.final.drop}
        embed_card(final, dataclasses.replace(model.card, precision="int8",
                                              extra={**model.card.extra, "quantization": facts}))
        with atomic_path(out, ".onnx") as tmp_out:
            onnx.save(final, str(tmp_out))
        report.calibration["size_bytes"] = {"fp32": fp32.stat().st_size, "int8": out.stat().st_size}
        write_gate_report(report, gate_path(out))
    return report


def read_video_list(path: str | Path, what: str) -> VideoList:
    """A manifest (MMAction2 ``.txt`` or ``.csv``, paths relative to it) or a folder of videos."""
    from jedi_deploy.media.datasets import collect_inputs

    items = collect_inputs([path])
    bad = [it for it in items if it.error]
    if bad:
        raise InputError(f"{what} list {path}: {bad[0].error}")
    return VideoList([it.path for it in items], [it.label for it in items], str(path))


def default_lists(meta, name: str, opts: Int8Options, calib_list=None, eval_list=None) -> tuple[VideoList, VideoList]:
    """Calibration and held-out videos of student ``name``: the given lists, else the bundle's
    cache (a class-balanced sample of the dataset's training videos; its evaluation split)."""
    from jedi_deploy.contracts.cache import cached_videos

    dataset = meta.datasets[meta.expert_names.index(name)]
    cache = meta.cache
    need = [w for w, given in (("--calib-list", calib_list), ("--eval-list", eval_list)) if not given]
    if need and not cache:
        raise InputError(f"the bundle records no cache to take {dataset}'s videos from; pass {' and '.join(need)} "
                         f"{name}=LIST")
    if calib_list:
        pool = read_video_list(calib_list, "calibration")
    else:
        train = cached_videos(cache, dataset, "train")
        pool = VideoList(train.paths, train.labels, f"cache {dataset}/train")
    pick = balanced_sample(pool.labels, opts.calib_videos, opts.seed)
    calib = VideoList([pool.paths[i] for i in pick], [pool.labels[i] for i in pick],
                      f"{pool.source} (class-balanced sample)" if len(pick) < len(pool.paths) else pool.source)
    if eval_list:
        evaluation = read_video_list(eval_list, "held-out")
    else:
        split = meta.config.eval_split
        held = cached_videos(cache, dataset, split)
        evaluation = VideoList(held.paths, held.labels, f"cache {dataset}/{split}")
    return calib, evaluation


def quantize_exported(bundle: str | Path, out_dir: str | Path, names: list[str], opts: Int8Options = Int8Options(), *,
                      calib_lists: dict[str, str] | None = None, eval_lists: dict[str, str] | None = None,
                      progress: bool = False) -> list[GateReport]:
    """Quantize the exported ``<name>.student.onnx`` of each of ``names`` behind the gate; every
    student is tried. Returns every gate report; a failed one (``passed`` False) wrote nothing."""
    from jedi_deploy.contracts.bundle import read_bundle_header

    meta = read_bundle_header(bundle)
    calib_lists = per_student(calib_lists, names, "--calib-list")
    eval_lists = per_student(eval_lists, names, "--eval-list")
    reports = []
    for name in names:
        fp32 = Path(out_dir) / f"{name}.student.onnx"
        calib, evaluation = default_lists(meta, name, opts, calib_lists.get(name), eval_lists.get(name))
        try:
            reports.append(quantize_student(fp32, calib, evaluation, opts, progress=progress))
        except QuantizationGateError as e:
            reports += e.reports
    return reports


def per_student(lists: dict[str, str] | None, names: list[str], option: str) -> dict[str, str]:
    """``{"": path}`` (a bare PATH) applies to the only student; NAME=PATH to that student."""
    lists = dict(lists or {})
    if "" in lists:
        if len(names) != 1:
            raise InputError(f"{option} PATH without NAME= is ambiguous with {len(names)} students; "
                             f"write {option} NAME=PATH (students: {', '.join(names)})")
        lists[names[0]] = lists.pop("")
    unknown = sorted(set(lists) - set(names))
    if unknown:
        raise InputError(f"{option} names {unknown}, which are not exported here (students: {', '.join(names)})")
    return lists
