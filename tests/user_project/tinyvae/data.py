"""Random binary patterns: a few prototypes with flipped pixels."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


def patterns(count: int = 256, pixels: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(4, pixels, generator=generator) > 0.5
    chosen = prototypes[torch.randint(0, 4, (count,), generator=generator)]
    flips = torch.rand(count, pixels, generator=generator) < 0.1
    return (chosen ^ flips).float()


class Patterns(pl.LightningDataModule):
    def __init__(self, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.seed = batch_size, seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(patterns(seed=self.seed)), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(patterns(64, seed=self.seed + 1)), batch_size=64)
