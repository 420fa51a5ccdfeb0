"""A torch module as a runner: the PyTorch reference of every export validation and the
``torch-cpu`` / ``torch-cuda`` runtimes of ``jedi bench``. Never imported by ``serve``."""
from __future__ import annotations

import numpy as np
import torch

from jedi_deploy.contracts.model_card import Feed, ModelCard

from .base import Runner


class TorchRunner(Runner):
    """``module(*inputs)`` in inference mode on ``device``, inputs in the card's order; the result
    comes back to the host (which waits for a GPU). ``double`` returns float64 outputs (a
    validation reference)."""

    label = "PyTorch"

    def __init__(self, module: torch.nn.Module, card: ModelCard, device: str | torch.device = "cpu", *,
                 name: str = "", double: bool = False):
        super().__init__(card, name or card.name)
        self.module, self.device, self.double = module.eval(), torch.device(device), double
        self.info = {"torch": torch.__version__, "device": str(self.device), "intra_op_threads": torch.get_num_threads()}

    def _activate(self) -> None:
        self.module.to(self.device)

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        xs = [torch.from_numpy(feed[s.name]).to(self.device) for s in self.card.inputs]
        with torch.inference_mode():
            y = self.module(*xs)
        y = y.double() if self.double else y
        return {self.card.output: y.cpu().numpy()}

    def _deactivate(self) -> None:
        if self.device.type != "cpu":
            self.module.cpu()
