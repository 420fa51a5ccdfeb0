"""jedi-deploy: JEDI (Joint Expert Distillation) from paper to production.

The core package holds the contracts every stage shares: typed errors, self-describing
files (:mod:`.meta`) and the three file contracts (:mod:`.cache_format`, :mod:`.bundle`,
:mod:`.model_card`), video decoding/preprocessing (:mod:`.video`), datasets, metrics, the
synthetic benchmark, the expert registry and the JEDI model. The stages install inside it:
:mod:`jedi_deploy.train`, :mod:`jedi_deploy.export`, :mod:`jedi_deploy.serve`. Importing this
package does not import torch: ``serve`` relies on that. The torch-based API is loaded on
first use (``jedi_deploy.load_expert`` etc.).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .errors import JediError  # noqa: E402  (torch-free)

_LAZY = {
    "load_expert": "registry", "save_expert": "registry", "build_expert": "registry",
    "register_arch": "registry", "ARCHS": "registry", "Expert": "registry",
    "JEDIConfig": "config", "JEDIModel": "jedi_model",
    "load_bundle": "bundle", "save_bundle": "bundle", "read_bundle_header": "bundle",
    "ModelCard": "model_card", "read_card": "model_card", "load_cache": "cache_format",
    "Preprocess": "video", "load_clip": "video", "decode_video": "video",
    "generate_benchmark": "synthetic", "classification_metrics": "metrics",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'jedi_deploy' has no attribute {name!r}")


__all__ = ["JediError", "__version__", *_LAZY]
