"""Specification of the KL core, ``klexp.core``.

Every value is checked against an independent computation — scipy (``rel_entr``, ``entr``,
``kl_div``, ``jensenshannon``, ``wasserstein_distance``, numerical integration), torch's registered
closed forms, or a hand-computed textbook example — in float64 unless a test is about float32.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import integrate, stats
from scipy.linalg import sqrtm
from scipy.spatial.distance import jensenshannon
from scipy.special import entr, kl_div, rel_entr, softmax, xlogy
from torch.distributions import (
    Bernoulli,
    Beta,
    Binomial,
    Categorical,
    Gamma,
    Independent,
    Normal,
    Poisson,
    kl_divergence,
)

from klexp import core as D

F64 = torch.float64
LN2 = math.log(2.0)
INF = math.inf
PROPERTY = settings(max_examples=40, deadline=None)


# --------------------------------------------------------------------------------------------
# Strategies: batches of categorical logits, some classes with probability 0 (logit −inf).
# --------------------------------------------------------------------------------------------

@st.composite
def logit_pairs(draw, zeros: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Two ``(batch, classes)`` float64 logit arrays.

    ``zeros``: ``"none"`` (all classes possible); ``"p_only"`` (P excludes some classes, Q's
    excluded classes a subset of P's, so ``KL(P ‖ Q)`` is finite); ``"any"`` (both exclude
    arbitrary classes). Each row keeps at least one possible class.
    """
    batch = draw(st.integers(1, 4))
    classes = draw(st.integers(2, 7))
    values = st.floats(-20, 20, allow_nan=False, width=64)
    p = draw(arrays(np.float64, (batch, classes), elements=values))
    q = draw(arrays(np.float64, (batch, classes), elements=values))
    if zeros != "none":
        p_zero = draw(arrays(np.bool_, (batch, classes)))
        q_zero = draw(arrays(np.bool_, (batch, classes)))
        rows = np.arange(batch)
        keep_p = draw(arrays(np.int64, batch, elements=st.integers(0, classes - 1)))
        keep_q = draw(arrays(np.int64, batch, elements=st.integers(0, classes - 1)))
        p_zero[rows, keep_p] = False
        if zeros == "p_only":
            q_zero &= p_zero
        q_zero[rows, keep_q] = False
        p[p_zero] = -np.inf
        q[q_zero] = -np.inf
    return p, q


def probs(logits: np.ndarray) -> np.ndarray:
    return softmax(logits, axis=-1)


def reference_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """``Σ_k rel_entr(p_k, q_k)`` with scipy: ``0·log(0/q) = 0``, ``p·log(p/0) = +inf``."""
    return rel_entr(probs(p_logits), probs(q_logits)).sum(-1)


def scipy_js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """scipy's Jensen–Shannon *distance* squared (the divergence, base e). scipy takes the square
    root of a value rounding can leave just below 0 for nearly equal rows (NaN): that is 0."""
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(jensenshannon(p, q, axis=-1) ** 2, nan=0.0)


def t(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(array, dtype=F64)


def cat(logits: np.ndarray) -> Categorical:
    return Categorical(logits=t(logits))


def assert_close(actual: torch.Tensor, expected, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    np.testing.assert_allclose(actual.detach().numpy(), expected, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------
# Textbook examples, to the last printed digit.
# --------------------------------------------------------------------------------------------

def test_cover_and_thomas_example_2_3_1_in_bits():
    """Cover & Thomas, Elements of Information Theory, Example 2.3.1: p = (1/2, 1/2),
    q = (1/4, 3/4): D(p‖q) = 1 − ½ log2 3 = 0.2075 bits, D(q‖p) = ¾ log2 3 − 1 = 0.1887 bits."""
    p = Categorical(probs=torch.tensor([0.5, 0.5], dtype=F64))
    q = Categorical(probs=torch.tensor([0.25, 0.75], dtype=F64))
    forward = D.kl(p, q, units="bits").item()
    reverse = D.reverse_kl(p, q, units="bits").item()
    assert round(forward, 4) == 0.2075
    assert round(reverse, 4) == 0.1887
    assert forward == pytest.approx(1 - 0.5 * math.log2(3), rel=1e-14)
    assert reverse == pytest.approx(0.75 * math.log2(3) - 1, rel=1e-14)
    # The same numbers in nats, and from logits instead of probabilities.
    assert D.kl(p, q).item() == pytest.approx(0.143841036225890, rel=1e-13)
    assert D.categorical_kl(torch.log(p.probs), torch.log(q.probs)).item() == pytest.approx(
        0.143841036225890, rel=1e-13)


def test_wikipedia_binomial_versus_uniform_in_nats():
    """Wikipedia, "Kullback–Leibler divergence", basic example: P = Binomial(2, 0.4) =
    (0.36, 0.48, 0.16), Q uniform on {0, 1, 2}: D(P‖Q) = 0.0852996 nats, D(Q‖P) = 0.097455 nats."""
    support = torch.arange(3, dtype=F64)
    p = Categorical(logits=Binomial(2, torch.tensor(0.4, dtype=F64)).log_prob(support))
    q = Categorical(logits=torch.zeros(3, dtype=F64))
    assert_close(p.probs, [0.36, 0.48, 0.16], rtol=1e-14)
    forward, reverse = D.kl(p, q).item(), D.kl(q, p).item()
    assert round(forward, 7) == 0.0852996
    assert round(reverse, 6) == 0.097455
    assert forward == pytest.approx(0.0852996013183706, rel=1e-13)
    assert reverse == pytest.approx(0.0974550067853876, rel=1e-13)
    assert D.kl(p, q, units="bits").item() == pytest.approx(0.0852996013183706 / LN2, rel=1e-13)


def test_kl_is_asymmetric_and_reverse_kl_swaps_the_arguments():
    p = Categorical(probs=torch.tensor([0.5, 0.5], dtype=F64))
    q = Categorical(probs=torch.tensor([0.25, 0.75], dtype=F64))
    assert D.kl(p, q).item() != pytest.approx(D.kl(q, p).item(), rel=1e-3)
    assert D.reverse_kl(p, q).item() == D.kl(q, p).item()


# --------------------------------------------------------------------------------------------
# Categorical pairs against scipy (properties over random logits, −inf included).
# --------------------------------------------------------------------------------------------

@PROPERTY
@given(logit_pairs(zeros="any"))
def test_categorical_kl_matches_scipy_rel_entr(pair):
    p_logits, q_logits = pair
    expected = reference_kl(p_logits, q_logits)
    assert_close(D.categorical_kl(t(p_logits), t(q_logits)), expected)
    assert_close(D.kl(cat(p_logits), cat(q_logits)), expected)
    # Built from probabilities (exact zeros) rather than logits: the same values, +inf included.
    from_probs = D.kl(Categorical(probs=t(probs(p_logits))), Categorical(probs=t(probs(q_logits))))
    assert_close(from_probs, expected)


@PROPERTY
@given(logit_pairs(zeros="p_only"))
def test_categorical_kl_matches_scipy_kl_div_on_normalised_distributions(pair):
    """scipy's ``kl_div(x, y) = x log(x/y) − x + y`` sums to the KL when both sum to 1."""
    p_logits, q_logits = pair
    expected = kl_div(probs(p_logits), probs(q_logits)).sum(-1)
    assert_close(D.categorical_kl(t(p_logits), t(q_logits)), expected, atol=1e-11)


@PROPERTY
@given(logit_pairs(zeros="any"))
def test_categorical_entropy_and_cross_entropy_match_scipy(pair):
    p_logits, q_logits = pair
    p, q = probs(p_logits), probs(q_logits)
    assert_close(D.entropy(cat(p_logits)), entr(p).sum(-1))
    assert_close(D.cross_entropy(cat(p_logits), cat(q_logits)), -xlogy(p, q).sum(-1))


@PROPERTY
@given(logit_pairs(zeros="p_only"))
def test_cross_entropy_is_kl_plus_entropy(pair):
    p, q = cat(pair[0]), cat(pair[1])
    assert_close(D.cross_entropy(p, q), (D.kl(p, q) + D.entropy(p)).numpy(), atol=1e-10)


@PROPERTY
@given(logit_pairs(zeros="any"))
def test_kl_is_non_negative_zero_for_equal_distributions_and_obeys_pinsker(pair):
    """``KL(P‖Q) ≥ ½‖P − Q‖₁² ≥ 0`` (Pinsker) with equality to 0 exactly when P = Q."""
    p_logits, q_logits = pair
    value = D.categorical_kl(t(p_logits), t(q_logits)).numpy()
    l1 = np.abs(probs(p_logits) - probs(q_logits)).sum(-1)
    assert (value >= 0).all()
    assert (value >= 0.5 * l1**2 * (1 - 1e-9) - 1e-15).all()
    assert (D.categorical_kl(t(p_logits), t(p_logits)) == 0).all()
    # Shifting logits by a constant is the same distribution: still exactly-zero KL up to rounding.
    assert_close(D.categorical_kl(t(p_logits), t(p_logits + 3.0)), np.zeros(len(p_logits)),
                 atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@PROPERTY
@given(logit_pairs(zeros="any"), st.sampled_from([1e-9, 1e-6, 1e-4]), st.integers(0, 2**31))
def test_nearly_equal_distributions_never_give_a_negative_divergence(dtype, pair, scale, seed):
    """Rounding in Σ p (log p − log q) can fall below 0 (down to −4e-7 in float32) when P ≈ Q."""
    generator = torch.Generator().manual_seed(seed)
    p_logits = t(pair[0]).to(dtype)
    q_logits = p_logits + scale * torch.randn(p_logits.shape, generator=generator, dtype=dtype)
    for value in (D.categorical_kl(p_logits, q_logits), D.categorical_js(p_logits, q_logits),
                  D.kl(Categorical(logits=p_logits), Categorical(logits=q_logits))):
        assert (value >= 0).all()


def test_values_rounded_up_to_zero_keep_their_gradient():
    """∂KL(P ‖ Q)/∂(q logits) = q − p holds for rows whose value rounding took below 0 too."""
    generator = torch.Generator().manual_seed(0)
    p_logits = 5 * torch.randn(2000, 7, generator=generator)
    q_logits = (p_logits + 1e-6 * torch.randn(2000, 7, generator=generator)).requires_grad_()
    value = D.categorical_kl(p_logits, q_logits)
    assert ((value == 0) & (p_logits != q_logits).any(-1)).sum() > 100  # the rounding happened
    value.sum().backward()
    expected = torch.softmax(q_logits.detach().double(), -1) - torch.softmax(p_logits.double(), -1)
    assert_close(q_logits.grad.double(), expected.numpy(), rtol=0, atol=1e-6)


def test_hessian_at_p_equal_q_is_the_fisher_information():
    """∇²_q KL(P ‖ Q) at Q = P is diag(p) − p pᵀ (what TRPO's Fisher-vector products use)."""
    p_logits = torch.tensor([0.3, -1.0, 2.0, 0.0], dtype=F64)
    hessian = torch.autograd.functional.hessian(lambda q: D.categorical_kl(p_logits, q), p_logits)
    p = torch.softmax(p_logits, -1)
    assert_close(hessian, (torch.diag(p) - torch.outer(p, p)).numpy())


@PROPERTY
@given(logit_pairs(zeros="none"))
def test_kl_is_positive_for_distinct_distributions(pair):
    p_logits, q_logits = pair
    gap = np.abs(probs(p_logits) - probs(q_logits)).sum(-1)
    assume((gap > 1e-3).all())
    assert (D.categorical_kl(t(p_logits), t(q_logits)) > 0).all()


@PROPERTY
@given(logit_pairs(zeros="any"))
def test_jensen_shannon_matches_scipy_is_symmetric_and_at_most_ln2(pair):
    p_logits, q_logits = pair
    value = D.js(cat(p_logits), cat(q_logits))
    assert_close(value, scipy_js(probs(p_logits), probs(q_logits)), atol=1e-12)
    assert_close(D.js(cat(q_logits), cat(p_logits)), value.numpy(), atol=1e-15)
    assert ((value >= 0) & (value <= LN2 * (1 + 1e-15))).all()


def test_jensen_shannon_of_disjoint_supports_is_ln2_and_of_equal_distributions_zero():
    p = Categorical(logits=torch.tensor([0.0, -INF], dtype=F64))
    q = Categorical(logits=torch.tensor([-INF, 0.0], dtype=F64))
    assert D.js(p, q).item() == pytest.approx(LN2, rel=1e-15)
    assert D.js(p, q, units="bits").item() == pytest.approx(1.0, rel=1e-15)
    assert D.js(p, p).item() == 0.0


@PROPERTY
@given(logit_pairs(zeros="any"))
def test_bits_are_nats_over_ln2(pair):
    p, q = cat(pair[0]), cat(pair[1])
    for fn in (D.kl, D.reverse_kl, D.js, D.cross_entropy):
        assert_close(fn(p, q, units="bits"), (fn(p, q) / LN2).numpy())
    assert_close(D.entropy(p, units="bits"), (D.entropy(p) / LN2).numpy())


def test_unknown_units_and_estimators_are_rejected():
    p = Categorical(logits=torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="units"):
        D.kl(p, p, units="hartleys")
    with pytest.raises(ValueError, match="estimator"):
        D.kl(p, p, estimator="k4")
    with pytest.raises(ValueError, match="num_samples"):
        D.kl(p, p, estimator="k1", num_samples=0)


# --------------------------------------------------------------------------------------------
# Bernoulli, Normal / Independent Normal, and pairs torch registers.
# --------------------------------------------------------------------------------------------

# Subnormal probabilities are excluded: scipy forms the mixture (p + q)/2 in probability space,
# where 5e-324/2 underflows to 0 and its JS turns inf.
probabilities = st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False)


@PROPERTY
@given(st.lists(st.tuples(probabilities, probabilities), min_size=1, max_size=5))
def test_bernoulli_kl_entropy_and_js_match_scipy(pairs):
    a, b = np.array(pairs).T
    two_class = lambda x: np.stack([1 - x, x], -1)  # noqa: E731
    p, q = Bernoulli(probs=t(a)), Bernoulli(probs=t(b))
    assert_close(D.kl(p, q), rel_entr(two_class(a), two_class(b)).sum(-1), rtol=1e-8)
    assert_close(D.entropy(p), entr(two_class(a)).sum(-1), rtol=1e-8)
    assert_close(D.js(p, q), scipy_js(two_class(a), two_class(b)), atol=1e-12)


def test_bernoulli_from_logits_and_from_probs_agree_and_zero_probability_gives_inf():
    logits = torch.tensor([-3.0, 0.0, 2.5], dtype=F64)
    p, q = Bernoulli(logits=logits), Bernoulli(logits=logits.flip(0))
    expected = kl_divergence(p, q)
    assert_close(D.kl(p, q), expected.numpy())
    assert_close(D.kl(Bernoulli(probs=p.probs), Bernoulli(probs=q.probs)), expected.numpy())
    certain = Bernoulli(probs=torch.tensor(1.0, dtype=F64))
    fair = Bernoulli(probs=torch.tensor(0.5, dtype=F64))
    assert D.kl(fair, certain).item() == INF
    assert D.kl(certain, fair).item() == pytest.approx(LN2, rel=1e-15)


def normal_kl_by_formula(mu_p, sigma_p, mu_q, sigma_q):
    """Textbook closed form ``log(σq/σp) + (σp² + (μp − μq)²) / (2σq²) − ½`` (numpy)."""
    return np.log(sigma_q / sigma_p) + (sigma_p**2 + (mu_p - mu_q) ** 2) / (2 * sigma_q**2) - 0.5


locs = st.floats(-5, 5, allow_nan=False)
scales = st.floats(0.05, 5, allow_nan=False)


@PROPERTY
@given(st.lists(st.tuples(locs, scales, locs, scales), min_size=1, max_size=6))
def test_normal_kl_matches_closed_form_and_cross_entropy_identity(rows):
    mu_p, sigma_p, mu_q, sigma_q = (t(np.array(c)) for c in zip(*rows, strict=True))
    p, q = Normal(mu_p, sigma_p), Normal(mu_q, sigma_q)
    value = D.kl(p, q)
    assert value.shape == mu_p.shape
    assert_close(value, normal_kl_by_formula(*(x.numpy() for x in (mu_p, sigma_p, mu_q, sigma_q))))
    assert (value >= 0).all()
    assert_close(D.cross_entropy(p, q), (value + D.entropy(p)).numpy())
    assert_close(D.entropy(p), stats.norm(mu_p.numpy(), sigma_p.numpy()).entropy())


@pytest.mark.parametrize(("mu_p", "sigma_p", "mu_q", "sigma_q"),
                         [(0.0, 1.0, 1.0, 2.0), (0.5, 0.3, -0.2, 1.1), (2.0, 1.5, 2.0, 1.5)])
def test_normal_kl_matches_numerical_integration(mu_p, sigma_p, mu_q, sigma_q):
    p_pdf, q_pdf = stats.norm(mu_p, sigma_p), stats.norm(mu_q, sigma_q)
    expected, _ = integrate.quad(lambda x: p_pdf.pdf(x) * (p_pdf.logpdf(x) - q_pdf.logpdf(x)),
                                 -np.inf, np.inf)
    value = D.kl(Normal(t(mu_p), t(sigma_p)), Normal(t(mu_q), t(sigma_q))).item()
    assert value == pytest.approx(expected, rel=1e-7, abs=1e-12)


def test_independent_normal_sums_over_event_dimensions_one_value_per_batch_element():
    generator = torch.Generator().manual_seed(0)
    mu_p, mu_q = torch.randn(2, 4, 3, generator=generator, dtype=F64)
    sigma_p, sigma_q = torch.rand(2, 4, 3, generator=generator, dtype=F64) + 0.5
    p = Independent(Normal(mu_p, sigma_p), 1)
    q = Independent(Normal(mu_q, sigma_q), 1)
    value = D.kl(p, q)
    assert value.shape == (4,)
    assert_close(value, D.kl(Normal(mu_p, sigma_p), Normal(mu_q, sigma_q)).sum(-1).numpy())
    assert_close(D.entropy(p), Normal(mu_p, sigma_p).entropy().sum(-1).numpy())
    assert_close(D.cross_entropy(p, q), (value + D.entropy(p)).numpy())
    assert_close(D.reverse_kl(p, q), kl_divergence(q, p).numpy())


def test_categorical_kl_keeps_batch_shape_and_independent_categorical_sums():
    generator = torch.Generator().manual_seed(1)
    p_logits, q_logits = torch.randn(2, 3, 4, 5, generator=generator, dtype=F64)
    assert D.kl(Categorical(logits=p_logits), Categorical(logits=q_logits)).shape == (3, 4)
    joint = D.kl(Independent(Categorical(logits=p_logits), 1), Independent(Categorical(logits=q_logits), 1))
    assert joint.shape == (3,)
    assert_close(joint, D.categorical_kl(p_logits, q_logits).sum(-1).numpy())
    # A batch of P against a single Q broadcasts.
    assert D.categorical_kl(p_logits, q_logits[0, 0]).shape == (3, 4)


@pytest.mark.parametrize(
    ("p", "q", "scipy_p", "scipy_q", "support"),
    [
        (Beta(torch.tensor(2.0, dtype=F64), torch.tensor(5.0, dtype=F64)),
         Beta(torch.tensor(1.5, dtype=F64), torch.tensor(1.5, dtype=F64)),
         stats.beta(2.0, 5.0), stats.beta(1.5, 1.5), (0.0, 1.0)),
        (Gamma(torch.tensor(3.0, dtype=F64), torch.tensor(2.0, dtype=F64)),
         Gamma(torch.tensor(2.0, dtype=F64), torch.tensor(1.0, dtype=F64)),
         stats.gamma(3.0, scale=1 / 2.0), stats.gamma(2.0, scale=1.0), (0.0, np.inf)),
    ],
    ids=["beta", "gamma"],
)
def test_registered_pairs_use_torch_closed_form_and_match_integration(p, q, scipy_p, scipy_q, support):
    expected, _ = integrate.quad(lambda x: scipy_p.pdf(x) * (scipy_p.logpdf(x) - scipy_q.logpdf(x)),
                                 *support)
    value = D.kl(p, q)
    assert value.item() == pytest.approx(kl_divergence(p, q).item(), rel=1e-15)
    assert value.item() == pytest.approx(expected, rel=1e-7)
    assert D.kl(p, q, units="bits").item() == pytest.approx(expected / LN2, rel=1e-7)
    assert D.cross_entropy(p, q).item() == pytest.approx(expected + scipy_p.entropy(), rel=1e-7)
    assert D.entropy(p).item() == pytest.approx(scipy_p.entropy(), rel=1e-9)


def test_registered_pairs_keep_one_value_per_batch_element():
    p = Beta(torch.tensor([2.0, 3.0, 1.0], dtype=F64), torch.tensor([5.0, 1.0, 1.0], dtype=F64))
    q = Beta(torch.tensor([1.0, 2.0, 1.0], dtype=F64), torch.tensor(1.5, dtype=F64))
    assert D.kl(p, q).shape == (3,)


def test_jensen_shannon_of_gaussians_is_a_monte_carlo_estimate_of_the_integral():
    mu_p, sigma_p, mu_q, sigma_q = 0.0, 1.0, 1.5, 0.7
    a, b = stats.norm(mu_p, sigma_p), stats.norm(mu_q, sigma_q)

    def half(x, first):
        log_m = np.logaddexp(a.logpdf(x), b.logpdf(x)) - LN2
        return first.pdf(x) * (first.logpdf(x) - log_m)

    expected = 0.5 * (integrate.quad(half, -np.inf, np.inf, args=(a,))[0]
                      + integrate.quad(half, -np.inf, np.inf, args=(b,))[0])
    torch.manual_seed(0)
    p, q = Normal(t(mu_p), t(sigma_p)), Normal(t(mu_q), t(sigma_q))
    estimate = D.js(p, q, num_samples=100_000).item()
    assert estimate == pytest.approx(expected, abs=5e-3)
    assert 0 <= estimate <= LN2
    assert D.js(p, p, num_samples=10).item() == pytest.approx(0.0, abs=1e-15)


# --------------------------------------------------------------------------------------------
# Numerical safety.
# --------------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_probabilities_follow_zero_log_zero_convention(dtype):
    p_logits = torch.tensor([[0.0, 1.0, -INF], [-INF, -INF, 2.0]], dtype=dtype)
    q_logits = torch.tensor([[0.5, 2.0, -INF], [0.0, -INF, 1.0]], dtype=dtype)
    expected = reference_kl(p_logits.double().numpy(), q_logits.double().numpy())
    value = D.categorical_kl(p_logits, q_logits)
    assert torch.isfinite(value).all()
    assert_close(value.double(), expected, rtol=1e-6, atol=1e-7)
    # A certain outcome has entropy exactly 0 (0·log 0 = 0, 1·log 1 = 0).
    assert D.categorical_entropy(p_logits[1]).item() == 0.0
    certain = Categorical(probs=torch.tensor([0.0, 1.0, 0.0], dtype=dtype))
    assert D.entropy(certain).item() == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_q_where_p_is_positive_gives_inf_never_nan(dtype):
    p_logits = torch.tensor([0.0, 1.0, 2.0], dtype=dtype)
    q_logits = torch.tensor([0.5, 1.0, -INF], dtype=dtype)
    p, q = Categorical(logits=p_logits), Categorical(logits=q_logits)
    assert D.kl(p, q).item() == INF
    assert D.cross_entropy(p, q).item() == INF
    assert D.reverse_kl(q, p).item() == INF
    assert 0 < D.js(p, q).item() < LN2
    from_probs = Categorical(probs=torch.tensor([0.5, 0.5, 0.0], dtype=dtype))
    assert D.kl(p, from_probs).item() == INF
    assert D.kl(from_probs, p).item() < INF


@pytest.mark.parametrize("dtype", DTYPES)
def test_p_underflowing_to_zero_where_q_is_zero_gives_inf_not_nan(dtype):
    """``p = e^−200`` is 0 in float32 yet positive: where ``q = 0`` the KL and the cross-entropy are
    ``+inf`` in every dtype (they were NaN in float32, ``0 · inf``)."""
    p_logits = torch.tensor([[0.0, -200.0], [0.0, -2000.0]], dtype=dtype)
    q_logits = torch.tensor([0.0, -INF], dtype=dtype)
    assert D.categorical_kl(p_logits, q_logits).tolist() == [INF, INF]
    assert D.categorical_cross_entropy(p_logits, q_logits).tolist() == [INF, INF]
    # where q is positive the same p gives the finite value of the reduced support
    assert_close(D.categorical_kl(p_logits, torch.zeros(2, dtype=dtype)).double(),
                 torch.full((2,), math.log(2.0), dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_in_either_distribution_gives_nan_not_a_silent_number(dtype):
    """A diverged network must show up as NaN (KL terms then raise), never as a finite KL."""
    finite = torch.tensor([0.0, 1.0, 2.0], dtype=dtype)
    broken = torch.tensor([0.0, math.nan, 2.0], dtype=dtype)
    for fn in (D.categorical_kl, D.categorical_js, D.categorical_cross_entropy):
        assert fn(finite, broken).isnan().item(), fn.__name__
        assert fn(broken, finite).isnan().item(), fn.__name__
    assert D.categorical_entropy(broken).isnan().item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_of_1e4_give_finite_exact_values(dtype):
    p_logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], dtype=dtype)
    q_logits = torch.tensor([[-1e4, 1e4, 3.0], [1e4, -1e4, 0.0]], dtype=dtype)
    p, q = Categorical(logits=p_logits), Categorical(logits=q_logits)
    for value in (D.kl(p, q), D.reverse_kl(p, q), D.js(p, q), D.entropy(p), D.cross_entropy(p, q)):
        assert torch.isfinite(value).all()
    # P puts all its mass on the class where Q's logit is 2·10⁴ below Q's best one.
    assert_close(D.kl(p, q).double(), [2e4, 2e4], rtol=1e-6)
    assert_close(D.js(p, q).double(), [LN2, LN2], rtol=1e-6)
    assert_close(D.entropy(p).double(), [0.0, 0.0], atol=1e-6)


def test_scale_100_logits_that_underflow_torch_categorical_stay_finite():
    """DESIGN.md: ``kl_divergence(Categorical, Categorical)`` turns inf once float32 logits reach a
    scale of ~100, although every q_k > 0; klexp works in log space and stays accurate."""
    generator = torch.Generator().manual_seed(0)
    p_logits, q_logits = 100 * torch.randn(2, 64, 10, generator=generator)
    value = D.kl(Categorical(logits=p_logits), Categorical(logits=q_logits))
    reference = D.categorical_kl(p_logits.double(), q_logits.double())
    assert torch.isfinite(value).all()
    assert_close(value.double(), reference.numpy(), rtol=1e-5, atol=1e-5)


def _grads(fn, p_logits, q_logits):
    p_in, q_in = p_logits.clone().requires_grad_(), q_logits.clone().requires_grad_()
    weights = torch.linspace(0.5, 1.5, p_in.shape[0], dtype=p_in.dtype)
    (fn(p_in, q_in) * weights).sum().backward()
    return p_in.grad, q_in.grad


@pytest.mark.parametrize("dtype", DTYPES)
@PROPERTY
@given(logit_pairs(zeros="p_only"))
def test_gradients_stay_finite_with_minus_inf_logits_where_the_kl_is_finite(dtype, pair):
    p_logits, q_logits = t(pair[0]).to(dtype), t(pair[1]).to(dtype)
    for fn in (D.categorical_kl, D.categorical_js, D.categorical_cross_entropy,
               lambda a, b: D.categorical_js(b, a)):
        for grad in _grads(fn, p_logits, q_logits):
            assert torch.isfinite(grad).all(), fn
    grad, _ = _grads(lambda a, b: D.categorical_entropy(a), p_logits, q_logits)
    assert torch.isfinite(grad).all()


def test_gradients_with_minus_inf_equal_those_on_the_reduced_support():
    """Classes of probability 0 in both P and Q change neither the KL nor its gradient."""
    p_logits = torch.tensor([[0.3, -1.0, 2.0, -INF], [1.0, -INF, 0.0, -INF]], dtype=F64)
    q_logits = torch.tensor([[1.0, 0.5, -0.5, -INF], [0.0, 2.0, -1.0, -INF]], dtype=F64)
    for fn in (D.categorical_kl, D.categorical_js, D.categorical_cross_entropy):
        full_p, full_q = _grads(fn, p_logits, q_logits)
        small_p, small_q = _grads(fn, p_logits[:, :3], q_logits[:, :3])
        assert_close(full_p[:, :3], small_p.numpy())
        assert_close(full_q[:, :3], small_q.numpy())
        assert (full_p[:, 3] == 0).all() and (full_q[:, 3] == 0).all()


@pytest.mark.parametrize("fn", [D.categorical_kl, D.categorical_js], ids=["kl", "js"])
def test_first_and_second_derivatives_match_finite_differences(fn):
    """Second derivatives too: natural-gradient methods (TRPO's Fisher-vector products)
    differentiate the KL twice."""
    generator = torch.Generator().manual_seed(2)
    p_logits, q_logits = torch.randn(2, 3, 4, generator=generator, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(fn, (p_logits, q_logits))
    assert torch.autograd.gradgradcheck(fn, (p_logits, q_logits))


@pytest.mark.parametrize("fn", [D.categorical_kl, D.categorical_js], ids=["kl", "js"])
def test_forward_mode_and_vmap_agree_with_reverse_mode(fn):
    generator = torch.Generator().manual_seed(3)
    p_logits, q_logits, p_direction, q_direction = torch.randn(4, 5, 4, generator=generator, dtype=F64)
    p_logits[0, 1] = -INF
    q_logits[0, 1] = -INF
    _, tangent = torch.func.jvp(fn, (p_logits, q_logits), (p_direction, q_direction))
    p_in, q_in = p_logits.clone().requires_grad_(), q_logits.clone().requires_grad_()
    fn(p_in, q_in).sum().backward()
    assert_close(tangent, (p_in.grad * p_direction + q_in.grad * q_direction).sum(-1).numpy())
    batched = torch.func.vmap(fn)(p_logits, q_logits)
    assert_close(batched, fn(p_logits, q_logits).numpy())


def test_gradients_through_distributions_built_from_probabilities_with_zeros():
    p_probs = torch.tensor([0.2, 0.8, 0.0], dtype=F64, requires_grad=True)
    q_probs = torch.tensor([0.5, 0.4, 0.1], dtype=F64, requires_grad=True)
    value = D.kl(Categorical(probs=p_probs), Categorical(probs=q_probs))
    value.backward()
    assert torch.isfinite(p_probs.grad).all() and torch.isfinite(q_probs.grad).all()
    # ∂KL/∂q_k = −p_k/q_k for normalised q (Categorical divides by the sum, whose gradient
    # removes the common part): compare with the formula on the support.
    expected_q = -p_probs.detach() / q_probs.detach()
    expected_q = expected_q - (expected_q * q_probs.detach()).sum() / q_probs.detach().sum()
    assert_close(q_probs.grad, expected_q.numpy())
    bern_p = torch.tensor([0.0, 1.0, 0.3], dtype=F64, requires_grad=True)
    D.kl(Bernoulli(probs=bern_p), Bernoulli(probs=torch.tensor(0.5, dtype=F64))).sum().backward()
    assert torch.isfinite(bern_p.grad).all()


@pytest.mark.parametrize(
    ("p", "q", "shapes"),
    [
        (Categorical(logits=torch.zeros(2, 3)), Categorical(logits=torch.zeros(2, 4)), ("(2, 3)", "(2, 4)")),
        (Categorical(logits=torch.zeros(2, 3)), Categorical(logits=torch.zeros(5, 3)), ("(2,)", "(5,)")),
        (Bernoulli(logits=torch.zeros(2)), Bernoulli(logits=torch.zeros(3)), ("(2,)", "(3,)")),
        (Normal(torch.zeros(3), 1.0), Normal(torch.zeros(4), 1.0), ("(3,)", "(4,)")),
        (Independent(Normal(torch.zeros(2, 3), 1.0), 1), Independent(Normal(torch.zeros(2, 4), 1.0), 1),
         ("(3,)", "(4,)")),
    ],
    ids=["classes", "categorical-batch", "bernoulli-batch", "normal-batch", "event"],
)
def test_mismatched_shapes_raise_value_error_naming_both_shapes(p, q, shapes):
    for fn in (D.kl, D.reverse_kl, D.js, D.cross_entropy):
        with pytest.raises(ValueError) as error:
            fn(p, q)
        assert all(shape in str(error.value) for shape in shapes), str(error.value)
    with pytest.raises(ValueError):
        D.kl(p, q, estimator="k3")


def test_mismatched_logits_raise_value_error_naming_both_shapes():
    for fn in (D.categorical_kl, D.categorical_js, D.categorical_cross_entropy):
        with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
            fn(torch.zeros(2, 3), torch.zeros(2, 4))
        with pytest.raises(ValueError, match=r"\(2, 3\).*\(5, 3\)"):
            fn(torch.zeros(2, 3), torch.zeros(5, 3))


# --------------------------------------------------------------------------------------------
# Monte-Carlo estimators (Schulman, "Approximating KL Divergence").
# --------------------------------------------------------------------------------------------

MC_PAIRS = {
    # σ_q² < 2σ_p² keeps r = q/p square-integrable under p, so k3 has a finite variance.
    "normal": (Normal(torch.tensor([0.3, -1.0], dtype=F64), torch.tensor([1.0, 0.5], dtype=F64)),
               Normal(torch.tensor([-0.2, -0.8], dtype=F64), torch.tensor([0.9, 0.6], dtype=F64))),
    "categorical": (Categorical(logits=torch.tensor([[0.0, 1.0, -1.0, 0.5]], dtype=F64)),
                    Categorical(logits=torch.tensor([[0.5, 0.0, -0.5, 0.0]], dtype=F64))),
}


@pytest.mark.parametrize("pair", MC_PAIRS, ids=list(MC_PAIRS))
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_and_k3_are_unbiased(pair, estimator):
    p, q = MC_PAIRS[pair]
    torch.manual_seed(0)
    draws = D.kl_samples(p, q, estimator=estimator, num_samples=100_000)
    mean, standard_error = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    exact = D.kl(p, q)
    assert ((mean - exact).abs() < 4 * standard_error).all(), (mean, exact, standard_error)


def test_k2_and_k3_are_never_negative_while_k1_can_be():
    p, q = MC_PAIRS["normal"]
    torch.manual_seed(1)
    k1, k2, k3 = (D.kl_samples(p, q, estimator=e, num_samples=20_000) for e in ("k1", "k2", "k3"))
    assert (k2 >= 0).all() and (k3 >= 0).all()
    assert (k1 < 0).any()


@settings(max_examples=200, deadline=None)
@given(st.floats(-700, 700, allow_nan=False, width=64), st.sampled_from(DTYPES))
def test_k3_is_never_negative(log_ratio, dtype):
    x = torch.tensor([log_ratio, log_ratio * 1e-6, log_ratio * 1e-12], dtype=dtype)
    assert (D.monte_carlo_terms(x, "k3") >= 0).all()
    assert (D.monte_carlo_terms(x, "k2") >= 0).all()


def test_k3_is_accurate_where_r_is_close_to_one():
    """``(r − 1) − log r ≈ (log r)²/2`` for small ``log r``: expm1 avoids the cancellation."""
    x = torch.tensor([1e-4, -1e-5, 3e-7], dtype=torch.float32)
    assert_close(D.monte_carlo_terms(x, "k3").double(), (x.double() ** 2 / 2).numpy(), rtol=1e-3)


@pytest.mark.parametrize(
    ("p", "shape"),
    [
        (Normal(torch.zeros(3, dtype=F64), 1.0), (7, 3)),
        (Independent(Normal(torch.zeros(2, 4, dtype=F64), 1.0), 1), (7, 2)),
        (Categorical(logits=torch.zeros(5, 3, dtype=F64)), (7, 5)),
        (Bernoulli(logits=torch.zeros(4, dtype=F64)), (7, 4)),
    ],
    ids=["normal", "independent-normal", "categorical", "bernoulli"],
)
def test_kl_samples_has_a_leading_sample_axis(p, shape):
    for estimator in ("k1", "k2", "k3"):
        assert D.kl_samples(p, p, estimator=estimator, num_samples=7).shape == shape
        assert D.kl(p, p, estimator=estimator, num_samples=7).shape == shape[1:]


def test_given_samples_are_used_instead_of_fresh_draws():
    p = Categorical(logits=torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]], dtype=F64))
    q = Categorical(logits=torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64))
    actions = torch.tensor([1, 2])  # one draw per batch element, e.g. a rollout's actions
    log_ratio = q.log_prob(actions) - p.log_prob(actions)
    assert_close(D.kl(p, q, estimator="k1", samples=actions), (-log_ratio).numpy())
    assert_close(D.kl(p, q, estimator="k3", samples=actions), (log_ratio.expm1() - log_ratio).numpy())
    draws = torch.tensor([[1, 2], [0, 0], [2, 1]])  # a leading sample axis
    per_sample = D.kl_samples(p, q, estimator="k2", samples=draws)
    assert per_sample.shape == (3, 2)
    expected = 0.5 * (q.log_prob(draws) - p.log_prob(draws)) ** 2
    assert_close(per_sample, expected.numpy())
    assert_close(D.kl(p, q, estimator="k2", samples=draws), expected.mean(0).numpy())
    # The reverse direction samples from q: given samples are taken as draws from q.
    assert_close(D.reverse_kl(p, q, estimator="k1", samples=actions),
                 (q.log_prob(actions) - p.log_prob(actions)).numpy())


def test_monte_carlo_gradients_flow_through_reparameterised_samples():
    loc = torch.tensor([0.5], dtype=F64, requires_grad=True)
    p, q = Normal(loc, 1.0), Normal(torch.zeros(1, dtype=F64), 1.0)
    torch.manual_seed(0)
    D.kl(p, q, estimator="k3", num_samples=50_000).sum().backward()
    # ∂/∂μ KL(N(μ, 1) ‖ N(0, 1)) = μ.
    assert loc.grad.item() == pytest.approx(0.5, abs=0.02)


# --------------------------------------------------------------------------------------------
# Wasserstein distances with closed forms.
# --------------------------------------------------------------------------------------------

@PROPERTY
@given(st.integers(1, 4).flatmap(lambda d: st.tuples(*(arrays(np.float64, d, elements=e)
                                                        for e in (locs, scales, locs, scales)))))
def test_w2_of_diagonal_gaussians_matches_the_general_gaussian_formula(params):
    """``W2² = ‖μp − μq‖² + tr(Σp + Σq − 2 (Σq^½ Σp Σq^½)^½)`` with scipy's matrix square root."""
    mu_p, sigma_p, mu_q, sigma_q = params
    cov_p, cov_q = np.diag(sigma_p**2), np.diag(sigma_q**2)
    root_q = sqrtm(cov_q).real
    cross = sqrtm(root_q @ cov_p @ root_q).real
    expected_squared = ((mu_p - mu_q) ** 2).sum() + np.trace(cov_p + cov_q - 2 * cross)
    p = Independent(Normal(t(mu_p), t(sigma_p)), 1)
    q = Independent(Normal(t(mu_q), t(sigma_q)), 1)
    # Compared squared: near W2 = 0 the square root would magnify sqrtm's rounding (1e-15 → 3e-8).
    assert D.wasserstein2_gaussian(p, q).item() ** 2 == pytest.approx(expected_squared, rel=1e-9, abs=1e-12)
    assert D.wasserstein2_gaussian(p, p).item() == 0.0


def test_w2_of_univariate_normals_is_elementwise():
    p = Normal(t(np.array([0.0, 1.0])), t(np.array([1.0, 2.0])))
    q = Normal(t(np.array([3.0, 1.0])), t(np.array([1.0, 0.5])))
    assert_close(D.wasserstein2_gaussian(p, q), [3.0, 1.5])


@PROPERTY
@given(logit_pairs(zeros="any"))
def test_w1_of_ordered_categoricals_matches_scipy(pair):
    p_logits, q_logits = pair
    support = np.arange(p_logits.shape[-1])
    expected = [stats.wasserstein_distance(support, support, a, b)
                for a, b in zip(probs(p_logits), probs(q_logits), strict=True)]
    assert_close(D.wasserstein1_categorical(t(p_logits), t(q_logits)), expected, atol=1e-12)
    assert_close(D.wasserstein1_categorical(cat(p_logits), cat(q_logits)), expected, atol=1e-12)
    symmetric = D.wasserstein1_categorical(t(q_logits), t(p_logits))
    assert_close(symmetric, expected, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Independent factors: what splits over them (KL, entropy, cross-entropy) and what does not (JS).
# --------------------------------------------------------------------------------------------

def joint_probabilities(factor_probs: np.ndarray) -> np.ndarray:
    """``(n, K)`` probabilities of independent factors → the ``K**n`` probabilities of their joint
    outcomes, by enumeration (products of one probability per factor)."""
    joint = np.ones(1)
    for factor in factor_probs:
        joint = np.outer(joint, factor).ravel()
    return joint


def test_js_of_independent_bernoullis_is_the_js_of_their_joint_not_a_sum_over_factors():
    """p = (1, 1, 1), q = (0, 0, 0): the joints are two distinct certain outcomes of 8, so
    JS = ln 2, the maximum — a sum over factors gave 3 ln 2."""
    certain = Independent(Bernoulli(probs=torch.ones(3, dtype=F64)), 1)
    never = Independent(Bernoulli(probs=torch.zeros(3, dtype=F64)), 1)
    assert D.js(certain, never).item() == pytest.approx(LN2, rel=1e-15)
    p_bits, q_bits = np.array([0.9, 0.2, 0.6]), np.array([0.3, 0.25, 0.5])
    two_class = lambda x: np.stack([1 - x, x], -1)  # noqa: E731
    expected = scipy_js(joint_probabilities(two_class(p_bits)), joint_probabilities(two_class(q_bits)))
    value = D.js(Independent(Bernoulli(probs=t(p_bits)), 1), Independent(Bernoulli(probs=t(q_bits)), 1))
    assert value.item() == pytest.approx(expected, rel=1e-12)
    assert value.item() < scipy_js(two_class(p_bits), two_class(q_bits)).sum()  # JS is subadditive here


def test_js_of_independent_categoricals_enumerates_the_joint_per_batch_element():
    generator = torch.Generator().manual_seed(4)
    p_logits, q_logits = torch.randn(2, 5, 3, 4, generator=generator, dtype=F64)  # batch 5, 3 factors
    value = D.js(Independent(Categorical(logits=p_logits), 1), Independent(Categorical(logits=q_logits), 1))
    assert value.shape == (5,)
    expected = [scipy_js(joint_probabilities(probs(p.numpy())), joint_probabilities(probs(q.numpy())))
                for p, q in zip(p_logits, q_logits, strict=True)]
    assert_close(value, expected, atol=1e-14)


def test_js_beyond_the_enumeration_limit_is_an_unbiased_monte_carlo_estimate_of_the_joint():
    """13 independent bits have 8192 joint outcomes, more than ``js`` enumerates (4096): the
    estimate lies within 4 standard errors of the exact JS (enumerated here), whose standard error
    follows from the exact variances of the two halves' terms."""
    generator = torch.Generator().manual_seed(5)
    p_bits, q_bits = 0.1 + 0.8 * torch.rand(2, 13, generator=generator, dtype=F64)
    two_class = lambda x: np.stack([1 - x, x], -1)  # noqa: E731
    joint_p = joint_probabilities(two_class(p_bits.numpy()))
    joint_q = joint_probabilities(two_class(q_bits.numpy()))
    mixture = (joint_p + joint_q) / 2
    half_p, half_q = np.log(joint_p / mixture), np.log(joint_q / mixture)
    exact = 0.5 * (joint_p @ half_p + joint_q @ half_q)
    num_samples = 20_000
    variance = sum(joint @ half**2 - (joint @ half) ** 2
                   for joint, half in ((joint_p, half_p), (joint_q, half_q)))
    standard_error = 0.5 * math.sqrt(variance / num_samples)
    p, q = Independent(Bernoulli(probs=p_bits), 1), Independent(Bernoulli(probs=q_bits), 1)
    torch.manual_seed(0)
    estimate = D.js(p, q, num_samples=num_samples).item()
    assert abs(estimate - exact) < 4 * standard_error, (estimate, exact, standard_error)
    torch.manual_seed(1)
    assert D.js(p, q, num_samples=num_samples).item() != estimate  # an estimate, not enumeration


def test_monte_carlo_js_gradient_of_independent_bernoullis_matches_the_enumerated_gradient():
    """Bernoulli draws carry no gradient: the score-function term makes the estimate's gradient
    that of the JS, computed exactly here over the 8192 joint outcomes of 13 bits."""
    generator = torch.Generator().manual_seed(6)
    p_logits, q_logits = torch.randn(2, 13, generator=generator, dtype=F64)
    outcomes = torch.tensor(list(itertools.product([0.0, 1.0], repeat=13)), dtype=F64)

    def joint_log_probs(logits):
        return outcomes @ F.logsigmoid(logits) + (1 - outcomes) @ F.logsigmoid(-logits)

    exact_p = p_logits.clone().requires_grad_()
    log_p, log_q = joint_log_probs(exact_p), joint_log_probs(q_logits)
    log_m = torch.logaddexp(log_p, log_q) - LN2
    (0.5 * (log_p.exp() @ (log_p - log_m) + log_q.exp() @ (log_q - log_m))).backward()
    estimated_p = p_logits.clone().requires_grad_()
    torch.manual_seed(1)
    D.js(Independent(Bernoulli(logits=estimated_p), 1), Independent(Bernoulli(logits=q_logits), 1),
         num_samples=100_000).backward()
    # standard error ≤ 8e-4 per coordinate (measured over seeds); the largest coordinate is 0.042
    assert_close(estimated_p.grad, exact_p.grad.numpy(), rtol=0, atol=4e-3)
    assert exact_p.grad.abs().max() > 0.03


@pytest.mark.parametrize("family", ["bernoulli", "categorical"])
def test_independent_of_independent_sums_over_every_event_dimension(family):
    """torch's ``kl_divergence`` and ``entropy`` of ``Independent(Independent(·, 1), 1)`` over a
    (2, 3, 4) batch reduce to shape (2,); so does klexp, with the same values."""
    generator = torch.Generator().manual_seed(7)
    if family == "bernoulli":
        p_base = Bernoulli(probs=torch.rand(2, 3, 4, generator=generator, dtype=F64))
        q_base = Bernoulli(logits=torch.randn(2, 3, 4, generator=generator, dtype=F64))
    else:
        p_base = Categorical(logits=torch.randn(2, 3, 4, 5, generator=generator, dtype=F64))
        q_base = Categorical(probs=torch.rand(2, 3, 4, 5, generator=generator, dtype=F64))
    p, q = (Independent(Independent(d, 1), 1) for d in (p_base, q_base))
    expected_kl, expected_entropy = kl_divergence(p, q), p.entropy()
    assert expected_kl.shape == (2,)
    assert_close(D.kl(p, q), expected_kl.numpy())
    assert_close(D.reverse_kl(p, q), kl_divergence(q, p).numpy())
    assert_close(D.entropy(p), expected_entropy.numpy())
    assert_close(D.cross_entropy(p, q), (expected_entropy + expected_kl).numpy())
    # the same event reinterpreted in one step, and a mixed nesting, agree
    flat_p, flat_q = Independent(p_base, 2), Independent(q_base, 2)
    assert_close(D.kl(flat_p, p.expand((2,))), np.zeros(2), atol=1e-15)
    assert_close(D.kl(flat_p, q), expected_kl.numpy())
    if family == "bernoulli":  # 2**12 joint outcomes: enumerated, whatever the nesting
        assert_close(D.js(p, q), D.js(flat_p, flat_q).numpy(), atol=1e-15)


# --------------------------------------------------------------------------------------------
# Broadcast batches in Monte-Carlo estimates.
# --------------------------------------------------------------------------------------------

def test_monte_carlo_kl_draws_for_every_pair_of_a_broadcast_batch():
    """p of batch shape () against q of batch shape (3,): each of the three pairs gets draws of
    its own, and any number of draws gives shape (3,) (one draw shared by the three pairs, and
    draw i silently paired with pair i, were the bugs)."""
    p = Categorical(logits=torch.zeros(50, dtype=F64))
    q_logits = torch.randn(50, generator=torch.Generator().manual_seed(8), dtype=F64)
    q = Categorical(logits=q_logits).expand((3,))
    for num_samples in (1, 3, 5):
        torch.manual_seed(0)
        value = D.kl(p, q, estimator="k3", num_samples=num_samples)
        assert value.shape == (3,)
        torch.manual_seed(0)
        assert torch.equal(value, D.kl(p.expand((3,)), q, estimator="k3", num_samples=num_samples))
    torch.manual_seed(0)
    single = D.kl(p, q, estimator="k1", num_samples=1)
    assert len(set(single.tolist())) > 1  # three draws, not one shared by the identical pairs
    normal_p, normal_q = Normal(t(0.0), t(1.0)), Normal(t(np.zeros(3)), t(np.ones(3)) * 2)
    assert D.kl(normal_p, normal_q, estimator="k3", num_samples=4).shape == (3,)
    assert D.js(normal_p, normal_q, num_samples=4).shape == (3,)
    torch.manual_seed(0)
    draws = D.kl_samples(normal_p, normal_q, estimator="k1", num_samples=2)
    assert draws.shape == (2, 3) and len(set(draws[0].tolist())) == 3


def test_reverse_kl_of_a_batch_of_policies_to_one_shared_uniform_is_unbiased_per_element():
    """The run that reached the bug: direction=reverse, estimator=k3, a batch of categoricals
    against one uniform; draws come from the uniform, afresh for each batch element."""
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-3.0, 1.0, 1.0]], dtype=F64)
    policy = Categorical(logits=logits)
    uniform = Categorical(logits=torch.zeros(3, dtype=F64))
    torch.manual_seed(0)
    draws = D.kl_samples(uniform, policy, estimator="k3", num_samples=40_000)
    assert draws.shape == (40_000, 3)
    exact = D.reverse_kl(policy, uniform)
    standard_error = draws.std(0) / math.sqrt(draws.shape[0])
    assert ((draws.mean(0) - exact).abs() <= 4 * standard_error + 1e-15).all()


def test_given_samples_must_have_the_broadcast_batch_shape():
    p = Categorical(logits=torch.zeros(4, dtype=F64))
    q = Categorical(logits=torch.zeros(3, 4, dtype=F64))
    assert D.kl(p, q, estimator="k1", samples=torch.tensor([0, 1, 2])).shape == (3,)
    assert D.kl_samples(p, q, estimator="k1", samples=torch.zeros(5, 3, dtype=torch.long)).shape == (5, 3)
    for wrong in (torch.tensor(1), torch.tensor([0, 1, 2, 3, 0]), torch.zeros(2, 2, 3, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"samples must have shape \(3,\).*got"):
            D.kl(p, q, estimator="k3", samples=wrong)


# --------------------------------------------------------------------------------------------
# Gradients of Monte-Carlo estimates through draws that carry none.
# --------------------------------------------------------------------------------------------

def test_monte_carlo_js_gradient_of_poissons_is_that_of_the_exact_js():
    """Poisson(3) vs Poisson(6): dJS/d(rate) = −0.13283, exact by enumerating k = 0…199 (the tail
    beyond is below 1e-100). Without the score-function term the estimate's gradient was ≈ 0."""
    support = torch.arange(200, dtype=F64)
    rate = torch.tensor(3.0, dtype=F64, requires_grad=True)
    other = torch.tensor(6.0, dtype=F64)
    D.categorical_js(Poisson(rate).log_prob(support), Poisson(other).log_prob(support)).backward()
    exact = rate.grad.item()
    assert exact == pytest.approx(-0.13283106, abs=1e-8)
    rate.grad = None
    torch.manual_seed(0)
    # 100k draws: the gradient's standard error is ≈ 8e-4 (measured over seeds)
    D.js(Poisson(rate), Poisson(other), num_samples=100_000).backward()
    assert rate.grad.item() == pytest.approx(exact, abs=4e-3)


def test_score_function_terms_keep_an_infinite_kl_infinite():
    """``k + sg(k)·(log p − sg(log p))`` would be ∞ + ∞·0 = NaN for a draw where q(x) = 0."""
    logits = torch.zeros(2, dtype=F64, requires_grad=True)
    q = Categorical(logits=torch.tensor([0.0, -INF], dtype=F64))
    torch.manual_seed(0)
    draws = D.kl_samples(Categorical(logits=logits), q, estimator="k1", num_samples=16)
    assert not draws.isnan().any()
    assert (draws == INF).any() and D.kl(Categorical(logits=logits), q).item() == INF


# --------------------------------------------------------------------------------------------
# Distributions built from probabilities, however torch has cached or expanded them.
# --------------------------------------------------------------------------------------------

def _read_logits(d):
    d.logits  # noqa: B018 (torch caches the clamped logits on first read)
    return d


@pytest.mark.parametrize("expand", [False, True], ids=["as-built", "expanded"])
@pytest.mark.parametrize("read_logits", [False, True], ids=["fresh", "logits-read"])
def test_zero_probability_in_q_gives_inf_however_a_probs_built_q_was_cached_or_expanded(expand, read_logits):
    """q = (1, 0) against p = (½, ½): +inf. Once ``.logits`` had been read, ``expand`` kept torch's
    clamped logits as the parameter and the KL came out 7.28 nats."""
    p = Categorical(probs=torch.tensor([0.5, 0.5]))
    candidates = [Categorical(probs=torch.tensor([1.0, 0.0])),
                  Independent(Categorical(probs=torch.tensor([[1.0, 0.0]])), 1),
                  Bernoulli(probs=torch.tensor(0.0)),
                  Independent(Bernoulli(probs=torch.tensor([0.0])), 1)]
    fair = [p, Independent(Categorical(probs=torch.tensor([[0.5, 0.5]])), 1),
            Bernoulli(probs=torch.tensor(0.5)), Independent(Bernoulli(probs=torch.tensor([0.5])), 1)]
    for q, p_like in zip(candidates, fair, strict=True):
        base = q.base_dist if isinstance(q, Independent) else q
        if read_logits:
            _read_logits(base)
        if expand:
            q = q.expand((2,))
        assert (D.kl(p_like, q) == INF).all(), (q, read_logits, expand)
        assert (D.cross_entropy(p_like, q) == INF).all()
        torch.manual_seed(0)
        assert (D.kl(p_like, q, estimator="k1", num_samples=64) == INF).all()


def test_logits_built_distributions_keep_their_logits_after_probs_are_read_and_expanded():
    """The converse: probabilities that underflow to 0 (logit −200) are not mistaken for zeros."""
    p = Categorical(logits=torch.tensor([0.0, 0.0]))
    q = Categorical(logits=torch.tensor([0.0, -200.0]))
    q.probs  # noqa: B018
    expected = D.kl(p, Categorical(logits=torch.tensor([0.0, -200.0])))
    assert expected.item() == pytest.approx(100.0 - LN2, rel=1e-6)  # ½ log ½ + ½ log(½ e²⁰⁰)
    assert torch.equal(D.kl(p, q.expand((3,))), expected.expand(3))


# --------------------------------------------------------------------------------------------
# Dtypes: promotion, and half precision computed in float32.
# --------------------------------------------------------------------------------------------

def test_mixed_float32_and_float64_inputs_are_promoted_as_torch_promotes_them():
    """float32 with float64 computes in float64 (torch's ``kl_divergence`` too, after normalising
    the float32 logits in float32, hence its 1e-7 difference); a vecdot dtype error before."""
    p_logits = torch.tensor([0.3, -1.0, 2.0])
    q_logits = torch.tensor([1.0, 0.5, -0.5], dtype=F64)
    by_torch = kl_divergence(Categorical(logits=p_logits), Categorical(logits=q_logits))
    assert by_torch.dtype == F64
    p, q = Categorical(logits=p_logits), Categorical(logits=q_logits)
    # the float32 Categorical holds its logits normalised in float32: the reference uses those
    for value, p_held in ((D.categorical_kl(p_logits, q_logits), p_logits), (D.kl(p, q), p.logits)):
        expected = rel_entr(softmax(p_held.double().numpy()), softmax(q_logits.numpy())).sum()
        assert value.dtype == F64
        assert value.item() == pytest.approx(expected, rel=1e-13)
        assert value.item() == pytest.approx(by_torch.item(), rel=1e-6)
    for fn in (D.categorical_js, D.categorical_cross_entropy):
        assert fn(p_logits, q_logits).dtype == F64
        expected = fn(p_logits.double(), q_logits).item()
        assert fn(p_logits, q_logits).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_of_nearly_equal_distributions_are_computed_in_float32(dtype):
    """PPO's regime, KL ≈ 1e-5 nats: computed in bfloat16, the error was the size of the value.
    The reference is the float64 KL of the very same (rounded) half-precision logits."""
    generator = torch.Generator().manual_seed(9)
    p_logits = torch.randn(2000, 6, generator=generator, dtype=F64)
    q_logits = p_logits + 1e-2 * torch.randn(2000, 6, generator=generator, dtype=F64)
    p_half, q_half = p_logits.to(dtype), q_logits.to(dtype)
    reference = D.categorical_kl(p_half.double(), q_half.double())
    assert 1e-6 < reference.mean().item() < 1e-3
    value = D.categorical_kl(p_half, q_half)
    assert value.dtype == torch.float32
    assert (value.double() - reference).abs().max().item() < 2e-6
    assert ((value.double() - reference).abs().mean() / reference.mean()).item() < 1e-2
