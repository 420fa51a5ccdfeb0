"""Import torchvision where its compiled ops cannot load (the one place that handles it).

Why: torchvision's wheels carry a C++ extension (``_C.so``: nms, roi_align, deform_conv2d...)
built against one torch build. When torch is a *different* build of the same version - e.g.
the CPU wheel of torch 2.13.0 next to PyPI's torchvision 0.28.0, which is a CUDA build - the
extension fails to load, silently, and ``import torchvision`` then dies in
``torchvision/_meta_registrations.py`` with ``operator torchvision::nms does not exist``
(and so does every package that imports torchvision, e.g. transformers).

The video classification models (``torchvision.models.video``) are pure Python and need none
of those ops. :func:`import_torchvision` first tries a plain import; only if it fails with that
error does it define the *schemas* (not implementations) of the two ops torchvision registers
fake kernels for at import time, warns once that the compiled ops are unavailable, and imports
again. Calling the detection ops then raises torchvision's own "Couldn't load custom C++ ops"
error; nothing in jedi-deploy uses them. A working torchvision install is left untouched.

Use it before anything else imports torchvision::

    from jedi_deploy.models.tv_compat import import_torchvision
    torchvision = import_torchvision()
"""
from __future__ import annotations

import sys
import warnings

from jedi_deploy.contracts.errors import ConfigError

#: Ops whose fake (meta) kernels torchvision registers unconditionally at import time, with
#: their schemas as torchvision's C++ extension defines them (torchvision/csrc/ops/nms.cpp).
MISSING_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}

_LIBRARY = None  # keeps the schema definitions alive for the life of the process
COMPAT_WARNING = ("torchvision's compiled ops (nms, roi_align, deform_conv2d, ...) are unavailable: its C++ "
                  "extension does not match this torch build. jedi-deploy defined the missing op schemas so "
                  "that torchvision imports; the video models work, the detection ops do not.")


def _op_exists(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _forget_torchvision() -> None:
    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod]


def define_missing_schemas() -> list[str]:
    """Define the schemas of :data:`MISSING_OP_SCHEMAS` that do not exist; returns their names."""
    global _LIBRARY
    import torch

    missing = [n for n in MISSING_OP_SCHEMAS if not _op_exists(n)]
    if missing:
        if _LIBRARY is None:
            _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            _LIBRARY.define(MISSING_OP_SCHEMAS[name])
    return missing


def import_torchvision():
    """``import torchvision``, working around a torchvision whose compiled ops do not load."""
    try:
        import torchvision

        return torchvision
    except ModuleNotFoundError:
        raise ConfigError("this architecture needs torchvision: pip install torchvision "
                          "(the version that pairs with your torch, e.g. torchvision==0.28.0 for torch 2.13.0)") from None
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    _forget_torchvision()  # drop the half-imported modules before trying again
    define_missing_schemas()
    warnings.warn(COMPAT_WARNING, RuntimeWarning, stacklevel=2)
    import torchvision

    return torchvision


def compiled_ops_available() -> bool:
    """Whether torchvision's C++ extension is loaded (False under the compatibility step)."""
    tv = import_torchvision()
    return bool(tv.extension._has_ops())
