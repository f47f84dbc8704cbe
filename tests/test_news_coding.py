"""experiments/news_coding/coding.py: messages drawn from P = (0.5, 0.3, 0.2) coded with codes built
for Q = (0.3, 0.6, 0.1) and for P; the extra length approaches D_KL(P ‖ Q) = 0.2685 bits.

By hand, single messages (politics, sports, entertainment):
* Huffman for P merges 0.3 + 0.2, then 0.5 + 0.5: lengths (1, 2, 2), mean under P 1.5 bits;
* Huffman for Q merges 0.1 + 0.3, then 0.4 + 0.6: lengths (2, 1, 2), mean under P
  0.5·2 + 0.3·1 + 0.2·2 = 1.7 bits: an extra 0.2 bits, not 0.2685, because the lengths are
  whole bits (entertainment gets 2 bits instead of its ideal −log2 0.1 = 3.32, which P favours);
* D_KL(P ‖ Q) = 0.5 log2(5/3) + 0.3 log2(1/2) + 0.2 log2 2 = 0.268509… bits.
"""

import importlib.util
import itertools
import math
import sys

import numpy as np
import pytest
from helpers import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

SCRIPT = REPO / "experiments" / "news_coding" / "coding.py"
_spec = importlib.util.spec_from_file_location("news_coding", SCRIPT)
coding = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = coding  # its dataclasses look their module up there
_spec.loader.exec_module(coding)

P = coding.probabilities(coding.P_COUNTS)
Q = coding.probabilities(coding.Q_COUNTS)
KL_BITS = 0.5 * math.log2(5 / 3) + 0.3 * math.log2(1 / 2) + 0.2 * math.log2(2)


def test_the_kl_is_the_hand_computed_0_2685_bits():
    assert coding.kl_bits(P, Q) == pytest.approx(KL_BITS, abs=1e-12)
    assert round(KL_BITS, 4) == 0.2685


def test_single_message_huffman_codes_have_the_hand_computed_lengths():
    assert coding.huffman_lengths(P) == [1, 2, 2]
    assert coding.huffman_lengths(Q) == [2, 1, 2]
    assert coding.BlockCode.huffman(P, 1).expected_bits_per_message(P) == pytest.approx(1.5, abs=1e-12)
    assert coding.BlockCode.huffman(Q, 1).expected_bits_per_message(P) == pytest.approx(1.7, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_bits_on_a_stream_are_the_sum_of_its_blocks_code_lengths(n):
    """The encoded length equals Σ_b count(b) · len(b), exactly, and decoding gives the stream back."""
    messages = coding.draw_messages(4_000, seed=1)
    for distribution in (P, Q):
        code = coding.BlockCode.huffman(distribution, n)
        counts = np.bincount(code.blocks(messages), minlength=3 ** n)
        bits = code.encode(messages)

        assert len(bits) == int(counts @ np.asarray(code.lengths))
        np.testing.assert_array_equal(code.decode(bits), messages)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_huffman_codes_are_complete_prefix_codes_within_one_bit_of_the_entropy(n):
    for distribution in (P, Q):
        blocks = coding.block_probabilities(distribution, n)
        code = coding.BlockCode.huffman(distribution, n)
        entropy = -(blocks * np.log2(blocks)).sum()
        mean_length = float(blocks @ np.asarray(code.lengths))

        assert sum(2.0 ** -length for length in code.lengths) == pytest.approx(1.0, abs=1e-12)
        words = sorted(code.codewords)
        assert all(not b.startswith(a) for a, b in itertools.pairwise(words))
        assert entropy <= mean_length < entropy + 1


def test_block_probabilities_put_the_first_message_in_the_most_significant_digit():
    blocks = coding.block_probabilities(P, 2)
    code = coding.BlockCode.huffman(P, 2)

    assert blocks.sum() == pytest.approx(1.0)
    # (politics, entertainment) = 0·3 + 2 = index 2; (entertainment, politics) = index 6
    assert blocks[2] == pytest.approx(0.5 * 0.2) and blocks[6] == pytest.approx(0.2 * 0.5)
    assert code.blocks(np.array([0, 2, 2, 0])).tolist() == [2, 6]


@settings(max_examples=60, deadline=None)
@given(messages=st.lists(st.integers(0, 2), min_size=0, max_size=300),
       counts=st.sampled_from([coding.P_COUNTS, coding.Q_COUNTS, (1, 1, 1), (1, 1000, 1)]))
def test_arithmetic_coder_round_trips_within_two_bits_of_the_ideal_length(messages, counts):
    bits = coding.arithmetic_encode(messages, counts)
    ideal = coding.ideal_bits(np.asarray(messages, dtype=np.int64), counts)

    np.testing.assert_array_equal(coding.arithmetic_decode(bits, counts, len(messages)), messages)
    # integer rounding of the interval costs < 1e-7 bit per message here
    assert ideal - 1e-4 <= len(bits) <= ideal + 2 + 1e-4


def test_a_smaller_stream_shows_the_extra_length_of_each_code():
    """40,000 messages: expected values in closed form from the code lengths; measured ones on the
    stream; the arithmetic coder's extra is the stream's own mean log-ratio within 4 bits/stream."""
    messages = coding.draw_messages(40_000, seed=0)
    rows = {n: coding.huffman_row(messages, n) for n in (1, 2, 4, 8)}
    arithmetic = coding.arithmetic_row(messages)
    stream_kl = float(np.log2(P / Q)[messages].mean())

    expected = {n: (row.expected_q, row.expected_p) for n, row in rows.items()}
    assert expected[1] == pytest.approx((1.7, 1.5), abs=1e-12)
    assert expected[2] == pytest.approx((1.8, 1.5), abs=1e-12)
    for n, row in rows.items():
        code_q, code_p = coding.BlockCode.huffman(Q, n), coding.BlockCode.huffman(P, n)
        blocks = coding.block_probabilities(P, n)
        assert row.expected_q == pytest.approx(blocks @ np.asarray(code_q.lengths) / n, abs=1e-12)
        assert row.expected_p == pytest.approx(blocks @ np.asarray(code_p.lengths) / n, abs=1e-12)
        # P's own code is within 1/n bit of H(P); the stream agrees with expectation to sampling error
        assert coding.entropy_bits(P) <= row.expected_p < coding.entropy_bits(P) + 1 / n
        assert row.measured_extra == pytest.approx(row.expected_extra, abs=0.02)
    # Huffman's extra does not converge monotonically, but blocks of 8 are nearer than 1 or 2
    assert abs(rows[8].expected_extra - KL_BITS) < min(abs(rows[n].expected_extra - KL_BITS) for n in (1, 2))
    assert arithmetic.expected_extra == pytest.approx(KL_BITS, abs=1e-12)
    assert arithmetic.measured_extra == pytest.approx(stream_kl, abs=4 / len(messages))
    assert arithmetic.measured_extra == pytest.approx(KL_BITS, abs=0.02)


def test_the_script_prints_the_table_and_the_kl(capsys):
    coding.main(["--messages", "8000", "--blocks", "1", "2"])
    out = capsys.readouterr().out

    assert "| Huffman, blocks of 1 | 1.7000 | 1.5000 | 0.2000 |" in out
    assert "| Huffman, blocks of 2 | 1.8000 | 1.5000 | 0.3000 |" in out
    assert "| arithmetic coder | 1.7540 | 1.4855 | 0.2685 |" in out
    assert "D_KL(P ‖ Q) = Σ P log2(P/Q) = 0.2685 bits" in out
