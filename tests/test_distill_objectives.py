"""Token-level distillation objectives (klexp.core.distill, klexp.core.distill_objectives), TAID's
schedule and the reductions: each against its definition, its limits and its bounds."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

import klexp
from klexp.core import distill
from klexp.core.categorical import categorical_js
from klexp.core.reduction import reduce_tokens
from klexp.errors import ConfigValueError

V = 6


def logits(seed: int, shape=(5, V), scale: float = 2.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


T, S = logits(0), logits(1)


def exact_kl(p, q):
    return kl_divergence(Categorical(logits=p), Categorical(logits=q))


def test_forward_and_reverse_kl_name_their_directions():
    torch.testing.assert_close(distill.forward_kl(T, S), exact_kl(T, S))
    torch.testing.assert_close(distill.reverse_kl(T, S), exact_kl(S, T))


EXTREME = torch.tensor([[1e4, -1e4, 0.0, -3e4, 5.0, -3.0]], dtype=torch.float64)


@pytest.mark.parametrize("objective", [
    klexp.ForwardKL(), klexp.ReverseKL(), klexp.GeneralisedJS(0.5), klexp.GeneralisedJS(1e-3, "gkd"),
    klexp.SkewKL("forward"), klexp.SkewKL("reverse"), klexp.TAID(klexp.TaidSchedule(10)),
    klexp.TopK(2, tail=True), klexp.TopK(2, tail=False)], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_objective_is_finite_with_finite_gradients_at_extreme_logits(objective, dtype):
    """Logits ±1e4 apart: probabilities underflow to 0 while their logarithms stay exact."""
    teacher = EXTREME.to(dtype).unsqueeze(0)
    student = torch.tensor([[[-1e4, 1e4, 3.0, 0.0, -2.0, 1.0]]], dtype=dtype, requires_grad=True)
    value = objective(teacher, student, torch.zeros(1, 1, dtype=torch.long))
    assert value.isfinite().all()
    value.sum().backward()
    assert student.grad.isfinite().all()


# ------------------------------------------------------------------ generalised Jensen–Shannon


def direct_jsd(p, q, beta):
    """β KL(P ‖ M) + (1−β) KL(Q ‖ M), M = βP + (1−β)Q, in probabilities."""
    pp, qq = p.softmax(-1), q.softmax(-1)
    m = beta * pp + (1 - beta) * qq
    return beta * (pp * (pp / m).log()).sum(-1) + (1 - beta) * (qq * (qq / m).log()).sum(-1)


def test_gkd_interior_is_its_definition_with_the_mixture_weighted_as_gkd_weights_it():
    for beta in (0.1, 0.5, 0.9):
        torch.testing.assert_close(distill.gkd_generalised_jsd(T, S, beta), direct_jsd(T, S, beta))


def test_gkd_convention_is_discontinuous_at_both_ends_and_beta_scales_it():
    """The interior tends to 0: at β = 0.01 the loss is about 1 % of the endpoint's."""
    forward, reverse = distill.forward_kl(T, S), distill.reverse_kl(T, S)
    torch.testing.assert_close(distill.gkd_generalised_jsd(T, S, 0.0), forward)
    torch.testing.assert_close(distill.gkd_generalised_jsd(T, S, 1.0), reverse)
    near_zero = distill.gkd_generalised_jsd(T, S, 0.01)
    near_one = distill.gkd_generalised_jsd(T, S, 0.99)
    assert ((near_zero / forward - 0.01).abs() < 0.005).all()
    assert ((near_one / reverse - 0.01).abs() < 0.005).all()


def test_continuous_form_tends_to_the_kls_at_the_ends_and_is_four_js_in_the_middle():
    torch.testing.assert_close(distill.generalised_jsd(T, S, 1e-6), distill.forward_kl(T, S),
                               rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(distill.generalised_jsd(T, S, 1 - 1e-6), distill.reverse_kl(T, S),
                               rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(distill.generalised_jsd(T, S, 0.5), 4 * categorical_js(T, S))


def test_a_direction_is_never_a_beta_endpoint():
    for beta in (0, 1, 0.0, 1.0):
        with pytest.raises(ConfigValueError, match=r"^beta: .*ForwardKL and ReverseKL"):
            klexp.GeneralisedJS(beta)


# ------------------------------------------------------------------ skew KL and TAID


def test_skew_kl_is_kl_to_the_skewed_mixture_in_both_directions():
    alpha = 0.1
    t, s = T.softmax(-1), S.softmax(-1)
    skew_forward = (t * (t / (alpha * t + (1 - alpha) * s)).log()).sum(-1)
    skew_reverse = (s * (s / (alpha * s + (1 - alpha) * t)).log()).sum(-1)
    tokens = torch.zeros(5, dtype=torch.long)
    torch.testing.assert_close(klexp.SkewKL("forward", alpha)(T, S, tokens), skew_forward)
    torch.testing.assert_close(klexp.SkewKL("reverse", alpha)(T, S, tokens), skew_reverse)
    torch.testing.assert_close(distill.skew_kl(T, S, 0.0), distill.forward_kl(T, S))
    # bounded by −log α even where the student gives a token probability 0
    zero = torch.tensor([0.0, -float("inf"), 1.0], dtype=torch.float64)
    assert distill.skew_kl(torch.zeros(3, dtype=torch.float64), zero, alpha) <= -math.log(alpha)


def test_taid_interpolates_in_logit_space_and_gives_the_forward_kl_at_t_one():
    torch.testing.assert_close(distill.taid_kl(T, S, 1.0), distill.forward_kl(T, S))
    assert distill.taid_kl(T, S, 0.0).abs().max() < 1e-12
    expected = torch.log_softmax(0.6 * S.log_softmax(-1) + 0.4 * T.log_softmax(-1), -1)
    torch.testing.assert_close(distill.taid_target(T, S, 0.4), expected)


def test_taid_target_carries_no_gradient_to_the_student():
    student = S.clone().requires_grad_()
    distill.taid_kl(T, student, 0.4).sum().backward()
    target = distill.taid_target(T, S, 0.4).detach()
    check = S.clone().requires_grad_()
    distill.forward_kl(target, check).sum().backward()
    torch.testing.assert_close(student.grad, check.grad)


def test_taid_schedule_starts_at_t_start_never_falls_below_the_ramp_and_ends_at_t_end():
    schedule = klexp.TaidSchedule(total_steps=100)
    assert schedule.value() == 0.4
    values = []
    for step in range(120):
        schedule.update(1.0 / (1 + step))  # a falling objective: t moves ahead of the ramp
        values.append(schedule.value())
    assert all(b >= a for a, b in itertools.pairwise(values))
    ramp = [0.4 + 0.6 * min(1, n / 100) for n in range(120)]
    assert all(v >= r - 1e-12 for v, r in zip(values, ramp, strict=True))
    assert values[-1] == 1.0
    resumed = klexp.TaidSchedule(total_steps=100)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.state_dict() == schedule.state_dict()


def test_taid_moves_faster_while_the_objective_falls():
    falling, flat = klexp.TaidSchedule(10_000, alpha=0.05), klexp.TaidSchedule(10_000, alpha=0.05)
    for step in range(50):
        falling.update(math.exp(-0.2 * step))
        flat.update(1.0)
    assert falling.value() > flat.value() > 0.4


# ------------------------------------------------------------------ teacher top-k


def test_truncated_top_k_goes_negative_and_the_tail_bucket_makes_it_a_divergence():
    teacher = torch.tensor([0.5, 0.5], dtype=torch.float64).log()
    student = torch.tensor([0.9, 0.1], dtype=torch.float64).log()
    truncated = distill.top_k_truncated_kl(teacher, student, 1)
    assert truncated == pytest.approx(0.5 * math.log(0.5 / 0.9))
    assert truncated < 0
    assert distill.top_k_tail_kl(teacher, student, 1) >= 0


@pytest.mark.parametrize("seed", range(5))
def test_tail_bucket_kl_is_at_most_the_full_kl_and_equals_it_at_k_equal_vocabulary(seed):
    teacher, student = logits(10 + seed, scale=3.0), logits(20 + seed, scale=3.0)
    full = distill.forward_kl(teacher, student)
    for k in range(1, V):
        tail = distill.top_k_tail_kl(teacher, student, k)
        assert (tail >= 0).all() and (tail <= full + 1e-12).all()
    torch.testing.assert_close(distill.top_k_tail_kl(teacher, student, V), full)
    torch.testing.assert_close(distill.top_k_truncated_kl(teacher, student, V), full)


def test_top_k_larger_than_the_vocabulary_is_refused():
    with pytest.raises(ConfigValueError, match=r"^k: at most the vocabulary"):
        klexp.TopK(k=V + 1)(T, S, torch.zeros(5, dtype=torch.long))


# ------------------------------------------------------------------ sampled-token estimators


def test_sampled_k1_and_k3_are_unbiased_for_the_reverse_kl_over_the_students_tokens():
    log_s, log_t = S.log_softmax(-1), T.log_softmax(-1)
    tokens = torch.arange(V)
    for estimator, unbiased in (("k1", True), ("k2", False), ("k3", True)):
        terms = distill.sampled_kl_terms(log_s[:, tokens], log_t[:, tokens], estimator)
        expected = (log_s.exp() * terms).sum(-1)
        if unbiased:
            torch.testing.assert_close(expected, distill.reverse_kl(T, S))
        else:
            assert (terms >= 0).all()


def test_reward_surrogate_has_the_terms_as_value_and_reinforce_as_gradient():
    terms = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    log_prob = torch.tensor([[-0.5, -1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    surrogate = distill.reward_surrogate(terms, log_prob)
    torch.testing.assert_close(surrogate, terms)
    surrogate.sum().backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([[6.0, 5.0, 3.0]], dtype=torch.float64))


def test_sampled_estimators_take_only_monte_carlo_estimators_and_placements():
    with pytest.raises(ConfigValueError, match=r"^estimator:"):
        klexp.SampledReverseKL(estimator="analytic")
    with pytest.raises(ConfigValueError, match=r"^placement:"):
        klexp.SampledReverseKL(placement="advantage")
    assert klexp.SampledReverseKL().needs_student_samples
    assert not klexp.ForwardKL().needs_student_samples


# ------------------------------------------------------------------ reductions


def test_reductions_weigh_a_token_by_one_over_the_slots_or_over_the_sequences():
    values = torch.arange(12, dtype=torch.float64).view(3, 4)
    mask = torch.ones(3, 4)
    mask[0, 2:] = 0
    real = values.where(mask.bool(), 0.0).sum()
    assert reduce_tokens(values, mask, "token") == real / 12
    assert reduce_tokens(values, mask, "sequence") == real / 3
    values[0, 3] = float("nan")  # what padding holds does not matter
    assert reduce_tokens(values, mask, "sequence") == real / 3


def test_fixed_normalisers_split_into_micro_batches_as_lightning_adds_them_up_and_a_per_batch_mean_does_not():
    """Lightning divides each of k micro-batch losses by k: the step's loss is their mean."""
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(32, 5, generator=generator, dtype=torch.float64)
    mask = (torch.rand(32, 5, generator=generator) < 0.6).double()
    mask[:, 0] = 1
    parts = list(zip(values.split(8), mask.split(8), strict=True))
    for reduction in ("token", "sequence"):
        accumulated = sum(reduce_tokens(v, m, reduction) for v, m in parts) / 4
        torch.testing.assert_close(accumulated, reduce_tokens(values, mask, reduction))
    # the common alternative: each micro-batch divided by its own count of real tokens
    per_batch_mean = sum((v * m).sum() / m.sum() for v, m in parts) / 4
    global_mean = (values * mask).sum() / mask.sum()
    assert not torch.isclose(per_batch_mean, global_mean)
