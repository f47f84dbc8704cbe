"""experiment=fit_gaussian: one Gaussian q fitted to a two-component mixture p by a KL term.
Forward KL(p ‖ q) covers both modes (its minimiser matches p's moments); reverse KL(q ‖ p) seeks
one mode. The KLs are measured by quadrature, checked here against scipy and torch's closed form.

The default target: p = 0.3 N(−3, 1) + 0.7 N(3, 1). By hand: E_p[x] = 0.3·(−3) + 0.7·3 = 1.2,
E_p[x²] = 1 + 9 = 10, Var_p[x] = 10 − 1.44 = 8.56.
"""

import math

import numpy as np
import pytest
import torch
from helpers import QUIET, run_experiment
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributions import Normal, kl_divergence

from klexp.core.estimate import MonteCarlo
from klexp.errors import ConfigValueError, KlexpError
from klexp.lightning.term import KLTerm
from klexp.tasks.density_fit import (
    DensityFitTask,
    gaussian_mixture,
    kl_by_quadrature,
    moment_matching,
    quadrature_grid,
)

WEIGHTS, MEANS, SCALES = (0.3, 0.7), (-3.0, 3.0), (1.0, 1.0)
ORACLE_MEAN, ORACLE_SCALE = 1.2, math.sqrt(8.56)
#: the local minima of KL(q ‖ p) on each mode (scipy's Nelder–Mead on the quadrature KL, from
#: (±3, 1); the modes' overlap moves them off (±3, 1) by ~1 %)
REVERSE_MINIMUM_HEAVY = (2.99054, 1.01467, 0.354034)  # mean, scale, KL (nats)
REVERSE_MINIMUM_LIGHT = (-2.97337, 1.03793, 1.196682)

# Tolerances of the trained fits. On 10 seeds the final mean and scale of the default run (500
# steps of 512 draws) spread by a standard deviation of 0.013 and 0.009 (forward) and 0.006 and
# 0.004 (reverse). A maximum-likelihood fit to N draws has standard errors σ_p/√N and σ_p/√(2N)
# for them: 0.013 is N ≈ 50,000, the draws of the last ~100 steps, about the window over which the
# decaying learning rate averages. The tolerances are ~5 of those standard deviations (they also
# hold Adam's small bias on noisy gradients: ±0.003 on the scale).
MEAN_TOLERANCE, SCALE_TOLERANCE = 0.06, 0.05


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


def default_target():
    return gaussian_mixture(f64(*WEIGHTS), f64(*MEANS), f64(*SCALES))


#: one validation, at the end, instead of one per epoch: a figure costs ~0.4 s
FINAL_VALIDATION_ONLY = "trainer.check_val_every_n_epoch=5"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The default experiment in both directions: {direction: (summary, run directory)}."""
    results = {}
    for direction in ("forward", "reverse"):
        run_dir = tmp_path_factory.mktemp(direction)
        summary = run_experiment(["experiment=fit_gaussian", f"kl.fit.direction={direction}",
                                  FINAL_VALIDATION_ONLY, *QUIET], run_dir)
        results[direction] = (summary, run_dir)
    return results


# ------------------------------------------------------------------------------ the maths


def test_moment_matching_of_the_default_mixture_is_its_hand_computed_mean_and_variance():
    oracle = moment_matching(default_target())

    assert float(oracle.mean) == pytest.approx(ORACLE_MEAN, abs=1e-12)
    assert float(oracle.variance) == pytest.approx(8.56, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(mean_p=st.floats(-5, 5), scale_p=st.floats(0.05, 5), mean_q=st.floats(-5, 5),
       scale_q=st.floats(0.05, 5))
def test_quadrature_kl_of_two_gaussians_equals_the_closed_form(mean_p, scale_p, mean_q, scale_q):
    p, q = Normal(f64(mean_p)[0], f64(scale_p)[0]), Normal(f64(mean_q)[0], f64(scale_q)[0])
    grid = quadrature_grid(p, q)
    closed_form = float(kl_divergence(p, q))

    assert float(kl_by_quadrature(p, q, grid)) == pytest.approx(closed_form, rel=1e-9, abs=1e-10)


@pytest.mark.parametrize("mean, scale", [(1.2, 2.9257), (3.0, 1.0), (0.0, 0.01), (10.0, 0.3),
                                         (-2.0, 6.0)])
def test_quadrature_kl_with_the_mixture_matches_scipy_adaptive_quadrature(mean, scale):
    p, q = default_target(), Normal(f64(mean)[0], f64(scale)[0])
    grid = quadrature_grid(p.component_distribution, q)

    def log_normal(x, loc, sd):
        return -0.5 * ((x - loc) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)

    def log_p(x):
        return np.logaddexp(math.log(0.3) + log_normal(x, -3, 1), math.log(0.7) + log_normal(x, 3, 1))

    def log_q(x):
        return log_normal(x, mean, scale)

    options = {"epsabs": 1e-12, "epsrel": 1e-12, "limit": 500}
    forward, _ = integrate.quad(lambda x: np.exp(log_p(x)) * (log_p(x) - log_q(x)),
                                -np.inf, np.inf, **options)
    reverse, _ = integrate.quad(lambda x: np.exp(log_q(x)) * (log_q(x) - log_p(x)),
                                -np.inf, np.inf, **options)

    assert float(kl_by_quadrature(p, q, grid)) == pytest.approx(forward, rel=1e-10, abs=1e-10)
    assert float(kl_by_quadrature(q, p, grid)) == pytest.approx(reverse, rel=1e-10, abs=1e-10)


@settings(max_examples=50, deadline=None)
@given(shift=st.floats(-1, 1), log_stretch=st.floats(-0.5, 0.5))
def test_no_gaussian_has_a_smaller_forward_kl_than_the_moment_matching_one(shift, log_stretch):
    p = default_target()
    oracle = moment_matching(p)
    other = Normal(oracle.mean + shift, oracle.stddev * math.exp(log_stretch))
    grid = quadrature_grid(p.component_distribution, oracle, other)

    assert kl_by_quadrature(p, other, grid) >= kl_by_quadrature(p, oracle, grid) - 1e-12


def test_forward_k1_on_draws_of_p_has_the_maximum_likelihood_gradient():
    """The term's gradient for KL(p ‖ q) by k1 on x ~ p is −(1/n) Σ ∇ log q(x): the gradient of
    the negative log-likelihood of q on the same draws."""
    task = DensityFitTask(init_mean=0.5, init_scale=1.5)
    term = KLTerm("fit", p="target", q="model", direction="forward",
                  estimator=MonteCarlo("k1", num_samples=64))
    torch.manual_seed(0)
    term.reduce(term.measure(task.step()).elementwise).backward()
    gradient = torch.stack([task.mean.grad, task.log_scale.grad])
    task.zero_grad()
    torch.manual_seed(0)
    draws = task.target().sample((64,))
    (-task.model().log_prob(draws).mean()).backward()

    torch.testing.assert_close(gradient, torch.stack([task.mean.grad, task.log_scale.grad]))


def test_reverse_k1_has_the_pathwise_gradient_on_reparameterised_draws_of_q():
    """KL(q ‖ p) by k1: the gradient of (1/n) Σ [log q(x) − log p(x)] at x = μ + σε, ε ~ N(0, 1),
    through x as well as through log q."""
    task = DensityFitTask(init_mean=0.5, init_scale=1.5)
    term = KLTerm("fit", p="target", q="model", direction="reverse",
                  estimator=MonteCarlo("k1", num_samples=64))
    torch.manual_seed(0)
    term.reduce(term.measure(task.step()).elementwise).backward()
    gradient = torch.stack([task.mean.grad, task.log_scale.grad])
    task.zero_grad()
    torch.manual_seed(0)
    epsilon = torch.randn(64)
    draws = task.mean + task.log_scale.exp() * epsilon
    (task.model().log_prob(draws) - task.target().log_prob(draws)).mean().backward()

    torch.testing.assert_close(gradient, torch.stack([task.mean.grad, task.log_scale.grad]))


# ------------------------------------------------------------------------------ the fits


def test_forward_fit_lands_on_the_moment_matching_oracle(runs):
    metrics = runs["forward"][0]["metrics"]

    assert metrics["val/oracle_mean"] == pytest.approx(ORACLE_MEAN, abs=1e-6)
    assert metrics["val/oracle_scale"] == pytest.approx(ORACLE_SCALE, abs=1e-6)
    assert metrics["val/mean"] == pytest.approx(ORACLE_MEAN, abs=MEAN_TOLERANCE)
    assert metrics["val/scale"] == pytest.approx(ORACLE_SCALE, abs=SCALE_TOLERANCE)
    # at the oracle the forward KL is flat: the fit's excess is second order (≤ 5e-5 on 10 seeds)
    assert 0 <= metrics["val/kl_forward"] - metrics["val/oracle_kl_forward"] < 1e-3


def test_reverse_fit_seeks_the_heavier_mode(runs):
    metrics = runs["reverse"][0]["metrics"]
    mean, scale, kl = REVERSE_MINIMUM_HEAVY

    assert metrics["val/mean"] == pytest.approx(MEANS[1], abs=MEAN_TOLERANCE)
    assert metrics["val/scale"] == pytest.approx(SCALES[1], abs=SCALE_TOLERANCE)
    assert metrics["val/mean"] == pytest.approx(mean, abs=0.03)
    assert metrics["val/scale"] == pytest.approx(scale, abs=0.02)
    assert metrics["val/kl_reverse"] == pytest.approx(kl, abs=1e-3)


def test_each_fit_has_the_smaller_kl_in_its_own_direction(runs):
    forward, reverse = runs["forward"][0]["metrics"], runs["reverse"][0]["metrics"]

    assert forward["val/kl_forward"] < reverse["val/kl_forward"]
    assert reverse["val/kl_reverse"] < forward["val/kl_reverse"]
    assert runs["forward"][0]["objective_name"] == "val/kl_forward"
    assert runs["reverse"][0]["objective_name"] == "val/kl_reverse"


def test_reverse_fit_started_near_the_lighter_mode_stays_on_it(tmp_path):
    """Mode seeking is local: from N(−1.5, 0.5²) the fit ends on the mode at −3, a local minimum
    of KL(q ‖ p) higher than the other one (from the default N(0, 2²), wide enough to feel both
    modes, it ends on the heavier one)."""
    summary = run_experiment(["experiment=fit_gaussian", "kl.fit.direction=reverse",
                              "task.init_mean=-1.5", "task.init_scale=0.5", "task.steps_per_epoch=40",
                              FINAL_VALIDATION_ONLY, *QUIET], tmp_path)
    metrics = summary["metrics"]
    mean, scale, kl = REVERSE_MINIMUM_LIGHT

    assert metrics["val/mean"] == pytest.approx(mean, abs=0.05)
    assert metrics["val/scale"] == pytest.approx(scale, abs=0.03)
    assert metrics["val/kl_reverse"] == pytest.approx(kl, abs=2e-3)


# ------------------------------------------------------------------------------ the run


def test_the_run_logs_fit_and_oracle_scalars_the_term_and_a_figure_to_tensorboard(runs):
    summary, run_dir = runs["reverse"]
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    scalars, images = set(accumulator.Tags()["scalars"]), accumulator.Tags()["images"]
    fitted = {"mean", "scale", "kl_forward", "kl_reverse", "oracle_mean", "oracle_scale",
              "oracle_kl_forward"}

    assert summary["status"] == "completed"
    assert {f"fit/{name}" for name in fitted} | {f"val/{name}" for name in fitted} <= scalars
    assert {"kl/fit/value", "kl/fit/std", "val/kl/fit/value"} <= scalars
    assert images == ["val/densities"]
    # one figure per validation, none in the sanity check
    assert [event.step for event in accumulator.Images("val/densities")] == [500]


def test_a_closed_form_kl_with_the_mixture_is_refused_at_start_up_naming_the_key(tmp_path):
    with pytest.raises(KlexpError, match=r"kl\.fit\.estimator: .*no closed form"):
        run_experiment(["experiment=fit_gaussian", "kl.fit.estimator=analytic", *QUIET], tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_a_mixture_with_more_weights_than_means_is_refused_naming_the_key():
    with pytest.raises(ConfigValueError, match=r"^means: expected as many component means"):
        DensityFitTask(weights=(0.5, 0.5), means=(0.0,), scales=(1.0,))
