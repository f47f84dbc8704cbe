"""Which gradient each distillation objective follows, exactly: on a student with free logits for
every prefix (3 tokens × length 3, 39 parameters, float64), the expected gradient of each
objective over the sequences it is trained on — every sequence enumerated, weighted by its
probability under the source, the source carrying no gradient as sampled data does not — against
the exact gradient of the sequence-level divergence it names. The table in docs/distill-seq.md
is these tests."""

from __future__ import annotations

import pytest
import torch

import klexp
from klexp.core.sequences import all_sequences, sequence_divergences, sequence_log_probs

V, L = 3, 3
OFFSETS = [(V ** t - 1) // (V - 1) for t in range(L)]
PREFIXES = (V ** L - 1) // (V - 1)
X = all_sequences(V, L)


def prefix_index(sequences: torch.Tensor) -> torch.Tensor:
    """Row of each position's prefix in the parameter table, ``(N, L)``."""
    columns = []
    for t in range(L):
        within = sum(sequences[:, i] * V ** (t - 1 - i) for i in range(t)) if t else 0
        columns.append(OFFSETS[t] + within * torch.ones(len(sequences), dtype=torch.long))
    return torch.stack(columns, 1)


INDEX = prefix_index(X)


def tree(params: torch.Tensor) -> list[torch.Tensor]:
    return [params[OFFSETS[t]:OFFSETS[t] + V ** t].log_softmax(-1) for t in range(L)]


@pytest.fixture(scope="module")
def models():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(PREFIXES, V, generator=generator, dtype=torch.float64) * 1.5
    student = torch.randn(PREFIXES, V, generator=generator, dtype=torch.float64)
    return teacher, student


def grad_of(function, student: torch.Tensor) -> torch.Tensor:
    params = student.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(function(params), params)
    return gradient


def expected_gradient(objective, teacher, student, source: str) -> torch.Tensor:
    """``∇ Σ_x sg(W(x)) Σ_t objective_t(x)``: the mean gradient of the objective summed over a
    sequence's tokens, sequences drawn from the teacher or the student ``W``."""
    source_params = teacher if source == "teacher" else student
    weights = sequence_log_probs(tree(source_params)).exp()

    def loss(params):
        per_token = objective(teacher[INDEX], params[INDEX], X)
        return (weights * per_token.sum(1)).sum()

    return grad_of(loss, student)


def named_gradient(teacher, student, direction: str) -> torch.Tensor:
    def divergence(params):
        measured = sequence_divergences(tree(teacher), tree(params), V, L)
        return measured.kl_forward if direction == "forward" else measured.kl_reverse
    return grad_of(divergence, student)


def close(a, b) -> bool:
    return torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_forward_kl_on_the_teachers_sequences_follows_the_sequence_forward_kl(models):
    teacher, student = models
    got = expected_gradient(klexp.ForwardKL(), teacher, student, "teacher")
    assert close(got, named_gradient(teacher, student, "forward"))


def test_forward_kl_on_the_students_sequences_follows_no_sequence_kl(models):
    teacher, student = models
    got = expected_gradient(klexp.ForwardKL(), teacher, student, "student")
    assert not torch.allclose(got, named_gradient(teacher, student, "forward"), rtol=0.05)
    assert not torch.allclose(got, named_gradient(teacher, student, "reverse"), rtol=0.05)


def test_reverse_kl_on_the_students_sequences_misses_exactly_the_score_of_its_prefixes(models):
    """``∇KL(S ‖ T) = E_S[Σ_t ∇KL(S_t ‖ T_t)] + E_S[Σ_t KL(S_t ‖ T_t)·∇log S(x_<t)]``: the per-token
    loss on the student's own sequences gives only the first part."""
    teacher, student = models
    per_token = expected_gradient(klexp.ReverseKL(), teacher, student, "student")
    exact = named_gradient(teacher, student, "reverse")
    assert not torch.allclose(per_token, exact, rtol=0.05)
    weights = sequence_log_probs(tree(student)).exp()
    token_kl = klexp.ReverseKL()(teacher[INDEX], student[INDEX], X)

    def score(params):
        log_s = params[INDEX].log_softmax(-1).gather(-1, X.unsqueeze(-1)).squeeze(-1)
        prefix_log_prob = log_s.cumsum(1) - log_s  # log S(x_<t)
        return (weights * (token_kl * prefix_log_prob).sum(1)).sum()

    assert close(per_token + grad_of(score, student), exact)


def test_reverse_kl_on_the_teachers_sequences_follows_no_sequence_kl(models):
    teacher, student = models
    got = expected_gradient(klexp.ReverseKL(), teacher, student, "teacher")
    assert not torch.allclose(got, named_gradient(teacher, student, "reverse"), rtol=0.05)


# ------------------------------------------------------------------ sampled-token estimators


@pytest.mark.parametrize(("estimator", "follows"), [("k1", "zero"), ("k2", "reverse per token"),
                                                    ("k3", "forward per token")])
def test_sampled_estimators_as_a_loss(models, estimator, follows):
    """On the student's own tokens: k1 has zero mean gradient, k2 follows the per-token reverse
    KL and k3 the per-token *forward* KL (prefixes held fixed), as in PPO's placement table."""
    teacher, student = models
    got = expected_gradient(klexp.SampledReverseKL(estimator, "loss"), teacher, student, "student")
    expected = {
        "zero": torch.zeros_like(got),
        "reverse per token": expected_gradient(klexp.ReverseKL(), teacher, student, "student"),
        "forward per token": expected_gradient(klexp.ForwardKL(), teacher, student, "student"),
    }[follows]
    assert close(got, expected)


def test_sampled_k1_as_a_reward_follows_the_sequence_reverse_kl(models):
    teacher, student = models
    got = expected_gradient(klexp.SampledReverseKL("k1", "reward"), teacher, student, "student")
    assert close(got, named_gradient(teacher, student, "reverse"))


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_sampled_k2_and_k3_as_a_reward_follow_no_sequence_kl(models, estimator):
    teacher, student = models
    got = expected_gradient(klexp.SampledReverseKL(estimator, "reward"), teacher, student, "student")
    assert not torch.allclose(got, named_gradient(teacher, student, "reverse"), rtol=0.05)


# ------------------------------------------------------------------ JS, TAID, top-k, skew


def cosine(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_gkd_beta_near_an_end_scales_the_gradient_and_the_continuous_form_does_not(models):
    teacher, student = models
    forward = named_gradient(teacher, student, "forward")
    gkd = expected_gradient(klexp.GeneralisedJS(0.01, "gkd"), teacher, student, "teacher")
    continuous = expected_gradient(klexp.GeneralisedJS(1e-6), teacher, student, "teacher")
    assert cosine(gkd, forward) > 0.99
    assert gkd.norm() / forward.norm() == pytest.approx(0.01, rel=0.1)
    torch.testing.assert_close(continuous, forward, rtol=1e-4, atol=1e-8)
    near_one = expected_gradient(klexp.GeneralisedJS(1 - 1e-6), teacher, student, "student")
    torch.testing.assert_close(near_one, expected_gradient(klexp.ReverseKL(), teacher, student, "student"),
                               rtol=1e-4, atol=1e-8)


def test_taid_follows_the_forward_kl_at_t_one_and_not_before(models):
    teacher, student = models
    forward = named_gradient(teacher, student, "forward")
    for t, equal in ((1.0, True), (0.4, False)):
        schedule = klexp.TaidSchedule(total_steps=10, t_start=t if t < 1 else 0.0)
        schedule.beta = t
        got = expected_gradient(klexp.TAID(schedule), teacher, student, "teacher")
        assert close(got, forward) == equal


def test_top_k_follows_the_forward_kl_only_with_every_token_kept(models):
    teacher, student = models
    forward = named_gradient(teacher, student, "forward")
    assert close(expected_gradient(klexp.TopK(V, tail=True), teacher, student, "teacher"), forward)
    for tail in (True, False):
        got = expected_gradient(klexp.TopK(1, tail=tail), teacher, student, "teacher")
        assert not torch.allclose(got, forward, rtol=0.05)


def test_skew_forward_kl_follows_its_own_divergence_not_the_forward_kl(models):
    teacher, student = models
    forward = named_gradient(teacher, student, "forward")
    skew = expected_gradient(klexp.SkewKL("forward", 0.1), teacher, student, "teacher")
    assert not torch.allclose(skew, forward, rtol=0.05)
    assert cosine(skew, forward) > 0.5
