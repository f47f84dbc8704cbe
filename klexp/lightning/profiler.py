"""A profiler that records nothing, like Lightning's default, at no cost per hook call."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from pytorch_lightning.profilers import PassThroughProfiler


class NoProfiler(PassThroughProfiler):
    """Lightning's default profiler (it records nothing), without its cost: ``profile`` is a
    generator-based context manager entered around each of ~50 hook calls a training step, ~3 % of
    a small network's step; this one hands out one reusable empty context. A profiler the user
    chooses (``trainer.profiler=simple``) replaces it."""

    _nothing = nullcontext()

    def profile(self, action_name: str) -> Any:
        return self._nothing
