"""Reading a frozen network (a teacher, a reference policy, a baseline) out of a klexp checkpoint.

Checkpoints load with ``weights_only=True``: tensors and plain containers only, so loading never
executes code from the file. Every problem is a one-line ``KlexpError`` naming the config key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from klexp.errors import KlexpError


def read_checkpoint(path: str, key: str, spec_key: str, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint at ``path`` and the network description a task stored under ``spec_key``.

    ``key`` is the config key that named the file (for messages); ``kind`` says what the
    checkpoint should come from, e.g. "classification".
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise KlexpError(f"{key}: {file} does not exist")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise KlexpError(f"{key}: {file} is not a readable checkpoint ({error})") from None
    spec = checkpoint.get(spec_key) if isinstance(checkpoint, dict) else None
    if spec is None:
        raise KlexpError(f"{key}: {file} is not a klexp {kind} checkpoint")
    return checkpoint, spec


def load_frozen(module: nn.Module, checkpoint: dict[str, Any], prefix: str, key: str,
                path: str) -> nn.Module:
    """Load the weights stored under ``<prefix>.`` into ``module``; return it in eval mode with
    gradients off."""
    weights = {k.removeprefix(f"{prefix}."): v for k, v in checkpoint["state_dict"].items()
               if k.startswith(f"{prefix}.")}
    try:
        module.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise KlexpError(f"{key}: {Path(path).expanduser()} does not fit its own network ({first})") from None
    return module.eval().requires_grad_(False)
