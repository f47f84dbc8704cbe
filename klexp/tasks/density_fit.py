"""Mode covering versus mode seeking: one Gaussian ``q = N(μ, σ²)`` fitted to a fixed mixture of
two Gaussians ``p = Σ_k w_k N(μ_k, σ_k²)``, in one dimension.

The task has no loss of its own: its only parameters are ``μ`` and ``log σ``, and its steps return
``{"loss": 0, "target": p, "model": q}``. The fit is a KL term from the config
(``klexp/conf/kl/fit.yaml``, ``p: target, q: model``) whose direction chooses the objective:

* ``forward``, ``KL(p ‖ q) = E_p[log p − log q]``: estimated with k1 on draws of ``p``, whose
  gradient is ``−E_p[∇ log q]``, that of maximum likelihood. Its minimiser over Gaussians matches
  the moments of ``p`` (the *oracle* ``N(E_p[x], Var_p[x])``): ``q`` covers both modes.
* ``reverse``, ``KL(q ‖ p) = E_q[log q − log p]``: estimated on reparameterised draws of ``q``
  (k1 or k3). With well-separated modes it has a local minimum on each: ``q`` seeks one mode.

Neither direction has a closed form for a mixture; the task measures both accurately by
quadrature (``kl_by_quadrature``) and logs, on the training steps Lightning writes, ``fit/mean``,
``fit/scale``, ``fit/kl_forward``, ``fit/kl_reverse`` (nats) and the oracle beside them
(``fit/oracle_mean``, ``fit/oracle_scale``, ``fit/oracle_kl_forward``: the least forward KL a
Gaussian can reach); the same under ``val/`` at each validation, with a figure of ``p``, ``q`` and
the oracle on TensorBoard (``val/densities``). The term itself logs its Monte-Carlo estimate as
``kl/<term>/value``.

"Data": none. The train loader is the indices of the ``steps_per_epoch`` steps of an epoch, the
validation loader one index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, MixtureSameFamily, Normal

from klexp.core.directions import JensenShannon
from klexp.core.estimate import ClosedForm
from klexp.data.step_indices import StepIndices
from klexp.errors import KlexpError, require, require_finite, require_finite_positive, require_positive_int
from klexp.lightning.logging import log_metrics, logs_now
from klexp.lightning.loss import Term
from klexp.lightning.term import kl_measures, kl_terms_of
from klexp.tasks.base import OptimizerFactory, SchedulerFactory, Task

#: half-width of the quadrature grid around each Gaussian, in its standard deviations: the mass
#: left outside is below 2·10⁻³² of each component
GRID_HALF_WIDTH = 12.0
#: quadrature points: the step is 30/4,000 = 0.0075 for the default mixture alone, and grows with
#: a wide q (0.017 at q = N(1.2, 2.93²))
GRID_POINTS = 4_001


def gaussian_mixture(weights: Tensor, means: Tensor, scales: Tensor) -> MixtureSameFamily:
    """``p(x) = Σ_k w_k N(x; μ_k, σ_k²)`` (``weights`` need not be normalised)."""
    return MixtureSameFamily(Categorical(probs=weights), Normal(means, scales), validate_args=False)


def moment_matching(p: Distribution) -> Normal:
    """``N(E_p[x], Var_p[x])``: the Gaussian that minimises ``KL(p ‖ q)`` over Gaussians ``q``
    (setting the gradient of ``−E_p[log q]`` to zero matches the first two moments)."""
    return Normal(p.mean, p.variance.sqrt())


def span(*gaussians: Normal, half_width: float) -> tuple[float, float]:
    """``[min(μ − half_width·σ), max(μ + half_width·σ)]`` over the Gaussians' locations and scales
    (the components of a mixture, or single Gaussians)."""
    means = torch.cat([g.loc.detach().reshape(-1) for g in gaussians]).double()
    scales = torch.cat([g.scale.detach().reshape(-1) for g in gaussians]).double()
    return float((means - half_width * scales).min()), float((means + half_width * scales).max())


def quadrature_grid(*gaussians: Normal, points: int = GRID_POINTS) -> Tensor:
    """A uniform float64 grid of ``points`` over ``span(*gaussians, half_width=12)``."""
    return torch.linspace(*span(*gaussians, half_width=GRID_HALF_WIDTH), points, dtype=torch.float64,
                          device=gaussians[0].loc.device)


def kl_by_quadrature(p: Distribution, q: Distribution, grid: Tensor) -> Tensor:
    """``KL(p ‖ q) = ∫ p(x) (log p(x) − log q(x)) dx`` in nats, by the trapezoidal rule on
    ``grid`` (detached; in float64 when p and q are).

    For a smooth integrand that vanishes at both ends of the grid the rule's error falls faster
    than any power of the step h (Euler–Maclaurin); for Gaussian-shaped integrands of scale σ it
    is of order exp(−2π²σ²/h²). On ``quadrature_grid`` with float64 distributions it agrees with
    scipy's adaptive quadrature and with torch's closed form for two Gaussians to 1e-10 nats
    (tests/test_density_fit.py), down to a q as narrow as 1.3 grid steps."""
    with torch.no_grad():
        log_p, log_q = p.log_prob(grid).double(), q.log_prob(grid).double()
        integrand = torch.where(log_p > -math.inf, log_p.exp() * (log_p - log_q), 0.0)
        return torch.trapezoid(integrand, grid.to(integrand))


def plot_densities(axes: Axes, target: Distribution, fits: Mapping[str, Normal],
                   oracle: Normal | None = None, start: Normal | None = None, title: str = "") -> None:
    """Draw on ``axes`` the target density, each fitted Gaussian (label → Gaussian), the
    moment-matching oracle and the Gaussian the fits started from, over 4 standard deviations
    around the components, the fits and the start."""
    shown = [*fits.values(), *([start] if start is not None else [])]
    x = torch.linspace(*span(target.component_distribution, *shown, half_width=4.0), 1201,
                       dtype=torch.float64)

    def density(d: Distribution) -> Any:
        return d.log_prob(x.to(d.mean)).exp().detach().double().cpu().numpy()

    axes.fill_between(x.numpy(), density(target), color="0.85", label="p (target mixture)")
    axes.plot(x.numpy(), density(target), color="0.3", linewidth=1)
    if start is not None:
        axes.plot(x.numpy(), density(start), ":", color="0.4", linewidth=1.2, label="q at the start")
    for label, q in fits.items():
        axes.plot(x.numpy(), density(q), linewidth=2, label=label)
    if oracle is not None:  # on top: a forward fit lies on it
        axes.plot(x.numpy(), density(oracle), "k--", linewidth=1.2,
                  label="moment matching N(E_p x, Var_p x)")
    axes.set(xlabel="x", ylabel="density", title=title)
    axes.set_ylim(bottom=0)
    axes.legend(fontsize="small")


def density_figure(target: Distribution, fits: Mapping[str, Normal], oracle: Normal | None = None,
                   start: Normal | None = None, title: str = "") -> Figure:
    """``plot_densities`` on a figure of its own."""
    figure = Figure(figsize=(6.4, 3.6), layout="constrained")
    plot_densities(figure.subplots(), target, fits, oracle, start, title)
    return figure


class DensityFitTask(Task):
    """``q = N(μ, σ²)`` fitted to ``p = Σ_k w_k N(μ_k, σ_k²)`` by the config's KL term.

    Args:
        weights, means, scales: ``w_k``, ``μ_k``, ``σ_k`` of the target mixture (same length;
            the weights are normalised).
        init_mean, init_scale: ``μ`` and ``σ`` at the start.
        steps_per_epoch: training steps per epoch (a validation, and a figure, follows each).
    """

    output_names = frozenset({"target", "model"})

    def __init__(
        self,
        weights: Sequence[float] = (0.3, 0.7),
        means: Sequence[float] = (-3.0, 3.0),
        scales: Sequence[float] = (1.0, 1.0),
        init_mean: float = 0.0,
        init_scale: float = 2.0,
        steps_per_epoch: int = 100,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        weights, means, scales = list(weights), list(means), list(scales)
        require(len(weights) > 0 and len(means) == len(weights) and len(scales) == len(weights),
                "means", f"as many component means and scales as weights ({len(weights)})",
                {"means": means, "scales": scales})
        for key, values in (("weights", weights), ("scales", scales)):
            for value in values:
                require_finite_positive(key, value)
        require_finite_positive("init_scale", init_scale)
        require_finite("init_mean", init_mean)
        require_positive_int("steps_per_epoch", steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.init_mean, self.init_scale = float(init_mean), float(init_scale)
        self.mean = nn.Parameter(torch.tensor(float(init_mean)))
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.register_buffer("weights", torch.tensor(weights) / sum(weights), persistent=False)
        self.register_buffer("means", torch.tensor(means), persistent=False)
        self.register_buffer("scales", torch.tensor(scales), persistent=False)

    def target(self) -> MixtureSameFamily:
        """p: the fixed mixture."""
        return gaussian_mixture(self.weights, self.means, self.scales)

    def model(self) -> Normal:
        """q = N(μ, σ²) with σ = exp(log σ)."""
        return Normal(self.mean, self.log_scale.exp(), validate_args=False)

    def check_terms(self, terms: Sequence[Term]) -> None:
        """Every term is a KL term, and a KL with the mixture has no closed form (klexp's runner
        calls this before building anything; fitting calls it again)."""
        for term in kl_measures(terms, type(self).__name__):
            if ("target" in (term.p, term.q) and isinstance(term.estimator, ClosedForm)
                    and not isinstance(term.direction, JensenShannon)):
                raise KlexpError(
                    f"kl.{term.name}.estimator: a KL between a Gaussian mixture and a Gaussian has "
                    "no closed form; use k1 (forward: maximum likelihood) or k1 | k3 (reverse)"
                )

    def on_fit_start(self) -> None:
        self.check_terms(kl_terms_of(self.trainer))

    # ------------------------------------------------------------------ the loop

    def train_dataloader(self) -> StepIndices:
        return StepIndices(self.steps_per_epoch)

    def val_dataloader(self) -> StepIndices:
        return StepIndices(1)

    def training_step(self, batch: int, batch_idx: int) -> dict[str, Any]:
        outputs = self.step()
        if logs_now(self):
            log_metrics(self, self.fit_metrics("fit"))
        return outputs

    def validation_step(self, batch: int, batch_idx: int) -> dict[str, Any]:
        log_metrics(self, self.fit_metrics("val"), batch_size=1)
        return self.step()

    def step(self) -> dict[str, Any]:
        """No loss of the task's own: the KL term between ``target`` and ``model`` is the fit."""
        return {"loss": self.mean.new_zeros(()), "target": self.target(), "model": self.model()}

    # ------------------------------------------------------------------ what is logged

    def as_float64(self) -> tuple[MixtureSameFamily, Normal]:
        """p and q in float64, detached, for the quadrature: float32 parameters alone would move
        a KL by ~1e-7 relative."""
        p = gaussian_mixture(self.weights.double(), self.means.double(), self.scales.double())
        return p, Normal(self.mean.detach().double(), self.log_scale.detach().double().exp())

    def fit_metrics(self, prefix: str) -> dict[str, Tensor]:
        """q's mean and scale, both KLs by quadrature, and the moment-matching oracle (nats)."""
        p, q = self.as_float64()
        oracle = moment_matching(p)
        grid = quadrature_grid(p.component_distribution, q)
        return {
            f"{prefix}/mean": q.mean,
            f"{prefix}/scale": q.stddev,
            f"{prefix}/kl_forward": kl_by_quadrature(p, q, grid),
            f"{prefix}/kl_reverse": kl_by_quadrature(q, p, grid),
            f"{prefix}/oracle_mean": oracle.mean,
            f"{prefix}/oracle_scale": oracle.stddev,
            f"{prefix}/oracle_kl_forward": kl_by_quadrature(p, oracle, grid),
        }

    def on_validation_epoch_end(self) -> None:
        if not isinstance(self.logger, TensorBoardLogger) or self.trainer.sanity_checking:
            return
        p, q = self.as_float64()
        grid = quadrature_grid(p.component_distribution, q)
        terms = [t for t in kl_terms_of(self.trainer) if {t.p, t.q} == {"target", "model"}]
        fitted_by = ", ".join(f"{t.direction} KL ({t.estimator})" for t in terms) or "no KL term"
        title = (f"step {self.global_step}: KL(p‖q) = {kl_by_quadrature(p, q, grid):.3f}, "
                 f"KL(q‖p) = {kl_by_quadrature(q, p, grid):.3f} nats")
        start = Normal(torch.tensor(self.init_mean, dtype=torch.float64),
                       torch.tensor(self.init_scale, dtype=torch.float64))
        figure = density_figure(p, {f"q, fitted by {fitted_by}": q}, moment_matching(p), start, title)
        self.logger.experiment.add_figure("val/densities", figure, self.global_step)

    def custom_scalars(self) -> dict[str, dict[str, list[str]]]:
        return {"Density fit": {
            "mean: q vs moment matching": [r"^fit/(oracle_)?mean$"],
            "scale: q vs moment matching": [r"^fit/(oracle_)?scale$"],
            "KL(p ‖ q), quadrature, vs the oracle's": [r"^fit/(oracle_)?kl_forward$"],
            "KL(q ‖ p), quadrature": [r"^fit/kl_reverse$"],
        }}
