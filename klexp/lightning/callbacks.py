"""Lightning callbacks that klexp adds to every run (besides the KL terms)."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from klexp.lightning.internals import resumes_after_epoch_end, validation_follows

log = logging.getLogger(__name__)


class RNGState(pl.Callback):
    """Save the Python, NumPy and torch (CPU and CUDA) random states in checkpoints and restore
    them on resume, so dropout masks and samples after a resume are those of an uninterrupted run.

    Lightning restores model, optimiser, schedulers, loops and callback states, but not the global
    generators. States are stored as tensors and plain lists, so ``weights_only`` loading accepts them.

    Evaluation inside ``fit`` (the sanity check, every validation) leaves the generators where it
    found them: a validation step that samples, or a ``DataLoader`` drawing its base seed, would
    otherwise shift the training stream, and a run resumed from a checkpoint saved just before a
    validation (which the resumed run does not repeat) would continue from another state than the
    uninterrupted run. It also means that how often a run validates does not change its training.
    """

    def __init__(self) -> None:
        self._training_stream: dict[str, Any] | None = None
        self._loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # A checkpoint written during a validation (ModelCheckpoint's on_validation_end) records
        # the training stream, which is where training continues.
        return self._training_stream if self._training_stream is not None else _random_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Creating a DataLoader's iterator draws its base seed from the global generator, so the
        # states must be in place when the iterator that serves the first resumed batch is made.
        # A resumed fit makes one before on_train_start; whether that one serves the next batch
        # (a checkpoint written after an epoch's end) or is replaced or already positioned (the
        # others) is Lightning's restart stage, known in on_train_start: set now and again there.
        _set_random_states(state_dict)
        self._loaded = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._loaded is not None and not resumes_after_epoch_end(trainer):
            _set_random_states(self._loaded)
        self._loaded = None

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._training_stream = _random_states()

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._resume_training_stream()

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        # A snapshot whose validation did not come (a time-based val_check_interval decides
        # again after this callback) must not reach a later checkpoint.
        self._training_stream = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if validation_follows(trainer):
            self._training_stream = _random_states()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._resume_training_stream()

    def _resume_training_stream(self) -> None:
        if self._training_stream is not None:
            _set_random_states(self._training_stream)
            self._training_stream = None


def _random_states() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_random_states(states: dict[str, Any]) -> None:
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached"]))
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class FailureCheckpoint(pl.Callback):
    """Save ``<dirpath>/<filename>.ckpt`` when training stops on an error, for a post-mortem —
    once training has started: an error while setting up (a bad data path, an unfit teacher) has
    no state worth saving and must not overwrite an earlier failure's checkpoint.

    Not Lightning's ``OnExceptionCheckpoint``: its presence makes every ``fit`` without a
    ``ckpt_path`` look for a checkpoint to resume from, a silent resume klexp does only when asked
    (``klexp resume=<run dir>``).

    A save that fails (a full disk) is a warning, not an error: it must not keep the callbacks
    after it (the run record) from recording the failure."""

    def __init__(self, dirpath: str, filename: str = "on_exception") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self._training = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._training = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if not self._training:
            return
        try:
            trainer.save_checkpoint(self.path)
        except Exception as error:
            # e.g. the disk that stopped the run is still full: the run record must still be written
            log.warning(f"{self.path} could not be written: {error}")
