"""The JEDI training configuration: every knob of the method, its defaults (the paper's), its
validation, and how it is read from a TOML/JSON file plus ``key=value`` overrides.

Torch-free: the CLI validates a config before anything heavy is imported. The resolved
config travels inside every bundle and checkpoint (``JEDIConfig.to_dict``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from jedi_deploy.contracts.errors import ConfigError
from jedi_deploy.contracts.header import checked_fields

TEACHER_INPUTS = ("adjusted", "base", "predictions", "adjusted+predictions")
DISTILL_DATA = ("all", "own", "pool", "none")
SCHEMES = ("joint", "alternating")
TEACHER_LOSSES = ("hinge", "ce")
KD_LOSSES = ("soft", "mse", "hard", "cmpl")
OPTIMIZERS = ("adamw", "adam", "sgd")
PRECISIONS = ("fp32", "bf16")
HINGE_FORMS = ("mean", "sum", "crammer_singer")
KD_TARGETS = ("dropout", "eval")
EMBEDDING_DTYPES = ("float32", "float16", "bfloat16")

#: Fields that may differ when a run is resumed: they do not change the weights of the
#: epochs already trained (``epochs`` may be raised to extend a stopped run).
RUNTIME_FIELDS = ("epochs", "threads", "eval_every")


@dataclass
class JEDIConfig:
    """Hyperparameters and scenario switches; defaults are the paper's (section 4.4)."""

    # Eq. 1 loss weights; Eq. 4 teacher dropout p_i = max(0, 1 - k*C_i/D); KD temperature.
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 0.4
    k: float = 10.0
    temperature: float = 1.0
    # Adjustment modules: e' = e + Dropout(adjust_dropout)(W2 SiLU(W1 e)), hidden units.
    hidden: int = 256
    adjust_dropout: float = 0.75
    # Optimisation.
    burn_in: int = 25
    epochs: int = 500
    optimizer: str = "adamw"
    lr: float = 1e-5
    weight_decay: float = 3e-3
    momentum: float = 0.9  # sgd only
    batch_size: int = 256
    seed: int = 0
    # Ablation switches (paper's Table 3 and section 3.1).
    teacher_input: str = "adjusted"
    distill_data: str = "all"
    pools: list = field(default_factory=list)  # unlabeled pool datasets for distill_data="pool"
    scheme: str = "joint"
    alternate_every: int = 5  # epochs per phase of the alternating scheme
    teacher_loss: str = "hinge"
    kd_loss: str = "soft"
    tau: float = 0.9  # confidence threshold of hard pseudo-labels (kd_loss "hard"/"cmpl")
    lam: float = 2.0  # λ, weight of the CMPL pseudo-label losses (replaces γ in cmpl mode)
    weights: object = "paper"  # w_ij: "paper" (Eq. 2) or an n x n list of lists
    # Paper-faithfulness options (defaults: the behaviour of earlier releases).
    # hinge_form: Weston-Watkins sum over wrong classes divided by the class count ("mean", what
    # F.multi_margin_loss computes), the plain sum ("sum"), or Crammer-Singer's max ("crammer_singer").
    hinge_form: str = "mean"
    # kd_targets: the teachers' outputs that students distil from - as trained, with their input
    # dropout ("dropout"), or the same teachers without dropout ("eval").
    kd_targets: str = "dropout"
    # refit: after the run with the validation split, train again on the whole training set for
    # the epoch count validation picked (the paper's protocol); the refit model is the bundle.
    refit: bool = True  # benchmarks/RESULTS.md "Validation protocols": never worse per seed x dataset, +1.9 pooled
    # Data protocol.
    experts: list = field(default_factory=list)  # subset of the cache's experts; [] = all
    label_fraction: float = 1.0  # class-balanced labeled subset per dataset (CMPL protocol)
    val_fraction: float = 0.15  # held out of each training set (paper: 15%); 0 = none
    train_split: str = "train"
    eval_split: str = "test"
    # Storage of the cached embeddings while training (float16/bfloat16 halve the memory of a
    # paper-scale cache on a GPU; every step computes in float32).
    embedding_dtype: str = "float32"
    # Runtime.
    eval_every: int = 1
    precision: str = "fp32"
    threads: int = 0  # 0 = torch's default (one per physical core)

    def __post_init__(self):
        for name in ("alpha", "beta", "gamma", "weight_decay", "lam", "momentum"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("k", "temperature", "lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.adjust_dropout < 1:
            raise ConfigError(f"adjust_dropout must be in [0, 1), got {self.adjust_dropout}")
        for name in ("hidden", "epochs", "batch_size", "alternate_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("burn_in", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"tau must be in (0, 1], got {self.tau}")
        if not 0 < self.label_fraction <= 1:
            raise ConfigError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name, choices in (("teacher_input", TEACHER_INPUTS), ("distill_data", DISTILL_DATA),
                              ("scheme", SCHEMES), ("teacher_loss", TEACHER_LOSSES),
                              ("kd_loss", KD_LOSSES), ("optimizer", OPTIMIZERS), ("precision", PRECISIONS),
                              ("hinge_form", HINGE_FORMS), ("kd_targets", KD_TARGETS),
                              ("embedding_dtype", EMBEDDING_DTYPES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        if not isinstance(self.refit, bool):
            raise ConfigError(f"refit must be true or false, got {self.refit!r}")
        for name in ("pools", "experts"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"{name} must be a list of names, got {v!r}")
            setattr(self, name, list(v))
        w = self.weights
        if w != "paper":
            ok = isinstance(w, (list, tuple)) and w and all(isinstance(r, (list, tuple)) and len(r) == len(w) for r in w)
            if not ok or not all(isinstance(x, (int, float)) and x >= 0 for r in w for x in r):
                raise ConfigError(f'weights must be "paper" or a square list of lists of numbers >= 0, got {w!r}')
            self.weights = [[float(x) for x in r] for r in w]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JEDIConfig":
        return cls(**checked_fields(cls, d, "JEDI config"))

    def differences(self, other: "JEDIConfig", ignore=RUNTIME_FIELDS) -> dict:
        """{field: (self value, other value)} for every field that differs (except ``ignore``)."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}


def _field_types() -> dict[str, type]:
    return {f.name: type(f.default) if f.default is not dataclasses.MISSING else list
            for f in dataclasses.fields(JEDIConfig)}


def parse_override(text: str) -> tuple[str, object]:
    """``"key=value"`` -> (key, typed value). The type follows the field's default; lists and
    matrices are JSON (``pools=["kinetics-mini"]``, ``weights=[[1,0],[0,1]]``)."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    types = _field_types()
    if not sep or key not in types:
        raise ConfigError(f"bad override {text!r}: expected KEY=VALUE with KEY one of {sorted(types)}")
    raw = raw.strip()
    kind = types[key]
    try:
        if kind is bool:
            value = raw.lower() in ("1", "true", "yes", "on")
        elif kind in (int, float):
            value = kind(raw) if kind is float else int(raw)
        elif kind is list or key == "weights":
            value = json.loads(raw) if raw.startswith("[") else ([x for x in raw.split(",") if x] if kind is list else raw)
        else:
            value = raw
    except ValueError as e:
        raise ConfigError(f"bad override {text!r}: {e}") from None
    return key, value


def read_config_file(path: str | Path) -> dict:
    """Read a ``.toml`` or ``.json`` config (a flat table of JEDIConfig fields)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{p}: config files are .toml or .json")
    except ConfigError:
        raise
    except Exception as e:  # tomllib.TOMLDecodeError / json.JSONDecodeError
        raise ConfigError(f"{p}: cannot parse: {e}") from None
    if "jedi" in data and isinstance(data["jedi"], dict):  # allow a [jedi] table
        data = data["jedi"]
    unknown = set(data) - set(_field_types())
    if unknown:
        raise ConfigError(f"{p}: unknown fields {sorted(unknown)}; known: {sorted(_field_types())}")
    return data


def resolve_config(path: str | Path | None = None, overrides: dict | None = None,
                   sets: tuple[str, ...] | list[str] = ()) -> JEDIConfig:
    """Defaults <- config file <- ``overrides`` (from CLI flags) <- ``sets`` (``key=value``)."""
    d = read_config_file(path) if path else {}
    d.update({k: v for k, v in (overrides or {}).items() if v is not None})
    d.update(dict(parse_override(s) for s in sets))
    return JEDIConfig.from_dict(d)
