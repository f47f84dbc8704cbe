"""Mean-field Gaussian Bayesian layers and weight priors (Blundell et al. 2015, "Weight Uncertainty
in Neural Networks", the Bayes-by-backprop paper).

Every weight and bias has its own Gaussian posterior ``q(w) = N(μ, σ²)`` with ``σ = softplus(ρ) =
log(1 + e^ρ)``, so the learnt ``(μ, ρ)`` are unconstrained. A forward pass takes weights drawn by the
reparameterisation ``w = μ + σ·ε, ε ~ N(0, I)`` (``Normal.rsample``), so the gradient of the loss
reaches ``μ`` and ``ρ`` through the sample.

The whole network's posterior is one distribution over all its weights concatenated (``BayesMLP.
posterior``), an ``Independent`` Normal whose event is the flat weight vector: a KL term then
reads one pair ``(posterior, prior)`` whatever the depth, its closed form is the sum of the
per-layer (per-weight) closed forms, and a Monte-Carlo estimate uses the weights that were
actually drawn for the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from klexp.errors import require, require_finite_positive
from klexp.nets.mlp import ACTIVATIONS, Activation, check_mlp_args


def inverse_softplus(sigma: float) -> float:
    """``ρ = log(e^σ − 1)``, the ρ whose ``softplus(ρ) = σ``."""
    require_finite_positive("init_sigma", sigma)
    return math.log(math.expm1(sigma))


class BayesLinear(nn.Module):
    """A linear layer with a factorised Gaussian posterior over its weights and biases.

    ``y = x Wᵀ + b`` with ``(W, b)`` drawn from ``q = N(μ, softplus(ρ)²)``; ``forward`` takes ``S``
    drawn weight vectors (``weights`` of shape ``(S, numel)``, laid out as ``[W.flatten(), b]``) and
    maps inputs ``(B, in)`` or ``(S, B, in)`` to ``(S, B, out)``: one output per weight sample.

    μ starts as ``nn.Linear`` initialises its weights (uniform in ``±1/√in``), σ at ``init_sigma``.
    """

    def __init__(self, in_features: int, out_features: int, init_sigma: float = 0.01) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.weight_rho = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_rho = nn.Parameter(torch.empty(out_features))
        self.reset_parameters(init_sigma)

    def reset_parameters(self, init_sigma: float) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight_mu, -bound, bound)
        nn.init.uniform_(self.bias_mu, -bound, bound)
        rho = inverse_softplus(init_sigma)
        nn.init.constant_(self.weight_rho, rho)
        nn.init.constant_(self.bias_rho, rho)

    @property
    def numel(self) -> int:
        """How many weights (including biases) the layer has."""
        return self.out_features * (self.in_features + 1)

    def mu(self) -> Tensor:
        return torch.cat([self.weight_mu.flatten(), self.bias_mu])

    def sigma(self) -> Tensor:
        """``σ = softplus(ρ)``, flat like ``mu()``."""
        return F.softplus(torch.cat([self.weight_rho.flatten(), self.bias_rho]))

    def posterior(self) -> Independent:
        """``q(w) = Π_i N(w_i; μ_i, σ_i²)`` over the layer's flat weight vector."""
        return Independent(Normal(self.mu(), self.sigma(), validate_args=False), 1)

    def forward(self, inputs: Tensor, weights: Tensor) -> Tensor:
        samples = weights.shape[0]
        split = self.out_features * self.in_features
        weight = weights[:, :split].view(samples, self.out_features, self.in_features)
        bias = weights[:, split:].unsqueeze(1)
        # (B, in) inputs broadcast against every sample's weights: (S, B, in) @ (S, in, out).
        return torch.matmul(inputs, weight.transpose(1, 2)) + bias


class BayesMLP(nn.Module):
    """``BayesLinear → activation`` for each hidden width, then a final ``BayesLinear``.

    ``posterior()`` is one ``Independent`` Normal over all ``num_weights`` weights (layers in
    order); ``forward(x, weights)`` runs the network once per row of ``weights`` (``(S, D)``)
    and returns logits of shape ``(S, B, out)``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: Activation = "relu",
        init_sigma: float = 0.01,
    ) -> None:
        super().__init__()
        check_mlp_args(hidden, activation, 0.0)
        widths = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(
            BayesLinear(a, b, init_sigma) for a, b in pairwise(widths)
        )
        self.activation = ACTIVATIONS[activation]()

    @property
    def num_weights(self) -> int:
        return sum(layer.numel for layer in self.layers)

    def posterior(self) -> Independent:
        """``q(w) = N(μ, diag σ²)`` over the concatenation of every layer's weights."""
        mu = torch.cat([layer.mu() for layer in self.layers])
        sigma = torch.cat([layer.sigma() for layer in self.layers])
        return Independent(Normal(mu, sigma, validate_args=False), 1)

    def forward(self, inputs: Tensor, weights: Tensor) -> Tensor:
        chunks = weights.split([layer.numel for layer in self.layers], dim=-1)
        hidden = inputs
        for index, (layer, chunk) in enumerate(zip(self.layers, chunks, strict=True)):
            hidden = layer(hidden, chunk)
            if index < len(self.layers) - 1:
                hidden = self.activation(hidden)
        return hidden


# ------------------------------------------------------------------------------------------ priors


def gaussian_prior(num_weights: int, sigma: Tensor) -> Independent:
    """``p(w) = Π_i N(w_i; 0, σ_p²)``: KL(q ‖ p) has a closed form (registered by torch)."""
    base = Normal(torch.zeros_like(sigma), sigma, validate_args=False)
    return Independent(base.expand(torch.Size([num_weights])), 1)


def scale_mixture_prior(num_weights: int, pi: Tensor, sigmas: Tensor) -> Independent:
    """Blundell et al.'s scale mixture ``p(w) = Π_i [π N(w_i; 0, σ₁²) + (1 − π) N(w_i; 0, σ₂²)]``
    (σ₁ > σ₂, σ₂ ≪ 1). KL(q ‖ p) has no closed form: estimate it by Monte Carlo (k1/k3)."""
    require(sigmas.numel() == 2, "sigmas", "two scales (σ₁, σ₂)", tuple(sigmas.shape))
    mixture = Categorical(probs=torch.stack([pi, 1 - pi]), validate_args=False)
    components = Normal(torch.zeros_like(sigmas), sigmas, validate_args=False)
    base: Distribution = MixtureSameFamily(mixture, components, validate_args=False)
    return Independent(base.expand(torch.Size([num_weights])), 1)
