"""Properties of the KL core at its edges, for every public divergence: batch shapes that
broadcast, ``Independent`` nested to any depth, mixed dtypes and half precision.

Each value is checked against an independent float64 computation from the parameters the
distributions actually hold (after torch rounded or normalised them in their own dtype): scipy's
``rel_entr`` / ``entr`` / ``xlogy`` on probabilities, the Jensen–Shannon divergence of joint outcomes
enumerated here, and torch's registered closed forms and log-densities for Normals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from scipy.special import entr, expit, log_expit, rel_entr, softmax, xlogy
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, Normal, kl_divergence

from klexp import core as D

F64 = torch.float64
HALF = (torch.float16, torch.bfloat16)
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PROPERTY = settings(max_examples=30, deadline=None)
DISCRETE = ("categorical-logits", "categorical-probs", "bernoulli-logits", "bernoulli-probs")
FAMILIES = (*DISCRETE, "normal")


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype klexp promises: torch's promotion of the input dtypes, float32 if that is half."""
    promoted = dtypes[0]
    for dtype in dtypes[1:]:
        promoted = torch.promote_types(promoted, dtype)
    return torch.float32 if promoted in HALF else promoted


# --------------------------------------------------------------------------------------------
# Pairs of distributions: broadcastable batch shapes, nested Independent wrappers, any dtypes.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """How to build one distribution: its family, float64 parameters (one array; loc and scale for
    a Normal) and the ``reinterpreted_batch_ndims`` of each ``Independent`` wrapper, innermost
    first."""

    family: str
    params: tuple[np.ndarray, ...]
    nesting: tuple[int, ...]


def build(spec: Spec, dtype: torch.dtype = F64) -> Distribution:
    tensors = [torch.tensor(a, dtype=dtype) for a in spec.params]
    kind, _, given = spec.family.partition("-")
    # torch's simplex check (|Σp − 1| < 1e-6) rejects normalised bfloat16 probabilities
    if kind == "categorical":
        d = Categorical(**{given: tensors[0]}, validate_args=False)
    elif kind == "bernoulli":
        d = Bernoulli(**{given: tensors[0]}, validate_args=False)
    else:
        d = Normal(*tensors, validate_args=False)
    for dims in spec.nesting:
        d = Independent(d, dims)
    return d


def nestings(event_dims: int) -> st.SearchStrategy[tuple[int, ...]]:
    """The ways of reinterpreting ``event_dims`` batch dimensions: (), (1,), (2,) or (1, 1)."""
    if event_dims == 0:
        return st.just(())
    if event_dims == 1:
        return st.just((1,))
    return st.sampled_from([(2,), (1, 1)])


def restrict(full: np.ndarray, batch: tuple[int, ...], full_batch: tuple[int, ...]) -> np.ndarray:
    """Parameters of the full batch shape cut down to ``batch``, a view of it that broadcasts back
    (leading dimensions dropped, others of size 1)."""
    for _ in range(len(full_batch) - len(batch)):
        full = full[0]
    index = tuple(slice(0, 1) if size == 1 else slice(None) for size in batch)
    return full[index]


@st.composite
def parameters(draw, family: str, shape: tuple[int, ...], classes: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if family == "normal":
        return rng.uniform(-3, 3, shape), rng.uniform(0.3, 3, shape)
    if family.startswith("bernoulli"):
        logits = rng.uniform(-6, 6, shape)
        if family.endswith("logits"):
            return (logits,)
        certain = rng.random(shape) < 0.2  # probability exactly 0 or 1
        return (np.where(certain, np.round(expit(logits)), expit(logits)),)
    logits = rng.uniform(-5, 5, (*shape, classes))
    zero = rng.random(logits.shape) < 0.25
    zero[..., rng.integers(classes)] = False  # every row keeps a possible class
    logits[zero] = -np.inf
    return (logits,) if family.endswith("logits") else (softmax(logits, axis=-1),)


def nearly(family: str, params: tuple[np.ndarray, ...], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Parameters 1e-3 away from ``params`` (the same zero probabilities): KL ≈ 1e-6, PPO's regime."""
    def nudge(x: np.ndarray) -> np.ndarray:
        return x + 1e-3 * rng.standard_normal(x.shape)

    if family == "normal":
        loc, scale = params
        return nudge(loc), np.exp(nudge(np.log(scale)))
    (value,) = params
    if family.endswith("logits"):
        return (nudge(value),)
    with np.errstate(divide="ignore"):
        if family == "categorical-probs":
            return (softmax(nudge(np.log(value)), axis=-1),)
        return (np.where((value > 0) & (value < 1), expit(nudge(np.log(value) - np.log1p(-value))), value),)


@dataclass(frozen=True)
class Pair:
    p: Spec
    q: Spec
    batch_shape: tuple[int, ...]   # the broadcast batch shape
    event_shape: tuple[int, ...]


@st.composite
def pairs(draw, families: tuple[str, ...] = FAMILIES, near: bool | None = None, events: bool = True) -> Pair:
    """Two distributions of one family whose batch shapes broadcast (one may drop leading
    dimensions or hold size-1 ones), with the same event shape, each wrapped in its own nesting of
    ``Independent``. Discrete events have at most 4 factors of at most 3 classes (≤ 81 joint
    outcomes, enumerated by ``js``); sometimes Q is within 1e-3 of P."""
    family = draw(st.sampled_from(families))
    full_batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    event_shape = tuple(draw(st.lists(st.integers(1, 2), max_size=2 if events else 0)))
    classes = draw(st.integers(2, 3))

    def view() -> tuple[int, ...]:
        kept = full_batch[draw(st.integers(0, len(full_batch))):]
        return tuple(1 if draw(st.booleans()) else size for size in kept)

    p_batch, q_batch = view(), view()
    full_p = draw(parameters(family, full_batch + event_shape, classes))
    if draw(st.booleans()) if near is None else near:
        full_q = nearly(family, full_p, np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
    else:
        full_q = draw(parameters(family, full_batch + event_shape, classes))
    dims = len(event_shape)
    p = Spec(family, tuple(restrict(a, p_batch, full_batch) for a in full_p), draw(nestings(dims)))
    q = Spec(family, tuple(restrict(a, q_batch, full_batch) for a in full_q), draw(nestings(dims)))
    return Pair(p, q, tuple(torch.broadcast_shapes(p_batch, q_batch)), event_shape)


# --------------------------------------------------------------------------------------------
# Float64 references from what a built distribution holds.
# --------------------------------------------------------------------------------------------

def innermost(d: Distribution) -> Distribution:
    while isinstance(d, Independent):
        d = d.base_dist
    return d


def held_log_probabilities(d: Distribution, family: str) -> np.ndarray:
    """``(*batch, *event, classes)`` float64 log-probabilities as torch holds them (−inf for 0):
    what its ``log_prob`` returns. A half-precision Categorical has normalised its logits or
    probabilities in half precision when built, so they are normalised only to that precision."""
    base = innermost(d)
    with np.errstate(divide="ignore"):
        if family == "categorical-logits":
            return base.logits.double().numpy()
        if family == "categorical-probs":
            return np.log(base.probs.double().numpy())
        if family == "bernoulli-logits":
            logits = base.logits.double().numpy()
            return np.stack([log_expit(-logits), log_expit(logits)], axis=-1)
        bit = base.probs.double().numpy()
        return np.log(np.stack([1 - bit, bit], axis=-1))


def class_probabilities(d: Distribution, family: str) -> np.ndarray:
    """``(*batch, *event, classes)`` float64 probabilities held by ``d``, normalised (the
    distribution they define)."""
    return softmax(held_log_probabilities(d, family), axis=-1)


def held_normal(d: Distribution) -> Normal:
    base = innermost(d)
    return Normal(base.loc.double(), base.scale.double())


def sum_event(value: np.ndarray, event_dims: int) -> np.ndarray:
    return value.sum(axis=tuple(range(-event_dims, 0))) if event_dims else value


def joint(probabilities: np.ndarray, event_dims: int) -> np.ndarray:
    """``(*batch, *event, K)`` probabilities of independent factors → ``(*batch, K**n)`` of their
    joint outcomes, by enumerating products."""
    flat = probabilities.reshape(*probabilities.shape[: probabilities.ndim - 1 - event_dims], -1,
                                 probabilities.shape[-1])
    outcomes = np.ones((*flat.shape[:-2], 1))
    for i in range(flat.shape[-2]):
        outcomes = (outcomes[..., :, None] * flat[..., i, None, :]).reshape(*flat.shape[:-2], -1)
    return outcomes


def reference(name: str, p: Distribution, q: Distribution, pair: Pair) -> np.ndarray:
    """Float64 value of ``name`` ∈ {kl, reverse_kl, cross_entropy, entropy, js} for ``p`` and ``q``."""
    dims = len(pair.event_shape)
    if pair.p.family == "normal":
        p64, q64 = held_normal(p), held_normal(q)
        kl, reverse, entropy = (kl_divergence(p64, q64), kl_divergence(q64, p64), p64.entropy())
        value = {"kl": kl, "reverse_kl": reverse, "entropy": entropy, "cross_entropy": entropy + kl}[name]
        return sum_event(value.numpy(), dims)
    pp, qp = class_probabilities(p, pair.p.family), class_probabilities(q, pair.q.family)
    if name == "js":
        jp, jq = joint(pp, dims), joint(qp, dims)
        m = (jp + jq) / 2
        return 0.5 * (rel_entr(jp, m).sum(-1) + rel_entr(jq, m).sum(-1))
    per_class = {"kl": rel_entr(pp, qp), "reverse_kl": rel_entr(qp, pp), "entropy": entr(pp),
                 "cross_entropy": -xlogy(pp, qp)}[name]
    return sum_event(per_class.sum(-1), dims)


TOLERANCE = {torch.float64: (1e-9, 1e-12), torch.float32: (1e-4, 2e-5)}


def assert_matches(actual: torch.Tensor, expected: np.ndarray, dtype: torch.dtype) -> None:
    """Equal infinities, and finite values within the tolerance of the dtype computed in."""
    rtol, atol = TOLERANCE[dtype]
    value = actual.detach().double().numpy()
    # k3 = e^{log r} − 1 − log r overflows float32 (and so is +inf there) beyond log r ≈ 88
    expected = np.where(expected > torch.finfo(dtype).max, np.inf, np.broadcast_to(expected, value.shape))
    assert (np.isposinf(value) == np.isposinf(expected)).all(), (value, expected)
    finite = np.isfinite(expected)
    np.testing.assert_allclose(value[finite], expected[finite], rtol=rtol, atol=atol)


ANALYTIC = {
    "kl": lambda p, q: D.kl(p, q),
    "reverse_kl": lambda p, q: D.reverse_kl(p, q),
    "cross_entropy": lambda p, q: D.cross_entropy(p, q),
    "entropy": lambda p, q: D.entropy(p),
    "js": lambda p, q: D.js(p, q),
}


# --------------------------------------------------------------------------------------------
# Closed forms: broadcasting, nesting, dtypes.
# --------------------------------------------------------------------------------------------

@PROPERTY
@given(pairs(), st.sampled_from(DTYPES), st.sampled_from(DTYPES))
def test_every_divergence_broadcasts_sums_nested_events_and_computes_in_the_promoted_dtype(
        pair, p_dtype, q_dtype):
    """One value per element of the broadcast batch, summed over every event dimension however
    the ``Independent`` wrappers nest; the dtype torch's promotion gives (float32 for half
    precision), and the accuracy of that dtype on the parameters as held."""
    p, q = build(pair.p, p_dtype), build(pair.q, q_dtype)
    for name, fn in ANALYTIC.items():
        value = fn(p, q)
        dtype = compute_dtype(p_dtype) if name == "entropy" else compute_dtype(p_dtype, q_dtype)
        expected_shape = tuple(p.batch_shape) if name == "entropy" else pair.batch_shape
        assert tuple(value.shape) == expected_shape, name
        assert value.dtype == dtype, name
        if not (name == "js" and pair.p.family == "normal"):  # a Monte-Carlo estimate: see below
            assert_matches(value, reference(name, p, q, pair), dtype)


@PROPERTY
@given(pairs(families=DISCRETE))
def test_js_of_discrete_distributions_is_the_js_of_their_joint_and_within_zero_and_ln2(pair):
    p, q = build(pair.p), build(pair.q)
    value = D.js(p, q)
    assert_matches(value, reference("js", p, q, pair), F64)
    assert ((value >= 0) & (value <= math.log(2) * (1 + 1e-12))).all()
    assert_matches(D.js(q, p), value.numpy(), F64)


@PROPERTY
@given(pairs(families=DISCRETE), st.sampled_from(DTYPES), st.sampled_from(DTYPES))
def test_categorical_functions_broadcast_and_promote_logits(pair, p_dtype, q_dtype):
    """``categorical_*`` on logits ``(*batch, classes)`` of two dtypes: the broadcast shape, the
    promoted dtype, scipy's values on the probabilities those logits hold."""
    p, q = build(pair.p, p_dtype), build(pair.q, q_dtype)
    pp, qp = class_probabilities(p, pair.p.family), class_probabilities(q, pair.q.family)
    with np.errstate(divide="ignore"):
        p_logits, q_logits = torch.tensor(np.log(pp)).to(p_dtype), torch.tensor(np.log(qp)).to(q_dtype)
    # the reference reads the logits as held (rounded to their dtype)
    pp = softmax(p_logits.double().numpy(), axis=-1)
    qp = softmax(q_logits.double().numpy(), axis=-1)
    dtype = compute_dtype(p_dtype, q_dtype)
    cases = [(D.categorical_kl(p_logits, q_logits), rel_entr(pp, qp).sum(-1)),
             (D.categorical_cross_entropy(p_logits, q_logits), -xlogy(pp, qp).sum(-1)),
             (D.categorical_js(p_logits, q_logits),
              0.5 * (rel_entr(pp, (pp + qp) / 2) + rel_entr(qp, (pp + qp) / 2)).sum(-1))]
    for value, expected in cases:
        assert value.shape == torch.broadcast_shapes(p_logits.shape[:-1], q_logits.shape[:-1])
        assert value.dtype == dtype
        assert_matches(value, expected, dtype)
    entropy = D.categorical_entropy(p_logits)
    assert entropy.dtype == compute_dtype(p_dtype)
    assert_matches(entropy, entr(pp).sum(-1), compute_dtype(p_dtype))


@PROPERTY
@given(pairs(near=True), st.sampled_from(HALF))
def test_nearly_equal_half_precision_pairs_keep_float32_accuracy(pair, dtype):
    """KL ≈ 1e-6 between half-precision distributions: computed in half precision the error was
    as large as the value; in float32 it stays at float32's accuracy on the parameters held."""
    p, q = build(pair.p, dtype), build(pair.q, dtype)
    for name in ("kl", "reverse_kl", "cross_entropy"):
        value = ANALYTIC[name](p, q)
        assert value.dtype == torch.float32
        assert_matches(value, reference(name, p, q, pair), torch.float32)


# --------------------------------------------------------------------------------------------
# Monte-Carlo estimates: fresh draws per broadcast element, given samples, dtypes.
# --------------------------------------------------------------------------------------------

def log_density(d: Distribution, spec: Spec, x: torch.Tensor, event_dims: int) -> np.ndarray:
    """Float64 ``log d(x)`` from the parameters ``d`` holds: its log-probabilities (−inf for
    probability 0), or torch's float64 Normal."""
    if spec.family == "normal":
        return sum_event(held_normal(d).log_prob(x.double()).numpy(), event_dims)
    held = held_log_probabilities(d, spec.family)
    log_probabilities, index = np.broadcast_arrays(held, x.long().numpy()[..., None])
    return sum_event(np.take_along_axis(log_probabilities, index[..., :1], -1)[..., 0], event_dims)


def reference_terms(log_q_over_p: np.ndarray, estimator: str) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return {"k1": -log_q_over_p, "k2": 0.5 * log_q_over_p**2,
                "k3": np.expm1(log_q_over_p) - log_q_over_p}[estimator]


@PROPERTY
@given(pairs(), st.sampled_from(["k1", "k2", "k3"]), st.integers(1, 3), st.integers(0, 2**31))
def test_fresh_draws_come_per_element_of_the_broadcast_batch(pair, estimator, num_samples, seed):
    """``kl_samples`` of p and q is that of p expanded to the broadcast batch shape: shape
    ``(num_samples, *batch)``, each element's draws its own."""
    p, q = build(pair.p), build(pair.q)
    torch.manual_seed(seed)
    terms = D.kl_samples(p, q, estimator=estimator, num_samples=num_samples)
    assert tuple(terms.shape) == (num_samples, *pair.batch_shape)
    torch.manual_seed(seed)
    expanded = D.kl_samples(p.expand(pair.batch_shape), q, estimator=estimator, num_samples=num_samples)
    assert torch.equal(terms.nan_to_num(), expanded.nan_to_num())
    torch.manual_seed(seed)
    assert D.kl(p, q, estimator=estimator, num_samples=num_samples).shape == pair.batch_shape


@PROPERTY
@given(pairs(), st.sampled_from(DTYPES), st.sampled_from(DTYPES), st.sampled_from(["k1", "k2", "k3"]),
       st.booleans(), st.integers(0, 2**31))
def test_given_samples_give_the_float64_terms_in_the_promoted_dtype(
        pair, p_dtype, q_dtype, estimator, leading_axis, seed):
    """Draws of the broadcast batch (one each, or with a leading sample axis) against exact
    float64 log-densities of the parameters as held: zero probabilities give +inf, half
    precision computes in float32, mixed dtypes in the promoted one."""
    p, q = build(pair.p, p_dtype), build(pair.q, q_dtype)
    torch.manual_seed(seed)
    x = build(pair.p).expand(pair.batch_shape).sample((2,) if leading_axis else ())
    if not pair.p.family.startswith("categorical"):
        x = x.to(p_dtype)  # a draw of p, in p's dtype
    terms = D.kl_samples(p, q, estimator=estimator, samples=x)
    dtype = compute_dtype(p_dtype, q_dtype)
    assert tuple(terms.shape) == ((2,) if leading_axis else (1,)) + pair.batch_shape
    assert terms.dtype == dtype
    dims = len(pair.event_shape)
    log_p, log_q = log_density(p, pair.p, x, dims), log_density(q, pair.q, x, dims)
    expected = reference_terms(log_q - log_p, estimator)
    assert_matches(terms, expected.reshape(terms.shape), dtype)


@PROPERTY
@given(pairs(families=("normal",), events=False), st.sampled_from(DTYPES), st.sampled_from(DTYPES),
       st.integers(0, 2**31))
def test_monte_carlo_js_of_continuous_pairs_broadcasts_and_promotes(pair, p_dtype, q_dtype, seed):
    """Continuous JS: one estimate per broadcast element, in the promoted dtype, within 5 standard
    errors of scipy's quadrature of the float64 Normals held (their variances by quadrature too)."""
    p, q = build(pair.p, p_dtype), build(pair.q, q_dtype)
    torch.manual_seed(seed)
    num_samples = 4000
    value = D.js(p, q, num_samples=num_samples)
    assert tuple(value.shape) == pair.batch_shape
    assert value.dtype == compute_dtype(p_dtype, q_dtype)
    expected, variance = js_moments_by_quadrature(held_normal(p), held_normal(q), pair.batch_shape)
    standard_error = np.sqrt(variance / num_samples)
    error = np.abs(value.double().numpy() - expected)
    assert (error <= 5 * standard_error + 1e-6).all(), (error, standard_error)


def js_moments_by_quadrature(p: Normal, q: Normal,
                             batch_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """JS of two float64 Normals per batch element, and the variance of its two-half Monte-Carlo
    estimate per draw pair, ``¼ (Var_P[t_P] + Var_Q[t_Q])`` with ``t_A = log a − log m``: Simpson's
    rule over ±12 standard deviations around both means (the tails beyond hold < 1e-30)."""
    loc_p, scale_p, loc_q, scale_q = (np.broadcast_to(t.numpy(), batch_shape)[..., None]
                                      for t in (p.loc, p.scale, q.loc, q.scale))
    low = np.minimum(loc_p - 12 * scale_p, loc_q - 12 * scale_q)
    high = np.maximum(loc_p + 12 * scale_p, loc_q + 12 * scale_q)
    x = low + (high - low) * np.linspace(0, 1, 40_001)
    log_a, log_b = stats.norm.logpdf(x, loc_p, scale_p), stats.norm.logpdf(x, loc_q, scale_q)
    log_m = np.logaddexp(log_a, log_b) - math.log(2)
    means, variances = [], []
    for log_density in (log_a, log_b):
        density, term = np.exp(log_density), log_density - log_m
        mean = integrate.simpson(density * term, x=x, axis=-1)
        means.append(mean)
        variances.append(integrate.simpson(density * term**2, x=x, axis=-1) - mean**2)
    return 0.5 * (means[0] + means[1]), 0.25 * (variances[0] + variances[1])


@PROPERTY
@given(st.floats(-30, 30, allow_nan=False), st.sampled_from(DTYPES))
def test_monte_carlo_terms_of_half_precision_log_ratios_are_computed_in_float32(log_ratio, dtype):
    """float32's accuracy on the log-ratio as held: k3 ≈ (log r)²/2 near 0 then carries an absolute
    error of float32's rounding of ``expm1``, ~eps·|log r|, far below bfloat16's ~(log r)/256."""
    x = torch.tensor([log_ratio, log_ratio * 1e-3], dtype=dtype)
    held = x.double().numpy()
    dtype_computed = compute_dtype(dtype)
    for estimator in ("k1", "k2", "k3"):
        value = D.monte_carlo_terms(x, estimator)
        assert value.dtype == dtype_computed
        expected = reference_terms(held, estimator)
        error = np.abs(value.double().numpy() - expected)
        eps = torch.finfo(dtype_computed).eps
        assert (error <= 4 * eps * (np.abs(expected) + np.abs(held))).all(), (estimator, error)
