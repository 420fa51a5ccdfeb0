from __future__ import annotations

from jedi_deploy.contracts.errors import CheckpointError

#: Fields every expert description (``registry.Expert.describe``) carries in cache and bundle headers.
EXPERT_FIELDS = ("name", "arch", "dataset", "categories", "preprocess", "embed_dim", "num_classes")


def check_expert_descriptions(experts, source: str, what: str) -> None:
    """Raise :class:`CheckpointError` naming the first expert description that lacks a field."""
    if not isinstance(experts, list) or not experts:
        raise CheckpointError(f"{source}: {what} header has no experts")
    for j, e in enumerate(experts):
        missing = [k for k in EXPERT_FIELDS if k not in e] if isinstance(e, dict) else ["(not an object)"]
        if missing:
            raise CheckpointError(f"{source}: {what} header: expert {j} ({e.get('name', '?') if isinstance(e, dict) else e!r}) "
                                  f"lacks field {missing[0]!r}")
