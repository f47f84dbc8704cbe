"""Variational inference over a classifier's weights: Bayes by backprop (Blundell et al. 2015).

The posterior over weights ``p(w | D)`` is approximated by a mean-field Gaussian ``q(w)`` that
maximises the evidence lower bound; per training example (N of them), the loss is

    −ELBO / N = E_q[−log p(y | x, w)]  +  KL(q(w) ‖ p(w)) / N
              = (task loss: data NLL)  +  (KL term ``weights``, divide_by=num_train)

The task computes only the NLL, with weights drawn by the reparameterisation trick; the KL is a
``KLTerm`` from the config (``klexp/conf/kl/weights.yaml``): closed form for the Gaussian prior, Monte
Carlo (k1/k3, on the weights drawn for this step) for the scale-mixture prior, weighted and
annealed like any other term.

Outputs for KL terms:

* ``weights_posterior`` — q(w): an ``Independent`` Normal over all weights concatenated;
* ``weights_prior``     — p(w): ``N(0, σ_p²)`` per weight, or the scale mixture, same event shape;
* ``weights_sample``    — the weights drawn for this step's forward pass, ``(S, num_weights)``;
* ``num_train``         — N, the training-set size.

Prediction averages ``S = eval_samples`` weight samples, ``p(y | x) = (1/S) Σ_s p(y | x, w_s)``.
Validation and test log accuracy, NLL and ECE of that predictive distribution, and its entropy
``H[p(y | x)]`` and mutual information ``H[p(y | x)] − (1/S) Σ_s H[p(y | x, w_s)]`` on the
split itself, on uniform-noise images and on the data's held-out class (``holdout_class``), with
histograms of the entropies. Given a checkpoint of ``experiment=classification`` trained on the
same split (``baseline_checkpoint``), the test also reports that deterministic MLP's metrics under
``test/baseline/...``, side by side.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc

from klexp.core.categorical import categorical_entropy
from klexp.core.estimate import ClosedForm
from klexp.errors import (
    KlexpError,
    require,
    require_finite_positive,
    require_in,
    require_positive_int,
)
from klexp.lightning.logging import current_stage, log_metrics, logs_now
from klexp.lightning.loss import Term
from klexp.lightning.term import kl_measures, kl_terms_of
from klexp.nets.bayesian import BayesMLP, gaussian_prior, scale_mixture_prior
from klexp.nets.factory import NetFactory, check_net
from klexp.nets.frozen import load_classifier
from klexp.tasks.base import OneStepTask, OptimizerFactory, SchedulerFactory, classification_metrics

Prior = Literal["gaussian", "scale_mixture"]
PRIORS: tuple[str, ...] = ("gaussian", "scale_mixture")
EVAL_STAGES: tuple[str, ...] = ("val", "test")
NOISE_SEED = 0


class BayesByBackpropTask(OneStepTask):
    """A classifier with a mean-field Gaussian posterior over its weights.

    Args:
        net: ``NetFactory`` (``klexp.nets.factory``) of the Bayesian network, completed with the
            data's input size and class count; it provides ``posterior()``, ``num_weights`` and
            ``forward(x, weights)`` as ``BayesMLP`` does (a 200-200 ReLU one, σ₀ = 0.01, when None).
        prior: ``gaussian`` — ``N(0, prior_sigma²)`` per weight (closed-form KL); or
            ``scale_mixture`` — ``π N(0, σ₁²) + (1 − π) N(0, σ₂²)`` per weight (Monte-Carlo KL).
        prior_sigma: σ_p of the Gaussian prior.
        mixture_pi, mixture_sigma1, mixture_sigma2: π, σ₁, σ₂ of the scale mixture (σ₁ > σ₂).
        train_samples: weight samples per training step (the NLL is their mean).
        eval_samples: S, weight samples averaged by the predictive distribution.
        ood_noise: how many uniform-noise images (fixed seed) make the noise OOD set; 0 for none.
        baseline_checkpoint: a ``ClassificationTask`` checkpoint evaluated side by side at test.
    """

    output_names = frozenset({"weights_posterior", "weights_prior", "weights_sample", "num_train"})

    def __init__(
        self,
        net: NetFactory | None = None,
        prior: Prior = "gaussian",
        prior_sigma: float = 1.0,
        mixture_pi: float = 0.5,
        mixture_sigma1: float = 1.0,
        mixture_sigma2: float = math.exp(-6),
        train_samples: int = 1,
        eval_samples: int = 20,
        ood_noise: int = 500,
        baseline_checkpoint: str | None = None,
        optimizer: OptimizerFactory | None = None,
        lr_scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        self.net_factory = net or functools.partial(BayesMLP, hidden=[200, 200])
        check_net(self.net_factory, "net")
        require_in("prior", prior, PRIORS)
        require_finite_positive("prior_sigma", prior_sigma)
        require(isinstance(mixture_pi, (int, float)) and 0 < mixture_pi < 1, "mixture_pi",
                "a number in (0, 1)", mixture_pi)
        require_finite_positive("mixture_sigma2", mixture_sigma2)
        require(isinstance(mixture_sigma1, (int, float)) and mixture_sigma1 > mixture_sigma2,
                "mixture_sigma1", f"a number > mixture_sigma2 ({mixture_sigma2})", mixture_sigma1)
        require_positive_int("train_samples", train_samples)
        require_positive_int("eval_samples", eval_samples)
        require(isinstance(ood_noise, int) and ood_noise >= 0, "ood_noise", "an integer ≥ 0",
                ood_noise)
        self.prior_kind, self.prior_sigma = prior, float(prior_sigma)
        self.mixture = (float(mixture_pi), float(mixture_sigma1), float(mixture_sigma2))
        self.train_samples, self.eval_samples, self.ood_noise = train_samples, eval_samples, ood_noise
        self.baseline_checkpoint = baseline_checkpoint
        self.net: BayesMLP | None = None
        self.baseline: nn.Module | None = None
        self._entropies: dict[str, list[Tensor]] = {}

    # ------------------------------------------------------------------ building

    def configure_model(self) -> None:
        if self.net is not None:
            return
        self.build(self.data_fact("input_shape"), self.data_fact("num_classes"),
                   self.data_fact("num_train"))

    def build(self, input_shape: Sequence[int], num_classes: int, num_train: int) -> None:
        """Create the network, the prior's parameters and the noise images for the data's shape."""
        self.input_shape, self.num_classes, self.num_train = tuple(input_shape), num_classes, num_train
        input_size = math.prod(self.input_shape)
        self.net = self.net_factory(in_features=input_size, out_features=num_classes)
        pi, sigma1, sigma2 = self.mixture
        self.register_buffer("prior_sigma_t", torch.tensor(self.prior_sigma), persistent=False)
        self.register_buffer("mixture_pi_t", torch.tensor(pi), persistent=False)
        self.register_buffer("mixture_sigmas_t", torch.tensor([sigma1, sigma2]), persistent=False)
        noise = torch.rand(self.ood_noise, *self.input_shape,
                           generator=torch.Generator().manual_seed(NOISE_SEED))
        self.register_buffer("noise_images", noise, persistent=False)
        self.metrics = nn.ModuleDict({
            f"{stage}_metrics": classification_metrics(num_classes, f"{stage}/")
            for stage in ("train", *EVAL_STAGES)
        })
        if self.baseline_checkpoint is not None:
            self.baseline = load_classifier(self.baseline_checkpoint, input_size, num_classes,
                                            key="task.baseline_checkpoint")
            self.baseline_metrics = classification_metrics(num_classes, "test/baseline/")

    def train(self, mode: bool = True) -> BayesByBackpropTask:
        super().train(mode)
        if self.baseline is not None:
            self.baseline.eval()
        return self

    def weights_prior(self) -> torch.distributions.Independent:
        """p(w) over the concatenated weights, with the event shape of the posterior."""
        if self.prior_kind == "gaussian":
            return gaussian_prior(self.net.num_weights, self.prior_sigma_t)
        return scale_mixture_prior(self.net.num_weights, self.mixture_pi_t, self.mixture_sigmas_t)

    def check_terms(self, terms: Sequence[Term]) -> None:
        """Every term is a KL term, and a closed-form KL needs the Gaussian prior (klexp's runner
        calls this before building anything; fitting calls it again)."""
        measures = kl_measures(terms, type(self).__name__)
        if self.prior_kind != "scale_mixture":
            return
        for term in measures:
            if "weights_prior" in (term.p, term.q) and isinstance(term.estimator, ClosedForm):
                raise KlexpError(
                    f"kl.{term.name}.estimator: KL(q(w) ‖ scale-mixture prior) has no closed form; "
                    "use a Monte-Carlo estimator (estimator=k1 as Blundell et al., or k3)"
                )

    def on_fit_start(self) -> None:
        self.check_terms(kl_terms_of(self.trainer))

    # ------------------------------------------------------------------ the step

    def sample_logits(self, images: Tensor, num_samples: int) -> tuple[Tensor, Tensor]:
        """Logits ``(S, B, K)`` of ``S`` weight draws ``w_s ~ q`` (reparameterised), and the draws."""
        weights = self.net.posterior().rsample((num_samples,))
        return self.net(images.flatten(1), weights), weights

    def forward(self, images: Tensor, num_samples: int | None = None) -> Tensor:
        """Log-probabilities of the predictive ``p(y | x) = (1/S) Σ_s softmax(f(x; w_s))``, (B, K)."""
        logits, _ = self.sample_logits(images, num_samples or self.eval_samples)
        return _log_predictive(logits)

    def step(self, batch: tuple[Tensor, Tensor], stage: str | None = None) -> dict[str, Any]:
        """The expected data NLL (the task's own loss) and the outputs for the KL term."""
        stage = stage or current_stage(self)
        images, labels = batch
        num_samples = self.train_samples if stage == "train" else self.eval_samples
        posterior = self.net.posterior()
        weights = posterior.rsample((num_samples,))
        logits = self.net(images.flatten(1), weights)
        # E_q[−log p(y | x, w)] per example, estimated with the S draws.
        expected_nll = F.cross_entropy(logits.flatten(0, 1), labels.repeat(num_samples))
        outputs = {
            "weights_posterior": posterior,
            "weights_prior": self.weights_prior(),
            "weights_sample": weights,
            "num_train": self.num_train,
        }
        self._log_metrics(stage, logits.detach(), labels)
        if stage == "train" and logs_now(self):
            log_metrics(self, {"train/posterior_sigma": posterior.base_dist.scale.detach().mean()},
                        stage=stage)
        if stage == "test" and self.baseline is not None:
            self._log_baseline(images, labels)
        return {"loss": expected_nll, **outputs}

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).exp()

    # ------------------------------------------------------------------ metrics

    def _log_metrics(self, stage: str, logits: Tensor, labels: Tensor) -> None:
        """Accuracy, ECE and NLL of the predictive distribution; entropies kept for epoch end."""
        log_predictive = _log_predictive(logits)
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(log_predictive.exp(), labels)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(labels))
        if logs_now(self):
            log_metrics(self, {f"{stage}/nll": F.nll_loss(log_predictive, labels)}, batch_size=len(labels),
                        stage=stage)
        if stage in EVAL_STAGES:
            entropy, mutual_info = _uncertainty(logits)
            self._entropies.setdefault(f"{stage}/entropy/in_dist", []).append(entropy)
            self._entropies.setdefault(f"{stage}/mutual_info/in_dist", []).append(mutual_info)

    def _log_baseline(self, images: Tensor, labels: Tensor) -> None:
        logits = self.baseline(images.flatten(1))
        self.baseline_metrics.update(logits.softmax(-1), labels)
        self.log("test/baseline/nll", F.cross_entropy(logits, labels), on_step=False, on_epoch=True,
                 batch_size=len(labels), sync_dist=True)
        self.log_dict(self.baseline_metrics, on_step=False, on_epoch=True, batch_size=len(labels))
        self._entropies.setdefault("test/baseline/entropy/in_dist", []).append(categorical_entropy(logits))

    def ood_sets(self) -> Iterator[tuple[str, Tensor]]:
        """The out-of-distribution inputs: uniform noise, and the held-out class when there is one."""
        if len(self.noise_images):
            yield "ood_noise", self.noise_images
        datamodule = getattr(self.trainer, "datamodule", None)
        loader = datamodule.ood_dataloader() if hasattr(datamodule, "ood_dataloader") else None
        if loader is not None:
            yield "ood_class", torch.cat([images for images, *_ in loader]).to(self.device, self.dtype)

    def _log_uncertainty(self, stage: str) -> None:
        """Mean predictive entropy and mutual information on each set (``<stage>/entropy/<set>``,
        ``<stage>/mutual_info/<set>``), how well each score tells an OOD set from the split (AUROC,
        0.5 = not at all, 1 = perfectly: ``<stage>/ood_auroc/<score>/<set>``), and entropy
        histograms (``<stage>/entropy_histogram/<set>``)."""
        collected = {key: torch.cat(parts) for key, parts in self._entropies.items()
                     if key.startswith(f"{stage}/")}
        self._entropies = {k: v for k, v in self._entropies.items() if not k.startswith(f"{stage}/")}
        with torch.no_grad():
            for name, images in self.ood_sets():
                parts = [_uncertainty(self.sample_logits(chunk, self.eval_samples)[0])
                         for chunk in images.split(512)]
                collected[f"{stage}/entropy/{name}"] = torch.cat([entropy for entropy, _ in parts])
                collected[f"{stage}/mutual_info/{name}"] = torch.cat([mi for _, mi in parts])
                if stage == "test" and self.baseline is not None:
                    collected[f"{stage}/baseline/entropy/{name}"] = categorical_entropy(
                        self.baseline(images.flatten(1)))
        scalars = {key: values.mean() for key, values in collected.items()}
        for key, values in collected.items():
            in_dist = collected.get(key.rsplit("/", 1)[0] + "/in_dist")
            if "/ood_" in key and in_dist is not None:
                score = key.rsplit("/", 2)[1]  # entropy | mutual_info
                scalars[key.replace(f"/{score}/", f"/ood_auroc/{score}/")] = _auroc(in_dist, values)
        self.log_dict(scalars, sync_dist=True)
        if isinstance(self.logger, TensorBoardLogger) and not self.trainer.sanity_checking:
            experiment = self.logger.experiment
            for key, values in collected.items():
                if "/entropy/" in key:
                    tag = key.replace("/entropy/", "/entropy_histogram/")
                    experiment.add_histogram(tag, values.float().cpu(), self.global_step)
            if stage == "test":
                experiment.add_figure("test/entropy_histograms",
                                      entropy_figure(collected, self.num_classes), self.global_step)

    def on_validation_epoch_end(self) -> None:
        self._log_uncertainty("val")

    def on_test_epoch_end(self) -> None:
        self._log_uncertainty("test")

    def custom_scalars(self) -> dict[str, dict[str, list[str]]]:
        return {"Bayes by backprop": {
            "negative ELBO per example": ["^loss/(task|total)$", "^val/loss/(task|total)$"],
            "predictive entropy (val)": ["^val/entropy/"],
            "mutual information (val)": ["^val/mutual_info/"],
            "OOD detection, AUROC (val)": ["^val/ood_auroc/"],
            "accuracy and ECE (val)": ["^val/(acc|ece)$"],
        }}


def entropy_figure(collected: Mapping[str, Tensor], num_classes: int) -> Figure:
    """Histograms of the predictive entropy on each set, on one axis from 0 to log K nats: one
    panel for the Bayesian network and one for the baseline when there is one."""
    models = [("Bayes by backprop", "test/entropy/")]
    if any(key.startswith("test/baseline/entropy/") for key in collected):
        models.append(("deterministic baseline", "test/baseline/entropy/"))
    figure = Figure(figsize=(5 * len(models), 3.2), layout="constrained")
    bins = torch.linspace(0, math.log(num_classes), 31).tolist()
    panels = figure.subplots(1, len(models), sharey=True, squeeze=False)[0]
    panels[0].set_ylabel("density")
    for axes, (title, prefix) in zip(panels, models, strict=True):
        for name in ("in_dist", "ood_class", "ood_noise"):
            values = collected.get(prefix + name)
            if values is not None:
                axes.hist(values.float().cpu().numpy(), bins=bins, density=True, histtype="step",
                          linewidth=1.5, label=f"{name} (mean {values.mean():.2f})")
        axes.set(title=title, xlabel="predictive entropy (nats)", xlim=(0, math.log(num_classes)))
        axes.legend(fontsize="small")
    return figure



def _log_predictive(logits: Tensor) -> Tensor:
    """``log (1/S) Σ_s softmax(logits_s)`` over the sample axis 0, in log space."""
    return torch.logsumexp(logits.log_softmax(-1), dim=0) - math.log(logits.shape[0])


def _auroc(in_dist: Tensor, out_of_dist: Tensor) -> Tensor:
    """Probability that an OOD input has a higher score than an in-distribution one (ties count
    half): the area under the ROC curve of the score as an OOD detector."""
    scores = torch.cat([in_dist, out_of_dist])
    is_ood = torch.cat([torch.zeros_like(in_dist, dtype=torch.long),
                        torch.ones_like(out_of_dist, dtype=torch.long)])
    return binary_auroc(scores, is_ood)


def _uncertainty(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Per example: the predictive entropy ``H[p(y | x)]`` and the mutual information between
    y and w, ``H[p(y | x)] − E_s H[p(y | x, w_s)]`` (the epistemic part; Houlsby et al. 2011), nats."""
    entropy = categorical_entropy(_log_predictive(logits))
    return entropy, entropy - categorical_entropy(logits).mean(0)

