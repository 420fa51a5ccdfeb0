from __future__ import annotations

import torch
from torch import nn

from jedi_deploy.contracts.errors import CheckpointError, ConfigError, InputError

IMAGENET = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))  # MMAction2's data_preprocessor


def _tv_models():
    from ..tv_compat import import_torchvision

    import_torchvision()
    import torchvision.models as models
    import torchvision.models.video as video

    return models, video


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part) if not part.isdigit() else module[int(part)]
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, last = path.rpartition(".")
    owner = _get(module, parent) if parent else module
    if last.isdigit():
        owner[int(last)] = value
    else:
        setattr(owner, last, value)


def head_features(head: nn.Module, where: str) -> int:
    if isinstance(head, nn.Linear):
        return head.in_features
    if isinstance(head, (nn.Conv3d, nn.Conv2d, nn.Conv1d)) and all(k == 1 for k in head.kernel_size):
        return head.in_channels
    raise ConfigError(f"{where}: the head must be an nn.Linear or a 1x1 convolution, got {type(head).__name__}")


def logits_of(out, where: str = "the model") -> torch.Tensor:
    """The class scores of a classifier's output: a tensor, a ``ModelOutput`` or dict (its
    ``logits``), or a tuple/list (its first element)."""
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, dict) else getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise InputError(f"{where} returned {type(out).__name__}, not a tensor, a ModelOutput/dict with 'logits' "
                     "or a tuple whose first element is a tensor")


class HeadlessEncoder(nn.Module):
    """A classifier with its final linear layer replaced by ``Identity``: ``[B, T, 3, H, W]``
    (permuted to ``NCTHW`` when the network wants it) -> ``[B, D]``. The network may return a
    tensor, a ``ModelOutput``/dict (``logits``) or a tuple (first element): :func:`logits_of`."""

    def __init__(self, net: nn.Module, head_path: str, layout: str = "NCTHW"):
        super().__init__()
        if layout not in ("NCTHW", "NTCHW"):
            raise ConfigError(f"layout must be NCTHW or NTCHW, got {layout!r}")
        original = _get(net, head_path)
        self.embed_dim = head_features(original, head_path)
        self.head_path = head_path
        object.__setattr__(self, "_original_head", original)  # not a submodule: no state, only for whole()
        _set(net, head_path, nn.Identity())
        self.net, self.layout = net, layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "NCTHW":
            x = x.permute(0, 2, 1, 3, 4)
        return logits_of(self.net(x)).flatten(1)

    def whole(self, x: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """The original classifier's scores on ``x``: its last layer put back for one call, holding
        ``head``'s weights (reshaped for a 1x1 convolution)."""
        original, layer = self._original_head, head
        if not isinstance(original, nn.Linear):  # a 1x1 convolution with the head's weights
            layer = type(original)(head.in_features, head.out_features, original.kernel_size,
                                   bias=head.bias is not None)
            with torch.no_grad():
                layer.weight.copy_(head.weight.view_as(layer.weight))
                if head.bias is not None:
                    layer.bias.copy_(head.bias)
        _set(self.net, self.head_path, layer)
        try:
            return logits_of(self.net(x.permute(0, 2, 1, 3, 4) if self.layout == "NCTHW" else x)).flatten(1)
        finally:
            _set(self.net, self.head_path, nn.Identity())


def _head_tensors(state: dict, prefix: str, source: str) -> dict:
    try:
        w, b = state[prefix + "weight"], state[prefix + "bias"]
    except KeyError as e:
        raise CheckpointError(f"{source}: no classifier tensor {e.args[0]!r} in the checkpoint") from None
    return {"head.weight": w.reshape(w.shape[0], -1), "head.bias": b}


def split_head(state: dict, head_path: str, source: str, prefix: str = "encoder.net.") -> dict:
    """A whole classifier's state dict -> ExpertModel's (``encoder.net.*`` + ``head.*``)."""
    hp = head_path + "."
    out = {prefix + k: v for k, v in state.items() if not k.startswith(hp)}
    out.update(_head_tensors(state, hp, source))
    return out
