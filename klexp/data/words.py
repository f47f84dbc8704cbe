"""Real text whose distribution is known exactly: the words of ``wordfreq``'s frequency table
(Speer, 2022; shipped inside the package, no download) written with a small alphabet, each with
probability ∝ its frequency. A word is a sequence of letter tokens padded with an end token to
``max_letters + 1``, so the whole sequence space can be enumerated (``klexp.core.sequences``) and
a model trained on samples of the table can be scored against the table itself."""

from __future__ import annotations

from functools import lru_cache
from itertools import takewhile

import torch
from torch import Tensor

from klexp.data.sequence_splits import SequenceSplits
from klexp.data.table_source import TableSource
from klexp.errors import ConfigValueError, KlexpError, require_positive_int

MISSING_WORDFREQ = "data=words needs wordfreq: pip install 'klexp[text]'"


def word_table(letters: str, max_letters: int, language: str = "en",
               wordlist: str = "large") -> tuple[dict[str, float], float]:
    """The words of ``wordfreq``'s ``language`` / ``wordlist`` table written only with ``letters``
    in at most ``max_letters`` letters, with their frequencies (as the table has them, most
    frequent first), and the share of the whole table's frequency they hold."""
    try:
        import wordfreq
    except ImportError:
        raise KlexpError(MISSING_WORDFREQ) from None
    try:
        kept, share = _word_table(wordfreq.get_frequency_dict, letters, max_letters, language, wordlist)
    except LookupError as error:
        raise ConfigValueError("language", f"a language and wordlist wordfreq ships ({error})") from None
    return dict(kept), share


@lru_cache(maxsize=4)
def _word_table(frequencies, letters: str, max_letters: int, language: str,
                wordlist: str) -> tuple[dict[str, float], float]:
    table = frequencies(language, wordlist=wordlist)
    alphabet = set(letters)
    kept = {w: f for w, f in table.items() if len(w) <= max_letters and set(w) <= alphabet}
    return dict(sorted(kept.items(), key=lambda item: -item[1])), sum(kept.values()) / sum(table.values())


def encode_words(words: list[str], letters: str, length: int) -> Tensor:
    """Words as token sequences ``(K, length)``: letter ``letters[i]`` is token ``i``, and the end
    token ``len(letters)`` pads each word to ``length``."""
    end = len(letters)
    index = {letter: i for i, letter in enumerate(letters)}
    return torch.tensor([[index[c] for c in w] + [end] * (length - len(w)) for w in words], dtype=torch.long)


def decode_words(tokens: Tensor, letters: str) -> list[str]:
    """Token sequences ``(N, L)`` as strings: their letters up to the first end token."""
    end = len(letters)
    return ["".join(letters[i] for i in takewhile(lambda i: i != end, row)) for row in tokens.tolist()]


class WordSequences(SequenceSplits):
    """Train/val/test words sampled from ``wordfreq``'s table restricted to ``letters`` and
    ``max_letters``; the table itself is the truth a task reads (``true_next_token``).

    The vocabulary is the letters and one end token (``V = len(letters) + 1``), the length
    ``L = max_letters + 1`` (every word ends with at least one end token).

    Args:
        letters: the alphabet, distinct characters (the default, ``etaoinshd``, is the 9 letters
            whose words of ≤ 5 letters hold the most frequency: docs/distill-seq.md).
        max_letters: the longest word kept.
        language, wordlist: the ``wordfreq`` table (``get_frequency_dict(language, wordlist)``).
        source_seed: the seed the splits are drawn with.
        num_train, num_val, num_test, batch_size, eval_batch_size, seed: the splits
            (``klexp.data.sequence_splits.SequenceSplits``).
    """

    def __init__(self, letters: str = "etaoinshd", max_letters: int = 5, language: str = "en",
                 wordlist: str = "large", source_seed: int = 0, num_train: int = 8192, num_val: int = 1024,
                 num_test: int = 1024, batch_size: int = 64, eval_batch_size: int = 1024,
                 seed: int = 0) -> None:
        if not isinstance(letters, str) or not letters or len(set(letters)) != len(letters):
            raise ConfigValueError("letters", f"a string of distinct characters, got {letters!r}")
        require_positive_int("max_letters", max_letters)
        super().__init__(len(letters) + 1, max_letters + 1, num_train, num_val, num_test, batch_size,
                         eval_batch_size, seed)
        table, self.mass_kept = word_table(letters, max_letters, language, wordlist)
        if not table:
            raise ConfigValueError("letters", f"letters that write some word of wordfreq's {language!r} "
                                              f"table in ≤ {max_letters} letters, got {letters!r}")
        self.letters, self.words = letters, list(table)
        self.source = TableSource(encode_words(self.words, letters, self.length),
                                  torch.tensor(list(table.values()), dtype=torch.float64),
                                  self.vocab_size, fallback_token=len(letters))
        generator = torch.Generator().manual_seed(source_seed)
        self.set_splits(self.source.sample(sum(self.split_sizes), generator))

    @property
    def true_next_token(self) -> TableSource:
        return self.source
