"""The INT8 accuracy-gate report: the contract between ``jedi export --int8`` (its only writer,
:mod:`jedi_deploy.export.quantize`) and the readers that show it (``jedi bench``, the demo's
``report.md``). Torch-free, so the serving side can read it.

File: ``<name>.student.int8.gate.json`` beside ``<name>.student.int8.onnx``. It records how the
model was calibrated, every attempt the gate made (all nodes quantized, then with the most
sensitive nodes kept in float), and the accepted attempt's comparison with the fp32 model on the
labelled held-out videos: acc@1, acc@5, top-1 agreement and the paired acc@1 difference with a
bootstrap 95% interval.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jedi_deploy.contracts.errors import InputError

GATE_KIND = "jedi-int8-gate"
GATE_FORMAT_VERSION = 1


def gate_path(int8_model: str | Path) -> Path:
    """``x.student.int8.onnx`` -> ``x.student.int8.gate.json``."""
    return Path(int8_model).with_suffix(".gate.json")


def int8_path(fp32_model: str | Path) -> Path:
    """``x.student.onnx`` -> ``x.student.int8.onnx``."""
    p = Path(fp32_model)
    return p.with_name(p.name.removesuffix(".onnx") + ".int8.onnx")


@dataclass
class Attempt:
    """One quantized candidate, evaluated against the fp32 model on the same videos."""

    float_nodes: list[str]  # nodes kept in float (empty: everything quantizable is int8)
    acc1: float  # int8 acc@1 / acc@5 (percent)
    acc5: float
    agreement: float  # percent of videos where int8's top-1 equals fp32's
    drop: float  # fp32 acc@1 - int8 acc@1 (points)
    ci95: list[float]  # bootstrap 95% interval of int8 - fp32 acc@1 (points), paired per video
    passed: bool


@dataclass
class GateReport:
    model: str  # the int8 file name (as it is, or would have been, written), beside this report
    # fp32_model: the fp32 file name it was quantized from, beside it too
    fp32_model: str
    max_drop: float  # the gate: fp32 acc@1 - int8 acc@1 <= max_drop (points)
    float_budget: int  # most nodes the gate may keep in float
    calibration: dict  # method, videos, source, activation/weight types, per_channel, reduce_range
    evaluation: dict  # source, videos, fp32 acc1/acc5
    attempts: list[Attempt] = field(default_factory=list)
    passed: bool = False
    seconds: float = 0.0
    # the passed INT8 model timed against its fp32 model on the target runtime (same input, interleaved
    # rounds): runtime, batch, fp32_ms, int8_ms, speedup (fp32 / int8), runs, kept ("int8" | "fp32")
    speed: dict = field(default_factory=dict)

    @property
    def kept(self) -> str:
        """Which model the export keeps: "int8", or "fp32" when the INT8 model passed the accuracy gate
        but was slower (and writing it anyway was not asked for)."""
        return self.speed.get("kept", "int8") if self.passed else "fp32"

    @property
    def final(self) -> Attempt | None:
        """The attempt that passed (else the last one tried)."""
        ok = [a for a in self.attempts if a.passed]
        return ok[0] if ok else (self.attempts[-1] if self.attempts else None)

    def to_dict(self) -> dict:
        return {"kind": GATE_KIND, "format_version": GATE_FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict, source: str = "gate report") -> "GateReport":
        if d.get("kind") != GATE_KIND:
            raise InputError(f"{source}: not an INT8 gate report (kind {d.get('kind')!r})")
        if int(d.get("format_version", 0)) > GATE_FORMAT_VERSION:
            raise InputError(f"{source}: gate report format {d['format_version']} is newer than this jedi-deploy "
                             f"reads ({GATE_FORMAT_VERSION}); upgrade jedi-deploy")
        try:
            return cls(d["model"], d["fp32_model"], float(d["max_drop"]), int(d["float_budget"]), dict(d["calibration"]),
                       dict(d["evaluation"]), [Attempt(**a) for a in d["attempts"]], bool(d["passed"]),
                       float(d.get("seconds", 0.0)), dict(d.get("speed") or {}))
        except (KeyError, TypeError) as e:
            raise InputError(f"{source}: gate report lacks or garbles field {e}") from None


def write_gate_report(report: GateReport, path: str | Path) -> Path:
    from jedi_deploy.contracts.header import write_json

    write_json(path, report.to_dict())
    return Path(path)


def read_gate_report(path: str | Path) -> GateReport:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"INT8 gate report not found: {path}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e})") from None
    return GateReport.from_dict(d, str(path))


def refusal(report: GateReport) -> str:
    """The message of a failed gate: what was refused, and the table."""
    kept = len(report.final.float_nodes) if report.final else 0
    return (f"{Path(report.fp32_model).name}: the INT8 model loses more than {report.max_drop:g} points of acc@1 "
            f"even with {kept} node(s) kept in float; no INT8 file written\n\n{format_gate(report)}")


def format_gate(report: GateReport) -> str:
    """Markdown: the fp32 reference, then one row per attempt."""
    ev, cal = report.evaluation, report.calibration
    lines = [f"INT8 gate for `{Path(report.fp32_model).name}`: {'PASSED' if report.passed else 'FAILED'} "
             f"(max acc@1 drop {report.max_drop:g} points; {ev['videos']} held-out videos from {ev['source']}; "
             f"calibrated with {cal['method']} on {cal['videos']} videos from {cal['source']})",
             "",
             "| model | nodes kept float | acc@1 | acc@5 | top-1 agreement | acc@1 int8 - fp32 | (95% CI) | gate |",
             "|---|---:|---:|---:|---:|---:|---|---|",
             f"| fp32 | - | {ev['acc1']:.2f} | {ev['acc5']:.2f} | - | - | - | - |"]
    for a in report.attempts:  # one sign everywhere: int8 - fp32 (negative = int8 worse)
        lines.append(f"| int8 | {len(a.float_nodes)} | {a.acc1:.2f} | {a.acc5:.2f} | {a.agreement:.1f}% | {-a.drop:+.2f} "
                     f"| [{a.ci95[0]:+.2f}, {a.ci95[1]:+.2f}] | {'pass' if a.passed else 'fail'} |")
    if report.speed:
        lines += ["", speed_verdict(report)]
    return "\n".join(lines)


def speed_verdict(report: GateReport) -> str:
    """One line: the INT8 model's speed against its fp32 model, and which one the export kept."""
    sp = report.speed
    head = (f"Speed on {sp['runtime']} (batch {sp['batch']}, {sp['runs']} interleaved rounds): fp32 "
            f"{sp['fp32_ms']:.3f} ms, int8 {sp['int8_ms']:.3f} ms = {sp['speedup']:.2f}x")
    if sp["speedup"] >= 1.0:
        return head + " - faster, int8 kept"
    if sp.get("kept") == "int8":
        return head + " - slower, int8 written anyway (--int8-keep-slower)"
    return head + " - slower, fp32 kept (no INT8 file written; --int8-keep-slower writes it)"
