"""Pins every touch of Lightning's private state (``klexp.lightning.internals``) to the installed
Lightning: each private attribute exists where klexp reads it, and each function returns what the
public behaviour it stands for says. A Lightning upgrade that moves one fails here, naming it."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from klexp.lightning import internals


def walk(owner: Any, path: tuple[str, ...]) -> Any:
    """Follow ``path`` through attributes (objects) or keys (checkpoint dictionaries)."""
    value = owner
    for depth, part in enumerate(path):
        found = part in value if isinstance(value, dict) else hasattr(value, part)
        assert found, f"Lightning no longer has {'.'.join(path)!r} (stopped at {part!r}, depth {depth})"
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


class Probe(internals.FastHookName, pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[dict[str, Any]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        trainer = internals.trainer_of(self)
        for owner, path in internals.PRIVATE_STATE:
            if owner == "Trainer":
                walk(trainer, path)
            elif owner == "LightningModule":
                walk(self, path)
        self.seen.append({"writes": internals.should_update_logs(trainer),
                          "accumulating": internals.is_accumulating(trainer),
                          "logging_step": internals.logging_step(trainer),
                          "global_step": trainer.global_step})


def test_every_private_attribute_exists_and_means_what_klexp_reads_it_as(tmp_path):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(24, 1)), batch_size=4)
    module = Probe()
    assert internals.trainer_of(module) is None
    trainer = pl.Trainer(max_epochs=1, log_every_n_steps=2, accumulate_grad_batches=2,
                         enable_progress_bar=False, enable_model_summary=False, logger=False,
                         enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(module, data)
    # 6 batches, an optimiser step every 2: batch 0 accumulates, batch 1 steps, ...
    assert [s["accumulating"] for s in module.seen] == [True, False] * 3
    # the logging step counts the batches that stepped before this one (the stepping batch is
    # counted after its batch-end hooks, where Lightning's own step metrics are written)
    assert [s["logging_step"] for s in module.seen] == [0, 0, 1, 1, 2, 2]
    assert [s["global_step"] for s in module.seen] == [0, 1, 1, 2, 2, 3]
    assert any(s["writes"] for s in module.seen) and not all(s["writes"] for s in module.seen)
    # the fast hook-name mixin keeps what Lightning sets readable
    module._current_fx_name = "on_train_start"
    assert module._current_fx_name == "on_train_start"


def test_checkpoint_loop_state_is_where_the_runner_reads_the_resume_step(tmp_path):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 1)), batch_size=4)
    trainer = pl.Trainer(max_epochs=2, enable_progress_bar=False, enable_model_summary=False,
                         logger=False, default_root_dir=tmp_path)
    trainer.fit(Probe(), data)
    path = tmp_path / "saved.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    for owner, path in internals.PRIVATE_STATE:
        if owner == "checkpoint":
            walk(checkpoint, path)
    assert internals.checkpoint_logging_step(checkpoint) == trainer.global_step == 6
    assert internals.checkpoint_logging_step({"global_step": 3}) is None


def test_publish_makes_written_metrics_visible_to_callbacks(tmp_path):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 1)), batch_size=4)

    class Publisher(Probe):
        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            internals.publish(self.trainer, {"published": torch.tensor(7.0)})

    trainer = pl.Trainer(max_epochs=1, enable_progress_bar=False, enable_model_summary=False,
                         logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(Publisher(), data)
    assert float(trainer.callback_metrics["published"]) == 7.0
    assert float(trainer.logged_metrics["published"]) == 7.0


def test_the_walk_names_a_missing_attribute():
    with pytest.raises(AssertionError, match=r"no longer has 'fit_loop\._gone'"):
        walk(pl.Trainer(logger=False, enable_progress_bar=False), ("fit_loop", "_gone"))


def test_validation_follows_says_at_each_batch_end_whether_lightning_validates_next(tmp_path):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(24, 1)), batch_size=4)
    events: list[str] = []

    class Validated(Probe):
        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            follows = internals.validation_follows(self.trainer)
            events.append(f"batch {batch_idx}" + (" → val" if follows else ""))

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def on_validation_start(self) -> None:
            if not self.trainer.sanity_checking:
                events.append("val")

    trainer = pl.Trainer(max_epochs=2, val_check_interval=4, check_val_every_n_epoch=2,
                         limit_val_batches=1, enable_progress_bar=False, enable_model_summary=False,
                         logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(Validated(), data, data)
    # 6 batches an epoch; every 2nd epoch, a validation after every 4th batch
    epoch_one = [f"batch {i}" for i in range(6)]
    epoch_two = ["batch 0", "batch 1", "batch 2", "batch 3 → val", "val", "batch 4", "batch 5"]
    assert events == epoch_one + epoch_two
