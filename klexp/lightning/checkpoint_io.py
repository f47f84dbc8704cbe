"""Atomic writes: a file is either its old bytes or its new bytes, never a half-written mix.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives
in the system's temporary directory: the final move is a rename only when that directory is on
the run's file system, and a full disk leaves ``last.ckpt`` truncated. Here the temporary file is
created beside the target (same directory, so same file system), flushed to disk (``fsync``) and
renamed over it (``os.replace``, atomic on POSIX); on any error, including a full disk, the
temporary file is removed, so the previous file stays intact and the space is free again for the
run record.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` by calling ``write`` on a temporary file beside it, then renaming it into
    place; on any error the temporary file is removed and ``path`` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp's 0600 would make the result private
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_directory(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """``atomic_write`` of a UTF-8 text."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sync_directory(directory: Path) -> None:
    # the rename itself is durable only once the directory entry is on disk
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves are atomic on a local file system (see the module
    docstring): a kill or a full disk during a save leaves the previous checkpoint as it was.

    klexp's runner gives it to every Trainer; a user's own Trainer takes it the same way::

        pl.Trainer(plugins=[klexp.AtomicCheckpointIO()])
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options")
        if "://" in str(path):  # a remote file system: Lightning's own transaction
            super().save_checkpoint(checkpoint, path)
            return
        # Serialised in memory first (as Lightning does): torch.save straight into a file on a
        # full disk fails with a RuntimeError from its zip writer instead of the OSError
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(path, lambda file: file.write(buffer.getbuffer()))
