"""jedi-deploy: JEDI (Joint Expert Distillation) from paper to production.

The core is built in floors (docs/ARCHITECTURE.md): :mod:`.contracts` (torch-free typed cards of
every file kind, errors, the pure-numpy preprocessing rules), :mod:`.media` (PyAV decoding,
datasets, the synthetic benchmark), :mod:`.runners` (one runner contract wherever a graph runs),
:mod:`.models` (torch: the expert registry and zoo, the JEDI model) and :mod:`.common` (the
command-line conventions, plots). The stages install inside the package:
:mod:`jedi_deploy.train`, :mod:`jedi_deploy.export`, :mod:`jedi_deploy.serve`; :mod:`.app` is the
CLI. Importing this package does not import torch: ``serve`` relies on that. The public API
below is loaded on first use (``jedi_deploy.load_expert`` etc.).
"""
from __future__ import annotations

import importlib

from .contracts.errors import JediError  # torch-free
from .contracts.header import PACKAGE_VERSION as __version__

_LAZY = {
    "load_expert": "models.registry", "save_expert": "models.registry", "build_expert": "models.archs",
    "register_arch": "models.archs", "ARCHS": "models.archs", "Expert": "models.registry",
    "JEDIConfig": "contracts.config", "JEDIModel": "models.jedi", "ExpertCard": "contracts.expert",
    "load_bundle": "models.bundle", "save_bundle": "models.bundle", "read_bundle_header": "contracts.bundle",
    "ModelCard": "contracts.model_card", "read_card": "contracts.model_card", "load_cache": "train.cached",
    "Preprocess": "contracts.preprocess", "load_clip": "media.decode", "decode_video": "media.decode",
    "generate_benchmark": "media.synthetic", "classification_metrics": "contracts.metrics",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'jedi_deploy' has no attribute {name!r}")


__all__ = ["JediError", "__version__", *_LAZY]
