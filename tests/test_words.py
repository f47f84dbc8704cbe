"""The word setting of sequence distillation (klexp.data.words, klexp.data.table_source): a
frequency table of real words is a sequence source known exactly — its next-token function gives
every word its normalised frequency and every other sequence 0 — and the teacher trained on its
samples as a stage, then a student, are scored against it."""

from __future__ import annotations

import itertools
import math
import re
import sys

import pytest
import torch
from helpers import QUIET, run_experiment

from klexp.core.sequences import MAX_SEQUENCES, all_sequences, prefix_tree, sequence_log_probs
from klexp.data.table_source import TableSource, prefix_index
from klexp.data.words import MISSING_WORDFREQ, WordSequences, decode_words, encode_words, word_table
from klexp.errors import ConfigValueError, KlexpError

SMALL = {"num_train": 64, "num_val": 8, "num_test": 8}


def exact_probs(source: TableSource) -> torch.Tensor:
    """``P(x)`` of every sequence of the source's space, through its next-token function."""
    return sequence_log_probs(prefix_tree(source.next_token, source.vocab_size, source.length)).exp()


def test_each_word_gets_its_normalised_frequency_and_every_other_sequence_zero():
    data = WordSequences(letters="tea", max_letters=3, **SMALL)
    table, _ = word_table("tea", 3)
    probs = exact_probs(data.source)
    rows = prefix_index(encode_words(list(table), "tea", 4), 4)
    frequencies = torch.tensor(list(table.values()), dtype=torch.float64)
    torch.testing.assert_close(probs[rows], frequencies / frequencies.sum(), rtol=1e-12, atol=0)
    assert math.isclose(float(probs.sum()), 1, rel_tol=1e-12)
    assert float(probs[rows].sum()) == pytest.approx(1, rel=1e-12)  # nothing outside the table
    assert {"tea", "eat", "at", "a"} <= set(table)
    assert "the" not in table and "teat" not in table  # an h; 4 letters


def test_the_next_token_function_is_the_tables_conditional_by_brute_force():
    sequences = torch.tensor([[0, 1, 2], [0, 1, 1], [2, 2, 2], [0, 0, 2], [0, 1, 2]])
    weights = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.25], dtype=torch.float64)  # a repeated row adds up
    source = TableSource(sequences, weights, vocab_size=3, fallback_token=2)
    rows = [tuple(s) for s in sequences.tolist()]
    for t in range(3):
        for prefix in itertools.product(range(3), repeat=t):
            extending = [w for row, w in zip(rows, weights.tolist(), strict=True) if row[:t] == prefix]
            got = source.next_token(torch.tensor([prefix], dtype=torch.long).reshape(1, t)).exp()[0]
            if not extending:  # a prefix of probability 0: all of it to the fallback token
                assert got.tolist() == [0, 0, 1]
                continue
            expected = [sum(w for row, w in zip(rows, weights.tolist(), strict=True)
                            if row[:t + 1] == (*prefix, v)) / sum(extending) for v in range(3)]
            torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    probs = exact_probs(source)
    expected = torch.zeros(27, dtype=torch.float64)
    expected.index_put_((prefix_index(sequences, 3),), weights / weights.sum(), accumulate=True)
    torch.testing.assert_close(probs, expected)


def test_the_default_setting_is_enumerable_and_keeps_the_documented_share_of_the_table():
    data = WordSequences(**SMALL)
    assert (data.vocab_size, data.length) == (10, 6)
    assert MAX_SEQUENCES >= 10 ** 6
    assert len(data.words) == 4911 and data.words[:3] == ["the", "to", "and"]
    assert round(data.mass_kept, 3) == 0.285                        # docs/distill-seq.md
    entropy = -(data.source.probs * data.source.probs.log()).sum()
    assert round(float(entropy), 2) == 3.29


def test_the_default_alphabet_keeps_the_most_frequency_of_the_documented_candidates():
    """docs/distill-seq.md: of the 1,140 alphabets of 9 letters holding e, t, a, o, i, n, the
    words of ≤ 5 letters of ``etaoinshd`` carry the most frequency; ``etaoinshr`` (the 9 most
    frequent letters) 26.9 % of the table's."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    table, _ = word_table(letters, 5)
    bits = {c: 1 << i for i, c in enumerate(letters)}
    masks = torch.tensor([sum(bits[c] for c in set(w)) for w in table])
    frequencies = torch.tensor(list(table.values()), dtype=torch.float64)

    def mass(alphabet: str) -> float:
        inside = sum(bits[c] for c in alphabet)
        return float(frequencies[(masks & ~inside) == 0].sum())

    others = [c for c in letters if c not in "etaoin"]
    best = max(("etaoin" + "".join(extra) for extra in itertools.combinations(others, 3)), key=mass)
    assert sorted(best) == sorted("etaoinshd")
    assert math.isclose(mass(best), sum(word_table("etaoinshd", 5)[0].values()))
    assert round(word_table("etaoinshr", 5)[1], 3) == 0.269


def test_words_are_letter_tokens_padded_with_the_end_token():
    tokens = encode_words(["the", "a"], "etaoinshd", 4)
    assert tokens.tolist() == [[1, 7, 0, 9], [2, 9, 9, 9]]
    assert decode_words(tokens, "etaoinshd") == ["the", "a"]
    assert all_sequences(10, 4)[prefix_index(tokens, 10)].tolist() == tokens.tolist()


def test_the_splits_are_words_of_the_table_drawn_with_the_source_seed():
    first, again = WordSequences(letters="tea", max_letters=3, **SMALL), WordSequences(
        letters="tea", max_letters=3, seed=5, **SMALL)
    assert torch.equal(first.splits["train"], again.splits["train"])  # the run's seed shuffles only
    other = WordSequences(letters="tea", max_letters=3, source_seed=1, **SMALL)
    assert not torch.equal(first.splits["train"], other.splits["train"])
    assert set(decode_words(first.splits["train"], "tea")) <= set(first.words)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"letters": "etae"}, r"^letters: a string of distinct characters, got 'etae'$"),
    ({"letters": " "}, r"^letters: letters that write some word of wordfreq's 'en' table in ≤ 5 letters"),
    ({"max_letters": 0}, r"^max_letters: expected an integer > 0, got 0$"),
    ({"language": "xx"}, r"^language: a language and wordlist wordfreq ships \(No wordlist 'large'"),
    ({"max_letters": 7}, r"^length: vocab_size 10 and length 8 make 100,000,000 sequences"),
])
def test_a_bad_setting_is_one_line_naming_its_key(kwargs, message):
    with pytest.raises(ConfigValueError, match=message):
        WordSequences(**{**SMALL, **kwargs})


@pytest.mark.parametrize("experiment", ["distill_seq_words_teacher", "distill_seq_words"])
def test_without_wordfreq_the_run_stops_in_one_line_before_anything_exists(experiment, monkeypatch,
                                                                          tmp_path):
    monkeypatch.setitem(sys.modules, "wordfreq", None)  # `import wordfreq` raises ImportError
    with pytest.raises(KlexpError, match=rf"^{re.escape(MISSING_WORDFREQ)}$") as raised:
        WordSequences(**SMALL)
    assert str(raised.value) == "data=words needs wordfreq: pip install 'klexp[text]'"
    run_dir = tmp_path / "run"
    with pytest.raises(KlexpError, match=rf"^{re.escape(MISSING_WORDFREQ)}$"):
        run_experiment([f"experiment={experiment}", *QUIET], run_dir)
    assert not run_dir.exists() or not any(run_dir.iterdir())


# ------------------------------------------------------------------ teacher stage and student

SHORT = [*QUIET, "data.num_train=512", "trainer.max_steps=16", "trainer.check_val_every_n_epoch=1",
         "test=false"]


@pytest.mark.slow
def test_a_teacher_trained_as_a_stage_on_words_and_its_student_are_scored_against_the_table(tmp_path):
    summary = run_experiment(["experiment=distill_seq_words", *SHORT], tmp_path)
    assert summary["status"] == "completed"
    teacher = summary["stages"]["teacher"]["metrics"]
    # the teacher against the table: KL(data ‖ teacher) is finite, KL(teacher ‖ data) is not (a
    # model gives every sequence some probability, the table only its words), and says so
    assert 0 < teacher["val/seq_kl_forward"] < math.inf
    assert teacher["val/reference_entropy"] == pytest.approx(3.2925, abs=1e-4)
    assert teacher["val/seq_kl_reverse"] == teacher["val/token_kl_reverse_on_student"] == math.inf
    assert math.isfinite(teacher["val/token_kl_forward_on_student"])  # unreachable prefixes weigh 0
    student = summary["metrics"]
    for name in ("val/seq_kl_forward", "val/seq_kl_reverse", "val/true_kl_forward", "val/seq_tv"):
        assert 0 <= student[name] < math.inf, name
    assert student["val/reference_entropy"] != pytest.approx(3.2925, abs=1e-4)  # the teacher's
