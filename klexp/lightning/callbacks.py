"""Lightning callbacks that klexp adds to every run (besides the KL terms)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


class RNGState(pl.Callback):
    """Save the Python, NumPy and torch (CPU and CUDA) random states in checkpoints and restore
    them on resume, so dropout masks and samples after a resume are those of an uninterrupted run.

    Lightning restores model, optimiser, schedulers, loops and callback states, but not the global
    generators. States are stored as tensors and plain lists, so ``weights_only`` loading accepts them.
    """

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        kind, keys, position, has_gauss, cached = np.random.get_state()
        return {
            "python": {"version": version, "internal": list(internal), "gauss": gauss},
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "position": int(position), "has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        python = state_dict["python"]
        random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
        numpy_state = state_dict["numpy"]
        np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                             numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached"]))
        torch.set_rng_state(state_dict["torch"])
        if state_dict.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class FailureCheckpoint(pl.Callback):
    """Save ``<dirpath>/<filename>.ckpt`` when training stops on an error, for a post-mortem —
    once training has started: an error while setting up (a bad data path, an unfit teacher) has
    no state worth saving and must not overwrite an earlier failure's checkpoint.

    Not Lightning's ``OnExceptionCheckpoint``: its presence makes every ``fit`` without a
    ``ckpt_path`` look for a checkpoint to resume from, a silent resume klexp does only when asked
    (``klexp resume=<run dir>``)."""

    def __init__(self, dirpath: str, filename: str = "on_exception") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self._training = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._training = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if self._training:
            trainer.save_checkpoint(self.path)
