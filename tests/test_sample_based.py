"""Specification of the divergences known only through samples: the k-NN KL estimate
(``klexp.core.sample_based``), the exact 1-D empirical W1 and WGAN-GP's critic
(``klexp.core.wasserstein``), against closed forms (Gaussian KL and W2, ordinal W1), scipy and
hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import wasserstein_distance
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from klexp.core.sample_based import knn_kl
from klexp.core.wasserstein import (
    WassersteinGP,
    gradient_penalty,
    wasserstein1_categorical,
    wasserstein1_empirical_1d,
    wasserstein2_gaussian,
)
from klexp.errors import ConfigValueError
from klexp.nets.mlp import mlp

F64 = torch.float64
PROPERTY = settings(max_examples=40, deadline=None)


def _t(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# k-NN KL (Wang, Kulkarni & Verdú 2009)
# --------------------------------------------------------------------------------------------


def _gaussian_pair() -> tuple[MultivariateNormal, MultivariateNormal]:
    p = MultivariateNormal(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    q = MultivariateNormal(_t([1.0, 0.5]), torch.diag(_t([2.0, 0.5])))
    return p, q


def _mean_abs_error(n: int, seeds: int = 5) -> float:
    p, q = _gaussian_pair()
    true = kl_divergence(p, q).item()
    errors = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        errors.append(abs(knn_kl(p.sample((n,)), q.sample((n,))).item() - true))
    return sum(errors) / seeds


def test_knn_kl_approaches_the_closed_form_kl_of_two_gaussians_as_n_grows():
    """KL(N(0, I) ‖ N((1, ½), diag(2, ½))) = 0.75 nats; mean |error| over 5 seeds: ~0.1 at
    n = 250, ~0.04 at n = 16,000."""
    small, large = _mean_abs_error(250), _mean_abs_error(16_000)
    assert large < 0.06
    assert large < small


def test_knn_kl_hand_computed_example():
    """1-D, x = {0, 1}, y = {½}, k = 1: ρ = (1, 1), ν = (½, ½):
    (1/2)·2·log(½) + log(1/(2 − 1)) = −ln 2 (the estimate can be negative at small n)."""
    value = knn_kl(_t([[0.0], [1.0]]), _t([[0.5]]))
    assert value.item() == pytest.approx(-math.log(2.0), rel=1e-12)


def test_knn_kl_with_k_neighbours_hand_computed():
    """1-D, x = {0, 1, 3}, y = {0, 2, 5}, k = 2: ρ_2 = (3, 2, 3), ν_2 = (5, 1, 2) — x = 0's copy
    y = 0 is skipped, so its second neighbour at a positive distance is 5:
    (1/3)·Σ log(ν/ρ) + log(3/2)."""
    value = knn_kl(_t([[0.0], [1.0], [3.0]]), _t([[0.0], [2.0], [5.0]]), k=2).item()
    expected = (math.log(5 / 3) + math.log(1 / 2) + math.log(2 / 3)) / 3 + math.log(3 / 2)
    assert value == pytest.approx(expected, rel=1e-12)


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(0.01, 100), shift=st.floats(-50, 50))
def test_knn_kl_is_invariant_to_a_common_change_of_scale_and_origin(seed, scale, shift):
    """KL is invariant under an invertible map applied to both distributions; the estimate's
    distance ratios are invariant under a common scaling and translation."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(12, 2)), rng.normal(1.0, 2.0, size=(9, 2))
    before = knn_kl(_t(x), _t(y)).item()
    after = knn_kl(_t(scale * x + shift), _t(scale * y + shift)).item()
    assert after == pytest.approx(before, rel=1e-6, abs=1e-6)


def _knn_kl_by_definition(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """The estimate with ties resolved as documented, by brute force: sort each point's distances
    to the other set, drop the zeros, take the k-th."""
    def kth_positive(point: np.ndarray, sample: np.ndarray) -> float:
        distances = np.sort(np.linalg.norm(sample - point, axis=1))
        positive = distances[distances > 0]
        return positive[k - 1] if len(positive) >= k else math.nan

    n, d = x.shape
    terms = [math.log(kth_positive(xi, y)) - math.log(kth_positive(xi, x)) for xi in x]
    return d * float(np.mean(terms)) + math.log(len(y) / (n - 1))


def test_knn_kl_skips_zero_distances_hand_computed():
    """x = {0, 0, 1}, y = {½}, k = 1: each 0's nearest x at a positive distance is 1 (its copy is
    skipped), so ρ = (1, 1, 1), ν = (½, ½, ½): log ½ + log(1/2) = −2 ln 2 (was +∞)."""
    value = knn_kl(_t([[0.0], [0.0], [1.0]]), _t([[0.5]])).item()
    assert value == pytest.approx(-2 * math.log(2.0), rel=1e-12)


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 30), d=st.integers(1, 3),
       k=st.integers(1, 3))
def test_knn_kl_of_a_sample_against_itself_is_the_estimators_offset_not_minus_infinity(seed, n, d, k):
    """The truth is 0; the estimate is log(n/(n − 1)) exactly (ρ = ν term by term), → 0."""
    x = _t(np.random.default_rng(seed).normal(size=(n + k, d)))
    assert knn_kl(x, x, k=k).item() == pytest.approx(math.log((n + k) / (n + k - 1)), rel=1e-12)


@PROPERTY
@given(x=arrays(np.float64, st.tuples(st.integers(4, 25), st.just(2)), elements=st.integers(0, 3)),
       y=arrays(np.float64, st.tuples(st.integers(3, 25), st.just(2)), elements=st.integers(0, 3)),
       k=st.integers(1, 2))
def test_knn_kl_with_many_ties_follows_the_documented_rule(x, y, k):
    """Points on a 4 × 4 grid: duplicates within P, within Q and across. The estimate is the
    brute-force one with zero distances skipped — finite wherever every point of P has k samples
    at a positive distance in both sets, NaN otherwise, never ±∞."""
    expected = _knn_kl_by_definition(x, y, k)
    got = knn_kl(_t(x), _t(y), k=k).item()
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_knn_kl_of_a_sample_concentrated_on_one_point_is_nan():
    """All of P at one point: no distance scale to compare with, and no estimate."""
    assert math.isnan(knn_kl(torch.zeros(5, 2), torch.randn(5, 2)).item())
    assert math.isnan(knn_kl(torch.zeros(5, 2), torch.zeros(5, 2)).item())


def test_knn_kl_of_non_finite_samples_is_nan():
    assert math.isnan(knn_kl(_t([[0.0], [math.nan], [1.0]]), _t([[0.5]])).item())
    assert math.isnan(knn_kl(_t([[0.0], [1.0]]), _t([[math.inf]])).item())


def test_knn_kl_keeps_dtype_and_rejects_bad_shapes_naming_the_key():
    assert knn_kl(torch.randn(10, 3), torch.randn(8, 3)).dtype == torch.float32
    with pytest.raises(ConfigValueError, match="samples"):
        knn_kl(torch.randn(10, 3), torch.randn(8, 2))
    with pytest.raises(ConfigValueError, match="samples"):
        knn_kl(torch.randn(1, 3), torch.randn(8, 3))
    with pytest.raises(ConfigValueError, match="k"):
        knn_kl(torch.randn(10, 3), torch.randn(8, 3), k=0)


# --------------------------------------------------------------------------------------------
# Exact W1 between 1-D empirical distributions
# --------------------------------------------------------------------------------------------

samples_1d = st.integers(1, 30).flatmap(
    lambda n: arrays(np.float64, n, elements=st.floats(-100, 100, allow_nan=False)))


@PROPERTY
@given(x=samples_1d, y=samples_1d)
def test_empirical_w1_matches_scipy_for_any_sample_sizes(x, y):
    got = wasserstein1_empirical_1d(_t(x), _t(y)).item()
    assert got == pytest.approx(wasserstein_distance(x, y), rel=1e-9, abs=1e-9)


@PROPERTY
@given(counts=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=2, max_size=8))
def test_empirical_w1_of_integer_samples_is_the_ordinal_w1_of_their_histograms(counts):
    """Samples on the classes 0, 1, …, K−1: their empirical distributions are categorical, and
    W1 = Σ_k |F_P(k) − F_Q(k)| (the existing closed form), whatever the two sample counts."""
    p_counts = np.array([c[0] for c in counts]) + 1
    q_counts = np.array([c[1] for c in counts]) + 1
    classes = np.arange(len(counts))
    x, y = np.repeat(classes, p_counts), np.repeat(classes, q_counts)
    ordinal = wasserstein1_categorical(_t(np.log(p_counts)), _t(np.log(q_counts))).item()
    assert wasserstein1_empirical_1d(_t(x), _t(y)).item() == pytest.approx(ordinal, rel=1e-12)


def test_empirical_w1_of_shifted_gaussian_samples_approaches_the_closed_form():
    """For N(0, 1) and N(1.5, 1), W1 = W2 = 1.5 (a shift moves every quantile by 1.5)."""
    torch.manual_seed(0)
    p, q = Normal(torch.zeros((), dtype=F64), 1.0), Normal(torch.full((), 1.5, dtype=F64), 1.0)
    closed_form = wasserstein2_gaussian(p, q).item()
    assert closed_form == pytest.approx(1.5)
    w1 = wasserstein1_empirical_1d(p.sample((200_000,)), q.sample((150_000,))).item()
    assert w1 == pytest.approx(closed_form, abs=0.01)


def test_empirical_w1_gradient_moves_samples_towards_each_other():
    x = _t([0.0, 1.0, 2.0]).requires_grad_(True)
    w1 = wasserstein1_empirical_1d(x, _t([1.0, 2.0, 3.0, 4.0]))
    w1.backward()
    assert (x.grad < 0).all()


# --------------------------------------------------------------------------------------------
# WGAN-GP (Gulrajani et al. 2017)
# --------------------------------------------------------------------------------------------


def test_gradient_penalty_of_a_linear_critic_is_its_slope_norm_minus_one_squared():
    """v(x) = w·x + b has ∇v = w everywhere, so the penalty is (‖w‖ − 1)² whatever the mix."""
    critic = torch.nn.Linear(3, 1).double()
    with torch.no_grad():
        critic.weight.copy_(_t([[2.0, -1.0, 2.0]]))
    penalty = gradient_penalty(critic, torch.randn(16, 3, dtype=F64), torch.randn(16, 3, dtype=F64))
    assert penalty.item() == pytest.approx((3.0 - 1.0) ** 2, rel=1e-12)


def test_gradient_penalty_reaches_the_critic_parameters_not_the_samples():
    critic = mlp(2, [8], 1).double()
    real = torch.randn(5, 2, dtype=F64, requires_grad=True)
    fake = torch.randn(5, 2, dtype=F64, requires_grad=True)
    gradient_penalty(critic, real, fake).backward()
    # every weight shapes ∇ₓv; the output bias does not, so it gets no gradient
    weights = [p for p in critic.parameters() if p.dim() == 2]
    assert all(w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
               for w in weights)
    assert critic[-1].bias.grad is None
    assert real.grad is None and fake.grad is None


def test_gradient_penalty_rejects_batches_of_different_shapes():
    with pytest.raises(ConfigValueError, match="samples"):
        gradient_penalty(torch.nn.Linear(2, 1), torch.randn(4, 2), torch.randn(3, 2))


def test_wgan_gp_critic_estimates_w1_between_two_gaussians_up_to_the_penalty_s_slack():
    """A critic trained with the paper's λ = 10 on samples of N(0, 1) and N(2, 1), where
    W1 = 2 (the closed-form W2 of a pure shift, equal to W1). The penalty is soft: a critic of
    slope s earns 2s − λ(s − 1)², best at s = 1 + 1/λ, so E_P[v] − E_Q[v] settles near
    W1·(1 + 1/λ) = 2.2, not at 2 — the bias every WGAN-GP estimate of W1 carries."""
    torch.manual_seed(0)
    p, q = Normal(torch.zeros(()), 1.0), Normal(torch.full((), 2.0), 1.0)
    w1 = wasserstein2_gaussian(p, q).item()
    divergence = WassersteinGP()
    critic = mlp(1, [32, 32], 1)
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    for _ in range(300):
        real, fake = p.sample((256, 1)), q.sample((256, 1))
        objective = divergence.critic_objective(critic(real), critic(fake))
        loss = -objective + divergence.penalty_weight * gradient_penalty(critic, real, fake)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        estimate = divergence.critic_objective(critic(p.sample((20_000, 1))),
                                               critic(q.sample((20_000, 1)))).item()
    assert estimate == pytest.approx(w1 * (1 + 1 / divergence.penalty_weight), abs=0.1)
    assert divergence.generator_loss(torch.tensor([1.0, 3.0])).item() == -2.0


def test_wgan_gp_rejects_bad_settings_naming_the_key():
    with pytest.raises(ConfigValueError, match="penalty_weight"):
        WassersteinGP(penalty_weight=-1.0)
    with pytest.raises(ConfigValueError, match="critic_steps"):
        WassersteinGP(critic_steps=0)


def test_closed_form_wasserstein_distances_take_any_nesting_dtype_and_construction():
    """The sibling defects of the KL core, fixed here too: probabilities that read as clamped
    logits, nested ``Independent`` wrappers, and mixed dtypes."""
    from torch.distributions import Categorical, Independent, Normal

    exact = torch.tensor([0.0, 0.5, 0.5])  # W1 between (1, 0, 0) and (0, 0.5, 0.5): 0.5·1 + 0.5·2
    p = Categorical(probs=torch.tensor([1.0, 0.0, 0.0]))
    q = Categorical(probs=exact.to(torch.float64))
    p.logits  # noqa: B018 — reading the (clamped) logits must not change the answer
    assert wasserstein1_categorical(p, q).item() == pytest.approx(1.5, abs=1e-12)
    loc = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    flat = Independent(Normal(loc, torch.ones_like(loc)), 2)
    nested = Independent(Independent(Normal(loc, torch.ones_like(loc)), 1), 1)
    shifted = Independent(Normal(loc.double() + 1.0, torch.ones_like(loc).double()), 2)
    assert wasserstein2_gaussian(nested, shifted).shape == wasserstein2_gaussian(flat, shifted).shape == (1,)
    assert wasserstein2_gaussian(nested, shifted).dtype == torch.float64
    assert wasserstein2_gaussian(nested, shifted).item() == pytest.approx(2.0)
