"""A plain LightningModule: nothing here comes from klexp. Its steps return the reconstruction
loss and the two distributions a KL term may read."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence


class TinyVAE(pl.LightningModule):
    """``q(z|x) = N(μ(x), σ²(x))`` with linear encoder and decoder over 16 binary pixels.

    ``kl_by_hand``: add ``kl_by_hand · KL(q ‖ p)`` to the loss itself (the same model without a
    KL term, for comparison); ``forget_outputs``: return only the loss, as a module that was never
    told about its KL terms would.
    """

    def __init__(self, latent_dim: int = 2, pixels: int = 16, lr: float = 0.05,
                 kl_by_hand: float = 0.0, forget_outputs: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Linear(pixels, 2 * latent_dim)
        self.decoder = nn.Linear(latent_dim, pixels)

    def distributions(self, x: torch.Tensor) -> tuple[Independent, Independent]:
        mean, log_var = self.encoder(x).chunk(2, dim=-1)
        posterior = Independent(Normal(mean, (0.5 * log_var).exp()), 1)
        prior = Independent(Normal(torch.zeros_like(mean), torch.ones_like(mean)), 1)
        return posterior, prior

    def step(self, batch: Any) -> dict[str, Any]:
        (x,) = batch
        posterior, prior = self.distributions(x)
        z = posterior.rsample()
        reconstruction = -Independent(Bernoulli(logits=self.decoder(z)), 1).log_prob(x).mean()
        loss = reconstruction
        if self.hparams.kl_by_hand:
            loss = loss + self.hparams.kl_by_hand * kl_divergence(posterior, prior).mean()
        if self.hparams.forget_outputs:
            return {"loss": loss}
        return {"loss": loss, "posterior": posterior, "prior": prior}

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self.step(batch)

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        return self.step(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
