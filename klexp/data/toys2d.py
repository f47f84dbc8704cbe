"""2-D Gaussian mixtures for GAN mode-collapse experiments, generated from a seed (no download).

The protocol of PacGAN's released code (Lin et al. 2018), also used by VEEGAN and GDPP: equal-weight
isotropic Gaussian modes,

* ring: 8 means ``(cos 2πk/8, sin 2πk/8)``, k = 0…7, σ = 0.01 — k runs over ``arange(8)``, not
  ``linspace(0, 2π, 8)``, whose first and last angles coincide and put two modes on one point;
* grid: 25 means ``{−4, −2, 0, 2, 4}²``, σ = 0.05;

100,000 training points, and evaluation sets of 2,500 points. The training points come from
``data_seed`` (the same data for every run seed); the run's ``seed`` shuffles them. The validation
and test "batches" are one batch each of ``num_eval`` fresh points from the mixture (from
``data_seed`` too), which the GAN task scores against as many generator samples.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import Tensor

from klexp.data.batches import TensorBatches, TrainBatchesState
from klexp.errors import require, require_positive, require_positive_int

# Offsets of data_seed for the three splits, so each is its own stream.
_TRAIN, _VAL, _TEST = 0, 1, 2


def ring_means(num_modes: int = 8, radius: float = 1.0) -> Tensor:
    """``(num_modes, 2)`` means ``radius · (cos 2πk/K, sin 2πk/K)`` for k = 0…K−1."""
    angles = 2 * math.pi * torch.arange(num_modes, dtype=torch.float64) / num_modes
    return radius * torch.stack([angles.cos(), angles.sin()], dim=1)


def grid_means(side: int = 5, spacing: float = 2.0) -> Tensor:
    """``(side², 2)`` means on a square grid centred at 0 with ``spacing`` between neighbours
    (side 5, spacing 2: ``{−4, −2, 0, 2, 4}²``)."""
    axis = spacing * (torch.arange(side, dtype=torch.float64) - (side - 1) / 2)
    return torch.cartesian_prod(axis, axis)


def sample_mixture(means: Tensor, std: float, count: int, generator: torch.Generator) -> Tensor:
    """``count`` float32 points of the equal-weight mixture of ``N(mean_k, std² I)``."""
    modes = torch.randint(len(means), (count,), generator=generator)
    noise = torch.randn(count, means.shape[1], generator=generator, dtype=torch.float64)
    return (means[modes] + std * noise).float()


class GaussianMixture2D(TrainBatchesState, pl.LightningDataModule):
    """Training batches and one-batch evaluation sets of an equal-weight Gaussian mixture.

    Args:
        means: ``(K, 2)`` mode means.
        std: the modes' common standard deviation σ.
        num_train: training points (drawn once from ``data_seed``).
        num_eval: points in each of the validation and test batches.
        batch_size: training mini-batch size.
        data_seed: seed of the points; ``seed`` (the run's) seeds the shuffling.
    """

    def __init__(self, means: Tensor, std: float, num_train: int = 100_000, num_eval: int = 2_500,
                 batch_size: int = 100, data_seed: int = 0, seed: int = 0) -> None:
        super().__init__()
        require(means.dim() == 2 and len(means) > 0, "means", "a (modes, dimension) tensor",
                tuple(means.shape))
        require_positive("std", std)
        require_positive_int("num_train", num_train)
        require_positive_int("num_eval", num_eval)
        require_positive_int("batch_size", batch_size)
        self.means, self.std = means.to(torch.float64), float(std)
        self.num_train, self.num_eval, self.batch_size = num_train, num_eval, batch_size
        self.data_seed, self.seed = data_seed, seed
        self.points: dict[str, Tensor] = {}
        self._train_batches: TensorBatches | None = None
        self._train_batches_state: dict | None = None

    # ------------------------------------------------------------------ facts tasks read

    @property
    def modes(self) -> Tensor:
        """``(K, d)`` float32 mode means."""
        return self.means.float()

    @property
    def mode_std(self) -> float:
        return self.std

    @property
    def data_dim(self) -> int:
        return int(self.means.shape[1])

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        if self.points:
            return
        for name, offset, count in (("train", _TRAIN, self.num_train), ("val", _VAL, self.num_eval),
                                    ("test", _TEST, self.num_eval)):
            generator = torch.Generator().manual_seed(self.data_seed * 3 + offset)
            self.points[name] = sample_mixture(self.means, self.std, count, generator)

    def train_dataloader(self) -> TensorBatches:
        if self._train_batches is None:
            rank, world = self._rank_and_world()
            self._train_batches = TensorBatches((self.points["train"],), self.batch_size, shuffle=True,
                                                seed=self.seed, rank=rank, world_size=world)
            if self._train_batches_state is not None:
                self._train_batches.load_state_dict(self._train_batches_state)
        return self._train_batches

    def val_dataloader(self) -> TensorBatches:
        return self._eval_batches("val")

    def test_dataloader(self) -> TensorBatches:
        return self._eval_batches("test")

    def _eval_batches(self, split: str) -> TensorBatches:
        rank, world = self._rank_and_world()
        return TensorBatches((self.points[split],), self.num_eval, rank=rank, world_size=world)



class RingOfGaussians(GaussianMixture2D):
    """PacGAN's 2D-ring: ``num_modes`` modes on a circle of ``radius``, σ = ``std``."""

    def __init__(self, num_modes: int = 8, radius: float = 1.0, std: float = 0.01, **kwargs) -> None:
        require_positive_int("num_modes", num_modes)
        require_positive("radius", radius)
        super().__init__(ring_means(num_modes, radius), std, **kwargs)


class GridOfGaussians(GaussianMixture2D):
    """PacGAN's 2D-grid: ``side × side`` modes ``spacing`` apart, centred at 0, σ = ``std``."""

    def __init__(self, side: int = 5, spacing: float = 2.0, std: float = 0.05, **kwargs) -> None:
        require_positive_int("side", side)
        require_positive("spacing", spacing)
        super().__init__(grid_means(side, spacing), std, **kwargs)
