"""A small autoregressive model over a vocabulary of ``V`` tokens and sequences of up to ``L``:
an MLP that reads the whole prefix (one-hot, positions not yet written left at zero) and the
position, and returns the next token's logits. Cheap on a CPU, exactly causal, and able to
represent any next-token distribution given width; the prefix tree of ``klexp.core.sequences``
calls it once per prefix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from klexp.errors import require_positive_int
from klexp.nets.mlp import Activation, mlp


class PrefixMLP(nn.Module):
    """``logits(x_t | x_<t) = MLP([onehot(x_0) … onehot(x_{t−1}), 0 … 0, onehot(t)])``."""

    def __init__(self, vocab_size: int, length: int, hidden: Sequence[int] = (128, 128),
                 activation: Activation = "relu") -> None:
        super().__init__()
        require_positive_int("vocab_size", vocab_size)
        require_positive_int("length", length)
        self.vocab_size, self.length = vocab_size, length
        self.hidden, self.activation = list(hidden), activation
        self.net = mlp(length * vocab_size + length, hidden, vocab_size, activation)

    def spec(self) -> dict[str, Any]:
        """What rebuilds the network (stored in checkpoints beside its weights)."""
        return {"vocab_size": self.vocab_size, "length": self.length, "hidden": self.hidden,
                "activation": self.activation}

    def next_token(self, prefixes: Tensor) -> Tensor:
        """Logits ``(N, V)`` of the token after each prefix ``(N, t)``, ``0 ≤ t < L``."""
        n, t = prefixes.shape
        dtype = self.net[0].weight.dtype
        tokens = F.one_hot(prefixes, self.vocab_size).to(dtype).flatten(1)
        tokens = F.pad(tokens, (0, (self.length - t) * self.vocab_size))
        position = torch.zeros(n, self.length, dtype=dtype, device=prefixes.device)
        position[:, t] = 1
        return self.net(torch.cat([tokens, position], 1))

    def forward(self, tokens: Tensor) -> Tensor:
        """Teacher-forced logits ``(N, L', V)`` for sequences ``(N, L')``: row ``t`` reads
        ``tokens[:, :t]`` only."""
        n, length = tokens.shape
        dtype = self.net[0].weight.dtype
        onehot = F.one_hot(tokens, self.vocab_size).to(dtype)
        onehot = F.pad(onehot, (0, 0, 0, self.length - length))              # (N, L, V)
        causal = torch.ones(length, self.length, device=tokens.device, dtype=dtype).tril(-1)
        prefix = (causal[None, :, :, None] * onehot[:, None]).flatten(2)     # (N, L', L·V)
        position = torch.eye(length, self.length, device=tokens.device, dtype=dtype)
        return self.net(torch.cat([prefix, position.expand(n, -1, -1)], -1))
