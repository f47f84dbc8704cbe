"""The variational autoencoder (Kingma & Welling 2014), whose KL(q(z|x) ‖ p(z)) is a KL term from
the config, so β, annealing, free bits and capacity are config choices, not VAE code.

``ELBO(x) = E_{q(z|x)}[log p(x|z)] − KL(q(z|x) ‖ p(z))`` in nats per example. The task's own loss
is the reconstruction NLL ``−log p(x|z)`` with ``z ~ q(z|x)`` (summed over pixels, mean over the
batch); the config's term ``prior`` = ``weight · KL(posterior ‖ prior)`` completes the (β-)ELBO.

Outputs for KL terms:

* ``posterior`` — ``q(z|x) = N(μ(x), diag σ²(x))``, an Independent Normal (reparameterised);
* ``prior``     — ``p(z) = N(0, I)``, an Independent Normal with the posterior's batch shape;
* ``z``         — the posterior draw the decoder reconstructed from.

Logged (``<split>`` is train, val or test): ``<split>/elbo``, ``<split>/recon_nll`` and
``<split>/kl`` — the true, unweighted analytic KL, whatever the term's weight, schedule or
estimator; ``val|test/active_units`` (Burda et al. 2016: dimension i is active when
``Cov_x(E_q[z_i]) > active_threshold``); ``test/iw_nll``, the importance-weighted bound
``−log (1/k) Σ_j p(x, z_j)/q(z_j|x)`` with ``z_j ~ q(z|x)`` (Burda et al. 2016), which never exceeds
−ELBO in expectation; at the end of each validation epoch a histogram of the per-dimension KL and
three images: inputs above their reconstructions, decoded prior samples, and latent traversals of
the highest-KL dimensions. On the test set the reconstruction term averages the same k draws.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from klexp.errors import require, require_finite_positive, require_in, require_positive_int
from klexp.lightning.images import image_grid, upscale_factor
from klexp.lightning.logging import current_stage, log_metrics, logs_now
from klexp.nets.factory import NetFactory, check_net
from klexp.nets.mlp import MLP
from klexp.tasks.base import OneStepTask, OptimizerFactory, SchedulerFactory

Likelihood = Literal["bernoulli", "gaussian"]
LIKELIHOODS: tuple[str, ...] = ("bernoulli", "gaussian")

# Decoder rows per chunk of importance samples: bounds the memory of the IW estimate on big batches.
_IW_ROWS = 1 << 16
# Fixed seed of the prior draws shown each validation epoch, so the images are comparable over time.
_PRIOR_IMAGE_SEED = 0


class VAETask(OneStepTask):
    """A VAE: encoder → ``q(z|x)``, decoder → ``p(x|z)``; its KL comes from the config.

    Args:
        latent_dim: size of z.
        encoder: ``NetFactory`` (``klexp.nets.factory``) of the network from the flattened image
            (``in_features`` pixels) to ``(μ, log σ²)`` (``out_features = 2 · latent_dim``);
            a 256-256 ReLU ``MLP`` when None.
        decoder: ``NetFactory`` of the network from z (``in_features = latent_dim``) to one
            output per pixel; a 256-256 ReLU ``MLP`` when None.
        likelihood: ``bernoulli`` (logits per pixel; for binary data such as dynamically
            binarised digits) or ``gaussian`` (mean per pixel and one learned scale).
        iw_samples: k of the test-set importance-weighted NLL.
        active_threshold: a latent dimension is active when ``Var_x(E_q[z_i])`` exceeds this.
        num_images: images in the reconstruction and prior-sample grids.
        traversal_dims: how many of the highest-KL dimensions the traversal image shows.
        traversal_steps, traversal_range: values ``linspace(−range, range, steps)`` given to each
            traversed dimension, the others held at the posterior mean of the first val image.
        optimizer, lr_scheduler: see ``klexp.tasks.base.Task``.
    """

    output_names = frozenset({"posterior", "prior", "z"})

    def __init__(
        self,
        latent_dim: int = 8,
        encoder: NetFactory | None = None,
        decoder: NetFactory | None = None,
        likelihood: Likelihood = "bernoulli",
        iw_samples: int = 100,
        active_threshold: float = 0.01,
        num_images: int = 16,
        traversal_dims: int = 4,
        traversal_steps: int = 9,
        traversal_range: float = 3.0,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        require_positive_int("latent_dim", latent_dim)
        self.encoder_factory = encoder or functools.partial(MLP, hidden=[256, 256])
        self.decoder_factory = decoder or functools.partial(MLP, hidden=[256, 256])
        check_net(self.encoder_factory, "encoder")
        check_net(self.decoder_factory, "decoder")
        require_in("likelihood", likelihood, LIKELIHOODS)
        require_positive_int("iw_samples", iw_samples)
        require_finite_positive("active_threshold", active_threshold)
        require_positive_int("num_images", num_images)
        require_positive_int("traversal_dims", traversal_dims)
        require(isinstance(traversal_steps, int) and traversal_steps >= 2, "traversal_steps",
                "an integer ≥ 2", traversal_steps)
        require_finite_positive("traversal_range", traversal_range)
        self.latent_dim, self.likelihood = latent_dim, likelihood
        self.iw_samples, self.active_threshold = iw_samples, float(active_threshold)
        self.num_images, self.traversal_dims = num_images, traversal_dims
        self.traversal_steps, self.traversal_range = traversal_steps, float(traversal_range)
        self.encoder: nn.Module | None = None
        self.decoder: nn.Module | None = None
        self._epoch: dict[str, Any] = {}
        self._prior: tuple[Any, Independent] | None = None

    # ------------------------------------------------------------------ building

    def configure_model(self) -> None:
        if self.encoder is not None:
            return
        self.build(tuple(self.data_fact("input_shape")))
        datamodule = self.current_datamodule()
        if self.likelihood == "bernoulli" and getattr(datamodule, "binarize", True) is False:
            rank_zero_warn("task.likelihood=bernoulli with data.binarize=false: on grey pixel values "
                           "the Bernoulli 'NLL' is a cross-entropy, not a likelihood in nats; "
                           "set data.binarize=true (dynamic binarisation) for a true NLL")

    def build(self, input_shape: tuple[int, ...]) -> None:
        """Create encoder and decoder for images of ``input_shape`` (height, width)."""
        self.input_shape = input_shape
        pixels = math.prod(input_shape)
        self.encoder = self.encoder_factory(in_features=pixels, out_features=2 * self.latent_dim)
        self.decoder = self.decoder_factory(in_features=self.latent_dim, out_features=pixels)
        if self.likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(()))
        self.register_buffer("prior_loc", torch.zeros(self.latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(self.latent_dim), persistent=False)
        draws = torch.randn(self.num_images, self.latent_dim,
                            generator=torch.Generator().manual_seed(_PRIOR_IMAGE_SEED))
        self.register_buffer("prior_draws", draws, persistent=False)

    # ------------------------------------------------------------------ the model

    def encode(self, x: Tensor) -> Independent:
        """``q(z|x) = N(μ, diag exp(log σ²))`` from the encoder's ``(μ, log σ²)``."""
        mean, log_var = self.encoder(x).chunk(2, dim=-1)
        return Independent(Normal(mean, (0.5 * log_var).exp(), validate_args=False), 1,
                           validate_args=False)

    def prior_like(self, posterior: Independent) -> Independent:
        """``p(z) = N(0, I)`` with the posterior's batch shape (built once per shape and device:
        it has no parameters, and a small network's step feels every object it constructs)."""
        loc = posterior.base_dist.loc
        key = (loc.shape, loc.device, loc.dtype)
        if self._prior is None or self._prior[0] != key:
            prior = Independent(Normal(self.prior_loc.to(loc.dtype).expand(loc.shape),
                                       self.prior_scale.to(loc.dtype).expand(loc.shape),
                                       validate_args=False), 1, validate_args=False)
            self._prior = (key, prior)
        return self._prior[1]

    def decode(self, z: Tensor) -> Independent:
        """``p(x|z)``: independent Bernoulli(logits) or Normal(mean, σ) pixels."""
        return self._pixels(self.decoder(z))

    def reconstruction_nll(self, z: Tensor, x: Tensor) -> Tensor:
        """``−log p(x|z)`` per example: ``−decode(z).log_prob(x)`` for z and x of one batch shape.
        The Bernoulli one is the summed binary cross-entropy of the logits, one fused kernel:
        going through the distribution objects costs a small network's step ~3 %."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli" and out.shape == x.shape:
            return F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        return -self._pixels(out).log_prob(x)

    def _pixels(self, out: Tensor) -> Independent:
        if self.likelihood == "bernoulli":
            pixels = Bernoulli(logits=out, validate_args=False)
        else:
            pixels = Normal(out, self.log_scale.exp().expand_as(out), validate_args=False)
        return Independent(pixels, 1, validate_args=False)

    # ------------------------------------------------------------------ the step

    def step(self, batch: tuple[Tensor, ...], stage: str | None = None) -> dict[str, Any]:
        """The reconstruction NLL (the task's own loss) and the outputs for the KL terms."""
        stage = stage or current_stage(self)
        x = batch[0].flatten(1)
        posterior = self.encode(x)
        prior = self.prior_like(posterior)
        if stage == "test":
            z, recon, iw_nll = self.importance_weighted(x, posterior, prior)
        else:
            z = posterior.rsample()
            recon = self.reconstruction_nll(z, x)
        recon_nll = recon.mean()
        if logs_now(self):
            self._log_bound(stage, x, recon_nll.detach(), posterior, prior,
                            iw_nll if stage == "test" else None)
        return {"loss": recon_nll, "posterior": posterior, "prior": prior, "z": z}

    @torch.no_grad()
    def _log_bound(self, stage: str, x: Tensor, recon_nll: Tensor, posterior: Independent,
                   prior: Independent, iw_nll: Tensor | None) -> None:
        """Log ``ELBO = −(recon NLL + KL)`` with the true analytic KL, its parts and the IW-NLL;
        collect what the epoch-end diagnostics need."""
        kl_dims = kl_divergence(posterior.base_dist, prior.base_dist)
        kl = kl_dims.sum(-1).mean()
        metrics = {f"{stage}/elbo": -(recon_nll + kl), f"{stage}/recon_nll": recon_nll, f"{stage}/kl": kl}
        if iw_nll is not None:
            metrics[f"{stage}/iw_nll"] = iw_nll.mean()
        if stage != "train":
            self._accumulate(stage, x, posterior.base_dist.loc, kl_dims)
        log_metrics(self, metrics, batch_size=len(x), stage=stage)

    def importance_weighted(self, x: Tensor, posterior: Independent,
                            prior: Independent) -> tuple[Tensor, Tensor, Tensor]:
        """With ``k = iw_samples`` draws ``z_j ~ q(z|x)`` and ``log w_j = log p(x|z_j) + log p(z_j)
        − log q(z_j|x)``: the IW-NLL ``−(logsumexp_j log w_j − log k)`` (Burda et al. 2016) and the
        reconstruction NLL ``−mean_j log p(x|z_j)``, per example, plus the first draw."""
        k = self.iw_samples
        chunk = max(1, _IW_ROWS // len(x))
        log_weights, log_likelihoods, first = [], [], None
        for start in range(0, k, chunk):
            z = posterior.sample((min(chunk, k - start),))
            log_likelihood = self.decode(z).log_prob(x)
            log_weights.append(log_likelihood + prior.log_prob(z) - posterior.log_prob(z))
            log_likelihoods.append(log_likelihood)
            first = z[0] if first is None else first
        iw_nll = -(torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(k))
        return first, -torch.cat(log_likelihoods).mean(0), iw_nll

    # ------------------------------------------------------------------ evaluation diagnostics

    def _accumulate(self, stage: str, x: Tensor, means: Tensor, kl_dims: Tensor) -> None:
        epoch = self._epoch.setdefault(stage, {"means": [], "kl_sum": 0.0, "count": 0, "images": None})
        epoch["means"].append(means)
        epoch["kl_sum"] = epoch["kl_sum"] + kl_dims.sum(0)
        epoch["count"] += len(x)
        if epoch["images"] is None:
            epoch["images"] = x[: self.num_images]

    def _finish_epoch(self, stage: str) -> tuple[Tensor, Tensor] | None:
        """Log active units; return the per-dimension mean KL and the first images of the epoch."""
        epoch = self._epoch.pop(stage, None)
        if epoch is None:
            return None
        means = self.all_gather(torch.cat(epoch["means"])).reshape(-1, self.latent_dim)
        kl_sum = self.all_gather(epoch["kl_sum"]).reshape(-1, self.latent_dim).sum(0)
        count = self.all_gather(torch.tensor(float(epoch["count"]), device=self.device)).sum()
        active = active_units(means, self.active_threshold)
        self.log(f"{stage}/active_units", float(active), on_step=False, on_epoch=True)
        return kl_sum / count, epoch["images"]

    def on_validation_epoch_start(self) -> None:
        self._epoch.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._epoch.pop("test", None)

    def on_validation_epoch_end(self) -> None:
        finished = self._finish_epoch("val")
        if finished is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        experiment = self.tensorboard_writer()
        if experiment is not None:
            self.log_images(experiment, *finished)

    def on_test_epoch_end(self) -> None:
        self._finish_epoch("test")

    @torch.no_grad()
    def log_images(self, experiment: Any, kl_per_dim: Tensor, images: Tensor) -> None:
        """Per-dimension KL histogram; inputs over reconstructions; prior samples; traversals."""
        step = self.global_step
        height, width = self.input_shape
        scale = upscale_factor(height, width)
        per_row = min(8, self.num_images)

        def grid(flat: Tensor, columns: int) -> Tensor:
            return image_grid(flat.reshape(-1, height, width), columns, scale=scale)

        experiment.add_histogram("val/kl_per_dim", kl_per_dim, step)
        reconstructions = self.decode(self.encode(images).base_dist.loc).mean
        pairs = [t for start in range(0, len(images), per_row)
                 for t in (images[start : start + per_row], reconstructions[start : start + per_row])]
        experiment.add_image("val/reconstructions", grid(torch.cat(pairs), per_row), step)
        experiment.add_image("val/prior_samples", grid(self.decode(self.prior_draws).mean, per_row), step)

        dims = kl_per_dim.argsort(descending=True)[: self.traversal_dims]
        base = self.encode(images[:1]).base_dist.loc[0]
        values = torch.linspace(-self.traversal_range, self.traversal_range, self.traversal_steps,
                                device=base.device)
        z = base.repeat(len(dims), self.traversal_steps, 1)
        for row, dim in enumerate(dims.tolist()):
            z[row, :, dim] = values
        traversals = self.decode(z.reshape(-1, self.latent_dim)).mean
        experiment.add_image("val/traversals", grid(traversals, self.traversal_steps), step)
        rows = ", ".join(f"z_{d} ({kl_per_dim[d]:.2f} nats)" for d in dims.tolist())
        experiment.add_text("val/traversals", f"rows, top to bottom: {rows}; columns: z_i from "
                            f"{-self.traversal_range:g} to {self.traversal_range:g}", step)

    def custom_scalars(self) -> dict[str, dict[str, list[str]]]:
        return {"VAE": {
            "ELBO (nats)": [r"^(train|val|test)/elbo$"],
            "reconstruction NLL (nats)": [r"^(train|val|test)/recon_nll$"],
            "KL(q(z|x) ‖ p(z)) (nats)": [r"^(train|val|test)/kl$"],
            "active units": [r"^(val|test)/active_units$"],
        }}


def active_units(means: Tensor, threshold: float = 0.01) -> int:
    """Burda et al. (2016): the number of dimensions i with ``Cov_x(E_{q(z|x)}[z_i]) > threshold``,
    given the posterior means ``E_q[z]`` of a data set, shape ``(N, D)``."""
    if len(means) < 2:
        return 0
    return int((means.double().var(dim=0) > threshold).sum())
