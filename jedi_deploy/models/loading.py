from __future__ import annotations

from torch import nn

from jedi_deploy.contracts.errors import CheckpointError


def load_state_strict(module: nn.Module, state: dict, source: str) -> None:
    """``load_state_dict`` with one clear error listing missing/unexpected keys and shape clashes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch " + "; ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else ""))
        if missing:
            parts.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        raise CheckpointError(f"{source}: checkpoint does not fit the model: " + ", ".join(parts))
    module.load_state_dict(state)
