"""The logging router: training-step scalars written straight to the loggers land where
``self.log`` would put them, on the steps Lightning writes; evaluation metrics become epoch means;
the default profiler records nothing."""

from __future__ import annotations

from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from klexp.lightning.logging import current_stage, log_metrics, logs_now
from klexp.lightning.profiler import NoProfiler


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, name, value)``."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, str, float]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.extend((step, name, float(value)) for name, value in metrics.items())

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class TwoWays(pl.LightningModule):
    """Logs its step count both through ``self.log`` and through ``log_metrics``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.log("via_self_log", float(self.global_step), on_step=True, on_epoch=False)
        if logs_now(self):
            log_metrics(self, {"written": float(self.global_step)})
        return self.layer(batch[0]).square().mean()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        assert current_stage(self) == "val"
        log_metrics(self, {"val/first": batch[0][0, 0]}, batch_size=len(batch[0]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize(("accumulate", "logged_steps"), [(1, [6, 13, 20, 27]), (2, [6, 13])])
def test_written_step_scalars_land_at_the_steps_and_values_self_log_gives(accumulate, logged_steps,
                                                                          tmp_path):
    logger = MemoryLogger()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 1)), batch_size=4)
    trainer = pl.Trainer(max_epochs=3, log_every_n_steps=7, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=accumulate, default_root_dir=tmp_path)
    trainer.fit(TwoWays(), data)

    def series(name: str) -> list[tuple[int, float]]:
        return [(step, value) for step, key, value in logger.rows if key == name]

    # under gradient accumulation only the batch that steps writes, once per logged step
    assert series("written") == series("via_self_log")
    assert [step for step, _ in series("written")] == logged_steps
    # with the epoch, as Lightning writes it next to its own step metrics (both write it here)
    assert sorted(set(series("epoch"))) == [(step, float(step * accumulate // 10)) for step in logged_steps]
    last = series("written")[-1][1]
    assert float(trainer.callback_metrics["written"]) == last
    assert float(trainer.logged_metrics["written"]) == last


def test_evaluation_metrics_are_epoch_means_weighted_by_batch_size(tmp_path):
    logger = MemoryLogger()
    values = torch.arange(10.0).reshape(10, 1)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 1)), batch_size=4)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(values), batch_size=4)
    trainer = pl.Trainer(max_epochs=1, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(TwoWays(), train, val)
    # batches start at 0, 4, 8 with sizes 4, 4, 2: (0·4 + 4·4 + 8·2) / 10
    assert float(trainer.callback_metrics["val/first"]) == pytest.approx(3.2)


class OwnAxis(TwoWays):
    """Logs through ``log_metrics`` only, on its own x-axis: 100 "env steps" a training step."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        log_metrics(self, {"written": float(self.global_step)})
        return self.layer(batch[0]).square().mean()

    def log_step(self) -> int:
        return 100 * (self.global_step + 1)


def test_a_module_with_its_own_x_axis_writes_every_scalar_on_it_without_an_epoch(tmp_path):
    logger = MemoryLogger()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 1)), batch_size=4)
    trainer = pl.Trainer(max_epochs=2, log_every_n_steps=1, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(OwnAxis(), data, data)
    steps = {name: [step for step, key, _ in logger.rows if key == name] for _, name, _ in logger.rows}
    assert steps["written"] == [100, 200, 300, 400, 500, 600]
    # validation epoch means at the module's step at the end of each epoch (not Lightning's 3, 6)
    assert steps["val/first"] == [400, 700]
    assert "epoch" not in steps and "step" not in steps
    firsts = data.dataset.tensors[0][::4, 0]  # still an epoch mean over the batches
    assert float(trainer.callback_metrics["val/first"]) == pytest.approx(float(firsts.mean()))


def test_the_default_profiler_hands_out_one_empty_context():
    profiler = NoProfiler()
    with profiler.profile("[Callback]KLTerm.on_train_batch_end") as action:
        assert action is None
    assert profiler.profile("a") is profiler.profile("b")
    assert profiler.summary() == ""
