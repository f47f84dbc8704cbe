"""Exact sequence-level quantities (klexp.core.sequences) against brute force, the chain rule and
the bounds every divergence keeps."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from klexp.core.sequences import (
    all_sequences,
    prefix_log_probs,
    prefix_tree,
    sample_sequences,
    sequence_divergences,
    sequence_log_probs,
)


def tabular_model(vocab: int, length: int, seed: int, scale: float = 2.0):
    """A next-token function with free logits for every prefix, and the table behind it."""
    generator = torch.Generator().manual_seed(seed)
    table = {prefix: torch.randn(vocab, generator=generator, dtype=torch.float64) * scale
             for t in range(length) for prefix in itertools.product(range(vocab), repeat=t)}

    def next_token(prefixes: torch.Tensor) -> torch.Tensor:
        return torch.stack([table[tuple(row.tolist())] for row in prefixes])

    return next_token, table


def brute_force_log_prob(table, sequence) -> float:
    return sum(float(torch.log_softmax(table[tuple(sequence[:t])], 0)[token])
               for t, token in enumerate(sequence))


VOCAB, LENGTH = 3, 3


@pytest.fixture(scope="module")
def pair():
    teacher, teacher_table = tabular_model(VOCAB, LENGTH, seed=0)
    student, student_table = tabular_model(VOCAB, LENGTH, seed=1)
    return teacher, teacher_table, student, student_table


def test_sequences_are_enumerated_in_lexicographic_order():
    sequences = all_sequences(3, 2)
    assert sequences.tolist() == [list(x) for x in itertools.product(range(3), repeat=2)]


def test_a_space_too_large_to_enumerate_is_refused_naming_its_size():
    with pytest.raises(ValueError, match="vocab_size 50 and length 6 make 15,625,000,000"):
        all_sequences(50, 6)


def test_sequence_log_probs_match_the_chain_of_conditionals(pair):
    teacher, table, _, _ = pair
    log_p = sequence_log_probs(prefix_tree(teacher, VOCAB, LENGTH, chunk_size=4))
    expected = [brute_force_log_prob(table, x) for x in itertools.product(range(VOCAB), repeat=LENGTH)]
    torch.testing.assert_close(log_p, torch.tensor(expected, dtype=torch.float64))
    assert math.isclose(float(log_p.exp().sum()), 1.0, rel_tol=1e-12)


def test_divergences_match_brute_force_over_every_sequence(pair):
    teacher, t_table, student, s_table = pair
    got = sequence_divergences(teacher, student, VOCAB, LENGTH, chunk_size=5)
    xs = list(itertools.product(range(VOCAB), repeat=LENGTH))
    log_t = torch.tensor([brute_force_log_prob(t_table, x) for x in xs], dtype=torch.float64)
    log_s = torch.tensor([brute_force_log_prob(s_table, x) for x in xs], dtype=torch.float64)
    t, s = log_t.exp(), log_s.exp()
    torch.testing.assert_close(got.kl_forward, (t * (log_t - log_s)).sum())
    torch.testing.assert_close(got.kl_reverse, (s * (log_s - log_t)).sum())
    torch.testing.assert_close(got.tv, 0.5 * (t - s).abs().sum())
    torch.testing.assert_close(got.teacher_entropy, -(t * log_t).sum())
    torch.testing.assert_close(got.student_entropy, -(s * log_s).sum())

    def token_average(weights, direction):
        total = 0.0
        for x, w in zip(xs, weights, strict=True):
            for i in range(LENGTH):
                lt = torch.log_softmax(t_table[x[:i]], 0)
                ls = torch.log_softmax(s_table[x[:i]], 0)
                a, b = (lt, ls) if direction == "forward" else (ls, lt)
                total += float(w) * float((a.exp() * (a - b)).sum())
        return torch.tensor(total / LENGTH, dtype=torch.float64)

    torch.testing.assert_close(got.token_kl_forward_on_teacher, token_average(t, "forward"))
    torch.testing.assert_close(got.token_kl_reverse_on_teacher, token_average(t, "reverse"))
    torch.testing.assert_close(got.token_kl_forward_on_student, token_average(s, "forward"))
    torch.testing.assert_close(got.token_kl_reverse_on_student, token_average(s, "reverse"))


def test_chain_rule_sequence_kl_is_the_expected_sum_of_token_kls_under_its_first_argument(pair):
    teacher, _, student, _ = pair
    got = sequence_divergences(teacher, student, VOCAB, LENGTH)
    torch.testing.assert_close(got.kl_forward, LENGTH * got.token_kl_forward_on_teacher)
    torch.testing.assert_close(got.kl_reverse, LENGTH * got.token_kl_reverse_on_student)
    # under the other model's sequences the sums are other numbers (the chain rule needs the
    # first argument to sample): this is what on-policy forward KL optimises instead
    assert not torch.isclose(got.kl_forward, LENGTH * got.token_kl_forward_on_student)



def test_a_teacher_of_finite_support_has_infinite_reverse_kls_not_nan(pair):
    """A source of finite support (a table of words): the teacher never starts with token 0, and
    after such a prefix it gives token 2 probability 0 too. KL(S ‖ T) and its token averages are
    +∞ — the prefixes the teacher never writes weigh 0 even where their token KL is ∞ (0 · ∞ = 0,
    not NaN) — while the forward ones stay finite."""
    _, _, student, _ = pair

    def teacher(prefixes):
        logits = torch.zeros(len(prefixes), VOCAB, dtype=torch.float64)
        if prefixes.shape[1] == 0:
            logits[:, 0] = -torch.inf
        else:
            logits[prefixes[:, 0] == 0, 2] = -torch.inf
        return logits

    got = sequence_divergences(teacher, student, VOCAB, LENGTH)
    for name in ("kl_reverse", "token_kl_reverse_on_teacher", "token_kl_reverse_on_student"):
        assert getattr(got, name) == math.inf, name
    assert all(math.isfinite(float(getattr(got, name))) for name in
               ("kl_forward", "tv", "teacher_entropy", "token_kl_forward_on_teacher",
                "token_kl_forward_on_student"))


@pytest.mark.parametrize("seed", range(5))
def test_bounds_hold(seed):
    vocab, length = 4, 3
    teacher, _ = tabular_model(vocab, length, seed=10 + seed, scale=4.0)
    student, _ = tabular_model(vocab, length, seed=20 + seed, scale=4.0)
    got = sequence_divergences(teacher, student, vocab, length)
    assert got.kl_forward >= 0 and got.kl_reverse >= 0
    assert 0 <= got.tv <= 1
    assert got.tv <= math.sqrt(got.kl_forward / 2) + 1e-12  # Pinsker
    assert got.tv <= math.sqrt(got.kl_reverse / 2) + 1e-12
    for entropy in (got.teacher_entropy, got.student_entropy):
        assert 0 <= entropy <= length * math.log(vocab) + 1e-12
    same = sequence_divergences(teacher, teacher, vocab, length)
    assert float(same.kl_forward) == pytest.approx(0, abs=1e-12)
    assert float(same.tv) == pytest.approx(0, abs=1e-12)


def test_the_full_size_space_is_cheap_and_finite_at_extreme_logits():
    """8 tokens × length 6 = 262,144 sequences, teacher logits at ±1e4 (some probabilities 0)."""
    vocab, length = 8, 6
    weights = torch.randn(length * vocab + 1, vocab, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)

    def model(scale):
        def next_token(prefixes):
            features = torch.nn.functional.one_hot(prefixes, vocab).flatten(1).double()
            features = torch.nn.functional.pad(features, (0, length * vocab - features.shape[1]))
            position = torch.full((len(prefixes), 1), float(prefixes.shape[1]), dtype=torch.float64)
            return torch.cat([features, position], 1) @ weights * scale
        return next_token

    got = sequence_divergences(model(1e4), model(1.0), vocab, length, chunk_size=8192)
    values = torch.stack(list(got.as_dict().values()))
    assert values.isfinite().all()
    tree = prefix_tree(model(1.0), vocab, length)
    assert [level.shape[0] for level in tree] == [vocab ** t for t in range(length)]
    assert float(prefix_log_probs(tree)[-1].exp().sum()) == pytest.approx(1.0, rel=1e-10)


def test_sampling_draws_from_the_model(pair):
    teacher, _, _, _ = pair
    draws = sample_sequences(teacher, 20000, LENGTH, generator=torch.Generator().manual_seed(0))
    index = (draws * torch.tensor([VOCAB ** 2, VOCAB, 1])).sum(1)
    frequencies = torch.bincount(index, minlength=VOCAB ** LENGTH).double() / len(draws)
    exact = sequence_log_probs(prefix_tree(teacher, VOCAB, LENGTH)).exp()
    assert 0.5 * (frequencies - exact).abs().sum() < 0.03
