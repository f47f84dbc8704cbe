"""Specification of ``klexp.core.fdivergences``: f-divergences, their conjugates and variational bounds.

Every row of f-GAN's Table 2 is checked against its *definition*, not against a copy of the table:
``f`` against an independent formula, ``f*`` against a numerical ``sup_u (t·u − f(u))``, the
activation against the conjugate's domain, the optimal critic ``T* = f'(p/q)`` against the value it
must attain. Values are checked against klexp's KL/JS core, scipy and Gaussian closed forms.
"""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import optimize
from scipy.special import rel_entr
from scipy.stats import norm
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Independent, Normal, Poisson, Uniform

from klexp import core
from klexp.core.distributions import MAX_ENUMERATED_OUTCOMES, joint_logits
from klexp.core.fdivergences import (
    F_DIVERGENCES,
    GENERATOR_GRADIENTS,
    VariationalFDivergence,
    categorical_f_divergence,
    donsker_varadhan_bound,
    f_divergence,
    nwj_bound,
)
from klexp.core.wasserstein import wasserstein1_empirical_1d
from klexp.errors import ConfigValueError

F64 = torch.float64
LN2 = math.log(2.0)
PROPERTY = settings(max_examples=40, deadline=None)
ROWS = sorted(F_DIVERGENCES)

# f(u) written from each divergence's definition (Nowozin et al. 2016, Table 2, column f(u)), in
# 60-digit arithmetic so that the reference itself does not cancel at huge or tiny ratios.
mpmath.mp.dps = 60
_DEFINITION_MP = {
    "kl": lambda u: u * mpmath.log(u) if u > 0 else mpmath.mpf(0),
    "reverse_kl": lambda u: -mpmath.log(u) if u > 0 else mpmath.inf,
    "pearson": lambda u: (u - 1) ** 2,
    "neyman": lambda u: (1 - u) ** 2 / u if u > 0 else mpmath.inf,
    "hellinger": lambda u: (mpmath.sqrt(u) - 1) ** 2,
    "js": lambda u: (u * mpmath.log(u) if u > 0 else 0) - (u + 1) * mpmath.log((u + 1) / 2),
    "gan": lambda u: (u * mpmath.log(u) if u > 0 else 0) - (u + 1) * mpmath.log(u + 1),
    "total_variation": lambda u: abs(u - 1) / 2,
}


def definition(name: str, u) -> np.ndarray:
    """f(u) of the named row at each u, from its definition."""
    values = [float(_DEFINITION_MP[name](mpmath.mpf(float(x)))) for x in np.atleast_1d(u)]
    return np.array(values) if np.ndim(u) else values[0]


# D_f(P ‖ Q) = Σ q f(p/q) from probabilities, with 0·f(0/0) = 0 and q = 0 < p costing p·lim f(u)/u.
CATEGORICAL_DEFINITION = {
    "kl": lambda p, q: rel_entr(p, q).sum(-1),
    "reverse_kl": lambda p, q: rel_entr(q, p).sum(-1),
    "pearson": lambda p, q: _ratio_sum((p - q) ** 2, q),
    "neyman": lambda p, q: _ratio_sum((p - q) ** 2, p),
    "hellinger": lambda p, q: ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(-1),
    "js": lambda p, q: (rel_entr(p, (p + q) / 2) + rel_entr(q, (p + q) / 2)).sum(-1),
    "gan": lambda p, q: (rel_entr(p, p + q) + rel_entr(q, p + q)).sum(-1),
    "total_variation": lambda p, q: 0.5 * np.abs(p - q).sum(-1),
}
# The activation g_f of each row maps onto the domain of f*; t ranges over it in the sup test.
ACTIVATION_RANGE = {
    "kl": (-5.0, 5.0), "reverse_kl": (-20.0, -0.05), "pearson": (-5.0, 5.0), "neyman": (-5.0, 0.95),
    "hellinger": (-5.0, 0.95), "js": (-5.0, LN2 - 0.02), "gan": (-5.0, -0.02),
    "total_variation": (-0.5, 0.5),
}


def _ratio_sum(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(numerator == 0, 0.0, numerator / denominator)
    return terms.sum(-1)


def _t(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


# --------------------------------------------------------------------------------------------
# The table, row by row
# --------------------------------------------------------------------------------------------

RATIOS = np.array([0.0, 1e-300, 1e-12, 1e-3, 0.2, 0.5, 0.999, 1.0, 1.001, 2.0, 7.5, 1e3, 1e12])


@pytest.mark.parametrize("name", ROWS)
def test_f_matches_its_definition_from_zero_to_huge_ratios(name):
    row = F_DIVERGENCES[name]
    expected = definition(name, RATIOS)
    got = row.f(_t(RATIOS)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ROWS)
def test_f_at_one_is_zero_except_for_the_gan_row_which_is_minus_ln_4(name):
    value = F_DIVERGENCES[name].f(torch.ones((), dtype=F64)).item()
    assert value == pytest.approx(-math.log(4.0) if name == "gan" else 0.0, abs=1e-15)


@pytest.mark.parametrize("name", ROWS)
def test_f_at_zero_is_the_limit_of_f(name):
    row = F_DIVERGENCES[name]
    near_zero = _DEFINITION_MP[name](mpmath.mpf("1e-1000"))
    if math.isinf(row.f_at_zero):
        assert near_zero > 2000
    else:
        assert float(near_zero) == pytest.approx(row.f_at_zero, rel=1e-15, abs=1e-300)


@pytest.mark.parametrize("name", ROWS)
def test_the_dual_row_is_u_times_f_of_one_over_u(name):
    row, dual = F_DIVERGENCES[name], F_DIVERGENCES[F_DIVERGENCES[name].dual]
    u = _t([1e-6, 0.3, 1.0, 4.0, 1e6])
    np.testing.assert_allclose(dual.f(u).numpy(), (u * row.f(1 / u)).numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ROWS)
@PROPERTY
@given(a=st.floats(1e-6, 1e6), b=st.floats(1e-6, 1e6), mix=st.floats(0, 1))
def test_f_is_convex(name, a, b, mix):
    f = F_DIVERGENCES[name].f
    middle = f(_t(mix * a + (1 - mix) * b)).item()
    chord = mix * f(_t(a)).item() + (1 - mix) * f(_t(b)).item()
    assert middle <= chord + 1e-9 * (1 + abs(chord))


@pytest.mark.parametrize("name", ROWS)
def test_conjugate_is_the_supremum_of_t_u_minus_f_u(name):
    """f*(t) = sup_{u ≥ 0} (t·u − f(u)), found numerically over log u (and u = 0), at points t of
    the activation's range — the check that public f-GAN code with a wrong conjugate would fail."""
    row = F_DIVERGENCES[name]
    low, high = ACTIVATION_RANGE[name]
    for t in np.linspace(low, high, 9):
        def negative_gain(log_u: float, t: float = t) -> float:
            u = math.exp(log_u)
            return -(t * u - definition(name, u))

        best = optimize.minimize_scalar(negative_gain, bounds=(-40, 12), method="bounded",
                                        options={"xatol": 1e-12})
        supremum = max(-best.fun, -definition(name, 0.0))
        conjugate = row.conjugate(_t(t)).item()
        if name == "pearson" and t < -2:
            # f-GAN's Pearson f* is the conjugate of (u − 1)² over all reals: below t = −2 (= f'(0))
            # it exceeds the supremum over ratios u ≥ 0 (which is −1, at u = 0), so the bound stays
            # valid, only looser there; the optimal critic 2(u − 1) never goes below −2
            assert conjugate > supremum
        else:
            assert conjugate == pytest.approx(supremum, rel=1e-6, abs=1e-6), t


@pytest.mark.parametrize("name", ROWS)
def test_activation_maps_every_output_into_the_conjugate_domain(name):
    row = F_DIVERGENCES[name]
    v = torch.linspace(-30, 30, 601, dtype=F64)
    stable = row.conjugate_of_activation(v)
    assert torch.isfinite(row.activation(v)).all() and torch.isfinite(stable).all()
    moderate = v.abs() <= 8
    direct = row.conjugate(row.activation(v[moderate]))
    torch.testing.assert_close(stable[moderate], direct, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ROWS)
def test_derivative_is_the_gradient_of_f(name):
    u = _t([0.05, 0.4, 0.9, 1.3, 3.0, 20.0]).requires_grad_(True)
    (gradient,) = torch.autograd.grad(F_DIVERGENCES[name].f(u).sum(), u)
    torch.testing.assert_close(F_DIVERGENCES[name].derivative(u.detach()), gradient)


@pytest.mark.parametrize("name", ROWS)
def test_fenchel_young_holds_with_equality_at_the_derivative(name):
    """f*(f'(u)) = u·f'(u) − f(u): the critic T = f'(p/q) makes the bound tight pointwise."""
    row = F_DIVERGENCES[name]
    u = _t([0.05, 0.4, 0.9, 1.3, 3.0, 20.0])
    slope = row.derivative(u)
    torch.testing.assert_close(row.conjugate(slope), u * slope - row.f(u))


# --------------------------------------------------------------------------------------------
# Values of D_f
# --------------------------------------------------------------------------------------------


@st.composite
def probability_pairs(draw):
    """Two ``(batch, classes)`` probability arrays, each class possibly 0 in either."""
    batch, classes = draw(st.integers(1, 3)), draw(st.integers(2, 6))
    weights = st.floats(0, 1, allow_nan=False)
    p = draw(arrays(np.float64, (batch, classes), elements=weights))
    q = draw(arrays(np.float64, (batch, classes), elements=weights))
    # tiny weights become zeros: the reference's (p − q)² would underflow before dividing
    p[p < 1e-6], q[q < 1e-6] = 0.0, 0.0
    p[:, 0] += 0.01
    q[:, -1] += 0.01
    return p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)


@pytest.mark.parametrize("name", ROWS)
@PROPERTY
@given(pair=probability_pairs())
def test_categorical_value_matches_the_definition_with_zero_probabilities(name, pair):
    p, q = pair
    with np.errstate(divide="ignore"):
        got = categorical_f_divergence(_t(np.log(p)), _t(np.log(q)), name).numpy()
    expected = CATEGORICAL_DEFINITION[name](p, q)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_js_row_is_twice_klexps_half_weighted_js_and_the_gan_row_is_2js_minus_ln4():
    """The convention pin: f-GAN's JS row integrates to KL(P‖M) + KL(Q‖M) = 2·klexp.core.js."""
    p = Categorical(probs=_t([0.7, 0.2, 0.1]))
    q = Categorical(probs=_t([0.1, 0.3, 0.6]))
    half_weighted = core.js(p, q)
    assert f_divergence(p, q, "js").item() == pytest.approx(2 * half_weighted.item(), rel=1e-12)
    assert f_divergence(p, q, "gan").item() == pytest.approx(2 * half_weighted.item() - math.log(4),
                                                             rel=1e-12)


def test_kl_rows_agree_with_klexps_kl_in_both_directions():
    p = Independent(Categorical(logits=torch.randn(4, 3, 5, dtype=F64)), 1)
    q = Independent(Categorical(logits=torch.randn(4, 3, 5, dtype=F64)), 1)
    torch.testing.assert_close(f_divergence(p, q, "kl"), core.kl(p, q))
    torch.testing.assert_close(f_divergence(p, q, "reverse_kl"), core.reverse_kl(p, q))
    assert f_divergence(p, q, "kl").shape == (4,)


def test_hand_computed_example():
    """p = (½, ½), q = (¼, ¾): Pearson Σ(p − q)²/q = 1/16·4 + 1/16·4/3 = 1/3; TV = ¼;
    squared Hellinger = (√½ − ½)² + (√½ − √¾)²; KL(q = 0 where p > 0) = +∞."""
    p, q = _t(np.log([0.5, 0.5])), _t(np.log([0.25, 0.75]))
    assert categorical_f_divergence(p, q, "pearson").item() == pytest.approx(1 / 3, rel=1e-12)
    assert categorical_f_divergence(p, q, "total_variation").item() == pytest.approx(0.25, rel=1e-12)
    hellinger = (math.sqrt(0.5) - 0.5) ** 2 + (math.sqrt(0.5) - math.sqrt(0.75)) ** 2
    assert categorical_f_divergence(p, q, "hellinger").item() == pytest.approx(hellinger, rel=1e-12)
    zero = _t([0.0, -math.inf])
    assert categorical_f_divergence(_t([0.0, 0.0]), zero, "kl").item() == math.inf
    assert categorical_f_divergence(_t([0.0, 0.0]), zero, "reverse_kl").item() == pytest.approx(LN2)


@pytest.mark.parametrize("name", ROWS)
def test_float32_logits_of_scale_100_give_the_float64_value_and_finite_gradients(name):
    """Probabilities down to e^-200 underflow in float32; the log-space path does not care. (The
    χ² rows' values reach e^+200 here, beyond float32's range: there float32 says +inf.)"""
    generator = torch.Generator().manual_seed(0)
    p64 = 100 * torch.randn(3, 6, generator=generator, dtype=F64)
    q64 = 100 * torch.randn(3, 6, generator=generator, dtype=F64)
    expected = categorical_f_divergence(p64, q64, name)
    p32 = p64.float().requires_grad_(True)
    got = categorical_f_divergence(p32, q64.float(), name)
    finite = expected < torch.finfo(torch.float32).max
    torch.testing.assert_close(got.double()[finite], expected[finite], rtol=1e-4, atol=1e-4)
    assert (got[~finite] == math.inf).all()
    got[finite].sum().backward()
    assert torch.isfinite(p32.grad[finite]).all()


# Two unit-variance Gaussians one unit apart: closed forms of each divergence.
SHIFT = 1.0
GAUSSIAN_VALUES = {
    "kl": SHIFT**2 / 2,
    "reverse_kl": SHIFT**2 / 2,
    "pearson": math.expm1(SHIFT**2),
    "neyman": math.expm1(SHIFT**2),
    "hellinger": 2 * (1 - math.exp(-(SHIFT**2) / 8)),
    "total_variation": 2 * norm.cdf(SHIFT / 2) - 1,
}


def _gaussians() -> tuple[Normal, Normal]:
    return Normal(torch.zeros((), dtype=F64), 1.0), Normal(torch.full((), SHIFT, dtype=F64), 1.0)


@pytest.mark.parametrize("name", sorted(GAUSSIAN_VALUES))
def test_monte_carlo_value_from_densities_matches_gaussian_closed_forms(name):
    torch.manual_seed(0)
    p, q = _gaussians()
    estimate = f_divergence(p, q, name, num_samples=400_000).item()
    assert estimate == pytest.approx(GAUSSIAN_VALUES[name], rel=0.03)


def _quadrature(name: str) -> tuple[float, float]:
    """(D_f, bound at the optimal critic T* = f'(p/q)) for the two Gaussians, by the trapezoid rule
    on a fine grid, in float64."""
    p, q = _gaussians()
    x = torch.linspace(-20, 21, 400_001, dtype=F64)
    log_p, log_q = p.log_prob(x), q.log_prob(x)
    row = F_DIVERGENCES[name]
    divergence = torch.trapezoid(log_q.exp() * row.f_of_log_ratio(log_p - log_q), x)
    critic = row.derivative((log_p - log_q).exp())
    bound = torch.trapezoid(log_p.exp() * critic, x) - torch.trapezoid(log_q.exp() * row.conjugate(critic), x)
    return divergence.item(), bound.item()


@pytest.mark.parametrize("name", ROWS)
def test_the_optimal_critic_attains_the_bound_for_two_gaussians(name):
    divergence, bound = _quadrature(name)
    assert bound == pytest.approx(divergence, rel=1e-7, abs=1e-9)
    if name in GAUSSIAN_VALUES:
        assert divergence == pytest.approx(GAUSSIAN_VALUES[name], rel=1e-7)


# --------------------------------------------------------------------------------------------
# Bounds: never above the divergence, for any critic
# --------------------------------------------------------------------------------------------


@st.composite
def empirical_pairs(draw):
    """Samples (class indices) of P and Q over a few classes, each an exact empirical distribution,
    plus an arbitrary critic value per class."""
    classes = draw(st.integers(2, 5))
    counts = st.lists(st.integers(1, 6), min_size=classes, max_size=classes)
    p_counts, q_counts = draw(counts), draw(counts)
    critic = draw(arrays(np.float64, classes, elements=st.floats(-6, 6, allow_nan=False)))
    p_samples = np.repeat(np.arange(classes), p_counts)
    q_samples = np.repeat(np.arange(classes), q_counts)
    return np.array(p_counts, float), np.array(q_counts, float), critic, p_samples, q_samples


@pytest.mark.parametrize("name", ROWS)
@PROPERTY
@given(pair=empirical_pairs())
def test_the_fenchel_bound_never_exceeds_the_divergence(name, pair):
    p_counts, q_counts, v, p_samples, q_samples = pair
    row = F_DIVERGENCES[name]
    v = _t(v)
    bound = row.bound_from_outputs(v[p_samples], v[q_samples]).item()
    divergence = categorical_f_divergence(_t(np.log(p_counts)), _t(np.log(q_counts)), name).item()
    assert bound <= divergence + 1e-9


@PROPERTY
@given(pair=empirical_pairs())
def test_nwj_never_exceeds_donsker_varadhan_which_never_exceeds_kl(pair):
    p_counts, q_counts, t, p_samples, q_samples = pair
    t = _t(t)
    nwj = nwj_bound(t[p_samples], t[q_samples]).item()
    dv = donsker_varadhan_bound(t[p_samples], t[q_samples]).item()
    kl = categorical_f_divergence(_t(np.log(p_counts)), _t(np.log(q_counts)), "kl").item()
    assert nwj <= dv + 1e-9
    assert dv <= kl + 1e-9


def test_kl_bounds_are_tight_at_their_optimal_critics():
    """DV at T = log(p/q) + c for any c, NWJ at T = 1 + log(p/q), on an exact empirical pair."""
    p_counts, q_counts = np.array([1.0, 3.0, 2.0]), np.array([2.0, 2.0, 2.0])
    p_samples, q_samples = np.repeat(np.arange(3), [1, 3, 2]), np.repeat(np.arange(3), [2, 2, 2])
    log_ratio = _t(np.log(p_counts / p_counts.sum()) - np.log(q_counts / q_counts.sum()))
    kl = categorical_f_divergence(_t(np.log(p_counts)), _t(np.log(q_counts)), "kl").item()
    dv = donsker_varadhan_bound((log_ratio + 5)[p_samples], (log_ratio + 5)[q_samples]).item()
    nwj = nwj_bound((1 + log_ratio)[p_samples], (1 + log_ratio)[q_samples]).item()
    assert dv == pytest.approx(kl, rel=1e-12) and nwj == pytest.approx(kl, rel=1e-12)


def test_donsker_varadhan_hand_computed():
    """T_P = (1, 3), T_Q = (0, ln 3): mean 2 − log((1 + 3)/2) = 2 − ln 2."""
    value = donsker_varadhan_bound(_t([1.0, 3.0]), _t([0.0, math.log(3)])).item()
    assert value == pytest.approx(2 - LN2, rel=1e-12)


# --------------------------------------------------------------------------------------------
# The GAN objective
# --------------------------------------------------------------------------------------------


def test_gan_row_objective_is_minus_the_discriminators_binary_cross_entropy():
    """With D = σ(v): E_P[log D] + E_Q[log(1 − D)]; the non-saturating generator loss is
    −E_Q[log D] and the minimax one E_Q[log(1 − D)]."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    v_real, v_fake = _t([0.3, -2.0, 4.0]), _t([-1.0, 0.5])
    objective = VariationalFDivergence("gan").critic_objective(v_real, v_fake)
    expected = -(bce(v_real, torch.ones_like(v_real)) + bce(v_fake, torch.zeros_like(v_fake)))
    torch.testing.assert_close(objective, expected)
    torch.testing.assert_close(VariationalFDivergence("gan").generator_loss(v_fake),
                               bce(v_fake, torch.ones_like(v_fake)))
    torch.testing.assert_close(VariationalFDivergence("gan", "minimax").generator_loss(v_fake),
                               -bce(v_fake, torch.zeros_like(v_fake)))


def test_reverse_kl_objective_has_the_sign_that_bounds_kl_of_q_from_p():
    """The classic sign bug: with T = −e^{−v}, f*(T) = v − 1, the objective is
    E_P[−e^{−v}] − E_Q[v − 1], and at v* = log(p/q) (T* = f'(p/q) = −q/p) it equals KL(Q ‖ P) > 0."""
    p, q = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.3, 0.5])
    v = _t(np.log(p / q))
    classes = np.arange(3)
    # exact expectations: each class repeated by its probability × 10
    p_samples = np.repeat(classes, np.rint(p * 10).astype(int))
    q_samples = np.repeat(classes, np.rint(q * 10).astype(int))
    objective = VariationalFDivergence("reverse_kl").critic_objective(v[p_samples], v[q_samples]).item()
    assert objective == pytest.approx(rel_entr(q, p).sum(), rel=1e-12)
    assert objective > 0


def test_objective_rejects_unknown_names_and_bad_settings_naming_the_key():
    with pytest.raises(ConfigValueError, match="divergence"):
        VariationalFDivergence("jensen")
    with pytest.raises(ConfigValueError, match="generator_loss"):
        VariationalFDivergence("js", generator_loss="saturating")
    with pytest.raises(ConfigValueError, match="critic_steps"):
        VariationalFDivergence("js", critic_steps=0)


# --------------------------------------------------------------------------------------------
# Arjovsky et al. (2017), example 1: parallel segments
# --------------------------------------------------------------------------------------------


def _segment(x: torch.Tensor, width: float = 1e-3) -> Independent:
    """Uniform on ``[x, x + width] × [0, 1]``: the segment ``{x} × [0, 1]`` as a thin box (every value
    below is the same for any width smaller than the gap between the segments)."""
    zero = torch.zeros((), dtype=F64)
    low = torch.stack([x, zero])
    high = torch.stack([x + width, zero + 1])
    return Independent(Uniform(low, high, validate_args=False), 1)


@pytest.mark.parametrize("theta", [-0.5, 0.1, 1.0])
def test_parallel_segments_only_wasserstein_gives_a_gradient_towards_theta_zero(theta):
    torch.manual_seed(0)
    theta = torch.tensor(theta, dtype=F64, requires_grad=True)
    p, q = _segment(torch.zeros((), dtype=F64)), _segment(theta)

    assert core.kl(p, q).item() == math.inf
    js = core.js(p, q, num_samples=512)
    assert js.item() == pytest.approx(LN2, abs=1e-12)
    assert f_divergence(p, q, "js", num_samples=512).item() == pytest.approx(2 * LN2, abs=1e-12)
    assert f_divergence(p, q, "kl", num_samples=512).item() == math.inf
    (js_gradient,) = torch.autograd.grad(js, theta, allow_unused=True)
    assert js_gradient is None or js_gradient.item() == 0.0

    # W1 between the segments: shift one sample set by θ; the coupling (0, y) ↔ (θ, y) is optimal,
    # and the first coordinates' 1-D W1 is |θ|.
    y = torch.rand(256, dtype=F64)
    w1 = wasserstein1_empirical_1d(torch.zeros_like(y), theta + 0 * y)
    assert w1.item() == pytest.approx(abs(theta.item()), rel=1e-12)
    (w1_gradient,) = torch.autograd.grad(w1, theta)
    assert w1_gradient.item() == pytest.approx(math.copysign(1.0, theta.item()))


# --------------------------------------------------------------------------------------------
# Products of independent discrete factors: only the two KLs split over factors
# --------------------------------------------------------------------------------------------

# D_f of independent factors lies within these bounds, as on any pair (f-GAN's js row is 2·JS).
BOUNDS = {"js": (0.0, 2 * LN2), "gan": (-math.log(4.0), 0.0), "total_variation": (0.0, 1.0),
          "hellinger": (0.0, 2.0)}


def _joint_probabilities(probs: np.ndarray) -> np.ndarray:
    """``(batch, *factors, classes)`` → ``(batch, classes ** factors)``: each joint outcome's
    probability as the product of its factors' (row-major, the last factor fastest)."""
    batch, classes = probs.shape[0], probs.shape[-1]
    flat = probs.reshape(batch, -1, classes)
    factors = flat.shape[1]
    joint = [np.prod(flat[:, np.arange(factors), outcome], axis=1)
             for outcome in itertools.product(range(classes), repeat=factors)]
    return np.stack(joint, axis=1)


@st.composite
def factor_probabilities(draw, max_outcomes: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Two ``(batch, *factors, classes)`` arrays of probabilities, zeros included."""
    classes = draw(st.integers(2, 4))
    event = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    if classes ** int(np.prod(event)) > max_outcomes:
        event = (2,)
    shape = (draw(st.integers(1, 2)), *event, classes)
    weights = st.one_of(st.just(0.0), st.floats(0.01, 1.0))
    pair = []
    for _ in range(2):
        w = draw(arrays(np.float64, shape, elements=weights))
        w[..., draw(st.integers(0, classes - 1))] += 0.01  # no factor without mass
        pair.append(w / w.sum(-1, keepdims=True))
    return pair[0], pair[1]


@pytest.mark.parametrize("name", ROWS)
@PROPERTY
@given(pair=factor_probabilities())
def test_independent_categorical_factors_give_the_divergence_of_their_joint(name, pair):
    p, q = pair
    dims = p.ndim - 2
    got = f_divergence(Independent(Categorical(probs=_t(p)), dims),
                       Independent(Categorical(probs=_t(q)), dims), name).numpy()
    expected = CATEGORICAL_DEFINITION[name](_joint_probabilities(p), _joint_probabilities(q))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ROWS)
@PROPERTY
@given(probs=arrays(np.float64, (2, 4), elements=st.one_of(st.sampled_from([0.0, 1.0]),
                                                            st.floats(1e-3, 1 - 1e-3))))
def test_independent_bernoulli_factors_give_the_divergence_of_their_joint(name, probs):
    p, q = probs
    got = f_divergence(Independent(Bernoulli(probs=_t(p)), 1), Independent(Bernoulli(probs=_t(q)), 1),
                       name).item()
    as_classes = lambda b: np.stack([1 - b, b], -1)[None]  # noqa: E731
    expected = CATEGORICAL_DEFINITION[name](_joint_probabilities(as_classes(p)),
                                            _joint_probabilities(as_classes(q)))[0]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    low, high = BOUNDS.get(name, (0.0, math.inf))
    assert low - 1e-12 <= got <= high + 1e-12


@pytest.mark.parametrize("name", sorted(BOUNDS))
@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), factors=st.integers(1, 12), scale=st.floats(0.0, 30.0))
def test_divergences_of_many_independent_factors_stay_within_their_bounds(name, seed, factors, scale):
    generator = torch.Generator().manual_seed(seed)
    p, q = (Independent(Bernoulli(logits=scale * torch.randn(factors, generator=generator, dtype=F64)), 1)
            for _ in range(2))
    low, high = BOUNDS[name]
    assert low - 1e-12 <= f_divergence(p, q, name).item() <= high + 1e-12


def test_three_disjoint_bits_the_case_an_outside_check_found():
    """p = (1, 1, 1), q = (0, 0, 0): the joints are point masses on two different outcomes, so every
    row takes its value for disjoint supports — not three times it."""
    p = Independent(Bernoulli(probs=torch.ones(3, dtype=F64)), 1)
    q = Independent(Bernoulli(probs=torch.zeros(3, dtype=F64)), 1)
    assert f_divergence(p, q, "js").item() == pytest.approx(2 * LN2, rel=1e-12)
    assert f_divergence(p, q, "gan").item() == pytest.approx(0.0, abs=1e-12)
    assert f_divergence(p, q, "total_variation").item() == pytest.approx(1.0, rel=1e-12)
    assert f_divergence(p, q, "hellinger").item() == pytest.approx(2.0, rel=1e-12)
    assert f_divergence(p, q, "kl").item() == f_divergence(p, q, "reverse_kl").item() == math.inf


def test_the_kl_rows_of_independent_factors_are_the_sum_of_the_factors_kls():
    p = Independent(Categorical(logits=torch.randn(2, 20, 3, dtype=F64)), 1)  # 3^20 joint outcomes
    q = Independent(Categorical(logits=torch.randn(2, 20, 3, dtype=F64)), 1)
    torch.testing.assert_close(f_divergence(p, q, "kl"), core.kl(p, q))
    torch.testing.assert_close(f_divergence(p, q, "reverse_kl"), core.kl(q, p))


def _bits(factors: int, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(factors, generator=generator, dtype=F64),
            torch.randn(factors, generator=generator, dtype=F64))


def test_beyond_the_enumerated_size_a_non_additive_row_is_refused_unless_monte_carlo_is_asked():
    factors = int(math.log2(MAX_ENUMERATED_OUTCOMES)) + 1
    p_logits, q_logits = _bits(factors, 0)
    p, q = Independent(Bernoulli(logits=p_logits), 1), Independent(Bernoulli(logits=q_logits), 1)
    with pytest.raises(ConfigValueError, match=r"^monte_carlo: the 'js' divergence .* 8192 outcomes"):
        f_divergence(p, q, "js")
    assert math.isfinite(f_divergence(p, q, "kl").item())  # additive: exact at any size
    exact = categorical_f_divergence(joint_logits(_two_classes(p_logits), 1),
                                     joint_logits(_two_classes(q_logits), 1), "js").item()
    torch.manual_seed(0)
    terms = f_divergence(p.expand((4000,)), q.expand((4000,)), "js", num_samples=1, monte_carlo=True)
    standard_error = terms.std().item() / math.sqrt(terms.numel())
    assert terms.mean().item() == pytest.approx(exact, abs=5 * standard_error)


def _two_classes(bernoulli_logits: Tensor) -> Tensor:
    return torch.stack([torch.zeros_like(bernoulli_logits), bernoulli_logits], -1)


# --------------------------------------------------------------------------------------------
# The Monte-Carlo gradient: through the draws, or by the score function where Q has no rsample
# --------------------------------------------------------------------------------------------

# the rows whose score-function estimate has a finite variance for the Poisson pair below
POISSON_ROWS = ["gan", "hellinger", "js", "kl", "pearson", "reverse_kl", "total_variation"]


def _exact_poisson_divergence(name: str, rate: Tensor) -> Tensor:
    """D_f(Poisson(3) ‖ Poisson(rate)) by summing its terms over 0…99 (the rest is below 1e-40)."""
    k = torch.arange(100, dtype=F64)
    log_p, log_q = Poisson(torch.tensor(3.0, dtype=F64)).log_prob(k), Poisson(rate).log_prob(k)
    return (log_q.exp() * F_DIVERGENCES[name].f_of_log_ratio(log_p - log_q)).sum()


def _mean_and_standard_error(per_element_gradients: Tensor) -> tuple[Tensor, Tensor]:
    n = per_element_gradients.shape[0]
    return per_element_gradients.mean(0), per_element_gradients.std(0) / math.sqrt(n)


@pytest.mark.parametrize("name", POISSON_ROWS)
def test_the_gradient_for_the_rate_of_a_sampled_poisson_is_the_divergences(name):
    """Poisson draws carry no gradient: without the score-function term, d/d rate of the kl row
    came out ≈ 1.31 for P = Poisson(3), Q = Poisson(6), against 0.50 exactly. Each of 20,000 batch
    elements has its own rate and one draw, so its gradient is one draw of the estimator's."""
    torch.manual_seed(0)
    n = 20_000
    rate = torch.full((n,), 6.0, dtype=F64, requires_grad=True)
    f_divergence(Poisson(torch.tensor(3.0, dtype=F64)), Poisson(rate), name, num_samples=1).sum().backward()
    mean, standard_error = _mean_and_standard_error(rate.grad)
    at = torch.tensor(6.0, dtype=F64, requires_grad=True)
    (exact,) = torch.autograd.grad(_exact_poisson_divergence(name, at), at)
    assert mean.item() == pytest.approx(exact.item(), abs=5 * standard_error.item())
    assert standard_error.item() < 0.05 * (1 + abs(exact.item()))  # the test can tell 1.31 from 0.5


@pytest.mark.parametrize("name", ["gan", "hellinger", "js", "total_variation"])
def test_the_monte_carlo_gradient_of_many_bits_is_the_divergences_for_both_sides(name):
    """13 independent bits (8,192 outcomes, beyond the enumerated size) with monte_carlo=True: the
    gradients for Q's logits (sampled, by the score function) and P's (through the density ratio)
    are the exact ones, computed on the enumerated joint."""
    factors = int(math.log2(MAX_ENUMERATED_OUTCOMES)) + 1
    p_logits, q_logits = (x.requires_grad_(True) for x in _bits(factors, 1))
    exact = categorical_f_divergence(joint_logits(_two_classes(p_logits), 1),
                                     joint_logits(_two_classes(q_logits), 1), name)
    exact_p, exact_q = torch.autograd.grad(exact, (p_logits, q_logits))

    torch.manual_seed(0)
    n = 8000
    p_each = p_logits.detach().expand(n, factors).clone().requires_grad_(True)
    q_each = q_logits.detach().expand(n, factors).clone().requires_grad_(True)
    f_divergence(Independent(Bernoulli(logits=p_each), 1), Independent(Bernoulli(logits=q_each), 1),
                 name, num_samples=1, monte_carlo=True).sum().backward()
    for found, expected in ((q_each.grad, exact_q), (p_each.grad, exact_p)):
        mean, standard_error = _mean_and_standard_error(found)
        assert ((mean - expected).abs() <= 5 * standard_error + 1e-12).all(), (mean, expected)


# --------------------------------------------------------------------------------------------
# Which gradient a GAN's generator follows at the optimal critic, per row and generator loss
# --------------------------------------------------------------------------------------------

def _xlogy(x: Tensor, y: Tensor) -> Tensor:
    return x * y.log()


# Each label of GENERATOR_GRADIENTS as a function of the probabilities (P the data, Q the model),
# written from its definition.
NAMED_DIVERGENCES = {
    "KL(P ‖ Q)": lambda p, q: _xlogy(p, p / q).sum(),
    "KL(Q ‖ P)": lambda p, q: _xlogy(q, q / p).sum(),
    "2·KL(P ‖ Q)": lambda p, q: 2 * _xlogy(p, p / q).sum(),
    "χ²(P ‖ Q)": lambda p, q: ((p - q) ** 2 / q).sum(),
    "χ²(Q ‖ P)": lambda p, q: ((q - p) ** 2 / p).sum(),
    "½·χ²(Q ‖ P)": lambda p, q: 0.5 * ((q - p) ** 2 / p).sum(),
    "⅓·E_Q[(q/p)²]": lambda p, q: (q * (q / p) ** 2).sum() / 3,
    "H²(P, Q)": lambda p, q: ((p.sqrt() - q.sqrt()) ** 2).sum(),
    "⅔·E_Q[(q/p)^½]": lambda p, q: 2 * (q * (q / p).sqrt()).sum() / 3,
    "2·JS(P, Q)": lambda p, q: (_xlogy(p, 2 * p / (p + q)) + _xlogy(q, 2 * q / (p + q))).sum(),
    "KL(Q ‖ P) − 2·JS(P, Q)": lambda p, q: (_xlogy(q, q / p).sum()
                                           - (_xlogy(p, 2 * p / (p + q)) + _xlogy(q, 2 * q / (p + q))).sum()),
    "TV(P, Q)": lambda p, q: 0.5 * (p - q).abs().sum(),
}
# The row's own divergence D_f(P ‖ Q), as labelled in the table.
OWN_DIVERGENCE = {"kl": "KL(P ‖ Q)", "reverse_kl": "KL(Q ‖ P)", "pearson": "χ²(P ‖ Q)",
                  "neyman": "χ²(Q ‖ P)", "hellinger": "H²(P, Q)", "js": "2·JS(P, Q)",
                  "gan": "2·JS(P, Q)", "total_variation": "TV(P, Q)"}
# g_f⁻¹: the critic output v whose activation is the optimal critic's value T (TV's T* = ±½ lies
# on its range's boundary: tanh(±40) is ±1 in float64).
INVERSE_ACTIVATION = {
    "kl": lambda t: t,
    "pearson": lambda t: t,
    "reverse_kl": lambda t: -torch.log(-t),
    "neyman": lambda t: -torch.log1p(-t),
    "hellinger": lambda t: -torch.log1p(-t),
    "js": lambda t: -torch.log(2 * torch.exp(-t) - 1),
    "gan": lambda t: -torch.log(torch.expm1(-t)),
    "total_variation": lambda t: 40 * torch.sign(t),
}
GENERATOR_CELLS = sorted(GENERATOR_GRADIENTS)


def _generator_gradient_at_the_optimal_critic(name: str, loss: str, p: Tensor, theta: Tensor) -> Tensor:
    """``∇_θ E_{x~Q_θ}[ℓ(v*(x))]`` with the critic held at its optimum ``v* = g_f⁻¹(f'(p/q))``
    for the current Q, by enumerating x (what the generator's update follows in expectation,
    whether its draws are reparameterised or not); ``ℓ`` is ``generator_loss`` on one point."""
    row = F_DIVERGENCES[name]
    q = theta.detach().softmax(-1)
    optimal_critic = row.derivative(p / q)
    v = INVERSE_ACTIVATION[name](optimal_critic)
    torch.testing.assert_close(row.activation(v), optimal_critic, rtol=1e-9, atol=1e-12)
    objective = VariationalFDivergence(name, generator_loss=loss)
    per_point = torch.stack([objective.generator_loss(v[i : i + 1]) for i in range(len(v))])
    (found,) = torch.autograd.grad((theta.softmax(-1) * per_point.detach()).sum(), theta)
    return found


def _named_gradient(label: str, p: Tensor, theta: Tensor) -> Tensor:
    (expected,) = torch.autograd.grad(NAMED_DIVERGENCES[label](p, theta.softmax(-1)), theta)
    return expected


def test_the_generator_table_has_every_row_and_loss_and_only_named_divergences():
    assert set(GENERATOR_GRADIENTS) == {(row, loss) for row in ROWS for loss in ("minimax", "non_saturating")}
    assert set(GENERATOR_GRADIENTS.values()) <= set(NAMED_DIVERGENCES)
    assert VariationalFDivergence("kl").generator_follows == "KL(Q ‖ P)"  # the default loss


@pytest.mark.parametrize("cell", GENERATOR_CELLS, ids=[f"{row}-{loss}" for row, loss in GENERATOR_CELLS])
@pytest.mark.parametrize("seed", range(4))
def test_the_generator_follows_the_gradient_the_table_names(cell, seed):
    """P and Q_θ = softmax(θ) on 6 points, all probabilities positive; for every cell whose label
    is not the row's own divergence, the gradient is also shown to differ from ∇D_f(P ‖ Q) (the
    ``kl`` row's non-saturating generator is *not* mass covering)."""
    name, loss = cell
    generator = torch.Generator().manual_seed(seed)
    p = torch.randn(6, generator=generator, dtype=F64).softmax(-1)
    theta = torch.randn(6, generator=generator, dtype=F64).requires_grad_(True)
    found = _generator_gradient_at_the_optimal_critic(name, loss, p, theta)
    label = GENERATOR_GRADIENTS[cell]
    torch.testing.assert_close(found, _named_gradient(label, p, theta), rtol=1e-9, atol=1e-12)
    own = _named_gradient(OWN_DIVERGENCE[name], p, theta)
    if label != OWN_DIVERGENCE[name]:
        assert (found - own).norm().item() > 1e-3 * (1 + own.norm().item())


@pytest.mark.parametrize("name", ["js", "total_variation"])
def test_the_monte_carlo_gradient_includes_the_mass_of_p_that_q_cannot_see(name):
    """Q's first bit is 0 for sure, so half of P's outcomes lie where q = 0: their cost
    f⋄(0)·P(q = 0), estimated from draws of P, carries the score-function gradient for P's logits
    too (P's draws are not reparameterised either)."""
    factors = int(math.log2(MAX_ENUMERATED_OUTCOMES)) + 1
    p_logits, q_logits = _bits(factors, 2)
    q_probs = q_logits.sigmoid().index_fill(0, torch.tensor([0]), 0.0)
    q_joint_logits = joint_logits(torch.stack([(1 - q_probs).log(), q_probs.log()], -1), 1)
    p_logits.requires_grad_(True)
    exact = categorical_f_divergence(joint_logits(_two_classes(p_logits), 1), q_joint_logits, name)
    (exact_p,) = torch.autograd.grad(exact, p_logits)

    torch.manual_seed(0)
    n = 8000
    p_each = p_logits.detach().expand(n, factors).clone().requires_grad_(True)
    q = Independent(Bernoulli(probs=q_probs.expand(n, factors)), 1)
    values = f_divergence(Independent(Bernoulli(logits=p_each), 1), q, name, num_samples=1, monte_carlo=True)
    values.sum().backward()
    mean, standard_error = _mean_and_standard_error(p_each.grad)
    assert ((mean - exact_p).abs() <= 5 * standard_error + 1e-12).all(), (mean, exact_p)
