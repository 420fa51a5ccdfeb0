"""The one runner contract, after Polygraphy's runners and comparator.

A :class:`Runner` runs one graph: ``activate()`` (load / compile; idempotent), ``infer(feed) ->
{output name: array}`` (blocks until the result is on the host), ``deactivate()`` (free it);
it is also a context manager. When the runner knows the graph's :class:`ModelCard` (every ONNX
file jedi-deploy writes carries one), every feed is checked against it first - input names,
dtypes, per-sample shapes - so a wrong feed is one clear :class:`InputError`, whatever the
backend. Backends: ONNX Runtime (:mod:`.onnxruntime`), OpenVINO (:mod:`.openvino`), TensorRT
engines (:mod:`.tensorrt`, lazy) and torch modules (:mod:`.eager`, export and bench only).

:func:`compare` runs two runners on the same feeds and returns a report of every case, or
raises :class:`ToleranceError` (an :class:`ExportValidationError`) carrying that report: the
export validation, the TensorRT parity check and the INT8 checks are all this one call.

:class:`Runtime` names a way of opening runners on exported files (``jedi bench`` times each
runtime at hand on the same inputs).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jedi_deploy.contracts.errors import ExportValidationError
from jedi_deploy.contracts.model_card import Feed, ModelCard


class ToleranceError(ExportValidationError):
    """Two runners disagree beyond the tolerance on some feed; ``report`` holds every case."""


class Runner:
    """Base class: subclasses implement ``_activate``, ``_infer`` and ``_deactivate``."""

    #: What the runner is called in reports and messages ("ONNX Runtime", "PyTorch", ...).
    label = "runner"

    def __init__(self, card: ModelCard | None = None, name: str = ""):
        self.card, self.name, self.active = card, name, False
        self.info: dict = {}

    # ------------------------------------------------------------------ the contract
    def activate(self) -> "Runner":
        if not self.active:
            self._activate()
            self.active = True
        return self

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        """Outputs by name for ``feed`` (checked against the card when there is one)."""
        if not self.active:
            self.activate()
        if self.card is not None:
            feed = self.card.check_feed(feed, self.name or self.label)
        return self._infer(feed)

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # ------------------------------------------------------------------ backends
    def _activate(self) -> None:  # pragma: no cover - every backend overrides what it needs
        pass

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _deactivate(self) -> None:
        pass


#: |candidate - reference| <= atol + rtol * max|reference| per case, and the share of rows whose
#: top-1 (and top-5 set) must agree. fp16 graphs are compared with the fp32 reference.
TOLERANCES = {"fp32": {"atol": 1e-4, "rtol": 1e-4, "min_top1": 1.0, "min_top5": 1.0},
              "fp16": {"atol": 2e-2, "rtol": 2e-2, "min_top1": 0.9, "min_top5": 0.8},
              # a TensorRT int8 engine against ONNX Runtime running the same Q/DQ graph: both int8,
              # different kernels and rounding (accuracy itself is the --int8 gate's job)
              "int8": {"atol": 0.1, "rtol": 0.05, "min_top1": 0.9, "min_top5": 0.8}}


def compare_outputs(got: np.ndarray, want: np.ndarray, tol: dict, label: str, failures: list,
                    what: str = "reference") -> dict:
    """Figures of one case; appends a message per violated tolerance to ``failures``."""
    if got.shape != want.shape:
        failures.append(f"{label}: output shape {got.shape} != {what} {want.shape}")
        return {"input": label, "shape_ok": False}
    want = want.astype(np.float64)
    diff = np.abs(got.astype(np.float64) - want)
    scale = float(np.abs(want).max()) or 1.0
    max_abs, max_rel = float(diff.max()), float(diff.max() / scale)
    top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
    k = min(5, want.shape[-1])
    top5 = float(np.mean([set(a) == set(b) for a, b in zip(np.argsort(-got, -1)[:, :k], np.argsort(-want, -1)[:, :k])]))
    if max_abs > tol["atol"] + tol["rtol"] * scale:
        failures.append(f"{label}: max abs diff {max_abs:.3g} > {tol['atol']:g} + {tol['rtol']:g} x {scale:.3g}")
    if top1 < tol["min_top1"]:
        failures.append(f"{label}: top-1 agrees on {100 * top1:.0f}% of inputs (< {100 * tol['min_top1']:.0f}%)")
    if top5 < tol["min_top5"]:
        failures.append(f"{label}: top-5 sets agree on {100 * top5:.0f}% of inputs (< {100 * tol['min_top5']:.0f}%)")
    return {"input": label, "batch": int(want.shape[0]), "max_abs_diff": max_abs, "max_rel_diff": max_rel,
            "top1_agreement": top1, "top5_agreement": top5}


def compare(reference: Runner, candidate: Runner, feeds: Iterable[tuple[str, Feed]], tol: dict, *,
            output: str = "logits", what: str = "model") -> dict:
    """Run both runners on every ``(label, feed)`` and compare ``output``. Collects every
    failure (a candidate that cannot run a feed is one too), then raises one
    :class:`ToleranceError` naming ``what`` and carrying the report; returns the report."""
    failures, rows = [], []
    with reference, candidate:
        for label, feed in feeds:
            want = reference.infer(feed)[output]
            try:
                got = candidate.infer(feed)[output]
            except ExportValidationError:
                raise
            except Exception as e:  # the backends raise their own types
                failures.append(f"{label}: {candidate.label} failed ({str(e).splitlines()[0][:200] if str(e) else e!r})")
                continue
            rows.append(compare_outputs(got, want, tol, label, failures, reference.label))
    ok = [r for r in rows if "max_abs_diff" in r]
    n = sum(r["batch"] for r in ok)
    report = {"max_abs_diff": max((r["max_abs_diff"] for r in ok), default=None),
              "max_rel_diff": max((r["max_rel_diff"] for r in ok), default=None),
              "top1_agreement": sum(r["top1_agreement"] * r["batch"] for r in ok) / n if n else 0.0,
              "top5_agreement": sum(r["top5_agreement"] * r["batch"] for r in ok) / n if n else 0.0,
              "num_inputs": n, "cases": rows, "tolerance": dict(tol), "passed": not failures, "failures": failures,
              "reference": reference.label, "candidate": candidate.label}
    if failures:
        raise ToleranceError(f"{what}: {candidate.label} disagrees with {reference.label}: " + "; ".join(failures),
                             report)
    return report


def random_feeds(card: ModelCard, batch_sizes: Iterable[int], seed: int = 0) -> list[tuple[str, Feed]]:
    """``("random batch B", feed)`` for every batch size, from one seeded generator."""
    rng = np.random.default_rng(seed)
    return [(f"random batch {b}", card.dummy_feed(b, rng)) for b in batch_sizes]


def video_probs(runner: Runner, feeds: list[Feed]) -> list[np.ndarray]:
    """Class probabilities of several videos (one feed each, :meth:`ModelCard.feed_from_clips`),
    run as ONE batch and averaged per video over its views as the runner's card says."""
    card = runner.card
    if len(feeds) == 1:
        logits = runner.infer(feeds[0])[card.output]
    else:
        logits = runner.infer({k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})[card.output]
    bounds = np.cumsum([len(next(iter(f.values()))) for f in feeds])[:-1]
    return [card.video_probs(part, runner.name) for part in np.split(logits, bounds)]


@dataclass
class Runtime:
    """A way to run exported models: ``open(onnx_path)`` returns a :class:`Runner` for that file
    (``jedi bench`` times each runtime on the same feeds). ``info`` is reported (versions,
    device, threads); ``runs_onnx`` is False for a runtime that rebuilds the PyTorch twin of a
    file instead of running the file (it cannot run an INT8 student)."""

    name: str
    open: Callable[[Path], Runner]
    info: dict = field(default_factory=dict)
    runs_onnx: bool = True
