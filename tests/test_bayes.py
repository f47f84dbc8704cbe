"""Bayes by backprop: the weight posterior, its priors, the ELBO's KL term and the predictive."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import compose_config
from torch.distributions import Normal, kl_divergence

from klexp.app.config_checks import ConfigError, check_config
from klexp.app.runner import build_terms, instantiate_node
from klexp.errors import ConfigValueError
from klexp.nets.bayesian import BayesLinear, BayesMLP, inverse_softplus
from klexp.tasks.bayes import BayesByBackpropTask, _log_predictive, _uncertainty

pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer.*reference is not registered")

INPUT_SHAPE, CLASSES, NUM_TRAIN = (4, 4), 3, 250


def weights_term(tmp_path, *overrides):
    """The KL term exactly as klexp/conf/kl/weights.yaml (picked by experiment=bayes) defines it."""
    cfg = compose_config(["experiment=bayes", *overrides], output_dir=tmp_path)
    (term,) = build_terms(cfg.kl)
    return term


def built_task(seed=0, **kwargs):
    """A small task with posterior σ spread over [0.05, 1] so no two weights look alike."""
    torch.manual_seed(seed)
    task = BayesByBackpropTask(functools.partial(BayesMLP, hidden=[16, 8]), **kwargs)
    task.build(INPUT_SHAPE, CLASSES, NUM_TRAIN)
    with torch.no_grad():
        for layer in task.net.layers:
            for rho in (layer.weight_rho, layer.bias_rho):
                rho.copy_(torch.empty_like(rho).uniform_(inverse_softplus(0.05), inverse_softplus(1.0)))
    return task


def batch(size=32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(size, *INPUT_SHAPE, generator=generator),
            torch.randint(0, CLASSES, (size,), generator=generator))


def per_layer_closed_forms(task, prior_sigma):
    """Σ over layers of Σ_i KL(N(μ_i, σ_i²) ‖ N(0, σ_p²)), each from torch's registered formula."""
    prior = Normal(0.0, prior_sigma)
    total = torch.zeros(())
    for layer in task.net.layers:
        for mu, rho in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)):
            total = total + kl_divergence(Normal(mu, F.softplus(rho)), prior).sum()
    return total


# ------------------------------------------------------------------ the KL term of the ELBO


@pytest.mark.parametrize("prior_sigma", [0.3, 1.0, 3.0])
def test_weights_kl_is_the_sum_of_per_layer_closed_forms(tmp_path, prior_sigma):
    term = weights_term(tmp_path)
    assert str(term.estimator) == "analytic"
    task = built_task(prior_sigma=prior_sigma)
    outputs = task.step(batch(), "train")

    value = term.reduce(term.measure(outputs).elementwise)

    expected = per_layer_closed_forms(task, prior_sigma)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-3)
    assert task.net.num_weights == 16 * 17 + 8 * 17 + 3 * 9


def test_weights_kl_loss_is_its_per_example_share(tmp_path):
    """weight · KL / N, so that loss = NLL per example + KL / N = −ELBO / N."""
    term = weights_term(tmp_path)
    task = built_task()
    outputs = task.step(batch(), "train")
    assert outputs["num_train"] == NUM_TRAIN

    loss = term(outputs, "train", step=0)

    torch.testing.assert_close(loss, per_layer_closed_forms(task, 1.0) / NUM_TRAIN, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_monte_carlo_estimators_match_the_closed_form_within_monte_carlo_error(tmp_path, estimator):
    term = weights_term(tmp_path, f"kl.weights.estimator={estimator}")
    task = built_task(eval_samples=64)
    outputs = task.step(batch(), "val")
    assert outputs["weights_sample"].shape == (64, task.net.num_weights)

    measurement = term.measure(outputs)
    value, per_sample = term.reduce(measurement.elementwise), measurement.per_sample

    exact = per_layer_closed_forms(task, 1.0)
    standard_error = per_sample.std() / math.sqrt(len(per_sample))
    assert per_sample.shape == (64,)
    assert abs(value - exact) < 4 * standard_error, (value, exact, standard_error)


def test_monte_carlo_kl_uses_the_weights_drawn_for_the_forward_pass(tmp_path):
    """With the scale-mixture prior, k1 = mean_s [log q(w_s) − log p(w_s)] over the draws w_s the
    network was run with (Blundell et al. 2015, eq. 2)."""
    term = weights_term(tmp_path, "kl.weights.estimator=k1")
    pi, sigma1, sigma2 = 0.25, 1.0, math.exp(-7)
    task = built_task(prior="scale_mixture", mixture_pi=pi, mixture_sigma1=sigma1,
                      mixture_sigma2=sigma2, eval_samples=5)
    outputs = task.step(batch(), "val")

    value = term.reduce(term.measure(outputs).elementwise)

    w = outputs["weights_sample"].detach()
    posterior = outputs["weights_posterior"]
    log_prior = torch.logaddexp(math.log(pi) + Normal(0.0, sigma1).log_prob(w),
                                math.log(1 - pi) + Normal(0.0, sigma2).log_prob(w)).sum(-1)
    expected = (posterior.log_prob(w) - log_prior).mean()
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-2)


def test_gradients_reach_every_mean_and_scale_through_the_nll_and_the_sampled_kl(tmp_path):
    term = weights_term(tmp_path, "kl.weights.estimator=k1")
    task = built_task()
    outputs = task.step(batch(), "train")
    nll = outputs["loss"]

    (nll + term(outputs, "train", step=0)).backward()

    for name, parameter in task.net.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


# ------------------------------------------------------------------ layers and the predictive


def test_bayes_linear_draws_outputs_with_the_posterior_mean_and_variance():
    """y = x·W + b with W_ij ~ N(μ_ij, σ_ij²): E[y] = x·μ_W + μ_b, Var[y] = Σ_i x_i² σ_i² + σ_b²."""
    torch.manual_seed(0)
    layer = BayesLinear(5, 2, init_sigma=0.3)
    x = torch.rand(1, 5)
    weights = layer.posterior().rsample((20000,))

    y = layer(x, weights)[:, 0, :]

    sigma = layer.sigma()
    weight_sigma, bias_sigma = sigma[:10].view(2, 5), sigma[10:]
    mean = F.linear(x, layer.weight_mu, layer.bias_mu)[0]
    variance = (x.square() @ weight_sigma.square().T)[0] + bias_sigma.square()
    torch.testing.assert_close(y.mean(0), mean.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(y.var(0), variance.detach(), atol=0, rtol=0.05)


def test_posterior_sigma_starts_at_init_sigma_and_is_softplus_of_rho():
    net = BayesMLP(6, [4], 2, init_sigma=0.02)
    torch.testing.assert_close(net.posterior().base_dist.scale, torch.full((net.num_weights,), 0.02))
    assert net(torch.rand(7, 6), net.posterior().rsample((3,))).shape == (3, 7, 2)


def test_predictive_averages_the_probabilities_of_the_weight_samples():
    logits = torch.randn(6, 4, 3)
    expected = logits.softmax(-1).mean(0)
    torch.testing.assert_close(_log_predictive(logits).exp(), expected)


def test_mutual_information_is_zero_when_samples_agree_and_log2_when_two_certain_ones_disagree():
    agree = torch.tensor([[[2.0, 0.0]], [[2.0, 0.0]]])
    disagree = torch.tensor([[[50.0, -50.0]], [[-50.0, 50.0]]])
    entropy, mutual_info = _uncertainty(agree)
    assert mutual_info.abs().item() < 1e-6 and entropy.item() > 0
    entropy, mutual_info = _uncertainty(disagree)
    torch.testing.assert_close(entropy, torch.tensor([math.log(2)]))
    torch.testing.assert_close(mutual_info, torch.tensor([math.log(2)]))


# ------------------------------------------------------------------ config errors


def test_an_unknown_prior_fails_at_start_up_naming_the_key(tmp_path):
    cfg = compose_config(["experiment=bayes", "task.prior=laplace"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"task\.prior"):
        check_config(cfg)


@pytest.mark.parametrize(("override", "key"), [
    ("task.mixture_sigma1=0.001", "mixture_sigma1"),
    ("task.net.init_sigma=0.0", "net.init_sigma"),
    ("task.prior_sigma=-1.0", "prior_sigma"),
    ("task.eval_samples=0", "eval_samples"),
])
def test_out_of_range_values_name_their_key(tmp_path, override, key):
    cfg = compose_config(["experiment=bayes", override], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=rf"task\.{key}"):
        instantiate_node(cfg.task, "task")


def test_constructor_rejects_a_mixture_whose_wide_scale_is_not_wider():
    with pytest.raises(ConfigValueError, match="mixture_sigma1"):
        BayesByBackpropTask(mixture_sigma1=0.1, mixture_sigma2=0.5)
