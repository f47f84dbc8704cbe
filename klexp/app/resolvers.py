"""The resolvers klexp's configs use: arithmetic (``${mul:${alpha},${T},${T}}`` for a distillation
weight) and the name of a sweep job's directory (``${sweep_subdir:...}``)."""

from __future__ import annotations

import hashlib
from typing import Any

from omegaconf import OmegaConf


def _product(*values: float) -> float:
    result = 1.0
    for value in values:
        result *= float(value)
    return result


def register_resolvers() -> None:
    """Arithmetic for configs, e.g. a distillation weight ``${mul:${alpha},${T},${T}}``."""
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", _product)
    if not OmegaConf.has_resolver("sub"):
        OmegaConf.register_new_resolver("sub", lambda a, b: float(a) - float(b))
    if not OmegaConf.has_resolver("div"):
        OmegaConf.register_new_resolver("div", lambda a, b: float(a) / float(b))
    if not OmegaConf.has_resolver("sweep_subdir"):
        OmegaConf.register_new_resolver("sweep_subdir", sweep_subdir)


# File systems allow 255 bytes per name; a sweep job's name is its overrides, which can be longer.
MAX_DIRNAME_BYTES = 200


def sweep_subdir(override_dirname: str, seed: Any) -> str:
    """A sweep job's directory: ``<overrides>/seed=<seed>`` (slashes in values as ``_``), or
    ``seed=<seed>`` when the seed is
    all that varies (an empty first part would make the path absolute: ``/seed=0``). Overrides
    longer than ``MAX_DIRNAME_BYTES`` keep their start plus a hash of the whole, so two runs never
    share a directory (the full overrides are in .hydra/ and summary.json)."""
    # a value with a slash (a checkpoint path) would otherwise nest directories
    name = str(override_dirname or "").replace("/", "_")
    encoded = name.encode()
    if len(encoded) > MAX_DIRNAME_BYTES:
        digest = hashlib.sha256(encoded).hexdigest()[:12]
        name = encoded[:MAX_DIRNAME_BYTES - len(digest) - 1].decode(errors="ignore") + "~" + digest
    return f"{name}/seed={seed}" if name else f"seed={seed}"
