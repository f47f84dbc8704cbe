"""The check before a run (``klexp.app.preflight``): it decides what the data, the task and a
checkpoint can decide, leaves the run's random streams and numbers exactly as they were, and takes
a user's own LightningModule through the same public path (an optional ``configure_model_for``)."""

import random

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers import FAST, run_experiment
from omegaconf import OmegaConf
from torch import nn

import klexp.app.runner as runner
from klexp.app.preflight import check_before_fit, saved_random_state
from klexp.errors import KlexpError


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["data=synthetic", "data.augment=shift"],
    ["experiment=ppo", "task.total_timesteps=1024", "task.num_steps=64"],
], ids=["classification", "ppo"])
def test_a_run_gives_the_same_numbers_with_and_without_the_check(args, tmp_path, monkeypatch):
    checked = run_experiment([*FAST, *args], tmp_path / "checked")
    monkeypatch.setattr(runner, "check_before_fit", lambda *a, **k: None)
    unchecked = run_experiment([*FAST, *args], tmp_path / "unchecked")
    assert without_time(checked["metrics"]) == without_time(unchecked["metrics"])
    assert without_time(checked["metrics"])


def test_the_saved_random_state_leaves_every_global_stream_where_it_was():
    pl.seed_everything(3, verbose=False)
    expected = (torch.rand(2), np.random.rand(2), random.random())
    pl.seed_everything(3, verbose=False)
    with saved_random_state():
        torch.rand(5), np.random.rand(5), random.random()
    drawn = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(drawn[0], expected[0])
    assert np.array_equal(drawn[1], expected[1]) and drawn[2] == expected[2]


class Data(pl.LightningDataModule):
    width = 4

    def __init__(self) -> None:
        super().__init__()
        self.setups = []

    def setup(self, stage: str) -> None:
        self.setups.append(stage)

    def train_dataloader(self):
        return [torch.zeros(2, self.width)]


class Eager(pl.LightningModule):
    """A user's module that builds everything in its constructor."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.net = nn.Linear(width, 2)

    def training_step(self, batch, batch_idx):
        return self.net(batch).sum()


class Lazy(Eager):
    """A user's module that builds in ``configure_model`` from the trainer's DataModule."""

    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        self.net = None

    def configure_model(self) -> None:
        self.net = nn.Linear(self.trainer.datamodule.width, 2)


class LazyWithHook(Lazy):
    """The same, taking part in the check through ``configure_model_for``."""

    def configure_model_for(self, datamodule) -> None:
        self.net = nn.Linear(datamodule.width, 2)


def checkpoint_of(module: nn.Module, path) -> str:
    torch.save({"state_dict": module.state_dict()}, path)
    return str(path)


def check(module, data, ckpt_path=None) -> None:
    check_before_fit(OmegaConf.create({"test": True, "ckpt_path": ckpt_path}), module, data)


def test_a_users_datamodule_is_set_up_for_the_stages_the_run_uses():
    data = Data()
    check(Eager(), data)
    assert data.setups == ["fit"]  # it serves no test batches, so the run does not test


def test_a_users_eager_module_is_checked_against_a_checkpoint_as_constructed(tmp_path):
    ckpt = checkpoint_of(Eager(width=3), tmp_path / "other.ckpt")
    with pytest.raises(KlexpError) as error:
        check(Eager(), Data(), ckpt)
    assert str(error.value) == (f"ckpt_path: {ckpt} does not fit the task as configured: net.weight is 2×3 "
                                "in the checkpoint, expected 2×4")
    check(Eager(), Data(), checkpoint_of(Eager(), tmp_path / "same.ckpt"))


def test_a_module_with_configure_model_for_is_built_on_a_copy_and_checked(tmp_path):
    ckpt = checkpoint_of(Eager(width=3), tmp_path / "other.ckpt")
    module = LazyWithHook()
    with pytest.raises(KlexpError, match=r"net\.weight is 2×3 in the checkpoint, expected 2×4"):
        check(module, Data(), ckpt)
    assert module.net is None  # the run's own module is built by Lightning, as before


def test_a_lazy_module_without_the_hook_is_left_to_lightning(tmp_path):
    check(Lazy(), Data(), checkpoint_of(Eager(width=3), tmp_path / "other.ckpt"))


def test_strict_loading_off_lets_a_checkpoint_hold_more_but_never_another_shape(tmp_path):
    bigger = nn.Module()
    bigger.net, bigger.head = nn.Linear(4, 2), nn.Linear(2, 1)
    module = Eager()
    module.strict_loading = False
    check(module, Data(), checkpoint_of(bigger, tmp_path / "bigger.ckpt"))
    module.strict_loading = True
    with pytest.raises(KlexpError, match=r"the checkpoint holds head\.weight"):
        check(module, Data(), checkpoint_of(bigger, tmp_path / "bigger.ckpt"))


def test_an_error_of_a_users_datamodule_is_one_line_at_data():
    class Broken(Data):
        def setup(self, stage: str) -> None:
            raise FileNotFoundError("no such file: train.csv\nsecond line")

    with pytest.raises(KlexpError) as error:
        check(Eager(), Broken())
    assert str(error.value) == "data: no such file: train.csv"
