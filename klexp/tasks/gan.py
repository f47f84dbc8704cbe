"""A GAN on 2-D toy data: a generator Q, which can only be sampled, trained against data P, which
are only samples, on a divergence estimated through a critic — the divergence is config.

The divergence object (``klexp/conf/divergence/<name>.yaml``, composed into ``task.divergence``) says
what the critic maximises and what the generator minimises, from the critic's raw outputs ``v``
on a batch of data (``v_real``) and of generated points (``v_fake``):

* f-divergences (``klexp.core.fdivergences.VariationalFDivergence``, f-GAN): the critic
  maximises ``E_P[g_f(v)] − E_Q[f*(g_f(v))] ≤ D_f(P ‖ Q)``; the generator minimises
  ``−E_Q[f*(g_f(v))]`` (minimax) or ``−E_Q[g_f(v)]`` (non-saturating);
* Wasserstein-1 (``klexp.core.wasserstein.WassersteinGP``, WGAN-GP): the critic maximises
  ``E_P[v] − E_Q[v]`` with a gradient penalty of weight λ; the generator minimises ``−E_Q[v]``.

One training step is one batch of data and one critic update, read top to bottom in
``training_step``: generate as many points, ``critic_loss = −objective + λ·penalty``, step the
critic; then, after every ``divergence.critic_steps``-th critic update, a generator update on a
fresh batch of noise. (Lightning's ``trainer.global_step`` counts the updates of both, as it
does for every manually optimised module; the logging step counts batches.)

Logged (``<split>`` is val or test):

* every ``trainer.log_every_n_steps`` training steps: ``loss/critic`` (``−objective + λ·penalty``),
  ``loss/generator`` (the latest generator update's loss), ``gan/<divergence>_bound`` (the critic's
  objective on the batch before its update: an estimate of a lower bound on ``D_f(P ‖ Q)`` in nats,
  or of W1 for ``wasserstein``) and, with a penalty, ``gan/gradient_penalty``;
* each evaluation, on as many generated points (from noise fixed per split) as the data module's
  evaluation batch holds (``klexp.tasks.gan_metrics``): ``<split>/modes``, ``<split>/high_quality``
  (%), ``<split>/kl_modes``, ``<split>/reverse_kl_modes`` and ``<split>/knn_kl`` (nats);
* after each validation, on rank zero: the TensorBoard figure ``val/samples`` — generated points
  over the data, on the critic's contours.

A logged loss that turns NaN or infinite ends training with a warning (``stop_if_diverged``); the
final evaluation then scores the diverged generator (0 modes, k-NN KL NaN) and logs
``test/diverged`` = 1, so the run's summary says what happened.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from klexp.core.wasserstein import gradient_penalty
from klexp.errors import require_positive, require_positive_int
from klexp.lightning.internals import logging_step
from klexp.lightning.logging import current_stage, log_metrics, logs_now
from klexp.nets.factory import NetFactory, check_net
from klexp.nets.mlp import MLP
from klexp.tasks.base import OptimizerFactory, Task
from klexp.tasks.gan_metrics import mode_metrics

# Seeds of the evaluation noise, per split: every evaluation scores the same latent points.
_EVAL_NOISE_SEEDS = {"val": 0, "test": 1}


class CriticDivergence(Protocol):
    """What the task needs of a divergence (``VariationalFDivergence``, ``WassersteinGP``)."""

    name: str
    critic_steps: int
    penalty_weight: float

    def critic_objective(self, v_real: Tensor, v_fake: Tensor) -> Tensor: ...

    def generator_loss(self, v_fake: Tensor) -> Tensor: ...


class GANTask(Task):
    """A generator and a critic trained against each other on ``divergence``.

    Args:
        divergence: the objective (``klexp/conf/divergence/*.yaml``).
        noise_dim: size of the generator's standard normal input z.
        generator: ``NetFactory`` (``klexp.nets.factory``) of the network ``z ↦ x``
            (``in_features = noise_dim``, ``out_features`` = the data's dimension); critic: that of
            ``x ↦ v`` (``out_features = 1``); 128-128-128 ReLU ``MLP``s when None.
        generator_optimizer, critic_optimizer: factories taking the parameters (Hydra
            ``_partial_: true``); Adam(1e-4, β = (0.5, 0.9)) as in WGAN-GP when null.
        mode_threshold: a sample is high quality within this many σ of its nearest mode.
        knn_k: k of the k-NN KL estimate.
        contour_resolution: grid points per axis of the critic's contour in the figure.
    """

    output_names = frozenset()

    def __init__(
        self,
        divergence: CriticDivergence,
        noise_dim: int = 2,
        generator: NetFactory | None = None,
        critic: NetFactory | None = None,
        generator_optimizer: OptimizerFactory | None = None,
        critic_optimizer: OptimizerFactory | None = None,
        mode_threshold: float = 3.0,
        knn_k: int = 1,
        contour_resolution: int = 100,
    ) -> None:
        super().__init__()
        require_positive_int("noise_dim", noise_dim)
        self.generator_factory = generator or functools.partial(MLP, hidden=[128, 128, 128])
        self.critic_factory = critic or functools.partial(MLP, hidden=[128, 128, 128])
        check_net(self.generator_factory, "generator")
        check_net(self.critic_factory, "critic")
        require_positive("mode_threshold", mode_threshold)
        require_positive_int("knn_k", knn_k)
        require_positive_int("contour_resolution", contour_resolution)
        self.divergence = divergence
        self.noise_dim = noise_dim
        self.generator_optimizer, self.critic_optimizer = generator_optimizer, critic_optimizer
        self.mode_threshold, self.knn_k = float(mode_threshold), knn_k
        self.contour_resolution = contour_resolution
        self.automatic_optimization = False
        self.generator: nn.Module | None = None
        self.critic: nn.Module | None = None
        self._last_generator_loss: Tensor | None = None
        self._figure_points: tuple[Tensor, Tensor] | None = None
        self.diverged = False

    # ------------------------------------------------------------------ building

    def configure_model(self) -> None:
        if self.generator is not None:
            return
        self.build(int(self.data_fact("data_dim")))
        self.register_buffer("modes", self.data_fact("modes").clone(), persistent=False)
        self.mode_std = float(self.data_fact("mode_std"))

    def build(self, data_dim: int) -> None:
        """Create the generator ``z ↦ x`` and the critic ``x ↦ v`` for points of ``data_dim``."""
        self.data_dim = data_dim
        self.generator = self.generator_factory(in_features=self.noise_dim, out_features=data_dim)
        self.critic = self.critic_factory(in_features=data_dim, out_features=1)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        def default(params: Any) -> torch.optim.Optimizer:
            return torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.9))

        # named parameter groups: Lightning's LearningRateMonitor logs lr-Adam/generator and
        # lr-Adam-1/critic rather than lr-Adam and lr-Adam-1
        generator = (self.generator_optimizer or default)(
            [{"params": self.generator.parameters(), "name": "generator"}])
        critic = (self.critic_optimizer or default)([{"params": self.critic.parameters(), "name": "critic"}])
        return [generator, critic]

    # ------------------------------------------------------------------ the model

    def sample(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """``count`` generated points ``G(z)``, ``z ~ N(0, I)`` (from ``generator`` if given)."""
        if generator is None:
            noise = torch.randn(count, self.noise_dim, device=self.device, dtype=self.dtype)
        else:
            noise = torch.randn(count, self.noise_dim, generator=generator, dtype=self.dtype)
        return self.generator(noise.to(self.device))

    def critic_values(self, x: Tensor) -> Tensor:
        """The critic's raw outputs ``v(x)``, shape ``(batch,)``."""
        return self.critic(x).squeeze(-1)

    # ------------------------------------------------------------------ one training step

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        real = batch[0]
        generator_optimizer, critic_optimizer = self.optimizers()
        divergence = self.divergence
        # critic updates so far, from global_step = critic updates + generator updates (resumes exactly)
        cycle = divergence.critic_steps + 1
        critic_updates = self.global_step - self.global_step // cycle

        fake = self.sample(len(real)).detach()
        objective = divergence.critic_objective(self.critic_values(real), self.critic_values(fake))
        critic_loss = -objective
        penalty = None
        if divergence.penalty_weight > 0:
            penalty = gradient_penalty(self.critic_values, real, fake)
            critic_loss = critic_loss + divergence.penalty_weight * penalty
        critic_optimizer.zero_grad()
        self.manual_backward(critic_loss)
        critic_optimizer.step()

        if (critic_updates + 1) % divergence.critic_steps == 0:
            self.toggle_optimizer(generator_optimizer)  # no gradients into the critic
            generator_loss = divergence.generator_loss(self.critic_values(self.sample(len(real))))
            generator_optimizer.zero_grad()
            self.manual_backward(generator_loss)
            generator_optimizer.step()
            self.untoggle_optimizer(generator_optimizer)
            self._last_generator_loss = generator_loss.detach()

        if logs_now(self):
            metrics = {"loss/critic": critic_loss.detach(),
                       f"gan/{divergence.name}_bound": objective.detach()}
            if self._last_generator_loss is not None:
                metrics["loss/generator"] = self._last_generator_loss
            if penalty is not None:
                metrics["gan/gradient_penalty"] = penalty.detach()
            log_metrics(self, metrics)
            self.stop_if_diverged(metrics)

    def stop_if_diverged(self, metrics: dict[str, Tensor]) -> None:
        """End training (agreed across ranks) once a logged loss is NaN or infinite: a diverged
        GAN is a result of the divergence and its settings, so the run still reaches its final
        evaluation — on the diverged generator — rather than failing (and, in a sweep, taking the
        sweep down with it). Checked on the logged steps only, sparing a device sync per step."""
        finite = torch.stack([v.float() for v in metrics.values()]).isfinite().all()
        diverged = self.trainer.strategy.reduce_boolean_decision(not bool(finite), all=False)
        if diverged:
            rank_zero_warn(f"GAN training diverged at step {logging_step(self.trainer)} "
                           f"({', '.join(f'{k} = {float(v):g}' for k, v in metrics.items())}); "
                           "stopping, then evaluating the generator as it is")
            self.trainer.should_stop = True
            self.diverged = True

    # ------------------------------------------------------------------ evaluation

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self.evaluate(batch[0])

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self.evaluate(batch[0])

    @torch.no_grad()
    def evaluate(self, data: Tensor) -> None:
        """Score as many generated points as ``data`` holds (from noise fixed per split and rank),
        gathered over the ranks, so every rank logs the metrics of the whole evaluation set."""
        stage = current_stage(self)
        noise_seed = 1000 * _EVAL_NOISE_SEEDS[stage] + self.global_rank
        fake = self.sample(len(data), torch.Generator().manual_seed(noise_seed))
        data = self.all_gather(data).reshape(-1, self.data_dim)
        fake = self.all_gather(fake).reshape(-1, self.data_dim)
        metrics = mode_metrics(fake, data, self.modes, self.mode_std, threshold=self.mode_threshold,
                               knn_k=self.knn_k)
        metrics = {f"{stage}/{name}": value for name, value in metrics.items()}
        if stage == "test":  # a diverged run is a result, and says so in its summary
            metrics["test/diverged"] = float(self.diverged)
        log_metrics(self, metrics, batch_size=len(data))
        if stage == "val":
            self._figure_points = (data, fake)

    def on_validation_epoch_end(self) -> None:
        points, self._figure_points = self._figure_points, None
        if points is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        experiment = self.tensorboard_writer()
        if experiment is not None:
            step = logging_step(self.trainer)  # the step the scalars are written at: batches
            experiment.add_figure("val/samples", self.samples_figure(*points, title=f"step {step}"), step)

    @torch.no_grad()
    def samples_figure(self, data: Tensor, fake: Tensor, title: str = "") -> Any:
        """Generated points (blue) over the data (orange) on the critic's contours; the view
        holds the data and the central 98 % of the generated points, up to 3× the data's span."""
        from matplotlib.figure import Figure

        low, high = data.min(0).values, data.max(0).values
        span = (high - low).max() + 8 * self.mode_std
        # a diverged generator's NaN points leave the view to the data
        fake_low = fake.nanquantile(0.01, dim=0).nan_to_num(nan=low[0].item())
        fake_high = fake.nanquantile(0.99, dim=0).nan_to_num(nan=high[0].item())
        low = fake_low.clamp(low - span, low) - 0.1 * span
        high = fake_high.clamp(high, high + span) + 0.1 * span
        axes = [torch.linspace(low[i].item(), high[i].item(), self.contour_resolution,
                               device=self.device, dtype=self.dtype) for i in range(2)]
        grid_x, grid_y = torch.meshgrid(*axes, indexing="xy")
        values = self.critic_values(torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1))

        figure = Figure(figsize=(5, 5), dpi=100)
        ax = figure.add_subplot()
        if values.isfinite().all():
            contours = ax.contourf(grid_x.cpu(), grid_y.cpu(), values.reshape(grid_x.shape).float().cpu(),
                                   levels=20, cmap="Greys", alpha=0.6)
            figure.colorbar(contours, ax=ax, fraction=0.046, pad=0.04, label="critic v(x)")
        ax.scatter(*data.float().cpu().T, s=2, c="tab:orange", label="data")
        ax.scatter(*fake.float().cpu().T, s=2, c="tab:blue", alpha=0.5, label="generated")
        ax.set_xlim(low[0].item(), high[0].item())
        ax.set_ylim(low[1].item(), high[1].item())
        ax.set_aspect("equal")
        ax.set_title(f"{self.divergence.name}, {title}" if title else self.divergence.name)
        figure.legend(loc="lower center", ncol=2, markerscale=4, frameon=False)
        figure.tight_layout(rect=(0, 0.05, 1, 1))
        return figure

    def custom_scalars(self) -> dict[str, dict[str, list[str]]]:
        return {"GAN": {
            "losses": [r"^loss/(critic|generator)$"],
            "critic's bound on the divergence": [r"^gan/.+_bound$"],
            "gradient penalty": [r"^gan/gradient_penalty$"],
            "modes captured": [r"^(val|test)/modes$"],
            "high-quality samples (%)": [r"^(val|test)/high_quality$"],
            "KL over modes (nats)": [r"^(val|test)/(reverse_)?kl_modes$"],
            "k-NN KL(data ‖ model) (nats)": [r"^(val|test)/knn_kl$"],
        }}
