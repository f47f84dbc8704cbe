"""Reading a frozen network (a teacher, a reference policy, a baseline) out of a klexp checkpoint.

Checkpoints load with ``weights_only=True``: tensors and plain containers only, so loading never
executes code from the file. Every problem is a one-line ``KlexpError`` naming the config key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from klexp.errors import KlexpError
from klexp.nets.factory import build_from_spec

# where a ClassificationTask checkpoint describes its network: {"in_features", "out_features",
# "net": its config node (klexp.nets.factory.net_spec)}
CHECKPOINT_NET_KEY = "klexp_net"
# how checkpoints written before networks came from the config describe theirs: an MLP's arguments
_LEGACY_MLP_KEYS = ("hidden", "activation", "dropout")


def load_checkpoint(path: str, key: str) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on the CPU; ``key`` names the config key in errors."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise KlexpError(f"{key}: {file} does not exist")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = ": ".join([type(error).__name__, *str(error).strip().splitlines()[:1]])
        raise KlexpError(f"{key}: {file} is not a readable checkpoint ({reason})") from None


def read_checkpoint(path: str, key: str, spec_key: str, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint at ``path`` and the network description a task stored under ``spec_key``.

    ``key`` is the config key that named the file (for messages); ``kind`` says what the
    checkpoint should come from, e.g. "classification".
    """
    checkpoint = load_checkpoint(path, key)
    spec = checkpoint.get(spec_key) if isinstance(checkpoint, dict) else None
    if spec is None:
        raise KlexpError(f"{key}: {Path(path).expanduser()} is not a klexp {kind} checkpoint")
    return checkpoint, spec


def load_frozen(module: nn.Module, checkpoint: dict[str, Any], prefix: str, key: str,
                path: str) -> nn.Module:
    """Load the weights stored under ``<prefix>.`` into ``module``; return it in eval mode with
    gradients off."""
    weights = {k.removeprefix(f"{prefix}."): v for k, v in checkpoint["state_dict"].items()
               if k.startswith(f"{prefix}.")}
    # keys named as the checkpoint holds them
    problem = first_mismatch({f"{prefix}.{k}": v for k, v in module.state_dict().items()},
                             {f"{prefix}.{k}": v for k, v in weights.items()})
    if problem is not None:
        raise KlexpError(f"{key}: {Path(path).expanduser()} does not fit its own network: {problem}")
    module.load_state_dict(weights)
    return module.eval().requires_grad_(False)


def first_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any], strict: bool = True,
                   where: str = "the checkpoint") -> str | None:
    """What keeps ``found`` (a checkpoint's state_dict) from loading into a module whose state_dict
    is ``expected``, in words, or None when it loads: the first of the module's keys, in its own
    order, that ``found`` lacks or holds with another shape (both shapes named), then (when
    ``strict``, as ``load_state_dict`` is) the first key of ``found`` the module does not have."""
    for name, tensor in expected.items():
        if name not in found:
            if strict:
                return f"{where} has no {name} (expected {_shape(tensor)})"
            continue
        if _shape(found[name]) != _shape(tensor):
            return f"{name} is {_shape(found[name])} in {where}, expected {_shape(tensor)}"
    if strict:
        for name, tensor in found.items():
            if name not in expected:
                return f"{where} holds {name} ({_shape(tensor)}), which the network does not have"
    return None


def _shape(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is None:
        return type(value).__name__
    return "×".join(str(n) for n in shape) if len(shape) else "a scalar"


def load_classifier(path: str, input_size: int, num_classes: int,
                    key: str = "task.teacher_checkpoint") -> nn.Module:
    """The frozen network of a ClassificationTask checkpoint, checked against the data's shape;
    ``key`` is the config key that named the file."""
    checkpoint, spec = read_checkpoint(path, key, CHECKPOINT_NET_KEY, "classification")
    if (spec["in_features"], spec["out_features"]) != (input_size, num_classes):
        raise KlexpError(
            f"{key}: {Path(path).expanduser()} was trained for {spec['in_features']} inputs and "
            f"{spec['out_features']} classes; the data has {input_size} inputs and {num_classes} classes"
        )
    net = build_from_spec(net_node(spec), spec["in_features"], spec["out_features"], key,
                          str(Path(path).expanduser()))
    return load_frozen(net, checkpoint, "net", key, path)


def net_node(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The network's config node in a checkpoint's description, also for the flat MLP
    description of older checkpoints."""
    if "net" in spec:
        return spec["net"]
    return {"_target_": "klexp.nets.mlp.MLP", **{k: spec[k] for k in _LEGACY_MLP_KEYS}}
