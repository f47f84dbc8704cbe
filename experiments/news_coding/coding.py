"""The news-coding example in bits, run for real.

Messages (politics, sports, entertainment) arrive with probabilities P = (0.5, 0.3, 0.2); a code
was designed believing Q = (0.3, 0.6, 0.1). Coding messages drawn from P with a code built for Q
costs on average ``D_KL(P ‖ Q) = Σ_x P(x) log2(P(x) / Q(x))`` bits per message more than with the
code built for P: the ideal code lengths are ``−log2 Q(x)``, so the mean length under P is the
cross-entropy ``H(P, Q) = H(P) + D_KL(P ‖ Q)`` instead of ``H(P)``.

Real codes have whole-bit lengths. This script builds, for Q and for P,

* a Huffman code over blocks of ``n`` messages (3ⁿ blocks, n = 1, 2, 4, 8): an optimal prefix
  code, whose mean length per message lies within 1/n bit of the ideal one for the distribution
  it was built for;
* an arithmetic coder (Witten, Neal & Cleary 1987, 32-bit integer arithmetic) driven by the
  counts of P or Q: a whole stream costs at most ``−log2 Q(stream) + 2`` bits,

encodes a long stream of messages drawn from P (fixed seed) with each, decodes it back, and prints
bits per message under the Q code and the P code and their difference, beside the expected values
computed in closed form from the code lengths (``Σ_blocks Pⁿ(b) · len(b) / n``) and
``D_KL(P ‖ Q)`` from ``klexp.kl(..., units="bits")``.

Run: ``python experiments/news_coding/coding.py [--messages N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import Categorical

import klexp

MESSAGES = ("politics", "sports", "entertainment")
#: what the messages really are, and what the code's designer believed, as counts out of 10
#: (the arithmetic coder needs integer counts; these are exactly P and Q)
P_COUNTS = (5, 3, 2)
Q_COUNTS = (3, 6, 1)
BLOCK_SIZES = (1, 2, 4, 8)


def probabilities(counts: Sequence[int]) -> np.ndarray:
    return np.asarray(counts, dtype=np.float64) / sum(counts)


def kl_bits(p: np.ndarray, q: np.ndarray) -> float:
    """``D_KL(P ‖ Q) = Σ_x P(x) log2(P(x)/Q(x))`` in bits, by klexp's categorical KL."""
    return float(klexp.kl(Categorical(probs=torch.from_numpy(p)), Categorical(probs=torch.from_numpy(q)),
                          units="bits"))


def entropy_bits(p: np.ndarray) -> float:
    """``H(P) = −Σ_x P(x) log2 P(x)`` in bits."""
    return float(klexp.entropy(Categorical(probs=torch.from_numpy(p)), units="bits"))


# ---------------------------------------------------------------------------------- Huffman


def block_probabilities(p: np.ndarray, n: int) -> np.ndarray:
    """``Pⁿ(b) = Π_i P(b_i)`` of the 3ⁿ blocks of ``n`` messages, block ``b`` at index
    ``Σ_i b_i · 3^(n−1−i)`` (the first message is the most significant digit)."""
    blocks = np.ones(1)
    for _ in range(n):
        blocks = np.kron(blocks, p)
    return blocks


def huffman_lengths(probs: Sequence[float]) -> list[int]:
    """Codeword lengths of a Huffman code (Huffman 1952): repeatedly merge the two least probable
    subtrees; a symbol's length is its depth in the final tree. Ties are broken by the order
    subtrees were made (symbols first, by index), so the code is reproducible: optimal codes with
    the same mean length under ``probs`` can differ in mean length under another distribution."""
    count = len(probs)
    if count == 1:
        return [1]
    # nodes 0 … count−1 are the symbols, then each merge makes the next node
    parent = [0] * (2 * count - 1)
    heap = [(prob, node) for node, prob in enumerate(np.asarray(probs, dtype=np.float64).tolist())]
    heapq.heapify(heap)
    for node in range(count, 2 * count - 1):
        prob_a, a = heapq.heappop(heap)
        prob_b, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (prob_a + prob_b, node))
    depth = [0] * (2 * count - 1)
    for node in range(2 * count - 3, -1, -1):  # parents come after their children
        depth[node] = depth[parent[node]] + 1
    return depth[:count]


def canonical_code(lengths: Sequence[int]) -> list[str]:
    """The canonical prefix code with these codeword lengths (which must satisfy Kraft's
    inequality ``Σ 2^−l ≤ 1``): symbols sorted by (length, index) get consecutive binary numbers,
    shifted left whenever the length grows."""
    codewords = [""] * len(lengths)
    value, previous = 0, 0
    for symbol in sorted(range(len(lengths)), key=lambda s: (lengths[s], s)):
        value <<= lengths[symbol] - previous
        previous = lengths[symbol]
        codewords[symbol] = format(value, f"0{previous}b")
        value += 1
    return codewords


@dataclass(frozen=True)
class BlockCode:
    """A prefix code for blocks of ``n`` messages, built for a distribution of single messages."""

    n: int
    lengths: tuple[int, ...]
    codewords: tuple[str, ...]

    @classmethod
    def huffman(cls, p: np.ndarray, n: int) -> BlockCode:
        lengths = huffman_lengths(block_probabilities(p, n))
        return cls(n, tuple(lengths), tuple(canonical_code(lengths)))

    def expected_bits_per_message(self, p: np.ndarray) -> float:
        """``Σ_b Pⁿ(b) · len(b) / n``: the mean length per message when messages follow ``p``."""
        return float(block_probabilities(p, self.n) @ np.asarray(self.lengths)) / self.n

    def blocks(self, messages: np.ndarray) -> np.ndarray:
        if len(messages) % self.n:
            raise ValueError(f"{len(messages)} messages do not split into blocks of {self.n}")
        digits = len(MESSAGES) ** np.arange(self.n - 1, -1, -1)
        return messages.reshape(-1, self.n) @ digits

    def encode(self, messages: np.ndarray) -> str:
        """The concatenated codewords of the messages' blocks, as a string of 0s and 1s."""
        return "".join([self.codewords[b] for b in self.blocks(messages).tolist()])

    def decode(self, bits: str) -> np.ndarray:
        """The messages back from ``encode``'s bits (prefix code: read until a codeword ends)."""
        symbol_of = {codeword: symbol for symbol, codeword in enumerate(self.codewords)}
        blocks, start = [], 0
        for end in range(1, len(bits) + 1):
            symbol = symbol_of.get(bits[start:end])
            if symbol is not None:
                blocks.append(symbol)
                start = end
        if start != len(bits):
            raise ValueError(f"{len(bits) - start} trailing bits form no codeword")
        digits = np.asarray(blocks, dtype=np.int64)[:, None] // len(MESSAGES) ** np.arange(self.n - 1, -1, -1)
        return (digits % len(MESSAGES)).reshape(-1)


# ---------------------------------------------------------------------------------- arithmetic

PRECISION = 32
FULL = 1 << PRECISION
HALF = FULL >> 1
QUARTER = FULL >> 2


def _cumulative(counts: Sequence[int]) -> list[int]:
    if sum(counts) > QUARTER or min(counts) < 1:
        raise ValueError(f"counts must be ≥ 1 and sum to at most 2^{PRECISION - 2}, got {counts}")
    return [0, *itertools.accumulate(counts)]


def arithmetic_encode(messages: Sequence[int], counts: Sequence[int]) -> str:
    """Arithmetic coding (Witten, Neal & Cleary 1987) of ``messages`` under the model
    ``Q(x) = counts[x] / Σ counts``: the interval ``[low, high]`` narrows to each message's share;
    whenever it lies in one half, that half's bit is settled and written, and an interval
    straddling the middle half is widened with the bit left pending. Costs at most
    ``−log2 Q(messages) + 2`` bits (plus ~1e-8 bit per message of integer rounding)."""
    cumulative = _cumulative(counts)
    total = cumulative[-1]
    low, high, pending = 0, FULL - 1, 0
    bits: list[str] = []

    def emit(bit: str) -> None:
        nonlocal pending
        bits.append(bit + ("1" if bit == "0" else "0") * pending)
        pending = 0

    for message in messages:
        width = high - low + 1
        high = low + width * cumulative[message + 1] // total - 1
        low = low + width * cumulative[message] // total
        while True:
            if high < HALF:
                emit("0")
            elif low >= HALF:
                emit("1")
                low, high = low - HALF, high - HALF
            elif low >= QUARTER and high < 3 * QUARTER:
                pending += 1
                low, high = low - QUARTER, high - QUARTER
            else:
                break
            low, high = 2 * low, 2 * high + 1
    # two more bits pick a point that lies inside the final interval whatever follows
    pending += 1
    emit("0" if low < QUARTER else "1")
    return "".join(bits)


def arithmetic_decode(bits: str, counts: Sequence[int], num_messages: int) -> np.ndarray:
    """The ``num_messages`` messages back from ``arithmetic_encode``'s bits, by following the
    same interval arithmetic with the bits read so far (missing bits read as 0)."""
    cumulative = _cumulative(counts)
    total = cumulative[-1]
    stream = map(int, itertools.chain(bits, itertools.repeat("0")))
    value = 0
    for _ in range(PRECISION):
        value = 2 * value + next(stream)
    low, high = 0, FULL - 1
    messages = np.empty(num_messages, dtype=np.int64)
    for index in range(num_messages):
        width = high - low + 1
        scaled = ((value - low + 1) * total - 1) // width
        message = bisect.bisect_right(cumulative, scaled) - 1
        messages[index] = message
        high = low + width * cumulative[message + 1] // total - 1
        low = low + width * cumulative[message] // total
        while True:
            if high < HALF:
                pass
            elif low >= HALF:
                value, low, high = value - HALF, low - HALF, high - HALF
            elif low >= QUARTER and high < 3 * QUARTER:
                value, low, high = value - QUARTER, low - QUARTER, high - QUARTER
            else:
                break
            low, high = 2 * low, 2 * high + 1
            value = 2 * value + next(stream)
    return messages


def ideal_bits(messages: np.ndarray, counts: Sequence[int]) -> float:
    """``−log2 Q(messages) = −Σ_i log2 Q(x_i)``: what an ideal code for Q spends on them."""
    return float(-np.log2(probabilities(counts))[messages].sum())


# ---------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    """Bits per message of one kind of code, built for Q and for P, on messages from P."""

    code: str
    expected_q: float
    expected_p: float
    measured_q: float
    measured_p: float

    @property
    def expected_extra(self) -> float:
        return self.expected_q - self.expected_p

    @property
    def measured_extra(self) -> float:
        return self.measured_q - self.measured_p


def draw_messages(num_messages: int, seed: int) -> np.ndarray:
    """``num_messages`` messages drawn independently from P (numpy's PCG64, ``seed``)."""
    return np.random.default_rng(seed).choice(len(MESSAGES), size=num_messages, p=probabilities(P_COUNTS))


def huffman_row(messages: np.ndarray, n: int) -> Row:
    """Huffman codes over blocks of ``n`` built for Q and for P; the stream is encoded with each
    and decoded back (a mismatch raises)."""
    p, q = probabilities(P_COUNTS), probabilities(Q_COUNTS)
    measured = {}
    for name, distribution in (("q", q), ("p", p)):
        code = BlockCode.huffman(distribution, n)
        bits = code.encode(messages)
        if not np.array_equal(code.decode(bits), messages):
            raise AssertionError(f"Huffman code for {name.upper()}, n={n}: decoding differs")
        measured[name] = (code.expected_bits_per_message(p), len(bits) / len(messages))
    return Row(f"Huffman, blocks of {n}", measured["q"][0], measured["p"][0],
               measured["q"][1], measured["p"][1])


def arithmetic_row(messages: np.ndarray) -> Row:
    """Arithmetic coders driven by Q's and by P's counts; expected: the ideal ``H(P, Q)`` and
    ``H(P)``, which they reach within 2 bits per stream."""
    p, q = probabilities(P_COUNTS), probabilities(Q_COUNTS)
    measured = {}
    for name, counts in (("q", Q_COUNTS), ("p", P_COUNTS)):
        bits = arithmetic_encode(messages.tolist(), counts)
        if not np.array_equal(arithmetic_decode(bits, counts, len(messages)), messages):
            raise AssertionError(f"arithmetic coder for {name.upper()}: decoding differs")
        measured[name] = len(bits) / len(messages)
    return Row("arithmetic coder", entropy_bits(p) + kl_bits(p, q), entropy_bits(p),
               measured["q"], measured["p"])


def table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table, in bits per message."""
    lines = [
        "| code | expected: Q code | expected: P code | expected extra | "
        "measured: Q code | measured: P code | measured extra |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(f"| {row.code} | {row.expected_q:.4f} | {row.expected_p:.4f} | "
                     f"{row.expected_extra:.4f} | {row.measured_q:.4f} | {row.measured_p:.4f} | "
                     f"{row.measured_extra:.4f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000,
                        help="messages in the stream (a multiple of the largest block size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blocks", type=int, nargs="+", default=list(BLOCK_SIZES))
    args = parser.parse_args(argv)
    p, q = probabilities(P_COUNTS), probabilities(Q_COUNTS)
    messages = draw_messages(args.messages, args.seed)
    started = time.perf_counter()
    rows = [huffman_row(messages, n) for n in args.blocks] + [arithmetic_row(messages)]
    stream_kl = float(np.log2(p / q)[messages].mean())
    print(f"{args.messages:,} messages drawn from P = {tuple(p.tolist())} (seed {args.seed}); "
          f"codes built for Q = {tuple(q.tolist())} and for P; bits per message, "
          "every stream decoded back.\n")
    print(table(rows))
    print(f"\nD_KL(P ‖ Q) = Σ P log2(P/Q) = {kl_bits(p, q):.4f} bits  (klexp.kl(..., units='bits'))")
    print(f"H(P) = {entropy_bits(p):.4f} bits, H(P, Q) = H(P) + D_KL(P ‖ Q) = "
          f"{entropy_bits(p) + kl_bits(p, q):.4f} bits")
    print(f"this stream's own mean of log2 P(x)/Q(x): {stream_kl:.4f} bits "
          f"(sampling error ±{np.log2(p / q)[messages].std() / math.sqrt(args.messages):.4f})")
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
