from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path

from torch import nn

from jedi_deploy.contracts.errors import ConfigError
from jedi_deploy.models.zoo.common import (
    HeadlessEncoder,
    _get,
    _tv_models,
    head_features,
)

# ------------------------------------------------------------------------------- generic
#: Folders :func:`resolve_factory` also looks in (besides the recorded ``factory_path``), e.g. the
#: expert file's folder while :func:`jedi_deploy.models.registry.load_expert` builds it (:func:`factory_search`).
FACTORY_SEARCH: list[str] = []


@contextlib.contextmanager
def factory_search(*folders):
    """Let :func:`resolve_factory` also look in ``folders`` for the duration."""
    added = [str(f) for f in folders if f]
    FACTORY_SEARCH.extend(added)
    try:
        yield
    finally:
        for f in added:
            FACTORY_SEARCH.remove(f)


def _import_from(mod: str, folders: list[str]):
    """Import ``mod`` from the normal path, else from the first of ``folders`` that has it (which then
    stays on ``sys.path``, as a script's folder does)."""
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name is None or mod.split(".")[0] != e.name.split(".")[0]:
            raise  # the module exists but one of ITS imports is missing
    for folder in folders:
        top = Path(folder) / mod.split(".")[0]
        if top.is_dir() or top.with_suffix(".py").is_file():
            sys.path.insert(0, folder)
            importlib.invalidate_caches()
            return importlib.import_module(mod)
    return None


def module_root(module) -> str:
    """The ``sys.path`` folder ``module`` was imported from (recorded as ``factory_path``)."""
    depth = module.__name__.count(".") + (1 if Path(module.__file__).name == "__init__.py" else 0)
    return str(Path(module.__file__).resolve().parents[depth])


def resolve_factory(spec: str, factory_path: str = ""):
    """The callable ``package.module:callable``, imported from the normal path, the recorded
    ``factory_path``, :data:`FACTORY_SEARCH` or the current folder."""
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise ConfigError(f"factory must be 'package.module:callable', got {spec!r}")
    if mod.split(".")[0] == "torchvision":
        _tv_models()  # through the compatibility step (tv_compat)
    folders = [f for f in (factory_path, *FACTORY_SEARCH, os.getcwd()) if f]
    try:
        obj = _import_from(mod, folders)
    except Exception as e:
        raise ConfigError(f"factory {spec!r}: importing {mod!r} failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if obj is None:
        raise ConfigError(f"factory {spec!r}: cannot import {mod!r}; looked on PYTHONPATH and in "
                          f"{', '.join(dict.fromkeys(folders))}. Put its package in one of those folders or "
                          "add its folder to PYTHONPATH")
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"factory {spec!r}: {mod!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"factory {spec!r} is not callable")
    return obj


#: Where classifiers usually keep their final linear layer, tried in order when no head is given.
HEAD_NAMES = ("fc", "classifier", "head", "classifier.1", "head.1", "fc_cls", "cls_head.fc_cls", "classifier.fc")


def find_head(net: nn.Module, where: str) -> str:
    """The attribute path of ``net``'s final linear layer: the first of :data:`HEAD_NAMES` that is an
    ``nn.Linear``/1x1 conv, else the last ``nn.Linear`` in the module tree."""
    for name in HEAD_NAMES:
        try:
            head_features(_get(net, name), name)
            return name
        except (AttributeError, IndexError, TypeError, ConfigError):
            continue
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{where}: the model has no nn.Linear to use as the head; pass --arg head=ATTRIBUTE")
    return linears[-1]


def build_generic_encoder(factory: str = "", head: str = "", factory_kwargs: dict | None = None,
                          layout: str = "NCTHW", factory_path: str = "") -> HeadlessEncoder:
    if layout not in ("NCTHW", "NTCHW"):
        raise ConfigError(f"layout must be NCTHW or NTCHW, got {layout!r}")
    net = resolve_factory(factory, factory_path)(**(factory_kwargs or {}))
    if not isinstance(net, nn.Module):
        raise ConfigError(f"factory {factory!r} returned {type(net).__name__}, not an nn.Module")
    head = head or find_head(net, factory)
    try:
        _get(net, head)
    except (AttributeError, IndexError, TypeError):
        linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        raise ConfigError(f"{factory}: the model has no head attribute {head!r}; its linear layers: "
                          f"{linears[-5:] or 'none'}") from None
    return HeadlessEncoder(net, head, layout)
