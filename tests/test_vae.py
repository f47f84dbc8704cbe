"""The VAE experiment: KL(q(z|x) ‖ N(0, I)) as the config's term, and the diagnostics of its ELBO.

Fast tests: the maths of the task's outputs and diagnostics, and every variant end to end at a
few steps. Training behaviour (β ordering, free bits, cyclical β, resume) is in test_vae_training.py.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from helpers import FAST, QUIET, run_experiment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributions import Independent, Normal, kl_divergence

from klexp.core.shaping import FreeBits
from klexp.data.idx import write_idx
from klexp.errors import ConfigValueError
from klexp.lightning.images import image_grid
from klexp.lightning.term import KLTerm
from klexp.nets.mlp import MLP
from klexp.tasks.vae import VAETask, active_units

VARIANTS = ["vae", "beta_vae", "vae_annealed", "vae_cyclical", "vae_free_bits", "vae_capacity"]
# A few steps, one validation epoch (with its images) and the test set.
SMOKE = [*FAST, "trainer.max_steps=3", "trainer.check_val_every_n_epoch=1"]


def built_task(hidden: list[int], **kwargs) -> VAETask:
    """A VAE on 8×8 images whose encoder and decoder MLPs have the ``hidden`` widths."""
    task = VAETask(encoder=partial(MLP, hidden=hidden), decoder=partial(MLP, hidden=hidden), **kwargs)
    task.build((8, 8))
    return task


def test_outputs_are_the_posterior_the_standard_normal_prior_and_a_posterior_draw():
    torch.manual_seed(0)
    task = built_task(latent_dim=3, hidden=[16])
    x = torch.bernoulli(torch.full((5, 8, 8), 0.3))
    outputs = task.step((x, torch.zeros(5)), "train")
    recon_nll = outputs["loss"]
    posterior, prior, z = outputs["posterior"], outputs["prior"], outputs["z"]
    assert isinstance(posterior, Independent) and isinstance(posterior.base_dist, Normal)
    assert posterior.batch_shape == prior.batch_shape == (5,)
    assert posterior.event_shape == prior.event_shape == (3,)
    assert torch.equal(prior.base_dist.loc, torch.zeros(5, 3))
    assert torch.equal(prior.base_dist.scale, torch.ones(5, 3))
    assert z.shape == (5, 3) and z.requires_grad
    # the task loss is the Bernoulli NLL in nats, summed over the 64 pixels, mean over the batch
    assert 0 < recon_nll.item() < 64 * 2
    assert recon_nll.requires_grad


def test_recon_nll_is_the_bernoulli_negative_log_likelihood_summed_over_pixels():
    torch.manual_seed(0)
    task = built_task(latent_dim=2, hidden=[8])
    x = torch.bernoulli(torch.full((4, 64), 0.5))
    z = torch.randn(4, 2)
    logits = task.decoder(z)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    assert torch.allclose(-task.decode(z).log_prob(x), expected, atol=1e-5)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_the_training_reconstruction_nll_is_minus_the_decoded_log_likelihood(likelihood):
    torch.manual_seed(0)
    task = built_task(latent_dim=2, hidden=[8], likelihood=likelihood)
    x, z = torch.bernoulli(torch.full((4, 64), 0.5)), torch.randn(4, 2)
    torch.testing.assert_close(task.reconstruction_nll(z, x), -task.decode(z).log_prob(x))
    # a leading sample axis (importance sampling) broadcasts against the batch
    z_draws = torch.randn(3, 4, 2)
    torch.testing.assert_close(task.reconstruction_nll(z_draws, x), -task.decode(z_draws).log_prob(x))


def test_gaussian_likelihood_has_one_learned_scale():
    task = built_task(latent_dim=2, hidden=[8], likelihood="gaussian")
    likelihood = task.decode(torch.zeros(3, 2))
    assert isinstance(likelihood.base_dist, Normal)
    assert likelihood.event_shape == (64,)
    assert task.log_scale.requires_grad and task.log_scale.shape == ()


def test_importance_weighted_nll_never_exceeds_the_negative_elbo_of_the_same_draws():
    """logsumexp_j log w_j − log k ≥ mean_j log w_j (Jensen), so with the same k draws the IW bound
    is at least the ELBO whose KL is estimated by those draws; and IW with k = 1 is −ELBO's
    single-draw estimate."""
    torch.manual_seed(0)
    task = built_task(latent_dim=4, hidden=[32], iw_samples=50)
    x = torch.bernoulli(torch.full((16, 64), 0.4))
    posterior = task.encode(x)
    prior = task.prior_like(posterior)
    torch.manual_seed(1)
    _, recon, iw_nll = task.importance_weighted(x, posterior, prior)
    torch.manual_seed(1)
    z = posterior.sample((50,))
    kl_estimate = (posterior.log_prob(z) - prior.log_prob(z)).mean(0)
    assert torch.all(iw_nll <= recon + kl_estimate + 1e-4)
    assert torch.all(iw_nll > 0)


def test_importance_weighted_nll_with_one_sample_is_the_single_draw_negative_elbo():
    torch.manual_seed(0)
    task = built_task(latent_dim=4, hidden=[32], iw_samples=1)
    x = torch.bernoulli(torch.full((8, 64), 0.4))
    posterior = task.encode(x)
    prior = task.prior_like(posterior)
    z, recon, iw_nll = task.importance_weighted(x, posterior, prior)
    single = -task.decode(z).log_prob(x) + posterior.log_prob(z) - prior.log_prob(z)
    assert torch.allclose(iw_nll, single, atol=1e-4)
    assert torch.allclose(recon, -task.decode(z).log_prob(x), atol=1e-5)


def test_importance_samples_are_chunked_without_changing_the_estimate(monkeypatch):
    """With few decoder rows allowed per chunk, the k draws come in chunks; the estimate is the
    logsumexp over all k of them, as if drawn at once."""
    import klexp.tasks.vae as vae_module

    torch.manual_seed(0)
    task = built_task(latent_dim=3, hidden=[16], iw_samples=20)
    x = torch.bernoulli(torch.full((10, 64), 0.4))
    posterior = task.encode(x)
    prior = task.prior_like(posterior)
    draws = posterior.sample((20,))
    handed = []

    def sample(shape):
        start = sum(handed)
        handed.append(shape[0])
        return draws[start : start + shape[0]]

    monkeypatch.setattr(posterior, "sample", sample)
    monkeypatch.setattr(vae_module, "_IW_ROWS", 30)  # 3 draws of 10 examples per chunk
    first, recon, iw_nll = task.importance_weighted(x, posterior, prior)
    assert handed == [3, 3, 3, 3, 3, 3, 2]
    log_likelihood = task.decode(draws).log_prob(x)
    log_w = log_likelihood + prior.log_prob(draws) - posterior.log_prob(draws)
    assert torch.allclose(iw_nll, -(torch.logsumexp(log_w, 0) - math.log(20)), atol=1e-4)
    assert torch.allclose(recon, -log_likelihood.mean(0), atol=1e-4)
    assert torch.equal(first, draws[0])


def test_active_units_count_dimensions_whose_posterior_mean_varies_over_the_data():
    """Burda et al. (2016): A_u = Cov_x(E_q[u]) > 0.01."""
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(1000, 4, generator=generator) * torch.tensor([1.0, 0.2, 0.05, 0.0])
    # variances ≈ 1, 0.04, 0.0025, 0: two dimensions are active
    assert active_units(means, 0.01) == 2
    assert active_units(means, 0.001) == 3
    assert active_units(means[:1], 0.01) == 0


def test_free_bits_give_no_gradient_to_dimensions_below_lambda_and_full_gradient_above():
    """Kingma et al. (2016): a dimension whose batch-mean KL is below λ contributes λ, a constant."""
    loc = torch.tensor([[0.1, 2.0, 0.0, 1.5]] * 3, requires_grad=True)
    scale = torch.ones(3, 4)
    posterior = Independent(Normal(loc, scale), 1)
    prior = Independent(Normal(torch.zeros(3, 4), torch.ones(3, 4)), 1)
    per_dim = kl_divergence(posterior.base_dist, prior.base_dist).mean(0)  # ½ μ²: 0.005, 2, 0, 1.125
    term = KLTerm("prior", "posterior", "prior", FreeBits(0.5))
    loss = term({"posterior": posterior, "prior": prior}, "train", 0)
    assert loss.item() == pytest.approx(0.5 + per_dim[1].item() + 0.5 + per_dim[3].item(), rel=1e-5)
    loss.backward()
    below, above = per_dim.detach() < 0.5, per_dim.detach() >= 0.5
    assert torch.all(loc.grad[:, below] == 0)
    assert torch.all(loc.grad[:, above] != 0)


def test_task_rejects_bad_settings_naming_the_key():
    with pytest.raises(ConfigValueError, match="likelihood"):
        VAETask(likelihood="poisson")
    with pytest.raises(ConfigValueError, match="iw_samples"):
        VAETask(iw_samples=0)
    with pytest.raises(ConfigValueError, match="traversal_steps"):
        VAETask(traversal_steps=1)


def test_image_grid_tiles_scaled_images_row_major_with_padding():
    images = torch.stack([torch.full((2, 3), float(i) / 4) for i in range(5)])
    grid = image_grid(images, per_row=3, padding=1, pad_value=1.0, scale=2)
    # two rows of three cells of (4 × 6) pixels, each followed by one pixel of padding, plus the border
    assert grid.shape == (1, 1 + 2 * (4 + 1), 1 + 3 * (6 + 1))
    assert torch.all(grid[0, 1:5, 1:7] == 0.0)             # image 0, top left
    assert torch.all(grid[0, 1:5, 8:14] == 0.25)           # image 1
    assert torch.all(grid[0, 6:10, 1:7] == 0.75)           # image 3 starts the second row
    assert torch.all(grid[0, 6:10, 15:21] == 1.0)          # the empty sixth cell stays padding
    assert torch.all(grid[0, 0, :] == 1.0)


# ------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("experiment", VARIANTS)
def test_every_variant_runs_end_to_end_and_reports_elbo_iw_nll_and_active_units(experiment, tmp_path):
    summary = run_experiment([f"experiment={experiment}", *SMOKE], tmp_path)
    metrics = summary["metrics"]
    assert summary["status"] == "completed"
    for key in ("test/elbo", "test/recon_nll", "test/kl", "test/iw_nll", "test/active_units",
                "val/elbo", "val/active_units", "test/kl/prior/value"):
        assert math.isfinite(metrics[key]), key
    assert metrics["test/elbo"] == pytest.approx(-(metrics["test/recon_nll"] + metrics["test/kl"]), abs=1e-3)
    # the term's value is the same analytic KL the task reports for the ELBO
    assert metrics["test/kl/prior/value"] == pytest.approx(metrics["test/kl"], rel=1e-4)
    assert metrics["test/iw_nll"] <= -metrics["test/elbo"]
    dims = [metrics[f"test/kl/prior/dim_{i}"] for i in range(8)]
    assert sum(dims) == pytest.approx(metrics["test/kl/prior/value"], rel=1e-4)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vae")
    summary = run_experiment(["experiment=vae", *QUIET, "data.batch_size=64", "trainer.max_steps=40",
                              "trainer.check_val_every_n_epoch=1", "trainer.log_every_n_steps=1"],
                             run_dir)
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0,
                                                                   "histograms": 0, "tensors": 0})
    events.Reload()
    return summary, events


def test_scalars_on_tensorboard_are_elbo_parts_beta_per_dimension_kl_and_active_units(logged_run):
    _, events = logged_run
    scalars = set(events.Tags()["scalars"])
    for stage in ("train", "val", "test"):
        for metric in ("elbo", "recon_nll", "kl"):
            assert f"{stage}/{metric}" in scalars
    assert {"kl/prior/value", "kl/prior/weight", "kl/prior/loss"} <= scalars
    assert {f"kl/prior/dim_{i}" for i in range(8)} <= scalars
    assert {"val/active_units", "test/active_units", "test/iw_nll"} <= scalars
    # training metrics come every step here (log_every_n_steps=1): steps 0..39
    assert [e.step for e in events.Scalars("train/elbo")] == list(range(40))


def test_train_elbo_uses_the_true_kl_and_per_dimension_kl_sums_to_the_total(logged_run):
    _, events = logged_run

    def series(tag):
        return {e.step: e.value for e in events.Scalars(tag)}

    elbo, recon, kl = series("train/elbo"), series("train/recon_nll"), series("train/kl")
    value = series("kl/prior/value")
    dims = [series(f"kl/prior/dim_{i}") for i in range(8)]
    for step in (0, 17, 39):
        assert elbo[step] == pytest.approx(-(recon[step] + kl[step]), abs=1e-3)
        assert kl[step] == pytest.approx(value[step], rel=1e-4)
        assert sum(d[step] for d in dims) == pytest.approx(value[step], rel=1e-4)


def test_each_validation_epoch_logs_images_and_a_per_dimension_kl_histogram(logged_run):
    _, events = logged_run
    tags = events.Tags()
    assert {"val/reconstructions", "val/prior_samples", "val/traversals"} <= set(tags["images"])
    assert "val/kl_per_dim" in tags["histograms"]
    validations = [e.step for e in events.Scalars("val/elbo")]
    assert len(validations) == 2  # 40 steps of 20 batches: two validation epochs
    assert [e.step for e in events.Images("val/reconstructions")] == [20, 40]
    reconstructions = events.Images("val/reconstructions")[-1]
    # 16 pairs of 8×8 digits at 4×: 4 rows (inputs, reconstructions, inputs, reconstructions) of 8
    assert (reconstructions.height, reconstructions.width) == (1 + 4 * 33, 1 + 8 * 33)
    traversals = events.Images("val/traversals")[-1]
    assert (traversals.height, traversals.width) == (1 + 4 * 33, 1 + 9 * 33)


@pytest.mark.parametrize("option", ["task.likelihood=gaussian", "kl.prior.estimator=k3",
                                    "data=synthetic"])
def test_options_run_end_to_end(option, tmp_path):
    summary = run_experiment(["experiment=vae", *SMOKE, option], tmp_path)
    metrics = summary["metrics"]
    assert math.isfinite(metrics["test/elbo"]) and math.isfinite(metrics["test/iw_nll"])
    if option == "kl.prior.estimator=k3":
        assert metrics["test/kl/prior/std"] > 0  # the Monte-Carlo estimate's spread is logged


def test_mnist_format_idx_files_give_784_inputs(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "mnist"
    root.mkdir()
    for prefix, count in (("train", 240), ("t10k", 60)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    summary = run_experiment(["experiment=vae", "data=mnist_idx", f"data.root={root}", *SMOKE,
                              "task.iw_samples=10"], tmp_path / "run")
    assert math.isfinite(summary["metrics"]["test/iw_nll"])
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"]["encoder.0.weight"].shape == (256, 784)
