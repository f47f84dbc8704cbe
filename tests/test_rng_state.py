"""``klexp.RNGState``: the random streams are checkpointed, and evaluation inside ``fit`` does not
draw on the training stream, so a resume from any checkpoint, and any validation schedule, leave
training's numbers unchanged."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

import klexp

BATCHES_PER_EPOCH = 4


class Noisy(pl.LightningModule):
    """Training and validation both draw from the global generator, as a VAE's sampling does."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        return self.layer(x + torch.randn_like(x)).square().mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        (x,) = batch
        self.log("val/loss", self.layer(x + torch.randn_like(x)).square().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> torch.utils.data.DataLoader:
    data = torch.arange(2.0 * 4 * BATCHES_PER_EPOCH).reshape(-1, 2) / 10
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=4)


def train(tmp_path, *, rng_state: bool = True, validate: bool = True, epochs: int = 3,
          ckpt_path: str | None = None, callbacks: tuple[pl.Callback, ...] = ()) -> torch.Tensor:
    pl.seed_everything(0, verbose=False)
    module = Noisy()
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=bool(callbacks),
                         limit_val_batches=1 if validate else 0,
                         num_sanity_val_steps=2 if validate else 0, default_root_dir=tmp_path,
                         callbacks=[*([klexp.RNGState()] if rng_state else []), *callbacks])
    trainer.fit(module, loader(), loader(), ckpt_path=ckpt_path)
    return module.layer.weight.detach().clone()


def test_how_often_a_run_validates_does_not_change_its_training(tmp_path):
    assert torch.equal(train(tmp_path), train(tmp_path, validate=False))
    # without the callback the validation's draws shift training: the test can fail
    assert not torch.equal(train(tmp_path, rng_state=False), train(tmp_path, rng_state=False, validate=False))


def test_a_resume_from_a_checkpoint_saved_just_before_a_validation_continues_exactly(tmp_path):
    """Saved at the epoch's last batch, the checkpoint is followed by a validation in the first
    run that the resumed run does not repeat (Lightning skips it)."""
    uninterrupted = train(tmp_path / "reference")
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=BATCHES_PER_EPOCH,
                            save_top_k=-1, filename="{step}")
    train(tmp_path / "first", epochs=1, callbacks=(saver,))
    checkpoint = tmp_path / "ckpt" / f"step={BATCHES_PER_EPOCH}.ckpt"
    resumed = train(tmp_path / "resumed", ckpt_path=str(checkpoint))
    assert torch.equal(resumed, uninterrupted)


@pytest.mark.parametrize("saver", [
    {"monitor": "val/loss"},                              # written in on_validation_end
    {"every_n_epochs": 1, "save_on_train_epoch_end": True},  # written in on_train_epoch_end
], ids=["on_validation_end", "on_train_epoch_end"])
def test_a_resume_from_a_checkpoint_written_after_the_epoch_continues_exactly(tmp_path, saver):
    """ModelCheckpoint writing in ``on_validation_end`` does so before the training stream is put
    back: the checkpoint still holds it. Lightning's restart then takes another path (no new
    iterator for the next epoch), which the callback follows."""
    uninterrupted = train(tmp_path / "reference")
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}", **saver)
    train(tmp_path / "first", epochs=1, callbacks=(checkpoints,))
    resumed = train(tmp_path / "resumed", ckpt_path=str(tmp_path / "ckpt" / "epoch=0.ckpt"))
    assert torch.equal(resumed, uninterrupted)


def test_a_snapshot_whose_validation_did_not_come_is_dropped_at_the_next_batch():
    """A time-based ``val_check_interval`` is decided again after the callback looked: a snapshot
    taken for a validation that then did not run must not stand in for the current state."""
    callback = klexp.RNGState()
    callback.on_train_batch_end(_always_validating())
    torch.rand(3)  # training goes on, drawing
    callback.on_train_batch_start(_always_validating())
    assert torch.equal(callback.state_dict()["torch"], torch.get_rng_state())


def _always_validating() -> SimpleNamespace:
    """Just enough of a Trainer for ``validation_follows`` to say yes."""
    epoch_loop = SimpleNamespace(_should_check_val_fx=lambda data_fetcher: True)
    return SimpleNamespace(fit_loop=SimpleNamespace(_data_fetcher=object(), epoch_loop=epoch_loop))
