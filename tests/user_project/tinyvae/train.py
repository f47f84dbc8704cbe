"""The user's own Hydra app. It composes klexp's `kl/` and `schedule/` groups by name (found on
Hydra's search path) and hands klexp's terms and dashboards to its own Trainer."""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

import klexp
from tinyvae.data import Patterns
from tinyvae.model import TinyVAE


class Pause(pl.Callback):
    """Slows training down so that a test can kill the run half-way (numbers unchanged)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: object) -> None:
        time.sleep(self.seconds)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    terms = [instantiate(node, name=name) for name, node in cfg.kl.items()]
    callbacks = [*terms, klexp.Dashboards(), klexp.RunSummary(out), klexp.RNGState(),
                 ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0,
                                 every_n_train_steps=cfg.checkpoint_every)]
    if cfg.pause:
        callbacks.append(Pause(cfg.pause))
    trainer = pl.Trainer(**cfg.trainer, callbacks=callbacks,
                         logger=TensorBoardLogger(out, name="tb", version="", default_hp_metric=False))
    trainer.fit(TinyVAE(**cfg.model), Patterns(**cfg.data), ckpt_path=cfg.ckpt_path)


if __name__ == "__main__":
    main()
