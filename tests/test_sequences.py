"""Specification of ``klexp.core.sequences``: exact sequence-level divergences of autoregressive
models by enumeration, checked against a brute force written from the definitions (every sequence's
probability as a product over positions, every prefix's probability summed over its own
completions), against the chain rule and against closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import rel_entr, softmax, xlogy
from torch import Tensor, nn

from klexp.core.categorical import categorical_kl
from klexp.core.sequences import (
    MAX_ENUMERATED_SEQUENCES,
    SequenceDivergences,
    all_sequences,
    sequence_divergences,
)
from klexp.errors import ConfigValueError

F64 = torch.float64
PROPERTY = settings(max_examples=30, deadline=None)


class TabularModel:
    """An autoregressive model given by a table of next-token logits for every prefix:
    ``tables[t]`` is ``(V^t, V)``, row ``prefix`` (its tokens read as a base-V number)."""

    def __init__(self, tables: list[Tensor]) -> None:
        self.tables = tables

    def __call__(self, tokens: Tensor) -> Tensor:
        vocab = self.tables[0].shape[-1]
        columns = []
        for t in range(tokens.shape[1]):
            powers = vocab ** torch.arange(t - 1, -1, -1)
            columns.append(self.tables[t][(tokens[:, :t] * powers).sum(-1)])
        return torch.stack(columns, dim=1)

    def next_token(self, prefix: tuple[int, ...]) -> np.ndarray:
        vocab = self.tables[0].shape[-1]
        row = sum(token * vocab ** (len(prefix) - 1 - i) for i, token in enumerate(prefix))
        return softmax(self.tables[len(prefix)][row].detach().numpy())


def random_model(vocab: int, length: int, seed: int, zeros: bool = False) -> TabularModel:
    generator = torch.Generator().manual_seed(seed)
    tables = []
    for t in range(length):
        table = 2 * torch.randn(vocab**t, vocab, generator=generator, dtype=F64)
        if zeros:  # some tokens of probability 0, never all of a row's
            drop = torch.rand(vocab**t, vocab, generator=generator) < 0.3
            drop[:, torch.randint(vocab, (), generator=generator)] = False
            table = table.masked_fill(drop, -math.inf)
        tables.append(table)
    return TabularModel(tables)


def brute_force(teacher: TabularModel, student: TabularModel, vocab: int, length: int) -> dict[str, float]:
    """Every value from its definition: probabilities of sequences as products; token averages as
    sums over prefixes, each weighted by the prefix's own probability."""
    def probability(model: TabularModel, x: tuple[int, ...]) -> float:
        return math.prod(model.next_token(x[:t])[x[t]] for t in range(len(x)))

    sequences = list(itertools.product(range(vocab), repeat=length))
    t = np.array([probability(teacher, x) for x in sequences])
    s = np.array([probability(student, x) for x in sequences])
    with np.errstate(divide="ignore"):
        values = {
            "kl": rel_entr(t, s).sum(),
            "reverse_kl": rel_entr(s, t).sum(),
            "total_variation": 0.5 * np.abs(t - s).sum(),
            "teacher_entropy": -xlogy(t, t).sum(),
            "student_entropy": -xlogy(s, s).sum(),
            "cross_entropy_on_teacher": -np.where(t > 0, xlogy(t, s), 0.0).sum() / length,
        }
    token = {"token_kl_on_teacher": 0.0, "token_reverse_kl_on_student": 0.0,
             "token_reverse_kl_on_teacher": 0.0, "token_kl_on_student": 0.0}
    for position in range(length):
        for prefix in itertools.product(range(vocab), repeat=position):
            pt, ps = probability(teacher, prefix), probability(student, prefix)
            nt, ns = teacher.next_token(prefix), student.next_token(prefix)
            forward, reverse = rel_entr(nt, ns).sum(), rel_entr(ns, nt).sum()
            for name, weight, value in (("token_kl_on_teacher", pt, forward),
                                        ("token_reverse_kl_on_student", ps, reverse),
                                        ("token_reverse_kl_on_teacher", pt, reverse),
                                        ("token_kl_on_student", ps, forward)):
                token[name] += weight * value if weight > 0 else 0.0
    values.update({name: value / length for name, value in token.items()})
    return values


def _float(values: SequenceDivergences) -> dict[str, float]:
    return {name: value.item() for name, value in values.as_dict().items()}


@PROPERTY
@given(vocab=st.integers(2, 3), length=st.integers(1, 3), seed=st.integers(0, 2**31 - 1),
       zeros=st.booleans(), batch_size=st.integers(1, 30))
def test_every_value_matches_the_brute_force_from_the_definitions(vocab, length, seed, zeros, batch_size):
    teacher, student = random_model(vocab, length, seed, zeros), random_model(vocab, length, seed + 1, zeros)
    got = _float(sequence_divergences(teacher, student, vocab_size=vocab, length=length,
                                      batch_size=batch_size))
    expected = brute_force(teacher, student, vocab, length)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


@PROPERTY
@given(vocab=st.integers(2, 4), length=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_chain_rule_identities_and_bounds(vocab, length, seed):
    """L · (forward token KL on teacher sequences) = KL(T ‖ S); L · (reverse token KL on student
    sequences) = KL(S ‖ T); KL(T ‖ S) = L · cross-entropy per token − H(T); Pinsker; TV ≤ 1."""
    teacher, student = random_model(vocab, length, seed), random_model(vocab, length, seed + 1)
    v = _float(sequence_divergences(teacher, student, vocab_size=vocab, length=length))
    assert length * v["token_kl_on_teacher"] == pytest.approx(v["kl"], rel=1e-10)
    assert length * v["token_reverse_kl_on_student"] == pytest.approx(v["reverse_kl"], rel=1e-10)
    assert length * v["cross_entropy_on_teacher"] - v["teacher_entropy"] == pytest.approx(v["kl"], rel=1e-9)
    assert 0 <= v["total_variation"] <= min(1.0, math.sqrt(v["kl"] / 2) + 1e-12)
    assert v["total_variation"] <= math.sqrt(v["reverse_kl"] / 2) + 1e-12
    assert 0 <= v["teacher_entropy"] <= length * math.log(vocab) + 1e-12


def test_a_model_against_itself_gives_zeros_and_its_entropy():
    model = random_model(3, 3, 0)
    v = _float(sequence_divergences(model, model, vocab_size=3, length=3))
    for name in ("kl", "reverse_kl", "total_variation", "token_kl_on_teacher",
                 "token_reverse_kl_on_student", "token_reverse_kl_on_teacher", "token_kl_on_student"):
        assert v[name] == pytest.approx(0.0, abs=1e-14), name
    assert v["teacher_entropy"] == v["student_entropy"] == pytest.approx(3 * v["cross_entropy_on_teacher"])


def test_independent_positions_give_the_sum_of_per_position_kls():
    """Models that ignore the prefix are products over positions: KL(T ‖ S) = Σ_t KL(T_t ‖ S_t),
    and the token averages on either side's sequences are all the same per-position mean."""
    generator = torch.Generator().manual_seed(3)
    t_logits, s_logits = (torch.randn(5, 4, generator=generator, dtype=F64) for _ in range(2))

    def positionwise(logits: Tensor):
        return lambda tokens: logits.expand(tokens.shape[0], -1, -1)

    v = sequence_divergences(positionwise(t_logits), positionwise(s_logits), vocab_size=4, length=5)
    per_position = categorical_kl(t_logits, s_logits)
    torch.testing.assert_close(v.kl, per_position.sum())
    torch.testing.assert_close(v.token_kl_on_student, per_position.mean())
    torch.testing.assert_close(v.reverse_kl, categorical_kl(s_logits, t_logits).sum())


class CausalGRU(nn.Module):
    """A small recurrent model: position t's logits from the tokens before t (a start token first)."""

    def __init__(self, vocab: int, hidden: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab + 1, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        self.start = vocab
        self.double()

    def forward(self, tokens: Tensor) -> Tensor:
        shifted = torch.cat([torch.full_like(tokens[:, :1], self.start), tokens[:, :-1]], dim=1)
        return self.out(self.rnn(self.embed(shifted))[0])


def test_a_neural_model_gives_the_same_values_in_any_batching_and_the_chain_rule_holds():
    teacher, student = CausalGRU(4, 16, 0), CausalGRU(4, 8, 1)
    with torch.no_grad():
        whole = sequence_divergences(teacher, student, vocab_size=4, length=5)
        pieces = sequence_divergences(teacher, student, vocab_size=4, length=5, batch_size=37)
    for name, value in whole.as_dict().items():
        torch.testing.assert_close(value, pieces.as_dict()[name], rtol=1e-12, atol=1e-14)
        assert value.dtype == F64 and value.dim() == 0
    torch.testing.assert_close(5 * whole.token_kl_on_teacher, whole.kl, rtol=1e-10, atol=0)


def test_the_gradient_is_that_of_the_divergence_of_the_joint_distributions():
    """The exact KL's gradient for the student's table, against autograd through the joint
    distribution over all sequences built as one categorical (another route to the same value)."""
    teacher, student = random_model(3, 3, 5), random_model(3, 3, 6)
    for table in student.tables:
        table.requires_grad_(True)
    values = sequence_divergences(teacher, student, vocab_size=3, length=3, batch_size=10)
    found = torch.autograd.grad(values.kl + values.reverse_kl, student.tables)

    tokens = all_sequences(3, 3)

    def joint(model: TabularModel) -> Tensor:
        return torch.log_softmax(model(tokens), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1).sum(-1)

    exact = categorical_kl(joint(teacher), joint(student)) + categorical_kl(joint(student), joint(teacher))
    expected = torch.autograd.grad(exact, student.tables)
    for a, b in zip(found, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_sequences_are_enumerated_in_lexicographic_order():
    assert all_sequences(2, 3).tolist() == [list(x) for x in itertools.product(range(2), repeat=3)]
    assert all_sequences(3, 2, 4, 7).tolist() == [[1, 1], [1, 2], [2, 0]]


def test_a_model_that_reads_the_token_it_predicts_is_refused_naming_it():
    """Position t's logits from token t itself: the 'probabilities' of the sequences no longer sum
    to 1, so no divergence of them means anything."""
    def peeking(tokens: Tensor) -> Tensor:
        return 5.0 * nn.functional.one_hot(tokens, 3).to(F64)

    with pytest.raises(ConfigValueError, match=r"^student: the probabilities of all 27 sequences sum to"):
        sequence_divergences(random_model(3, 3, 0), peeking, vocab_size=3, length=3)


def test_bad_shapes_and_sizes_are_refused_naming_the_key():
    model = random_model(2, 2, 0)
    with pytest.raises(ConfigValueError, match=r"^teacher: next-token logits of shape"):
        sequence_divergences(lambda tokens: torch.zeros(tokens.shape[0], 2), model, vocab_size=2, length=2)
    with pytest.raises(ConfigValueError, match=r"^length: "):
        sequence_divergences(model, model, vocab_size=2, length=int(math.log2(MAX_ENUMERATED_SEQUENCES)) + 1)
    with pytest.raises(ConfigValueError, match=r"^batch_size: "):
        sequence_divergences(model, model, vocab_size=2, length=2, batch_size=0)
